"""Planning a conversion: everything that can be checked before a pixel is written.

The plan reads ``metadata.csv`` (and ``embeddings.csv``), lists the source images once, and checks that every
selected site has its six PNGs, that no image lacks a metadata row, that every file's size (from the listing) is
plausible for a PNG of the dataset's image size, and takes that size from a majority of a few PNG headers. A bad
dataset therefore fails in seconds, not hours into a run; what only decoding can reveal (corrupt data, a wrong
size or kind in an unsampled header) fails at its site. Planning never writes anything.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import pandas as pd

from ._errors import ImageError, MetadataError, PathGrammarError, SourceError
from ._layout import SHARD_KEY, THUMBNAIL_LEVEL, site_paths
from ._paths import CHANNELS, SiteKey, WellAddress, parse_image_path
from ._png import HEADER_BYTES, PngHeader, check_header, max_file_bytes, read_png_header
from ._schema import (
    EMBEDDINGS_NAMES,
    align_embeddings,
    parse_embeddings,
    read_metadata_csv,
    validate_metadata,
)
from ._source import Source, SourceIO, resolve_source
from ._text import MAX_LISTED, count, problem_lines

__all__ = ["ConversionPlan", "SiteItem", "Skip", "make_plan"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """A site left out of the store, and why (recorded in the report and the root attributes)."""

    site_id: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"site_id": self.site_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SiteItem:
    """What one conversion task needs to know about its site (small: it is shipped to workers)."""

    position: int
    site_id: str
    site: int
    group: str
    array: str
    shard: str
    source_stem: str
    """The site's PNG paths without the channel number and suffix (``images/HUVEC-1/Plate1/AA02_s2_w``): six
    full paths per site would be the largest part of a million-site plan."""

    @property
    def thumbnail(self) -> str:
        """The key of the site's thumbnail chunk (the one chunk of its level-1 array)."""
        return f"{self.group}/{THUMBNAIL_LEVEL}/{SHARD_KEY}"

    @property
    def sources(self) -> tuple[str, ...]:
        """The site's six PNG paths, relative to the source root, channel 1 first."""
        return tuple(f"{self.source_stem}{c}.png" for c in CHANNELS)


@dataclass(frozen=True)
class ConversionPlan:
    """The sites to convert (in store order) and what is known about the source before conversion."""

    src: str
    sites: pd.DataFrame
    """Validated metadata rows of the selected sites, sorted in store order, with row/column/path columns."""
    items: tuple[SiteItem, ...]
    size: tuple[int, int]
    embeddings: npt.NDArray[np.float32] | None
    embedding_features: tuple[str, ...]
    metadata_file: str
    metadata_sha256: str
    png_bytes: Mapping[str, int]
    """Size of every source image of the selected sites, by relative path."""
    skipped: tuple[Skip, ...] = ()
    extra_files: int = 0
    embeddings_missing: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    source: Source | None = None
    """Where the images, metadata and embeddings were found (what the site workers open)."""
    sizes_known: bool = True
    """False when the listing had no sizes (HTTP): ``png_bytes`` is then 0 for every file."""

    @property
    def total_png_bytes(self) -> int:
        return int(sum(self.png_bytes.values()))


def _read_text_frame(src: SourceIO, name: str) -> tuple[pd.DataFrame, npt.NDArray[np.int64], bytes]:
    raw = src.read(name)  # a FIFO or device in its place is refused by name, never opened
    frame, lines = read_metadata_csv(raw, name)
    return frame, lines, raw


def store_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort sites in the store's fixed order: experiment, plate, well row, well column, site."""
    codes, names = pd.factorize(frame["well"])
    parsed = [WellAddress.parse(str(w)) for w in names]  # once per distinct well (at most 1,536)
    out = frame.assign(
        row=np.asarray([w.row for w in parsed], dtype=object)[codes],
        column=np.asarray([w.column_name for w in parsed], dtype=object)[codes],
        _row_index=np.asarray([w.row_index for w in parsed], dtype=np.int64)[codes],
        _column_index=np.asarray([w.column for w in parsed], dtype=np.int64)[codes],
    )
    out = out.sort_values(["experiment", "plate", "_row_index", "_column_index", "site"], kind="stable")
    return out.drop(columns=["_row_index", "_column_index"]).reset_index(drop=True)


def make_plan(
    src_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    experiments: Sequence[str] | None = None,
    plates: Sequence[int] | None = None,
    limit: int | None = None,
    on_error: str = "fail",
    need_pixels: bool = True,
    metadata_url: str | None = None,
    embeddings_url: str | None = None,
) -> ConversionPlan:
    """Validate the source and build the plan. ``on_error="skip"`` turns per-site problems into skips.

    ``metadata_url`` / ``embeddings_url``: where those files are when not in the source (see :mod:`._source`).
    """
    source = resolve_source(
        src_url, storage_options, metadata=metadata_url, embeddings=embeddings_url, need_images=need_pixels
    )
    src = source.open()
    metadata_name = source.metadata_name
    assert metadata_name is not None  # resolve_source refuses a source without metadata
    raw_frame, lines, raw_bytes = _read_text_frame(src, metadata_name)
    metadata = validate_metadata(raw_frame, source=metadata_name, lines=lines)
    _check_well_consistency(metadata, metadata_name)
    selected = _select(metadata, metadata_name, experiments, plates, limit)
    keys = _site_keys(selected)
    warnings: list[str] = []
    if need_pixels:
        images = _check_images(src, src_url, metadata, metadata_name, keys, on_error, warnings)
    else:
        images = _Images(_image_size_or_default(src, keys), keys, {}, (), 0)
    if images.skipped:
        selected = selected[~selected["site_id"].isin([s.site_id for s in images.skipped])].reset_index(drop=True)
    embeddings, features, missing_embeddings = _embeddings(src, metadata, selected, on_error, warnings)
    items = tuple(
        SiteItem(i, k.site_id, k.site, p.site, p.array, p.shard, k.image_stem)
        for i, (k, p) in enumerate((k, site_paths(k)) for k in images.keys)
    )
    for warning in warnings:
        _log.warning("%s: %s", src_url, warning)
    _log.info("%s: %s planned, %s skipped", src_url, count(len(items), "site"), count(len(images.skipped), "site"))
    return ConversionPlan(
        src=src_url,
        sites=selected.assign(path=[item.array for item in items]),
        items=items,
        size=images.size,
        embeddings=embeddings,
        embedding_features=features,
        metadata_file=metadata_name,
        metadata_sha256=hashlib.sha256(raw_bytes).hexdigest(),
        png_bytes=images.png_sizes,
        skipped=images.skipped,
        extra_files=images.extra_files,
        embeddings_missing=missing_embeddings,
        warnings=tuple(warnings),
        source=source,
        sizes_known=src.sizes_known or not need_pixels,
    )


def _select(
    metadata: pd.DataFrame,
    metadata_name: str,
    experiments: Sequence[str] | None,
    plates: Sequence[int] | None,
    limit: int | None,
) -> pd.DataFrame:
    """The selected rows, in store order."""
    selected = metadata
    if experiments:
        unknown = sorted(set(experiments) - set(metadata["experiment"]))
        if unknown:
            raise MetadataError(f"{metadata_name}: no such experiment(s) {unknown}; present: {sorted(set(metadata['experiment']))}")
        selected = selected[selected["experiment"].isin(list(experiments))]
    if plates:
        selected = selected[selected["plate"].isin([int(p) for p in plates])]
    selected = store_order(selected)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of sites, got {limit}")
        selected = selected.iloc[:limit].reset_index(drop=True)
    if selected.empty:
        raise MetadataError(f"{metadata_name}: the selection (experiments={experiments}, plates={plates}) has no sites")
    return selected


def _site_keys(selected: pd.DataFrame) -> list[SiteKey]:
    wells: dict[str, WellAddress] = {}
    return [
        SiteKey(e, int(p), wells.get(w) or wells.setdefault(w, WellAddress.parse(w)), int(s))
        for e, p, w, s in zip(
            *(selected[c].tolist() for c in ("experiment", "plate", "well", "site")), strict=True
        )  # lists: iterating Arrow-backed columns element by element is several times slower
    ]


@dataclass(frozen=True)
class _Images:
    """What the image listing and a few headers say: the image size, the sites kept (in store order) with their
    files' sizes, the sites skipped and why, and how many files are not RxRx2 images."""

    size: tuple[int, int]
    keys: list[SiteKey]
    png_sizes: dict[str, int]
    skipped: tuple[Skip, ...]
    extra_files: int


def _check_images(
    src: SourceIO,
    src_url: str,
    metadata: pd.DataFrame,
    metadata_name: str,
    keys: list[SiteKey],
    on_error: str,
    warnings: list[str],
) -> _Images:
    """Every selected site has its six images, as regular files of plausible sizes; no image lacks a metadata row
    (``on_error="skip"``: such sites are skipped, such images a warning)."""
    typed_listing = src.find_typed("images")
    listing = {key: size for key, (size, _) in typed_listing.items()}
    special = {key: kind for key, (_, kind) in typed_listing.items() if kind is not None}
    if not listing:
        raise SourceError(
            f"{src_url}: no files under images/ (expected images/<experiment>/Plate<plate>/<well>_s<site>_w<channel>.png)"
        )
    extra_files, orphans = _unexpected_images(listing, set(metadata["site_id"]))
    if orphans:
        message = f"{count(len(orphans), 'image')} with no row in {metadata_name}, e.g. " + ", ".join(sorted(orphans)[:MAX_LISTED])
        if on_error == "fail":
            raise SourceError(f"{src_url}: {message}")
        warnings.append(message)
    problems: dict[str, list[str]] = {}  # site_id -> what is wrong, in plan order
    png_sizes = _site_files(keys, listing, special, problems)
    complete = [k for k in keys if k.site_id not in problems]
    if not complete:
        _raise_site_problems(src_url, problems, "no site of the selection has all six images")
    size = _image_size(src, [k.image_paths()[0] for k in complete])
    if src.sizes_known:  # HTTP listings have no sizes: there the bytes read are checked, site by site
        _check_file_sizes(complete, png_sizes, size, problems)
    if not problems:
        return _Images(size, keys, png_sizes, (), extra_files)
    if on_error == "fail":
        _raise_site_problems(src_url, problems, None)
    kept = [k for k in keys if k.site_id not in problems]
    if not kept:
        _raise_site_problems(src_url, problems, "no site of the selection is usable")
    skipped = tuple(Skip(k.site_id, "; ".join(problems[k.site_id])) for k in keys if k.site_id in problems)
    dropped = {p for k in keys if k.site_id in problems for p in k.image_paths()}
    return _Images(size, kept, {p: n for p, n in png_sizes.items() if p not in dropped}, skipped, extra_files)


def _unexpected_images(listing: Mapping[str, int], site_ids: set[str]) -> tuple[int, list[str]]:
    """How many listed files are not RxRx2 image names (ignored, counted), and the images of no metadata row."""
    extra_files = 0
    orphans: list[str] = []
    for name in listing:
        try:
            image = parse_image_path(name)
        except PathGrammarError:
            extra_files += 1
            continue
        if image.channel not in CHANNELS:
            extra_files += 1
        elif image.site_key.site_id not in site_ids:
            orphans.append(name)
    return extra_files, orphans


def _site_files(
    keys: Sequence[SiteKey], listing: Mapping[str, int], special: Mapping[str, str], problems: dict[str, list[str]]
) -> dict[str, int]:
    """The listed size of every image of the sites; a missing image, or one that is not a regular file (a FIFO
    would block the converter forever: refused without opening it), is a problem of its site."""
    png_sizes: dict[str, int] = {}
    for key in keys:
        for path in key.image_paths():
            if path in special:
                problems.setdefault(key.site_id, []).append(f"{path}: is {special[path]}, not a regular file; refusing to read it")
            elif path in listing:
                png_sizes[path] = listing[path]
            else:
                problems.setdefault(key.site_id, []).append(f"missing image {path}")
    return png_sizes


def _check_file_sizes(
    keys: Sequence[SiteKey], png_sizes: Mapping[str, int], size: tuple[int, int], problems: dict[str, list[str]]
) -> None:
    """File sizes come with the listing, so these checks are free: a file too short to hold a PNG header, or too
    large to be a PNG of this size (it would be read into memory whole), fails before any pixel."""
    largest = max_file_bytes(size)
    for key in keys:
        for path in key.image_paths():
            nbytes = png_sizes[path]
            if nbytes < HEADER_BYTES:
                problems.setdefault(key.site_id, []).append(f"{path}: truncated PNG ({nbytes} bytes)")
            elif nbytes > largest:
                problems.setdefault(key.site_id, []).append(
                    f"{path}: {nbytes} bytes, more than any {size[1]}x{size[0]} 8-bit PNG can take ({largest})"
                )


def _check_well_consistency(metadata: pd.DataFrame, source: str) -> None:
    """A well holds one treatment at one concentration; an experiment one cell type."""
    per_experiment = metadata.groupby("experiment")["cell_type"].nunique()
    problems = [f"experiment {experiment!r}: more than one cell_type" for experiment in per_experiment.index[per_experiment > 1]]
    # built-in aggregations only (no Python callback per group): linear in the rows
    per_well = metadata.assign(_conc=metadata["treatment_conc"].fillna(-1.0)).groupby("well_id", sort=False).agg(
        treatments=("treatment", "nunique"), concs=("_conc", "nunique")
    )
    disagree = list(per_well.index[(per_well["treatments"] > 1) | (per_well["concs"] > 1)])
    listed = metadata[metadata["well_id"].isin(disagree[:MAX_LISTED])]  # only the wells a message can list
    for well_id, rows in listed.groupby("well_id", sort=False):
        problems.append(
            f"well_id {well_id!r}: sites disagree on treatment/treatment_conc "
            f"({sorted(set(zip(rows['treatment'], rows['treatment_conc'].astype(str), strict=True)))})"
        )
    total = len(problems) + len(disagree) - min(len(disagree), MAX_LISTED)
    if problems:
        raise MetadataError(f"{source}: {count(total, 'problem')}:\n" + "\n".join(problem_lines(problems, total=total)))


#: How many sites' first image headers decide the dataset's image size (a majority vote, so that one odd image
#: at the start of the tree cannot make every other site "wrong").
SIZE_SAMPLE = 9


def _raise_site_problems(src_url: str, problems: Mapping[str, Sequence[str]], headline: str | None) -> NoReturn:
    lines = [f"{site_id}: {what}" for site_id, whats in problems.items() for what in whats]
    missing = sum(what.startswith("missing image") for whats in problems.values() for what in whats)
    head = headline or (
        f"{count(missing, 'image')} missing" if missing == len(lines) else f"{count(len(lines), 'problem')} with source images"
    )
    raise SourceError(f"{src_url}: {head}:\n" + "\n".join(problem_lines(lines)))


def _image_size(src: SourceIO, paths: Sequence[str]) -> tuple[int, int]:
    """The dataset's image size: the most common header among up to :data:`SIZE_SAMPLE` evenly spaced sites.

    Each header is bounded (:data:`rxrx2_zarr._png.MAX_EDGE`) before it is trusted, so a hostile header cannot
    set the size that every site's buffer is then allocated with.
    """
    step = max(1, len(paths) // SIZE_SAMPLE)
    sample = list(paths[::step][:SIZE_SAMPLE])
    sizes: dict[tuple[int, int], int] = {}
    first_error: ImageError | None = None
    for path in sample:
        try:
            header: PngHeader = read_png_header(src.read_range(path, 0, HEADER_BYTES), path)
            check_header(header, path, None)
        except ImageError as exc:
            first_error = first_error or exc  # this site fails on its own later; the others still vote
            continue
        sizes[(header.height, header.width)] = sizes.get((header.height, header.width), 0) + 1
    if not sizes:
        raise first_error or SourceError("no image to take the image size from")
    return max(sizes, key=lambda s: sizes[s])  # ties: the first size seen (dicts keep insertion order)


def _image_size_or_default(src: SourceIO, keys: Sequence[SiteKey]) -> tuple[int, int]:
    """Without pixels, take the size from the first image if the tree has one, else RxRx2's 1024 x 1024."""
    first = keys[0].image_paths()[0]
    if src.exists(first):
        return _image_size(src, [first])
    return (1024, 1024)


def _embeddings(
    src: SourceIO, metadata: pd.DataFrame, selected: pd.DataFrame, on_error: str, warnings: list[str]
) -> tuple[npt.NDArray[np.float32] | None, tuple[str, ...], int]:
    name = src.source.embeddings_name
    if name is None:
        warnings.append(f"no {' or '.join(EMBEDDINGS_NAMES)}: the store has no embeddings")
        return None, (), len(selected)
    table = parse_embeddings(src.read(name), name)
    aligned = align_embeddings(table, selected["site_id"].tolist(), metadata["site_id"].tolist())
    if aligned.unknown:
        message = f"{name}: {count(len(aligned.unknown), 'site_id')} not in the metadata, e.g. {list(aligned.unknown[:MAX_LISTED])}"
        if on_error == "fail":
            raise MetadataError(message)
        warnings.append(message)
    if aligned.missing:
        warnings.append(f"{name}: {count(len(aligned.missing), 'site')} without an embedding (NaN rows)")
    return aligned.matrix, table.feature_names, len(aligned.missing)
