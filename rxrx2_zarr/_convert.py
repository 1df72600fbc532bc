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

The destination checks are in ``_destination.py``, the index and embeddings writers in ``_index_writer.py``, the
report in ``_report.py`` and ``--dry-run``'s estimate in ``_estimate.py``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from . import _fs, _lock
from ._attrs import (
    Counts,
    Fingerprint,
    RootAttributes,
    SiteChecksums,
    SiteOptions,
    Skipped,
    SourceAttributes,
    Subset,
)
from ._crc import crc32c
from ._destination import (
    check_reachable,
    check_separate,
    clear_for_overwrite,
    completed_sites,
    is_array_document,
    prepare_destination,
    remove_partials,
)
from ._errors import ImageError, SpecialFileError, StoreExistsError
from ._execute import ExecutionConfig, check_scheduler, run_tasks
from ._hierarchy import dump, group_document, site_document, static_documents
from ._index_writer import index_columns, index_parquet, write_embeddings, write_index_arrays
from ._layout import (
    DEFAULT_PROFILE,
    EMBEDDINGS_ARRAY,
    INDEX_GROUP,
    INDEX_PARQUET,
    LAYOUT_VERSION,
    MIN_INNER_CHUNK,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    SiteArraySpec,
)
from ._plan import ConversionPlan, SiteItem, Skip, make_plan
from ._png import decode_png
from ._progress import Progress
from ._report import ConvertReport
from ._shard import ShardCodec, encode_thumbnail, thumbnail
from ._source import Source, SourceIO
from ._storage import StoreIO, naming_full_disk, store_io
from ._text import count

__all__ = [
    "ConvertOptions",
    "ConvertReport",
    "PixelSource",
    "PngSource",
    "convert",
    "plan_conversion",
    "resolve_options",
    "run_conversion",
    "site_spec",
]

OnError = Literal["fail", "skip"]
_log = logging.getLogger(__name__)
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
    progress: bool = False
    """Draw a progress bar on stderr (the command line decides: only when stderr is a terminal)."""
    src_storage_options: Mapping[str, Any] = field(default_factory=dict)
    dst_storage_options: Mapping[str, Any] = field(default_factory=dict)
    metadata: str | None = None
    """The metadata CSV when not in SRC: a path or URL, a zip member, or a folder or archive holding it."""
    embeddings: str | None = None
    """The embeddings CSV when not in SRC (as ``metadata``)."""

    def __post_init__(self) -> None:
        # the codec choices, checked now as the site array will check them (the image size is known only later)
        SiteArraySpec(MIN_INNER_CHUNK, MIN_INNER_CHUNK, self.inner_chunks, self.profile, self.pixel_size, level=self.level)
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume are mutually exclusive")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        # validates workers too
        ExecutionConfig(self.workers, self.processes, self.scheduler)

    @property
    def execution(self) -> ExecutionConfig:
        return ExecutionConfig(self.workers, self.processes, self.scheduler)

    def subset(self) -> Subset:
        return Subset(
            experiments=sorted(self.experiments) if self.experiments else None,
            plates=sorted(int(p) for p in self.plates) if self.plates else None,
            limit=self.limit,
        )


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


def write_site(dst: StoreIO, spec: SiteArraySpec, item: SiteItem, pixels: Pixels) -> tuple[SiteChecksums, int]:
    """Write a site's shard and thumbnail, then its site document (the completion marker, written last).
    Returns its checksums and the bytes written."""
    shard, thumb = encode_site(spec, pixels)
    sums = SiteChecksums(
        crc32c(pixels.data), int.from_bytes(shard[-4:], "little"), int.from_bytes(thumb[-4:], "little")
    )
    dst.write(item.shard, shard)
    dst.write(item.thumbnail, thumb)
    dst.write(f"{item.group}/zarr.json", site_document(spec, item.site_id, item.site, sums))
    return sums, len(shard) + len(thumb)


def convert_site(job: SiteJob, item: SiteItem) -> SiteResult:
    """Convert one site: read its pixels from the source, write it (:func:`write_site`)."""
    dst = store_io(job.dst_url, job.dst_options)
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


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("rxrx2-zarr", "zarr", "numcodecs", "imagecodecs", "numpy", "dask"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def resolve_options(options: ConvertOptions | None, kwargs: Mapping[str, Any]) -> ConvertOptions:
    """``options``, or the options that keyword arguments of ``convert(...)`` give (not both)."""
    if options is None:
        return ConvertOptions(**kwargs)
    if kwargs:
        raise TypeError("pass either options or keyword arguments, not both")
    return options


def plan_conversion(src: str, options: ConvertOptions, *, on_error: str, need_pixels: bool) -> ConversionPlan:
    """The plan of converting ``src`` with ``options`` (every check that needs no write)."""
    return make_plan(
        src,
        options.src_storage_options,
        experiments=options.experiments,
        plates=options.plates,
        limit=options.limit,
        on_error=on_error,
        need_pixels=need_pixels,
        metadata_url=options.metadata,
        embeddings_url=options.embeddings,
    )


def convert(src: str, dst: str, options: ConvertOptions | None = None, **kwargs: Any) -> ConvertReport:
    """Convert the RxRx2 tree at ``src`` (path or fsspec URL) into a Zarr store at ``dst``.

    Keyword arguments are :class:`ConvertOptions` fields (``profile=``, ``workers=``, ``resume=``...).
    """
    options = resolve_options(options, kwargs)
    started = time.perf_counter()
    plan = plan_conversion(src, options, on_error=options.on_error, need_pixels=not options.no_pixels)
    assert plan.source is not None  # make_plan always resolves its source
    store = StoreIO(dst, options.dst_storage_options)
    for location in plan.source.locations():
        check_separate(location, options.src_storage_options, store)
    return run_conversion(plan, PngSource(plan.source), src, dst, options, started)


def site_spec(plan: ConversionPlan, options: ConvertOptions) -> SiteArraySpec:
    """The site array specification of a conversion: the plan's image size with the options' codec choices."""
    return SiteArraySpec(
        plan.size[0], plan.size[1], options.inner_chunks, options.profile, options.pixel_size, level=options.level
    )


def _fingerprint(plan: ConversionPlan, spec: SiteArraySpec, options: ConvertOptions) -> Fingerprint:
    """What must match for ``--resume`` to continue a store: same source metadata, options and subset."""
    return Fingerprint(
        layout_version=LAYOUT_VERSION,
        metadata_sha256=plan.metadata_sha256,
        options=_site_options(spec, options),
        subset=options.subset(),
    )


def _site_options(spec: SiteArraySpec, options: ConvertOptions) -> SiteOptions:
    return SiteOptions.model_validate(spec.options() | {"no_pixels": options.no_pixels})


def _check_before_writing(plan: ConversionPlan, src: str, store: StoreIO, options: ConvertOptions) -> None:
    """Every refusal that needs no lock, before the first write: a refused run leaves the destination untouched."""
    if store.fs.isfile(store.root):
        raise StoreExistsError(f"{store.url}: exists and is a file, not a directory; refusing to touch it")
    if options.no_pixels:
        return  # no site task runs
    if options.execution.distributed:
        sources = plan.source.locations() if plan.source is not None else (src,)
        check_reachable([(url, options.src_storage_options) for url in sources] + [(store.url, options.dst_storage_options)])
    if options.scheduler:
        check_scheduler(options.scheduler)  # an unreachable cluster fails now, not after the root is written


def run_conversion(
    plan: ConversionPlan, source: PixelSource, src: str, dst: str, options: ConvertOptions, started: float
) -> ConvertReport:
    """Write the store ``dst`` for ``plan``, reading each site's pixels from ``source`` (shared by ``convert`` and
    ``transcode``): destination checks, lock, documents, one task per site, finalize."""
    spec = site_spec(plan, options)
    fingerprint = _fingerprint(plan, spec, options)
    store = StoreIO(dst, options.dst_storage_options)
    _check_before_writing(plan, src, store, options)
    take_over = options.resume or options.overwrite
    _lock.check(store, take_over_dead=take_over, break_lock=options.break_lock)
    resuming = prepare_destination(store, resume=options.resume, overwrite=options.overwrite, fingerprint=fingerprint)
    lock = _lock.acquire(store, take_over_dead=take_over, break_lock=options.break_lock)
    try:
        root, done = _start(store, plan, spec, options, fingerprint, resuming)
        job = SiteJob(source, _fs.portable_url(dst), dict(options.dst_storage_options), spec, options.on_error)
        results = _convert_sites(job, plan, options, done)
        checksums = {pos: r.checksums for pos, r in results.items() if r.checksums is not None} | done
        skipped = (*plan.skipped, *(r.skip for r in results.values() if r.skip is not None))
        if not plan.sizes_known:  # HTTP listings have no sizes: the source's bytes are those read
            read = sum(r.png_bytes for r in results.values())
            root = root.model_copy(update={"source": root.source.model_copy(update={"png_bytes": read, "png_bytes_read": True})})
        # Only the lock's holder may mark the store complete: stop if someone broke our lock meanwhile.
        _lock.ensure_held(store, lock)
        counts = _finalize(store, plan, spec, root, checksums, skipped, options.no_pixels)
    finally:
        _lock.release(store, lock)
    return _report(plan, source, src, dst, options, started, results, done, skipped, counts)


def _start(
    store: StoreIO,
    plan: ConversionPlan,
    spec: SiteArraySpec,
    options: ConvertOptions,
    fingerprint: Fingerprint,
    resuming: bool,
) -> tuple[RootAttributes, dict[int, SiteChecksums]]:
    """Under the lock: empty the store (``--overwrite``) or find its complete sites (``--resume``), then write the
    root document (``complete: false``) and every static document. Returns the root and the sites already done."""
    listing: dict[str, int] = {}
    done: dict[int, SiteChecksums] = {}
    if options.overwrite and not resuming:
        clear_for_overwrite(store)
    elif resuming:
        listing = store.find()
        remove_partials(store, listing)
        done = completed_sites(store, plan, listing)
        _log.info("%s: resuming, %s of %s already complete", store.url, len(done), count(len(plan.items), "site"))
    root = RootAttributes.new(
        _site_options(spec, options),
        _source_attrs(plan, options),
        fingerprint,
        pixels=not options.no_pixels,
        versions=library_versions(),
        readers=spec.codec_profile.readers,
    )
    _write_root(store, root)
    docs = static_documents(plan.sites, spec, include_sites=options.no_pixels)
    if resuming:
        # Array documents depend only on the fingerprint, which matched, and every write is whole-object, so a
        # listed one is already right; group documents are rewritten (a previous run may have dropped sites).
        docs = {k: v for k, v in docs.items() if k not in listing or not is_array_document(k)}
    store.write_many(docs)
    return root, done


def _convert_sites(
    job: SiteJob, plan: ConversionPlan, options: ConvertOptions, done: Mapping[int, SiteChecksums]
) -> dict[int, SiteResult]:
    """One task per site not done yet (none with ``--no-pixels``), with a progress bar; results by position."""
    results: dict[int, SiteResult] = {}
    todo = [item for item in plan.items if item.position not in done]
    png_total = sum(plan.png_bytes.get(p, 0) for item in todo for p in item.sources)
    with Progress(len(plan.items), png_total, enabled=options.progress, initial=len(done)) as bar:

        def collect(result: SiteResult) -> None:
            results[result.position] = result
            bar.advance(result.png_bytes)
            for note in result.notes:  # as they happen: the report lists them again at the end
                _log.warning(note)

        if not options.no_pixels:
            try:
                run_tasks(job, todo, options.execution, collect)
            except ImageError as exc:
                raise ImageError(
                    f"{exc}\n(stopped at this site; {count(len(results), 'site')} converted so far are kept: fix the "
                    "source and rerun with --resume, or convert with --on-error skip)"
                ) from None
    return results


def _report(
    plan: ConversionPlan,
    source: PixelSource,
    src: str,
    dst: str,
    options: ConvertOptions,
    started: float,
    results: Mapping[int, SiteResult],
    done: Mapping[int, SiteChecksums],
    skipped: Sequence[Skip],
    counts: Counts,
) -> ConvertReport:
    converted = [r for r in results.values() if r.skip is None]
    return ConvertReport(
        src=src,
        dst=dst,
        sites_total=len(plan.items) + len(plan.skipped),
        converted=len(converted) if not options.no_pixels else len(plan.items),
        resumed_skipped=len(done),
        skipped=tuple(skipped),
        png_bytes=sum(r.png_bytes for r in converted),
        stored_bytes=sum(r.stored_bytes for r in converted),
        seconds=time.perf_counter() - started,
        extra_files=plan.extra_files,
        embeddings_missing=int(counts.embeddings_missing or 0),
        warnings=plan.warnings + tuple(n for r in sorted(results.values(), key=lambda r: r.position) for n in r.notes),
        pixels=not options.no_pixels,
        execution=options.execution.describe(),
        source=_describe_source(plan),
        source_unit=source.unit,
    )


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


def _source_attrs(plan: ConversionPlan, options: ConvertOptions) -> SourceAttributes:
    return SourceAttributes.model_validate(
        {
            "url": plan.src,
            "metadata_file": plan.metadata_file,
            "metadata_sha256": plan.metadata_sha256,
            "png_bytes": plan.total_png_bytes,
            "png_files": len(plan.png_bytes),
            "subset": options.subset(),
            "found": plan.source.attrs() if plan.source is not None else None,
        }
    )


def _write_root(store: StoreIO, root: RootAttributes) -> None:
    store.write("zarr.json", dump(group_document({"rxrx2": root.to_json()})))


# --- finalize ----------------------------------------------------------------------------------------------------


def _finalize(
    store: StoreIO,
    plan: ConversionPlan,
    spec: SiteArraySpec,
    root: RootAttributes,
    checksums: Mapping[int, SiteChecksums],
    skipped: Sequence[Skip],
    no_pixels: bool,
) -> Counts:
    """Write the index and embeddings for the sites that made it, fix up the groups that lost sites, mark the store
    complete. Returns the counts recorded in the root attributes."""
    keep = [item.position for item in plan.items if no_pixels or item.position in checksums]
    sites = plan.sites.iloc[keep].reset_index(drop=True)
    failed = [item for item in plan.items if not no_pixels and item.position not in checksums]
    if failed:
        _drop_failed_sites(store, spec, sites, failed)
    parquet = _write_index(store, index_columns(sites, [checksums.get(p) for p in keep]))
    embeddings_missing = _write_embeddings(store, plan, keep)
    counts = Counts(
        sites=len(sites),
        wells=int(sites["well_id"].nunique()),
        plates=int(sites.groupby(["experiment", "plate"]).ngroups),
        experiments=int(sites["experiment"].nunique()),
        skipped=len(skipped),
        embeddings_missing=embeddings_missing,
        embedding_dim=len(plan.embedding_features),
        height=spec.height,
        width=spec.width,
    )
    final = root.model_copy(
        update={
            "complete": True,
            "counts": counts,
            "skipped": [Skipped(site_id=s.site_id, reason=s.reason) for s in skipped],
            "index": root.index.model_copy(
                update={
                    "parquet_crc32c": crc32c(parquet),
                    "first_site_id": str(sites["site_id"].iloc[0]) if len(sites) else None,
                }
            ),
        }
    )
    _write_root(store, final)
    return counts


def _drop_failed_sites(store: StoreIO, spec: SiteArraySpec, sites: Any, failed: Sequence[SiteItem]) -> None:
    """Sites skipped during conversion were announced by the bulk documents: drop their arrays and rewrite (or
    remove, when they lost every site) the well, row, plate and experiment groups above them. Skips are rare, so
    this is a handful of writes, not one per site."""
    for item in failed:
        for key in (f"{item.array}/zarr.json", item.shard, f"{item.group}/{THUMBNAIL_LEVEL}/zarr.json", item.thumbnail):
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


def _write_index(store: StoreIO, columns: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The index arrays and the Parquet object; returns the Parquet bytes (their CRC32C goes into the root)."""
    with naming_full_disk(store.url, f"the index arrays ({INDEX_GROUP}/<column>)"):
        write_index_arrays(store.zarr_store(read_only=False), columns)
    parquet = index_parquet(columns)
    store.write(INDEX_PARQUET, parquet)
    return parquet


def _write_embeddings(store: StoreIO, plan: ConversionPlan, keep: Sequence[int]) -> int:
    """The embeddings rows of the kept sites (or no array, without embeddings); returns how many are missing."""
    if plan.embeddings is None:
        store.delete(f"{EMBEDDINGS_ARRAY}/zarr.json")
        return 0
    matrix = plan.embeddings[keep]
    missing = int(np.isnan(matrix).all(axis=1).sum()) if matrix.size else 0
    with naming_full_disk(store.url, f"the {EMBEDDINGS_ARRAY} array ({matrix.nbytes:,} bytes)"):
        write_embeddings(store.zarr_store(read_only=False), matrix, plan.embedding_features, missing)
    return missing
