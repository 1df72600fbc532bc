"""Selection: which sites ``select(**columns)`` keeps, and where given site_ids are in a selection."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._columns import METADATA_COLUMNS
from ._errors import SiteNotFoundError
from ._index import FLOAT_COLUMNS, INT_COLUMNS, STRING_COLUMNS

__all__ = ["CONC_RTOL", "positions_of", "select_positions"]

NUMERIC_COLUMNS = (*INT_COLUMNS, *FLOAT_COLUMNS)
#: Relative tolerance of ``select(treatment_conc=value)``: the release stores doses with float artefacts
#: (``0.0009999999999999`` for 1e-3), which an exact comparison would make unselectable by their nominal value.
CONC_RTOL = 1e-9


def select_positions(
    columns: Mapping[str, npt.NDArray[Any]], positions: npt.NDArray[np.int64], query: Mapping[str, Any]
) -> npt.NDArray[np.int64]:
    """The ``positions`` (ascending index positions) whose rows match every keyword of ``query`` (AND)."""
    unknown = [c for c in query if c not in METADATA_COLUMNS]
    if unknown:
        raise ValueError(f"select(): unknown column(s) {unknown}; columns are {list(METADATA_COLUMNS)}")
    mask = np.ones(len(positions), dtype=bool)
    for column, wanted in query.items():
        mask &= _match(column, columns[column][positions], wanted)
    return positions[mask]


def positions_of(
    find: Callable[[str], int], selected: npt.NDArray[np.int64] | None, site_ids: Sequence[str], url: str
) -> npt.NDArray[np.int64]:
    """The index positions of ``site_ids``, each of which must be in the store and in ``selected`` (ascending
    positions; None: the whole store); ``find`` maps a site_id to its position, or -1."""
    found = np.fromiter((find(s) if isinstance(s, str) else -1 for s in site_ids), np.int64, len(site_ids))
    missing = [s for s, p in zip(site_ids, found, strict=True) if p < 0]
    if missing:
        raise SiteNotFoundError(f"site(s) not in store {url}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if selected is not None:
        slots = np.minimum(np.searchsorted(selected, found), max(len(selected) - 1, 0))  # a binary search per id
        inside = selected[slots] == found if len(selected) else np.zeros(len(found), dtype=bool)
        if not inside.all():
            outside = [s for s, ok in zip(site_ids, inside, strict=True) if not ok]
            raise SiteNotFoundError(f"site(s) in the store but not in this selection: {outside[:5]}")
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _is_pandas_vector(value: Any) -> bool:
    """A pandas Series or Index, without importing pandas (if it is not imported, the value cannot be one)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.Series | pandas.Index)


def _match(column: str, values: npt.NDArray[Any], wanted: Any) -> npt.NDArray[np.bool_]:
    """The rows of ``values`` (one column of the selection) that ``wanted`` selects."""
    if isinstance(wanted, tuple):
        return _in_range(column, values, wanted)
    if isinstance(wanted, list | set | frozenset | np.ndarray) or _is_pandas_vector(wanted):
        items = list(wanted)
        if column in STRING_COLUMNS:
            if any(not isinstance(item, str) for item in items):
                raise ValueError(f"select({column}=...): expected a list of strings, got {wanted!r}")
            wanted_set = set(items)
            return np.fromiter((v in wanted_set for v in values.tolist()), bool, len(values))
        mask = np.zeros(len(values), dtype=bool)
        for item in items:
            mask |= _equal(column, values, item)
        return mask
    return _equal(column, values, wanted)


def _in_range(column: str, values: npt.NDArray[Any], wanted: tuple[Any, ...]) -> npt.NDArray[np.bool_]:
    if column not in NUMERIC_COLUMNS:
        raise ValueError(
            f"select({column}=...): a (lo, hi) tuple is a numeric range, valid for {list(NUMERIC_COLUMNS)}; "
            "use a list to select any of several values"
        )
    if len(wanted) != 2 or any(v is not None and not _is_number(v) for v in wanted):
        raise ValueError(f"select({column}=...): a range must be (lo, hi) with numbers (or None), got {wanted!r}")
    lo, hi = wanted
    mask = np.ones(len(values), dtype=bool)
    if lo is not None:
        mask &= values >= lo
    if hi is not None:
        mask &= values <= hi
    return mask


def _equal(column: str, values: npt.NDArray[Any], wanted: Any) -> npt.NDArray[np.bool_]:
    if column in NUMERIC_COLUMNS:
        if column in FLOAT_COLUMNS and (wanted is None or (_is_number(wanted) and math.isnan(float(wanted)))):
            return np.asarray(np.isnan(values), dtype=bool)  # the EMPTY controls have no concentration
        if not _is_number(wanted):
            raise ValueError(f"select({column}=...): expected a number, a list of numbers or a (lo, hi) range, got {wanted!r}")
        if column in FLOAT_COLUMNS:
            return np.asarray(np.isclose(values, float(wanted), rtol=CONC_RTOL, atol=0.0), dtype=bool)
        return np.asarray(values == wanted)
    if not isinstance(wanted, str):
        raise ValueError(f"select({column}=...): expected a string or a list of strings, got {wanted!r}")
    return np.asarray(values == wanted)
