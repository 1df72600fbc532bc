"""``verify``: an independent check of a store against its source.

Pixels are read back through zarr-python's own codec pipeline (not this package's fast shard decoder), so a bug in
our encoder or decoder cannot hide itself. Every (or a random sample of) site's six PNGs are decoded and compared
pixel by pixel; checksums are recomputed and compared with the index and the site attributes; every plate is
validated against ome-zarr-models' OME-NGFF 0.5 HCS model; the index and embeddings are compared with the CSVs.
"""

from __future__ import annotations

import json
import logging
import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ._attrs import RootAttributes
from ._convert import PixelSource, PngSource
from ._crc import crc32c
from ._dataset import open as open_store
from ._errors import ImageError, StoreFormatError
from ._fs import split_zip_url
from ._hierarchy import SiteChecksums
from ._json import report_json
from ._layout import (
    EMBEDDINGS_ARRAY,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_PARQUET,
    INDEX_STRING_COLUMNS,
    LAYOUT_VERSION,
    SHARD_KEY,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    SiteArraySpec,
)
from ._plan import ConversionPlan, make_plan
from ._progress import Progress
from ._shard import thumbnail
from ._storage import StoreIO
from ._text import count, problem_lines
from ._transcode import StoreSource, plan_from_store

__all__ = ["VerifyReport", "verify"]

_log = logging.getLogger(__name__)


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

    def to_json(self) -> dict[str, Any]:
        """The report's fields and ``ok`` as a JSON-ready document (``rxrx2-zarr verify --json``)."""
        return report_json(self, ok=self.ok)

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED: {count(len(self.problems), 'problem')}"
        lines = [
            f"verify {self.dst} against {self.src}: {head}",
            f"  sites in store: {self.sites_in_store:,}; pixels compared for {count(self.pixels_checked, 'site')}; "
            f"plates validated (OME-NGFF 0.5 HCS): {self.plates_validated:,}",
            *problem_lines(self.problems, prefix="  - "),
        ]
        return "\n".join(lines)


def _root_attrs(store: StoreIO) -> dict[str, Any]:
    """The root attributes of a store of any layout, validated by their model (``_attrs.RootAttributes``)."""
    try:
        document = json.loads(store.read("zarr.json"))
    except FileNotFoundError:
        raise StoreFormatError(f"{store.url}: no zarr.json (not a Zarr store)") from None
    except ValueError:
        raise StoreFormatError(f"{store.url}: not an rxrx2-zarr store (zarr.json is not JSON)") from None
    return RootAttributes.from_json(document, store.url, layouts=None).to_json()


def _is_store(url: str, options: Mapping[str, Any]) -> bool:
    """Whether ``url`` is an rxrx2-zarr store (then ``verify`` compares with it instead of a PNG tree)."""
    if split_zip_url(url) is not None or url.lower().rstrip("/").endswith(".zip"):
        return False  # an archive of the release (a store is never zipped by this package)
    try:
        _root_attrs(StoreIO(url, options))
    except (StoreFormatError, OSError, ValueError):  # not a store: a tree, an archive (zarr.json "inside" a file)
        return False
    return True


def _read_index(store: StoreIO) -> pd.DataFrame:
    """The index arrays, read through zarr-python (which checks every chunk's crc32c)."""
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


def _compare_parquet(store: StoreIO, attrs: Mapping[str, Any], index: pd.DataFrame, report: VerifyReport) -> None:
    """The columnar index must be intact (its recorded CRC32C) and hold exactly the index arrays' values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = store.read(INDEX_PARQUET)
    except FileNotFoundError:
        report.problems.append(f"{INDEX_PARQUET}: missing")
        return
    expected = (attrs.get("index") or {}).get("parquet_crc32c")
    if crc32c(data) != expected:
        report.problems.append(f"{INDEX_PARQUET}: crc32c {crc32c(data)} != {expected!r} recorded in the root attributes")
        return
    frame = pq.read_table(pa.BufferReader(data)).to_pandas()
    for column in INDEX_COLUMNS:
        if column not in frame.columns:
            report.problems.append(f"{INDEX_PARQUET}: no column {column!r}")
            continue
        got, want = frame[column].tolist(), index[column].tolist()
        if len(got) != len(want) or not all(_same(a, b) for a, b in zip(got, want, strict=True)):
            report.problems.append(f"{INDEX_PARQUET}: column {column!r} differs from index/{column}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float) or a is None or b is None:
        fa, fb = (math.nan if v is None else float(v) for v in (a, b))
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
    """Compare the store ``dst`` with the RxRx2 tree ``src`` (or with the store ``src`` it was transcoded from);
    the report lists every problem found.

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
    dst_options = dict(storage_options or {})
    src_options = dict(src_storage_options if src_storage_options is not None else dst_options)
    store = StoreIO(dst, dst_options)
    report = VerifyReport(src, dst)
    attrs = _root_attrs(store)
    if attrs.get("layout_version") != LAYOUT_VERSION:
        report.problems.append(
            f"layout version {attrs.get('layout_version')!r}: `open` refuses it (this version reads layout "
            f"{LAYOUT_VERSION}); rewrite the store with `rxrx2-zarr transcode`"
        )
        return report
    if not attrs.get("complete"):
        report.problems.append("store is incomplete (conversion did not finish): run convert --resume")
        return report
    plan, source, skipped = _expected(src, src_options, attrs, metadata, embeddings)
    index = _stage(report, "index arrays (index/<column>, read through zarr-python)", _read_index, store)
    spec = _stage(report, "root attributes: site array options", SiteArraySpec.from_options, attrs.get("options") or {})
    if index is None or spec is None:
        return report  # nothing below can be compared without them
    report.sites_in_store = len(index)
    # what the library's reader refuses (an unexpected codec chain, a path that leaves the store...) is a problem
    # even where zarr-python would read the store
    _stage(report, "rxrx2_zarr.open() and its index", _open_and_check, dst, dst_options)
    _stage(report, INDEX_PARQUET, _compare_parquet, store, attrs, index, report)
    _stage(report, "index", _compare_index, plan, index, skipped, report)
    _stage(report, EMBEDDINGS_ARRAY, _compare_embeddings, store, plan, index, report)
    _stage(report, "OME-NGFF metadata", _validate_ngff, store, index, report)
    if attrs.get("pixels", True):
        positions = list(range(len(index)))
        if sample is not None and sample < len(positions):
            positions = sorted(random.Random(seed).sample(positions, sample))
        _compare_pixels(report, store, plan, source, spec, index, positions, workers, progress)
    return report


def _open_and_check(url: str, options: Mapping[str, Any]) -> None:
    """What the reader refuses, at open or on first use of a column (a site_id outside the path grammar, two rows
    of one site, a ``path`` that is not where its site lives)."""
    open_store(url, options)._store.check_index()


def _expected(
    src: str, src_options: Mapping[str, Any], attrs: Mapping[str, Any], metadata: str | None, embeddings: str | None
) -> tuple[ConversionPlan, PixelSource, dict[str, str]]:
    """What the store should hold: the plan of its source (a store it was transcoded from, or the RxRx2 tree with
    the subset recorded at conversion), where to read the expected pixels, and the sites skipped on purpose."""
    if _is_store(src, src_options):
        plan, _ = plan_from_store(src, src_options)
        return plan, StoreSource(src, src_options), {}
    subset = attrs.get("source", {}).get("subset", {}) or {}
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
    assert plan.source is not None  # make_plan always resolves its source
    skipped = {s["site_id"]: s["reason"] for s in attrs.get("skipped", [])}
    return plan, PngSource(plan.source), skipped


def _compare_pixels(
    report: VerifyReport,
    store: StoreIO,
    plan: ConversionPlan,
    source: PixelSource,
    spec: SiteArraySpec,
    index: pd.DataFrame,
    positions: Sequence[int],
    workers: int,
    progress: bool,
) -> None:
    """Every site at ``positions`` of the index against its source pixels, ``workers`` sites at a time."""
    _log.info("%s: comparing the pixels of %s of %s with %s", report.dst, count(len(positions), "site"), len(index), report.src)
    zstore = store.zarr_store()
    by_site = {item.site_id: item for item in plan.items}

    def check(position: int) -> list[str]:
        row = index.iloc[position]
        site_id = row["site_id"]
        item = by_site.get(site_id)
        if item is None:
            return [f"{site_id}: in the store but not in the source"]
        try:
            expected, _ = source.read(item, (spec.height, spec.width))
        except ImageError as exc:
            return [f"{site_id}: source unreadable: {exc}"]
        site_problems: list[str] = []
        found = _stage_problems(site_problems, f"{site_id} ({row['path']})", _check_site, store, zstore, spec, row, expected)
        return site_problems + (found or [])

    with Progress(len(positions), 0, enabled=progress, desc="verify") as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for problems in pool.map(check, positions):
            report.problems.extend(problems)
            report.pixels_checked += 1
            bar.advance(0)


T = TypeVar("T")
#: What a damaged store can make a stage of verify raise (zarr-python's codecs raise ValueError or RuntimeError on a
#: checksum mismatch or a corrupt frame; a malformed document gives KeyError or TypeError): each becomes a line of the
#: report naming the stage, so that verify ends with a report, never a traceback.
_DAMAGE = (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError, RuntimeError, StoreFormatError)


def _stage(report: VerifyReport, what: str, check: Callable[..., T], *args: Any) -> T | None:
    return _stage_problems(report.problems, what, check, *args)


def _stage_problems(problems: list[str], what: str, check: Callable[..., T], *args: Any) -> T | None:
    try:
        return check(*args)
    except _DAMAGE as exc:
        problems.append(f"{what}: cannot be checked: {type(exc).__name__}: {exc}")
        return None


def _check_site(store: StoreIO, zstore: Any, spec: SiteArraySpec, row: pd.Series, expected: Any) -> list[str]:
    """One site: both levels through zarr-python against the source pixels, and every checksum of the site."""
    import zarr

    site_id, path = row["site_id"], row["path"]
    group = path.rsplit("/", 1)[0]
    problems = []
    try:
        stored = np.asarray(zarr.open_array(zstore, path=path, mode="r")[:])
        thumb = np.asarray(zarr.open_array(zstore, path=f"{group}/{THUMBNAIL_LEVEL}", mode="r")[:])
        shard_tail = store.read_suffix(f"{path}/{SHARD_KEY}", 4)
        thumb_tail = store.read_suffix(f"{group}/{THUMBNAIL_LEVEL}/{SHARD_KEY}", 4)
    except (FileNotFoundError, KeyError, ValueError, OSError, RuntimeError) as exc:
        return [f"{site_id}: cannot read {path} or its thumbnail: {type(exc).__name__}: {exc}"]
    if stored.shape != expected.shape:
        problems.append(f"{site_id}: {path} has shape {stored.shape}, the source {expected.shape}")
    elif not np.array_equal(stored, expected):
        differ = count(int(np.count_nonzero(stored != expected)), "pixel")
        problems.append(f"{site_id}: pixels differ from the source ({differ}) in {path}")
    want_thumb = thumbnail(expected, THUMBNAIL_FACTOR)
    if thumb.shape != want_thumb.shape or not np.array_equal(thumb, want_thumb):
        problems.append(f"{site_id}: thumbnail {group}/{THUMBNAIL_LEVEL} is not the 1/{THUMBNAIL_FACTOR} block mean of the pixels")
    sums = SiteChecksums(
        crc32c(np.ascontiguousarray(stored).data),
        int.from_bytes(shard_tail, "little"),
        int.from_bytes(thumb_tail, "little"),
    )
    for column, value in sums.to_json().items():
        if int(row[column]) != value:
            problems.append(f"{site_id}: index/{column} {int(row[column])} != {value} computed from the stored objects")
    try:
        site_attrs = json.loads(store.read(f"{group}/zarr.json"))["attributes"]["rxrx2"]
        if SiteChecksums.from_json(site_attrs) != sums or site_attrs.get("site_id") != site_id:
            problems.append(f"{site_id}: site attributes {site_attrs} disagree with the stored objects ({sums.to_json()})")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{site_id}: site group attributes missing or unreadable ({exc})")
    return problems


def _compare_index(plan: ConversionPlan, index: pd.DataFrame, skipped: Mapping[str, str], report: VerifyReport) -> None:
    expected = plan.sites[~plan.sites["site_id"].isin(list(skipped))].reset_index(drop=True)
    missing = sorted(set(expected["site_id"]) - set(index["site_id"]))
    extra = sorted(set(index["site_id"]) - set(expected["site_id"]))
    if missing:
        report.problems.append(f"index lacks {count(len(missing), 'site')} of the source, e.g. {missing[:5]}")
    if extra:
        report.problems.append(f"index has {count(len(extra), 'site')} not in the source selection, e.g. {extra[:5]}")
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
            f"embeddings differ from the CSV for {count(len(bad), 'site')}, e.g. {list(index['site_id'].iloc[bad[:5]])}"
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
