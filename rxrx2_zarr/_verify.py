"""``verify``: an independent check of a store against its source.

Pixels are read back through zarr-python's own codec pipeline (not this package's fast shard decoder), so a bug in
our encoder or decoder cannot hide itself. Every (or a random sample of) site's six PNGs are decoded and compared
pixel by pixel; checksums are recomputed and compared with the index and the site attributes; every plate is
validated against ome-zarr-models' OME-NGFF 0.5 HCS model; the index and embeddings are compared with the CSVs.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import crc32c
import numpy as np
import pandas as pd

from ._errors import StoreFormatError
from ._layout import EMBEDDINGS_ARRAY, INDEX_COLUMNS, INDEX_GROUP, INDEX_STRING_COLUMNS, SiteArraySpec
from ._plan import ConversionPlan, make_plan
from ._progress import Progress
from ._storage import StoreIO

__all__ = ["VerifyReport", "verify"]

MAX_LISTED = 50


@dataclass
class VerifyReport:
    src: str
    dst: str
    sites_in_store: int = 0
    pixels_checked: int = 0
    plates_validated: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
        lines = [
            f"verify {self.dst} against {self.src}: {head}",
            f"  sites in store: {self.sites_in_store}; pixels compared for {self.pixels_checked} site(s); "
            f"plates validated (OME-NGFF 0.5 HCS): {self.plates_validated}",
        ]
        lines.extend(f"  - {p}" for p in self.problems[:MAX_LISTED])
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        return "\n".join(lines)


def _root_attrs(store: StoreIO) -> dict[str, Any]:
    try:
        attrs = json.loads(store.read("zarr.json"))["attributes"]["rxrx2"]
    except FileNotFoundError:
        raise StoreFormatError(f"{store.url}: no zarr.json (not a Zarr store)") from None
    except (ValueError, KeyError, TypeError):
        raise StoreFormatError(f"{store.url}: not an rxrx2-zarr store (no 'rxrx2' root attributes)") from None
    if not isinstance(attrs, dict) or attrs.get("format") != "rxrx2-zarr":
        raise StoreFormatError(f"{store.url}: not an rxrx2-zarr store")
    return attrs


def _read_index(store: StoreIO) -> pd.DataFrame:
    import zarr

    group = zarr.open_group(store.zarr_store(), path=INDEX_GROUP, mode="r")
    columns = {}
    for name in INDEX_COLUMNS:
        array = group[name]
        columns[name] = np.asarray(array[...])  # type: ignore[index]
    frame = pd.DataFrame(columns)
    for name in INDEX_STRING_COLUMNS:
        frame[name] = frame[name].astype(str)
    return frame


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or fa == fb
    return bool(a == b)


def verify(
    src: str,
    dst: str,
    *,
    sample: int | None = None,
    seed: int = 0,
    workers: int = 2,
    storage_options: Mapping[str, Any] | None = None,
    src_storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    metadata: str | None = None,
    embeddings: str | None = None,
) -> VerifyReport:
    """Compare the store ``dst`` with the RxRx2 tree ``src``; the report lists every problem found.

    ``metadata`` / ``embeddings``: where those files are when not in ``src`` (as for ``convert``)."""
    with warnings.catch_warnings():
        # zarr-python warns that numcodecs codecs are outside the v3 spec, and ome-zarr-models about the version
        # field, once per node: known and harmless here, and they would drown the report
        warnings.filterwarnings("ignore", message=".*Numcodecs codecs are not in the Zarr version 3 specification.*")
        warnings.filterwarnings("ignore", module="ome_zarr_models.*")
        warnings.filterwarnings("ignore", message=".*'version' field not specified.*")
        return _verify(src, dst, sample, seed, workers, storage_options, src_storage_options, progress, metadata,
                       embeddings)


def _verify(
    src: str,
    dst: str,
    sample: int | None,
    seed: int,
    workers: int,
    storage_options: Mapping[str, Any] | None,
    src_storage_options: Mapping[str, Any] | None,
    progress: bool,
    metadata: str | None = None,
    embeddings: str | None = None,
) -> VerifyReport:
    import zarr

    dst_options = dict(storage_options or {})
    src_options = dict(src_storage_options if src_storage_options is not None else dst_options)
    store = StoreIO(dst, dst_options)
    report = VerifyReport(src, dst)
    attrs = _root_attrs(store)
    if not attrs.get("complete"):
        report.problems.append("store is incomplete (conversion did not finish): run convert --resume")
        return report
    subset = attrs.get("source", {}).get("subset", {}) or {}
    skipped = {s["site_id"]: s["reason"] for s in attrs.get("skipped", [])}
    plan = make_plan(
        src,
        src_options,
        experiments=subset.get("experiments"),
        plates=subset.get("plates"),
        limit=subset.get("limit"),
        on_error="skip",
        need_pixels=bool(attrs.get("pixels", True)),
        metadata_url=metadata,
        embeddings_url=embeddings,
    )
    index = _read_index(store)
    report.sites_in_store = len(index)
    _compare_index(plan, index, skipped, report)
    _compare_embeddings(store, plan, index, report)
    spec = SiteArraySpec.from_options(attrs["options"])
    _validate_ngff(store, index, report)

    if not attrs.get("pixels", True):
        return report
    positions = list(range(len(index)))
    if sample is not None and sample < len(positions):
        positions = sorted(random.Random(seed).sample(positions, sample))
    src_store = plan.source.open() if plan.source is not None else StoreIO(src, src_options)
    zstore = store.zarr_store()
    by_site = {item.site_id: item for item in plan.items}

    def check(position: int) -> list[str]:
        from ._convert import read_site_pixels
        from ._errors import ImageError

        row = index.iloc[position]
        site_id = row["site_id"]
        item = by_site.get(site_id)
        if item is None:
            return [f"{site_id}: in the store but not in the source metadata"]
        try:
            expected, _ = read_site_pixels(src_store, item, (spec.height, spec.width))
        except ImageError as exc:
            return [f"{site_id}: source unreadable: {exc}"]
        try:
            stored = np.asarray(zarr.open_array(zstore, path=row["path"], mode="r")[:])
        except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
            return [f"{site_id}: cannot read {row['path']}: {exc}"]
        problems = []
        if stored.shape != expected.shape or not np.array_equal(stored, expected):
            differ = int(np.count_nonzero(stored != expected)) if stored.shape == expected.shape else -1
            problems.append(f"{site_id}: pixels differ from the PNGs ({differ} pixel(s)) in {row['path']}")
        checksum = crc32c.crc32c(np.ascontiguousarray(stored).data)
        if checksum != int(row["checksum"]):
            problems.append(f"{site_id}: index checksum {int(row['checksum'])} != pixels' crc32c {checksum}")
        try:
            site_attrs = json.loads(store.read(f"{row['path'].rsplit('/', 1)[0]}/zarr.json"))["attributes"]["rxrx2"]
            if site_attrs.get("checksum") != checksum or site_attrs.get("site_id") != site_id:
                problems.append(f"{site_id}: site attributes {site_attrs} disagree with the pixels (crc32c {checksum})")
        except (FileNotFoundError, ValueError, KeyError) as exc:
            problems.append(f"{site_id}: site group attributes missing or unreadable ({exc})")
        return problems

    with Progress(len(positions), 0, enabled=progress, desc="verify") as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for problems in pool.map(check, positions):
            report.problems.extend(problems)
            report.pixels_checked += 1
            bar.advance(0)
    return report


def _compare_index(plan: ConversionPlan, index: pd.DataFrame, skipped: Mapping[str, str], report: VerifyReport) -> None:
    expected = plan.sites[~plan.sites["site_id"].isin(list(skipped))].reset_index(drop=True)
    missing = sorted(set(expected["site_id"]) - set(index["site_id"]))
    extra = sorted(set(index["site_id"]) - set(expected["site_id"]))
    if missing:
        report.problems.append(f"index lacks {len(missing)} site(s) of the source, e.g. {missing[:5]}")
    if extra:
        report.problems.append(f"index has {len(extra)} site(s) not in the source selection, e.g. {extra[:5]}")
    if missing or extra:
        return
    if list(index["site_id"]) != list(expected["site_id"]):
        report.problems.append("index order differs from the documented order (experiment, plate, row, column, site)")
        return
    for column in ("well_id", "cell_type", "experiment", "plate", "well", "site", "treatment", "treatment_conc", "path"):
        for site_id, got, want in zip(index["site_id"], index[column], expected[column], strict=True):
            if not _same(got, want):
                report.problems.append(f"{site_id}: index/{column} is {got!r}, metadata says {want!r}")


def _compare_embeddings(store: StoreIO, plan: ConversionPlan, index: pd.DataFrame, report: VerifyReport) -> None:
    import zarr

    if plan.embeddings is None:
        return
    try:
        stored = np.asarray(zarr.open_array(store.zarr_store(), path=EMBEDDINGS_ARRAY, mode="r")[:])
    except (FileNotFoundError, KeyError) as exc:
        report.problems.append(f"embeddings array missing ({exc})")
        return
    rows = {site_id: i for i, site_id in enumerate(plan.sites["site_id"])}
    expected = plan.embeddings[[rows[s] for s in index["site_id"] if s in rows]]
    if stored.shape != expected.shape:
        report.problems.append(f"embeddings shape {stored.shape}, expected {expected.shape}")
    elif not np.array_equal(stored, expected, equal_nan=True):
        bad = np.flatnonzero(~np.all((stored == expected) | (np.isnan(stored) & np.isnan(expected)), axis=1))
        report.problems.append(
            f"embeddings differ from the CSV for {len(bad)} site(s), e.g. {list(index['site_id'].iloc[bad[:5]])}"
        )


def _validate_ngff(store: StoreIO, index: pd.DataFrame, report: VerifyReport) -> None:
    """Each plate against ome-zarr-models' HCS model (which also checks its wells and images), and the ``rxrx2``
    attributes on every level."""
    import zarr
    from ome_zarr_models.v05.hcs import HCS
    from pydantic import ValidationError

    zstore = store.zarr_store()
    plates = index.groupby(["experiment", "plate"], sort=False)
    for (experiment, plate), rows in plates:
        key = f"{experiment}/Plate{plate}"
        try:
            HCS.from_zarr(zarr.open_group(zstore, path=key, mode="r"))
            report.plates_validated += 1
        except (ValidationError, ValueError, KeyError, FileNotFoundError) as exc:
            report.problems.append(f"{key}: not a valid OME-NGFF 0.5 plate: {exc}")
        levels = {experiment: "experiment", key: "plate"}
        for path in rows["path"]:
            site_group = path.rsplit("/", 1)[0]
            levels[site_group.rsplit("/", 1)[0]] = "well"
        for level_key, level in levels.items():
            try:
                attrs = json.loads(store.read(f"{level_key}/zarr.json"))["attributes"]
            except (FileNotFoundError, ValueError, KeyError):
                report.problems.append(f"{level_key}: {level} group document missing or unreadable")
                continue
            if not isinstance(attrs.get("rxrx2"), dict):
                report.problems.append(f"{level_key}: {level} group has no 'rxrx2' attributes")
