"""What a training sample is labelled with: a metadata column, the embedding, or several (:class:`Target`).

Text columns become integer codes: the code of a value is its position in the sorted distinct values of the whole
store (not of the selection), so a model trained on one selection and evaluated on another, or in another run, sees
the same code for the same treatment. Concentrations are blank (NaN) for the ``EMPTY`` controls, and embeddings are
NaN rows for sites without one: a target refuses such sites unless it is told what to put there (``fill``), so a
NaN never reaches a loss by accident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._columns import INTEGER_COLUMNS, METADATA_COLUMNS, STRING_COLUMNS
from ._errors import MetadataError

if TYPE_CHECKING:
    import pandas as pd

    from ._dataset import Dataset

__all__ = ["EMBEDDING", "EncodedTarget", "Target", "classes_of", "encode_targets", "parse_targets"]

#: The target name of the site's embedding (a float32 vector of the store's embedding dimension).
EMBEDDING = "embedding"
_FLOAT_TARGETS = ("treatment_conc", EMBEDDING)
_NAMES = (*METADATA_COLUMNS, EMBEDDING)


@dataclass(frozen=True)
class Target:
    """One label of a sample: ``name`` is a metadata column or ``"embedding"``.

    ``classes`` (text columns only) fixes the codes: value ``classes[k]`` is code ``k`` (default: the sorted distinct
    values of the whole store). ``fill`` (``treatment_conc`` and ``embedding`` only) replaces missing values; without
    it a selection holding a site without a value is refused. ``fill=float("nan")`` keeps NaN, on purpose.
    """

    name: str
    classes: tuple[str, ...] | None = None
    fill: float | None = None

    def __post_init__(self) -> None:
        if self.name not in _NAMES:
            raise ValueError(f"target {self.name!r} is not a metadata column or {EMBEDDING!r}; choose from {list(_NAMES)}")
        if self.classes is not None:
            if self.name not in STRING_COLUMNS:
                raise ValueError(f"target {self.name!r}: classes are for text columns {list(STRING_COLUMNS)} only")
            classes = tuple(self.classes)
            if not classes or any(not isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
                raise ValueError(f"target {self.name!r}: classes must be distinct strings, got {self.classes!r}")
            object.__setattr__(self, "classes", classes)
        if self.fill is not None:
            if self.name not in _FLOAT_TARGETS:
                raise ValueError(f"target {self.name!r}: fill is for {list(_FLOAT_TARGETS)} only (nothing is missing)")
            if isinstance(self.fill, bool) or not isinstance(self.fill, int | float):
                raise ValueError(f"target {self.name!r}: fill must be a number, got {self.fill!r}")


@dataclass(frozen=True)
class EncodedTarget:
    """A target's value for every site of a selection: int64 codes or values, or float32 (with a feature axis for
    the embedding); ``classes`` for text columns."""

    name: str
    values: npt.NDArray[Any]
    classes: tuple[str, ...] | None


def _as_target(spec: str | Target) -> Target:
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        return Target(spec)
    raise TypeError(f"a target is a column name, 'embedding' or a Target, got {spec!r}")


def parse_targets(target: str | Target | Sequence[str | Target] | None) -> tuple[tuple[Target, ...], bool]:
    """The targets asked for, and whether they were asked for as one (a bare value) or several (a dict)."""
    if target is None:
        return (), True
    if isinstance(target, str | Target):
        return (_as_target(target),), True
    targets = tuple(_as_target(t) for t in target)
    names = [t.name for t in targets]
    if not targets or len(set(names)) != len(names):
        raise ValueError(f"targets must be distinct and at least one, got {names}")
    return targets, False


class _StoreValues:
    """The sorted distinct values of a column over the whole store a selection was taken from (the store is
    opened again, once, unless the selection is the whole store)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.frame: pd.DataFrame | None = None

    def __call__(self, column: str) -> tuple[str, ...]:
        if self.frame is None:
            from ._dataset import open as open_store

            counts = self.dataset.attrs.get("counts")
            whole = isinstance(counts, Mapping) and counts.get("sites") == len(self.dataset)
            store = self.dataset if whole else open_store(self.dataset.url, self.dataset.storage_options)
            self.frame = store.sites
        return tuple(sorted({str(v) for v in self.frame[column]}))


def _codes(target: Target, store: _StoreValues, values: npt.NDArray[Any], site_ids: Sequence[str]) -> EncodedTarget:
    classes = target.classes if target.classes is not None else store(target.name)
    lookup = {c: k for k, c in enumerate(classes)}
    codes = np.fromiter((lookup.get(str(v), -1) for v in values), dtype=np.int64, count=len(values))
    unknown = np.flatnonzero(codes < 0)
    if len(unknown):
        k = int(unknown[0])
        raise MetadataError(
            f"target {target.name!r}: site {site_ids[k]} has value {values[k]!r}, which is not one of the "
            f"{len(classes)} classes given ({len(unknown)} site(s) like it)"
        )
    return EncodedTarget(target.name, codes, classes)


def _filled(target: Target, values: npt.NDArray[np.float32], site_ids: Sequence[str], url: str) -> EncodedTarget:
    missing = np.isnan(values) if values.ndim == 1 else np.isnan(values).any(axis=1)
    if missing.any():
        if target.fill is None:
            first = [site_ids[int(k)] for k in np.flatnonzero(missing)[:3]]
            what = "a blank treatment_conc (the EMPTY controls)" if target.name == "treatment_conc" else "no embedding"
            raise MetadataError(
                f"target {target.name!r}: {int(missing.sum())} selected site(s) of {url} have {what}, e.g. {first}; "
                f"select them out or give Target({target.name!r}, fill=...) (fill=float('nan') keeps NaN)"
            )
        if not math.isnan(target.fill):
            values = np.where(np.isnan(values), np.float32(target.fill), values).astype(np.float32)
    return EncodedTarget(target.name, values, None)


def encode_targets(targets: Sequence[Target], dataset: Dataset) -> tuple[EncodedTarget, ...]:
    """Every target's value for every site of ``dataset`` (its selection, in order)."""
    if not targets:
        return ()
    site_ids = dataset.site_ids
    frame = dataset.sites if any(t.name != EMBEDDING for t in targets) else None
    store = _StoreValues(dataset)
    encoded = []
    for target in targets:
        if target.name == EMBEDDING:
            matrix = dataset.embeddings
            if matrix is None:
                raise ValueError(f"target 'embedding': the store {dataset.url} has no embeddings (converted without embeddings.csv)")
            encoded.append(_filled(target, np.array(matrix, dtype=np.float32), site_ids, dataset.url))
            continue
        assert frame is not None
        column = frame[target.name].to_numpy()
        if target.name in STRING_COLUMNS:
            encoded.append(_codes(target, store, column, site_ids))
        elif target.name in INTEGER_COLUMNS:
            encoded.append(EncodedTarget(target.name, column.astype(np.int64), None))
        else:
            encoded.append(_filled(target, column.astype(np.float32), site_ids, dataset.url))
    return tuple(encoded)


def classes_of(encoded: Sequence[EncodedTarget]) -> Mapping[str, tuple[str, ...]]:
    """``{name: classes}`` of the text targets."""
    return {e.name: e.classes for e in encoded if e.classes is not None}
