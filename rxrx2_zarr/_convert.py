"""The converter: an RxRx2 PNG tree -> one OME-NGFF 0.5 HCS Zarr v3 store.

Order of work, chosen so that nothing is lost and a crash (even kill -9) at any moment is recoverable:

1. plan (no writes): metadata, embeddings, file presence and sizes, image size  ->  bad input fails in seconds;
2. destination checks, all before the first write, so that a refused run leaves the destination untouched (not
   even a lock): not overlapping the source, not a file, not locked by a live converter, and either absent/empty,
   or ``--overwrite`` of an rxrx2-zarr store, or ``--resume`` of one made with the same fingerprint (source
   metadata, output-affecting options, subset). Then the lock (``_lock``);
3. ``--overwrite`` empties the store; ``--resume`` lists it once, removes temporary objects of torn writes and
   finds the complete sites from that listing and their markers;
4. root document with ``complete: false`` and the fingerprint, then every static group/array document in one
   bulk write;
5. one task per site: read and decode its six PNGs, write its shard, then its site group document carrying the
   pixel checksum. That document is the site's completion marker: ``--resume`` redoes any site without it. Every
   object write is whole (temporary file + rename locally, one PUT on object stores), so nothing is ever torn;
6. finalize, only while still holding the lock: index arrays, embeddings, root document with ``complete: true``;
   release the lock.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import crc32c
import numpy as np
import numpy.typing as npt

from . import _fs, _lock
from ._errors import ImageError, SpecialFileError, StoreExistsError, StoreFormatError
from ._execute import ExecutionConfig, check_scheduler, run_tasks
from ._hierarchy import SiteChecksums, dump, site_document, static_documents
from ._layout import (
    DEFAULT_PROFILE,
    EMBEDDINGS_ARRAY,
    INDEX_CHECKSUM_COLUMNS,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_PARQUET,
    INDEX_STRING_COLUMNS,
    LAYOUT_VERSION,
    LEVEL,
    MIN_INNER_CHUNK,
    PROFILES,
    SHARD_KEY,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    RootAttributes,
    SiteArraySpec,
    group_document,
)
from ._plan import ConversionPlan, SiteItem, Skip, make_plan
from ._png import decode_png
from ._progress import Progress
from ._shard import ShardCodec, encode_thumbnail, thumbnail
from ._source import Source, SourceIO
from ._storage import StoreIO, naming_full_disk

__all__ = ["ConvertOptions", "ConvertReport", "convert"]

OnError = Literal["fail", "skip"]
Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ConvertOptions:
    """Options of a conversion. The first group decides the output (and must match on ``resume``)."""

    profile: str = DEFAULT_PROFILE
    inner_chunks: tuple[int, int] | None = None
    """Inner chunk shape (Y, X); None: the profile's own."""
    level: int | None = None
    """Compression level; None: the profile's own."""
    pixel_size: float | None = None
    experiments: tuple[str, ...] | None = None
    plates: tuple[int, ...] | None = None
    limit: int | None = None
    no_pixels: bool = False
    # how to run: these do not change the output
    on_error: OnError = "fail"
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False
    workers: int = 1
    processes: bool = False
    scheduler: str | None = None
    progress: bool = True
    src_storage_options: Mapping[str, Any] = field(default_factory=dict)
    dst_storage_options: Mapping[str, Any] = field(default_factory=dict)
    metadata: str | None = None
    """The metadata CSV when not in SRC: a path or URL, a zip member, or a folder or archive holding it."""
    embeddings: str | None = None
    """The embeddings CSV when not in SRC (as ``metadata``)."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        PROFILES[self.profile].with_level(self.level)  # validates the level
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume are mutually exclusive")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if (self.inner_chunks is not None and len(self.inner_chunks) != 2) or any(
            not isinstance(v, int) or isinstance(v, bool) or v < MIN_INNER_CHUNK for v in self.inner_chunks or ()
        ):
            raise ValueError(
                f"inner chunks must be two integers of at least {MIN_INNER_CHUNK} (Y, X), got {self.inner_chunks!r}: "
                "smaller chunks make a site thousands of objects to encode and index"
            )
        # validates workers too
        ExecutionConfig(self.workers, self.processes, self.scheduler)

    @property
    def execution(self) -> ExecutionConfig:
        return ExecutionConfig(self.workers, self.processes, self.scheduler)

    def subset(self) -> dict[str, Any]:
        return {
            "experiments": sorted(self.experiments) if self.experiments else None,
            "plates": sorted(int(p) for p in self.plates) if self.plates else None,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class PngSource:
    """Where a site's pixels come from when converting: its six PNG files in the source (a tree, a zip archive,
    a web server or a bucket: ``source``, resolved by the plan; each worker process opens it itself)."""

    source: Source
    unit = "PNG"

    def read(self, item: SiteItem, size: tuple[int, int], notes: list[str] | None = None) -> tuple[Pixels, int]:
        return read_site_pixels(self.source.open(), item, size, notes)


@dataclass(frozen=True)
class SiteJob:
    """The per-run context of every site task (small and picklable: shipped once per task to workers)."""

    source: PixelSource
    dst_url: str
    dst_options: Mapping[str, Any]
    spec: SiteArraySpec
    on_error: OnError

    def __call__(self, item: SiteItem) -> SiteResult:
        return convert_site(self, item)


class PixelSource(Protocol):
    """What a site task reads pixels from: the PNG tree (``convert``) or another store (``transcode``)."""

    unit: str
    """What the byte counts of :meth:`read` measure, for the report."""

    def read(self, item: SiteItem, size: tuple[int, int], notes: list[str] | None = None) -> tuple[Pixels, int]:
        """The site's (6, H, W) pixels and the number of source bytes read; ImageError names a bad site; warnings
        about the source (which do not stop the site) are appended to ``notes``."""


@dataclass(frozen=True)
class SiteResult:
    position: int
    site_id: str
    checksums: SiteChecksums | None
    png_bytes: int
    stored_bytes: int
    skip: Skip | None = None
    notes: tuple[str, ...] = ()
    """Warnings about the site's source files (trailing bytes after a PNG's IEND)."""


@functools.lru_cache(maxsize=8)
def _store(url: str, options_json: str) -> StoreIO:
    return StoreIO(url, json.loads(options_json))


def _store_for(url: str, options: Mapping[str, Any]) -> StoreIO:
    return _store(url, json.dumps(dict(options), sort_keys=True, default=str))


def read_site_pixels(
    src: SourceIO, item: SiteItem, size: tuple[int, int], notes: list[str] | None = None
) -> tuple[Pixels, int]:
    """Read and decode a site's six PNGs into (6, H, W); returns the pixels and the PNG bytes read. Warnings about
    the files (see :func:`decode_png`) are appended to ``notes``."""
    pixels = np.empty((len(item.sources), *size), dtype=np.uint8)
    total = 0
    for channel, path in enumerate(item.sources):
        try:
            data = src.read(path)
        except FileNotFoundError:
            raise ImageError(f"{path}: missing (site {item.site_id})") from None
        except SpecialFileError as exc:  # a FIFO or device swapped in after planning: refused, never blocks
            raise ImageError(f"{exc} (site {item.site_id})") from None
        except (PermissionError, IsADirectoryError) as exc:
            # a problem of this file, unlike other OSErrors (network, disk) which must stop the run, not skip sites
            raise ImageError(f"{path}: cannot be read: {exc.strerror or exc} (site {item.site_id})") from None
        total += len(data)
        pixels[channel] = decode_png(data, path, size, notes)
    return pixels, total


def thumbnail_key(item: SiteItem) -> str:
    """The key of a site's thumbnail chunk (the one chunk of its level-1 array)."""
    return f"{item.group}/{THUMBNAIL_LEVEL}/{SHARD_KEY}"


def write_site(dst: StoreIO, spec: SiteArraySpec, item: SiteItem, pixels: Pixels) -> tuple[SiteChecksums, int]:
    """Write a site's shard and thumbnail, then its site document (the completion marker, written last).
    Returns its checksums and the bytes written."""
    shard, thumb = encode_site(spec, pixels)
    sums = SiteChecksums(
        crc32c.crc32c(pixels.data), int.from_bytes(shard[-4:], "little"), int.from_bytes(thumb[-4:], "little")
    )
    dst.write(item.shard, shard)
    dst.write(thumbnail_key(item), thumb)
    dst.write(f"{item.group}/zarr.json", site_document(spec, item.site_id, item.site, sums))
    return sums, len(shard) + len(thumb)


def convert_site(job: SiteJob, item: SiteItem) -> SiteResult:
    """Convert one site: read its pixels from the source, write it (:func:`write_site`)."""
    dst = _store_for(job.dst_url, job.dst_options)
    notes: list[str] = []
    try:
        pixels, source_bytes = job.source.read(item, (job.spec.height, job.spec.width), notes)
    except ImageError as exc:
        if job.on_error == "skip":
            return SiteResult(item.position, item.site_id, None, 0, 0, Skip(item.site_id, str(exc)))
        raise
    sums, stored = write_site(dst, job.spec, item, pixels)
    return SiteResult(item.position, item.site_id, sums, source_bytes, stored, notes=tuple(notes))


@functools.lru_cache(maxsize=4)
def _codec(spec: SiteArraySpec) -> ShardCodec:
    return ShardCodec(spec)


def encode_site(spec: SiteArraySpec, pixels: Pixels) -> tuple[bytes, bytes]:
    """A site's two objects: its shard (full level) and its thumbnail chunk."""
    return _codec(spec).encode(pixels), encode_thumbnail(thumbnail(pixels, THUMBNAIL_FACTOR))


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did."""

    src: str
    dst: str
    sites_total: int
    converted: int
    resumed_skipped: int
    """Sites found complete in the store by ``--resume`` and not rewritten."""
    skipped: tuple[Skip, ...]
    png_bytes: int
    stored_bytes: int
    seconds: float
    extra_files: int
    embeddings_missing: int
    warnings: tuple[str, ...]
    pixels: bool
    execution: str
    source: str = ""
    source_unit: str = "PNG"
    """What ``png_bytes`` counts: the PNG files (convert), or decoded pixels of a source store (transcode)."""
    """Where the images, metadata and embeddings were found."""

    @property
    def ratio(self) -> float:
        """Stored shard bytes over the PNG bytes of the same sites (lower is smaller)."""
        return self.stored_bytes / self.png_bytes if self.png_bytes else float("nan")

    @property
    def sites_per_second(self) -> float:
        return self.converted / self.seconds if self.seconds > 0 else float("nan")

    @property
    def png_mb_per_second(self) -> float:
        return self.png_bytes / 1e6 / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [
            f"converted {self.converted} of {self.sites_total} site(s) from {self.src} to {self.dst} ({self.execution})",
        ]
        if self.source:
            lines.append(f"source: {self.source}")
        if self.resumed_skipped:
            lines.append(f"resume: {self.resumed_skipped} site(s) already complete, not rewritten")
        if self.pixels and self.source_unit == "PNG":
            ratio = f" ({self.ratio:.3f}x the PNG bytes)" if self.png_bytes else ""
            lines.append(
                f"read {self.png_bytes / 1e6:,.1f} MB of PNG, wrote {self.stored_bytes / 1e6:,.1f} MB of shards{ratio}"
            )
        elif self.pixels:
            lines.append(
                f"read {self.png_bytes / 1e6:,.1f} MB of {self.source_unit}, wrote {self.stored_bytes / 1e6:,.1f} MB "
                f"of shards and thumbnails"
            )
        else:
            lines.append("no pixels written (--no-pixels): the tree, attributes, index and embeddings only")
        lines.append(
            f"wall time {self.seconds:.1f} s: {self.sites_per_second:.2f} sites/s, {self.png_mb_per_second:.1f} MB/s of "
            f"{self.source_unit}"
        )
        if self.extra_files:
            lines.append(f"ignored {self.extra_files} file(s) under images/ that are not RxRx2 image names")
        if self.embeddings_missing:
            lines.append(f"{self.embeddings_missing} site(s) without an embedding (NaN rows)")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} site(s):")
            lines.extend(f"  {s.site_id}: {s.reason}" for s in self.skipped)
        return "\n".join(lines)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("rxrx2-zarr", "zarr", "numcodecs", "imagecodecs", "numpy", "dask"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _fingerprint(plan: ConversionPlan, spec: SiteArraySpec, options: ConvertOptions) -> dict[str, Any]:
    """What must match for ``--resume`` to continue a store: same source metadata, options and subset."""
    return {
        "layout_version": LAYOUT_VERSION,
        "metadata_sha256": plan.metadata_sha256,
        "options": {**spec.options(), "no_pixels": options.no_pixels},
        "subset": options.subset(),
    }


def _read_root(dst: StoreIO) -> dict[str, Any] | None:
    try:
        document = json.loads(dst.read("zarr.json"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise StoreFormatError(f"{dst.url}: zarr.json is not valid JSON") from None
    attributes = document.get("attributes") if isinstance(document, dict) else None
    attrs = attributes.get("rxrx2") if isinstance(attributes, dict) else None
    if not isinstance(attrs, dict) or attrs.get("format") != "rxrx2-zarr":
        raise StoreFormatError(f"{dst.url}: not an rxrx2-zarr store (no 'rxrx2' root attributes)")
    return attrs


def _check_separate(src_url: str, src_options: Mapping[str, Any], dst: StoreIO) -> None:
    """Refuse a destination inside the source tree or containing it: the source is never modified, and
    ``--overwrite`` must never delete it."""
    src = StoreIO(src_url, src_options)
    a: PurePosixPath | Path
    b: PurePosixPath | Path
    if src.local and dst.local:
        a, b = Path(os.path.realpath(src.root)), Path(os.path.realpath(dst.root))
    elif src.fs.protocol == dst.fs.protocol:
        a, b = PurePosixPath(src.root), PurePosixPath(dst.root)
    else:
        return
    if a == b or b.is_relative_to(a) or a.is_relative_to(b):
        raise StoreExistsError(
            f"{dst.url}: the destination overlaps the source tree {src_url}; the source is never modified: "
            "choose a destination outside it"
        )


def _is_partial(key: str) -> bool:
    return key.endswith(_lock.PARTIAL_SUFFIX)


# What a converter killed before its root document can leave at the root: its lock, and the temporary objects of
# the lock and of the root document (StoreIO.write and _lock name them <name>.<32 hex digits>[.stale].partial).
_OWN_ROOT_ENTRY = re.compile(
    rf"^(?:{re.escape(_lock.LOCK_KEY)}|(?:{re.escape(_lock.LOCK_KEY)}|zarr\.json)\.[0-9a-f]{{32}}(?:\.stale)?"
    rf"{re.escape(_lock.PARTIAL_SUFFIX)})$"
)


def _foreign_entries(dst: StoreIO) -> list[str]:
    """Entries of a destination without a root document that are not what an interrupted converter leaves there
    (so a directory of the user's own ``*.partial`` files, or any subdirectory, is never taken for a store)."""
    names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in dst.fs.ls(dst.root, detail=False))
    return [n for n in names if not _OWN_ROOT_ENTRY.match(n) or dst.fs.isdir(_fs.join(dst.root, n))]


def _prepare_destination(dst: StoreIO, options: ConvertOptions, fingerprint: Mapping[str, Any]) -> bool:
    """Check the destination before writing anything. Returns True when resuming an existing store."""
    if dst.is_empty_or_missing():
        return False
    if not options.resume and not options.overwrite:
        raise StoreExistsError(
            f"{dst.url}: destination exists; pass --overwrite to replace it or --resume to continue it"
        )
    try:
        attrs = _read_root(dst)
    except StoreFormatError as exc:
        raise StoreExistsError(f"{exc}; refusing to {'resume into' if options.resume else 'replace'} it") from None
    if attrs is None:
        # No root document: either a converter killed before writing it (the root is the first object written
        # after the lock and the last one removed by --overwrite, so only its lock and temporary objects are
        # there) or something that is not ours.
        foreign = _foreign_entries(dst)
        if foreign:
            raise StoreExistsError(
                f"{dst.url}: exists but is not an rxrx2-zarr store (no zarr.json, and it holds "
                f"{', '.join(repr(n) for n in foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which this package "
                f"did not write); refusing to {'resume into' if options.resume else 'replace'} it"
            )
        return False
    if options.overwrite:
        return False
    previous = _flatten(attrs.get("fingerprint"))
    current = _flatten(json.loads(json.dumps(fingerprint)))
    if previous != current:
        differences = "; ".join(
            f"{key}: store {previous.get(key, '(none)')!r}, now {current.get(key, '(none)')!r}"
            for key in sorted(set(previous) | set(current))
            if previous.get(key) != current.get(key)
        )
        raise StoreExistsError(
            f"{dst.url}: was made from a different source or with different options; cannot resume ({differences}). "
            "Use --overwrite to replace it."
        )
    return True


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"options": {"profile": "x"}}`` -> ``{"options.profile": "x"}`` (to name what differs on resume)."""
    if not isinstance(value, dict):
        return {prefix or "fingerprint": value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _completed_sites(dst: StoreIO, plan: ConversionPlan, listing: Mapping[str, int]) -> dict[int, SiteChecksums]:
    """Positions (and checksums) of the sites whose completion marker is present and intact.

    ``listing`` is the store's one listing: a marker counts only if its shard is listed too, so this costs the
    listing plus one read per marker (concurrent on object stores), nothing per site beyond that.
    """
    candidates = [
        item
        for item in plan.items
        if f"{item.group}/zarr.json" in listing and item.shard in listing and thumbnail_key(item) in listing
    ]
    if not candidates:
        return {}
    keys = [f"{item.group}/zarr.json" for item in candidates]
    documents = dst.read_many(keys)
    done: dict[int, SiteChecksums] = {}
    for item, document in zip(candidates, (documents[k] for k in keys), strict=True):
        if document is None:
            continue
        try:
            attrs = json.loads(document)["attributes"]["rxrx2"]
        except (ValueError, KeyError, TypeError):
            continue  # foreign or damaged document: the site is redone
        sums = SiteChecksums.from_json(attrs) if isinstance(attrs, dict) else None
        if sums is not None and attrs.get("site_id") == item.site_id:
            done[item.position] = sums
    return done


def _remove_partials(dst: StoreIO, listing: Mapping[str, int]) -> int:
    """Delete the temporary objects of writes a killed converter did not finish (never read by anyone)."""
    partials = [key for key in listing if _is_partial(key)]
    for key in partials:
        dst.delete(key)
    return len(partials)


def convert(src: str, dst: str, options: ConvertOptions | None = None, **kwargs: Any) -> ConvertReport:
    """Convert the RxRx2 tree at ``src`` (path or fsspec URL) into a Zarr store at ``dst``.

    Keyword arguments are :class:`ConvertOptions` fields (``profile=``, ``workers=``, ``resume=``...).
    """
    options = _options(options, kwargs)
    started = time.perf_counter()
    plan = make_plan(
        src,
        options.src_storage_options,
        experiments=options.experiments,
        plates=options.plates,
        limit=options.limit,
        on_error=options.on_error,
        need_pixels=not options.no_pixels,
        metadata_url=options.metadata,
        embeddings_url=options.embeddings,
    )
    assert plan.source is not None  # make_plan always resolves its source
    store = StoreIO(dst, options.dst_storage_options)
    for location in plan.source.locations():
        _check_separate(location, options.src_storage_options, store)
    return run_conversion(plan, PngSource(plan.source), src, dst, options, started)


def _options(options: ConvertOptions | None, kwargs: Mapping[str, Any]) -> ConvertOptions:
    if options is None:
        return ConvertOptions(**kwargs)
    if kwargs:
        raise TypeError("pass either options or keyword arguments, not both")
    return options


def site_spec(plan: ConversionPlan, options: ConvertOptions) -> SiteArraySpec:
    """The site array specification of a conversion: the plan's image size with the options' codec choices."""
    return SiteArraySpec(
        plan.size[0], plan.size[1], options.inner_chunks, options.profile, options.pixel_size, level=options.level
    )


def run_conversion(
    plan: ConversionPlan, source: PixelSource, src: str, dst: str, options: ConvertOptions, started: float
) -> ConvertReport:
    """Write the store ``dst`` for ``plan``, reading each site's pixels from ``source`` (shared by ``convert`` and
    ``transcode``): destination checks, lock, documents, one task per site, finalize."""
    spec = site_spec(plan, options)
    fingerprint = _fingerprint(plan, spec, options)
    store = StoreIO(dst, options.dst_storage_options)
    if store.fs.isfile(store.root):
        raise StoreExistsError(f"{store.url}: exists and is a file, not a directory; refusing to touch it")
    if options.execution.distributed and not options.no_pixels:
        src_locations = plan.source.locations() if plan.source is not None else (src,)
        sides = [(url, options.src_storage_options) for url in src_locations] + [(dst, options.dst_storage_options)]
        for url, opts in sides:
            if _fs.is_process_local(_fs.resolve(url, opts)[0]):
                raise ValueError(
                    f"{url}: visible to this process only, so worker processes cannot use it; convert with threads "
                    "(no --processes or --scheduler)"
                )
    # Every refusal happens here, before the first write: a refused run leaves the destination untouched.
    if options.scheduler and not options.no_pixels:
        check_scheduler(options.scheduler)  # an unreachable cluster fails now, not after the root is written
    take_over = options.resume or options.overwrite
    _lock.check(store, take_over_dead=take_over, break_lock=options.break_lock)
    resuming = _prepare_destination(store, options, fingerprint)
    lock = _lock.acquire(store, take_over_dead=take_over, break_lock=options.break_lock)
    try:
        listing: dict[str, int] = {}
        done: dict[int, SiteChecksums] = {}
        if options.overwrite and not resuming:
            _clear_for_overwrite(store)
        elif resuming:
            listing = store.find()
            _remove_partials(store, listing)
            done = _completed_sites(store, plan, listing)
        root = RootAttributes(
            options=spec.options() | {"no_pixels": options.no_pixels},
            source=_source_attrs(plan, options),
            pixels=not options.no_pixels,
            versions=library_versions(),
            readers=spec.codec_profile.readers,
        )
        _write_root(store, root, fingerprint)
        docs = static_documents(plan.sites, spec, include_sites=options.no_pixels)
        if resuming:
            # Array documents depend only on the fingerprint, which matched, and every write is whole-object, so a
            # listed one is already right; group documents are rewritten (a previous run may have dropped sites).
            docs = {k: v for k, v in docs.items() if k not in listing or not _is_array_document(k)}
        store.write_many(docs)

        results: dict[int, SiteResult] = {}
        todo = [item for item in plan.items if item.position not in done]
        # workers resolve the URLs again, maybe elsewhere (``dask worker`` started in another directory)
        job = SiteJob(source, _fs.portable_url(dst), dict(options.dst_storage_options), spec, options.on_error)
        png_total = sum(plan.png_bytes.get(p, 0) for item in todo for p in item.sources)
        with Progress(len(plan.items), png_total, enabled=options.progress, initial=len(done)) as bar:

            def collect(result: SiteResult) -> None:
                results[result.position] = result
                bar.advance(result.png_bytes)

            if not options.no_pixels:
                try:
                    run_tasks(job, todo, options.execution, collect)
                except ImageError as exc:
                    raise ImageError(
                        f"{exc}\n(stopped at this site; the {len(results)} site(s) converted so far are kept: fix the "
                        "source and rerun with --resume, or convert with --on-error skip)"
                    ) from None

        skipped = list(plan.skipped) + [r.skip for r in results.values() if r.skip is not None]
        checksums = {pos: r.checksums for pos, r in results.items() if r.checksums is not None}
        checksums.update(done)
        report_skips = tuple(skipped)
        if not plan.sizes_known:  # HTTP listings have no sizes: the source's bytes are those read
            read = sum(r.png_bytes for r in results.values())
            root = dataclasses.replace(root, source={**root.source, "png_bytes": read, "png_bytes_read": True})
        # Only the lock's holder may mark the store complete: stop if someone broke our lock meanwhile.
        _lock.ensure_held(store, lock)
        counts = _finalize(store, plan, spec, root, fingerprint, checksums, report_skips, options.no_pixels)
    finally:
        _lock.release(store, lock)
    converted = [r for r in results.values() if r.skip is None]
    return ConvertReport(
        src=src,
        dst=dst,
        sites_total=len(plan.items) + len(plan.skipped),
        converted=len(converted) if not options.no_pixels else len(plan.items),
        resumed_skipped=len(done),
        skipped=report_skips,
        png_bytes=sum(r.png_bytes for r in converted),
        stored_bytes=sum(r.stored_bytes for r in converted),
        seconds=time.perf_counter() - started,
        extra_files=plan.extra_files,
        embeddings_missing=int(counts["embeddings_missing"]),
        warnings=plan.warnings + tuple(n for r in sorted(results.values(), key=lambda r: r.position) for n in r.notes),
        pixels=not options.no_pixels,
        execution=options.execution.describe(),
        source=_describe_source(plan),
        source_unit=source.unit,
    )


def _is_array_document(key: str) -> bool:
    """A site's level array documents (``.../<site>/0/zarr.json``, ``.../<site>/1/zarr.json``)."""
    parts = key.split("/")
    return len(parts) == 7 and parts[-2] in (LEVEL, THUMBNAIL_LEVEL) and parts[-1] == "zarr.json"


def _describe_source(plan: ConversionPlan) -> str:
    if plan.source is None:
        return ""
    parts = [plan.source.description]
    if plan.source.metadata is not None:
        parts.append(f"metadata {plan.source.metadata.describe()}")
    parts.append(
        f"embeddings {plan.source.embeddings.describe()}" if plan.source.embeddings is not None else "no embeddings"
    )
    return "; ".join(parts)


def _clear_for_overwrite(store: StoreIO) -> None:
    """Empty the store except its lock. The root document goes last, so that a run killed halfway still leaves a
    store that is recognisably ours (and may be overwritten or resumed with its old options)."""
    root_doc = store.path("zarr.json")
    lock = store.path(_lock.LOCK_KEY)
    for entry in store.fs.ls(store.root, detail=False):
        path = str(entry).rstrip("/")
        if path in (root_doc, lock):
            continue
        store.fs.rm(path, recursive=True)
    store.delete("zarr.json")


def _source_attrs(plan: ConversionPlan, options: ConvertOptions) -> dict[str, Any]:
    return {
        "url": plan.src,
        "metadata_file": plan.metadata_file,
        "metadata_sha256": plan.metadata_sha256,
        "png_bytes": plan.total_png_bytes,
        "png_files": len(plan.png_bytes),
        "subset": options.subset(),
        **({"found": plan.source.attrs()} if plan.source is not None else {}),
    }


def _write_root(store: StoreIO, root: RootAttributes, fingerprint: Mapping[str, Any]) -> None:
    attrs = root.to_json() | {"fingerprint": dict(fingerprint)}
    store.write("zarr.json", dump(group_document({"rxrx2": attrs})))


def _finalize(
    store: StoreIO,
    plan: ConversionPlan,
    spec: SiteArraySpec,
    root: RootAttributes,
    fingerprint: Mapping[str, Any],
    checksums: Mapping[int, SiteChecksums],
    skipped: Sequence[Skip],
    no_pixels: bool,
) -> dict[str, Any]:
    """Write the index and embeddings for the sites that made it, fix up the groups that lost sites, mark the store
    complete. Returns the counts recorded in the root attributes."""

    keep = [item.position for item in plan.items if no_pixels or item.position in checksums]
    sites = plan.sites.iloc[keep].reset_index(drop=True)
    failed = [item for item in plan.items if not no_pixels and item.position not in checksums]
    if failed:
        # Sites skipped during conversion were announced by the bulk documents: drop their arrays and rewrite (or
        # remove, when they lost every site) the well, row, plate and experiment groups above them. Skips are rare,
        # so this is a handful of writes, not one per site.
        for item in failed:
            for key in (f"{item.array}/zarr.json", item.shard, f"{item.group}/{THUMBNAIL_LEVEL}/zarr.json", thumbnail_key(item)):
                store.delete(key)
        docs = static_documents(sites, spec)
        parents: set[str] = set()
        for item in failed:
            well = item.group.rsplit("/", 1)[0]
            row = well.rsplit("/", 1)[0]
            plate = row.rsplit("/", 1)[0]
            parents |= {well, row, plate, plate.split("/", 1)[0]}
        keys = {f"{parent}/zarr.json" for parent in parents}
        store.write_many({k: docs[k] for k in sorted(keys) if k in docs})
        for key in sorted(keys - set(docs)):
            store.delete(key)
    n = len(sites)
    sums = [checksums.get(p) for p in keep]
    columns = index_columns(sites, sums)
    zstore = store.zarr_store(read_only=False)
    with naming_full_disk(store.url, f"the index arrays ({INDEX_GROUP}/<column>)"):
        _write_index_arrays(zstore, columns)
    parquet = index_parquet(columns)
    store.write(INDEX_PARQUET, parquet)
    embeddings_missing = 0
    if plan.embeddings is not None:
        matrix = plan.embeddings[keep]
        embeddings_missing = int(np.isnan(matrix).all(axis=1).sum()) if matrix.size else 0
        with naming_full_disk(store.url, f"the {EMBEDDINGS_ARRAY} array ({matrix.nbytes:,} bytes)"):
            _write_embeddings(zstore, matrix, plan.embedding_features, embeddings_missing)
    else:
        store.delete(f"{EMBEDDINGS_ARRAY}/zarr.json")
    counts: dict[str, Any] = {
        "sites": n,
        "wells": int(sites["well_id"].nunique()),
        "plates": int(sites.groupby(["experiment", "plate"]).ngroups),
        "experiments": int(sites["experiment"].nunique()),
        "skipped": len(skipped),
        "embeddings_missing": embeddings_missing,
        "embedding_dim": len(plan.embedding_features),
        "height": spec.height,
        "width": spec.width,
    }
    final = RootAttributes(
        options=root.options,
        source=root.source,
        counts=counts,
        versions=root.versions,
        pixels=root.pixels,
        complete=True,
        skipped=[s.to_json() for s in skipped],
        index_checksum=crc32c.crc32c(parquet),
        readers=root.readers,
    )
    _write_root(store, final, fingerprint)
    return counts


def _checked_compressors() -> list[Any]:
    """zstd then crc32c: every chunk of the index and embeddings arrays carries its checksum."""
    import zarr.codecs

    return [zarr.codecs.ZstdCodec(level=9), zarr.codecs.Crc32cCodec()]


def index_columns(sites: Any, sums: Sequence[SiteChecksums | None]) -> dict[str, npt.NDArray[Any]]:
    """The index as typed column arrays, in store order (checksums 0 where a site has none: ``--no-pixels``)."""
    columns: dict[str, npt.NDArray[Any]] = {}
    for column in INDEX_STRING_COLUMNS:
        columns[column] = np.asarray(sites[column].astype(str).to_numpy(), dtype=object)
    for column in ("plate", "site"):
        columns[column] = sites[column].to_numpy(dtype="int32")
    columns["treatment_conc"] = sites["treatment_conc"].to_numpy(dtype="float64")
    for column, field_name in zip(INDEX_CHECKSUM_COLUMNS, ("pixels", "shard", "thumbnail"), strict=True):
        columns[column] = np.array([getattr(s, field_name) if s else 0 for s in sums], dtype=np.uint32)
    return {c: columns[c] for c in INDEX_COLUMNS}


def _write_embeddings(zstore: Any, matrix: npt.NDArray[np.float32], features: Sequence[str], missing: int) -> None:
    """The embeddings as one float32 array (dimensions ``site``, ``feature``), aligned with the index."""
    import zarr

    n = matrix.shape[0]
    emb = zarr.create_array(
        zstore,
        name=EMBEDDINGS_ARRAY,
        shape=matrix.shape,
        chunks=(min(max(n, 1), 8192), max(matrix.shape[1], 1)),
        dtype="float32",
        fill_value=np.nan,
        compressors=_checked_compressors(),
        dimension_names=("site", "feature"),
        attributes={"rxrx2": {"features": list(features), "missing_rows": missing}},
        overwrite=True,
    )
    if matrix.size:
        emb[:] = matrix


def _write_index_arrays(zstore: Any, columns: Mapping[str, npt.NDArray[Any]]) -> None:
    """One 1-D array per index column (dimension ``site``), for Zarr and xarray users."""
    import zarr

    index = zarr.open_group(zstore, path=INDEX_GROUP, mode="r+")
    n = len(columns["site_id"])
    for column, values in columns.items():
        dtype: Any = str if column in INDEX_STRING_COLUMNS else values.dtype
        fill = np.nan if column == "treatment_conc" else None
        array = index.create_array(
            column, shape=(n,), chunks=(max(n, 1),), dtype=dtype, fill_value=fill,
            compressors=_checked_compressors(), dimension_names=("site",), overwrite=True,
        )
        if n:
            array[:] = values
    index.attrs.update(
        {
            "rxrx2": {
                "columns": list(INDEX_COLUMNS),
                "order": ["experiment", "plate", "row", "column", "site"],
                "parquet": INDEX_PARQUET,
                "checksum": "crc32c of the C-order uint8 (6, H, W) pixels; 0 when the store has no pixels",
                "shard_checksum": "the crc32c closing the site's shard index (its last 4 bytes)",
                "thumbnail_checksum": "the crc32c closing the site's thumbnail chunk (its last 4 bytes)",
            }
        }
    )


def index_parquet(columns: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The index as one Parquet object (page checksums on): blank concentrations are nulls, as in the CSV."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for column, values in columns.items():
        if column in INDEX_STRING_COLUMNS:
            arrays[column] = pa.array(values.tolist(), type=pa.string())
        elif column == "treatment_conc":
            arrays[column] = pa.array(values, type=pa.float64(), from_pandas=True)  # NaN -> null
        else:
            arrays[column] = pa.array(values)
    table = pa.table(arrays)
    # an Arrow output stream, not io.BytesIO: Arrow's I/O threads on a Python file object can abort at exit
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True, write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


#: Sites in the whole RxRx2 release (../shared/RXRX2.md), for ``convert --dry-run``'s estimate.
RELEASE_SITES = 131_953


@dataclass(frozen=True)
class ConversionEstimate:
    """What ``convert --dry-run`` measured on a few sites: the cost per site of each side, one core."""

    sites: int
    sample: tuple[str, ...]
    profile: str
    level: int
    read_seconds: float
    """Reading and decoding one site's six PNGs (median of the sample)."""
    encode_seconds: float
    """Encoding one site's shard and thumbnail (median of the sample)."""
    ratio: float
    """Encoded bytes over the PNG bytes of the sample."""

    def cpu_hours(self, sites: int) -> float:
        return sites * (self.read_seconds + self.encode_seconds) / 3600

    def summary(self) -> str:
        return "\n".join(
            [
                f"dry run: {self.sites} site(s) planned; measured on {len(self.sample)} of them, one core:",
                f"  PNG read + decode {self.read_seconds * 1e3:,.0f} ms/site, encode ({self.profile}, level "
                f"{self.level}) {self.encode_seconds * 1e3:,.0f} ms/site, {self.ratio:.3f}x the PNG bytes",
                f"  estimate: {self.cpu_hours(self.sites):,.2f} CPU-hours for this conversion, "
                f"{self.cpu_hours(RELEASE_SITES):,.0f} CPU-hours for the whole release ({RELEASE_SITES:,} sites) "
                "at this site size; divide by the workers you run",
                "  nothing was written",
            ]
        )


def estimate(src: str, options: ConvertOptions | None = None, sample: int = 3, **kwargs: Any) -> ConversionEstimate:
    """Plan the conversion (all checks, no writes) and time reading and encoding a few of its sites."""
    options = _options(options, kwargs)
    plan = make_plan(
        src, options.src_storage_options, experiments=options.experiments, plates=options.plates,
        limit=options.limit, on_error="fail", need_pixels=True, metadata_url=options.metadata,
        embeddings_url=options.embeddings,
    )
    spec = site_spec(plan, options)
    assert plan.source is not None  # make_plan always resolves its source
    source = PngSource(plan.source)
    picks = [plan.items[i] for i in np.linspace(0, len(plan.items) - 1, min(sample, len(plan.items))).astype(int)]
    reads, encodes, png, stored = [], [], 0, 0
    for item in picks:
        begin = time.perf_counter()
        pixels, nbytes = source.read(item, plan.size)
        middle = time.perf_counter()
        shard, thumb = encode_site(spec, pixels)
        reads.append(middle - begin)
        encodes.append(time.perf_counter() - middle)
        png += nbytes
        stored += len(shard) + len(thumb)
    return ConversionEstimate(
        sites=len(plan.items),
        sample=tuple(item.site_id for item in picks),
        profile=spec.profile,
        level=spec.codec_profile.level,
        read_seconds=float(np.median(reads)),
        encode_seconds=float(np.median(encodes)),
        ratio=stored / png if png else float("nan"),
    )
