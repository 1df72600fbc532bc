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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import crc32c
import numpy as np

from . import _fs, _lock
from ._errors import ImageError, StoreExistsError, StoreFormatError
from ._execute import ExecutionConfig, run_tasks
from ._hierarchy import dump, site_document, static_documents
from ._layout import (
    DEFAULT_INNER_CHUNKS,
    DEFAULT_PROFILE,
    EMBEDDINGS_ARRAY,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_STRING_COLUMNS,
    LAYOUT_VERSION,
    PROFILES,
    RootAttributes,
    SiteArraySpec,
    group_document,
)
from ._plan import ConversionPlan, SiteItem, Skip, make_plan
from ._png import decode_png
from ._progress import Progress
from ._shard import ShardCodec
from ._source import Source, SourceIO
from ._storage import StoreIO

__all__ = ["ConvertOptions", "ConvertReport", "convert"]

OnError = Literal["fail", "skip"]


@dataclass(frozen=True)
class ConvertOptions:
    """Options of a conversion. The first group decides the output (and must match on ``resume``)."""

    profile: str = DEFAULT_PROFILE
    inner_chunks: tuple[int, int] = DEFAULT_INNER_CHUNKS
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

    def subset(self) -> dict[str, Any]:
        return {
            "experiments": sorted(self.experiments) if self.experiments else None,
            "plates": sorted(int(p) for p in self.plates) if self.plates else None,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class SiteJob:
    """The per-run context of every site task (small and picklable: shipped once per task to workers)."""

    src_url: str
    src_options: Mapping[str, Any]
    dst_url: str
    dst_options: Mapping[str, Any]
    spec: SiteArraySpec
    on_error: OnError
    source: Source | None = None
    """The resolved source (zip archive, images root); each worker process opens it itself."""

    def __call__(self, item: SiteItem) -> SiteResult:
        return convert_site(self, item)


@dataclass(frozen=True)
class SiteResult:
    position: int
    site_id: str
    checksum: int | None
    png_bytes: int
    stored_bytes: int
    skip: Skip | None = None


@functools.lru_cache(maxsize=8)
def _store(url: str, options_json: str) -> StoreIO:
    return StoreIO(url, json.loads(options_json))


def _store_for(url: str, options: Mapping[str, Any]) -> StoreIO:
    return _store(url, json.dumps(dict(options), sort_keys=True, default=str))


def read_site_pixels(src: StoreIO | SourceIO, item: SiteItem, size: tuple[int, int]) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], int]:
    """Read and decode a site's six PNGs into (6, H, W); returns the pixels and the PNG bytes read."""
    pixels = np.empty((len(item.sources), *size), dtype=np.uint8)
    total = 0
    for channel, path in enumerate(item.sources):
        try:
            data = src.read(path)
        except FileNotFoundError:
            raise ImageError(f"{path}: missing (site {item.site_id})") from None
        except (PermissionError, IsADirectoryError) as exc:
            # a problem of this file, unlike other OSErrors (network, disk) which must stop the run, not skip sites
            raise ImageError(f"{path}: cannot be read: {exc.strerror or exc} (site {item.site_id})") from None
        total += len(data)
        pixels[channel] = decode_png(data, path, size)
    return pixels, total


def convert_site(job: SiteJob, item: SiteItem) -> SiteResult:
    """Convert one site: decode its PNGs, write its shard, then its site document (the completion marker)."""
    src = job.source.open() if job.source is not None else _store_for(job.src_url, job.src_options)
    dst = _store_for(job.dst_url, job.dst_options)
    try:
        pixels, png_bytes = read_site_pixels(src, item, (job.spec.height, job.spec.width))
    except ImageError as exc:
        if job.on_error == "skip":
            return SiteResult(item.position, item.site_id, None, 0, 0, Skip(item.site_id, str(exc)))
        raise
    checksum = crc32c.crc32c(pixels.data)
    shard = _codec(job.spec).encode(pixels)
    dst.write(item.shard, shard)
    dst.write(f"{item.group}/zarr.json", site_document(job.spec, item.site_id, item.site, checksum))
    return SiteResult(item.position, item.site_id, checksum, png_bytes, len(shard))


@functools.lru_cache(maxsize=4)
def _codec(spec: SiteArraySpec) -> ShardCodec:
    return ShardCodec(spec)


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
        if self.pixels:
            ratio = f" ({self.ratio:.3f}x the PNG bytes)" if self.png_bytes else ""
            lines.append(
                f"read {self.png_bytes / 1e6:,.1f} MB of PNG, wrote {self.stored_bytes / 1e6:,.1f} MB of shards{ratio}"
            )
        else:
            lines.append("no pixels written (--no-pixels): the tree, attributes, index and embeddings only")
        lines.append(
            f"wall time {self.seconds:.1f} s: {self.sites_per_second:.2f} sites/s, {self.png_mb_per_second:.1f} MB/s of PNG"
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
        if any(not _is_partial(k) and k != _lock.LOCK_KEY for k in dst.find()):
            raise StoreExistsError(
                f"{dst.url}: exists but is not an rxrx2-zarr store (no zarr.json); refusing to "
                f"{'resume into' if options.resume else 'replace'} it"
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


def _completed_sites(dst: StoreIO, plan: ConversionPlan, listing: Mapping[str, int]) -> dict[int, int]:
    """Positions (and checksums) of the sites whose completion marker is present and intact.

    ``listing`` is the store's one listing: a marker counts only if its shard is listed too, so this costs the
    listing plus one read per marker (concurrent on object stores), nothing per site beyond that.
    """
    candidates = [item for item in plan.items if f"{item.group}/zarr.json" in listing and item.shard in listing]
    if not candidates:
        return {}
    keys = [f"{item.group}/zarr.json" for item in candidates]
    documents = dst.read_many(keys)
    done: dict[int, int] = {}
    for item, document in zip(candidates, (documents[k] for k in keys), strict=True):
        if document is None:
            continue
        try:
            attrs = json.loads(document)["attributes"]["rxrx2"]
            checksum = attrs["checksum"]
        except (ValueError, KeyError, TypeError):
            continue  # foreign or damaged document: the site is redone
        if isinstance(checksum, int) and not isinstance(checksum, bool) and attrs.get("site_id") == item.site_id:
            done[item.position] = checksum
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
    if options is None:
        options = ConvertOptions(**kwargs)
    elif kwargs:
        raise TypeError("pass either options or keyword arguments, not both")
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
    src_locations = plan.source.locations() if plan.source is not None else (src,)
    spec = SiteArraySpec(plan.size[0], plan.size[1], options.inner_chunks, options.profile, options.pixel_size)
    fingerprint = _fingerprint(plan, spec, options)
    store = StoreIO(dst, options.dst_storage_options)
    for location in src_locations:
        _check_separate(location, options.src_storage_options, store)
    if store.fs.isfile(store.root):
        raise StoreExistsError(f"{store.url}: exists and is a file, not a directory; refusing to touch it")
    if options.execution.distributed and not options.no_pixels:
        sides = [(url, options.src_storage_options) for url in src_locations] + [(dst, options.dst_storage_options)]
        for url, opts in sides:
            if _fs.is_process_local(_fs.resolve(url, opts)[0]):
                raise ValueError(
                    f"{url}: visible to this process only, so worker processes cannot use it; convert with threads "
                    "(no --processes or --scheduler)"
                )
    # Every refusal happens here, before the first write: a refused run leaves the destination untouched.
    take_over = options.resume or options.overwrite
    _lock.check(store, take_over_dead=take_over, break_lock=options.break_lock)
    resuming = _prepare_destination(store, options, fingerprint)
    lock = _lock.acquire(store, take_over_dead=take_over, break_lock=options.break_lock)
    try:
        listing: dict[str, int] = {}
        done: dict[int, int] = {}
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
        )
        _write_root(store, root, fingerprint)
        docs = static_documents(plan.sites, spec, include_sites=options.no_pixels)
        if resuming:
            # Array documents depend only on the fingerprint, which matched, and every write is whole-object, so a
            # listed one is already right; group documents are rewritten (a previous run may have dropped sites).
            array_docs = {f"{item.array}/zarr.json" for item in plan.items}
            docs = {k: v for k, v in docs.items() if k not in array_docs or k not in listing}
        store.write_many(docs)

        results: dict[int, SiteResult] = {}
        todo = [item for item in plan.items if item.position not in done]
        # workers resolve the URLs again, maybe elsewhere (``dask worker`` started in another directory)
        job = SiteJob(
            _fs.portable_url(src), dict(options.src_storage_options), _fs.portable_url(dst),
            dict(options.dst_storage_options), spec, options.on_error, plan.source,
        )
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
        checksums = {pos: r.checksum for pos, r in results.items() if r.skip is None}
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
        warnings=plan.warnings,
        pixels=not options.no_pixels,
        execution=options.execution.describe(),
        source=_describe_source(plan),
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
    checksums: Mapping[int, int | None],
    skipped: Sequence[Skip],
    no_pixels: bool,
) -> dict[str, Any]:
    """Write the index and embeddings for the sites that made it, fix up the groups that lost sites, mark the store
    complete. Returns the counts recorded in the root attributes."""
    import zarr

    keep = [item.position for item in plan.items if no_pixels or item.position in checksums]
    sites = plan.sites.iloc[keep].reset_index(drop=True)
    failed = [item for item in plan.items if not no_pixels and item.position not in checksums]
    if failed:
        # Sites skipped during conversion were announced by the bulk documents: drop their arrays and rewrite (or
        # remove, when they lost every site) the well, row, plate and experiment groups above them. Skips are rare,
        # so this is a handful of writes, not one per site.
        for item in failed:
            store.delete(f"{item.array}/zarr.json")
            store.delete(item.shard)
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
    zstore = store.zarr_store(read_only=False)
    index = zarr.open_group(zstore, path=INDEX_GROUP, mode="r+")
    n = len(sites)
    chunks = (max(n, 1),)
    for column in INDEX_STRING_COLUMNS:
        array = index.create_array(column, shape=(n,), chunks=chunks, dtype=str, overwrite=True)
        if n:
            array[:] = np.asarray(sites[column].astype(str).to_numpy(), dtype=object)
    for column, dtype in (("plate", "int32"), ("site", "int32")):
        array = index.create_array(column, shape=(n,), chunks=chunks, dtype=dtype, overwrite=True)
        if n:
            array[:] = sites[column].to_numpy(dtype=dtype)
    conc = index.create_array("treatment_conc", shape=(n,), chunks=chunks, dtype="float64", fill_value=np.nan, overwrite=True)
    if n:
        conc[:] = sites["treatment_conc"].to_numpy(dtype="float64")
    checksum = index.create_array("checksum", shape=(n,), chunks=chunks, dtype="uint32", overwrite=True)
    if n and not no_pixels:
        checksum[:] = np.array([checksums[p] for p in keep], dtype=np.uint32)
    index.attrs.update(
        {
            "rxrx2": {
                "columns": list(INDEX_COLUMNS),
                "order": ["experiment", "plate", "row", "column", "site"],
                "checksum": "crc32c of the C-order uint8 (6, H, W) pixels; 0 when the store has no pixels",
            }
        }
    )
    embeddings_missing = 0
    if plan.embeddings is not None:
        matrix = plan.embeddings[keep]
        embeddings_missing = int(np.isnan(matrix).all(axis=1).sum()) if matrix.size else 0
        emb = zarr.create_array(
            zstore,
            name=EMBEDDINGS_ARRAY,
            shape=matrix.shape,
            chunks=(min(max(n, 1), 8192), max(matrix.shape[1], 1)),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=("site", "feature"),
            attributes={"rxrx2": {"features": list(plan.embedding_features), "missing_rows": embeddings_missing}},
            overwrite=True,
        )
        if matrix.size:
            emb[:] = matrix
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
    )
    _write_root(store, final, fingerprint)
    return counts
