"""Reading sites: one site's shard (or the inner chunks a crop needs) fetched, decoded and checked; and the threads
that read them.

A full site is one request for its shard object, decoded and checked against the CRC32C of its pixels recorded in
the index. A crop or a channel subset is a suffix request for the shard index, then one request per run of
adjacent inner chunks it intersects. Missing or corrupt objects raise :class:`ChunkReadError` naming the site and
the object.

Threads: ``threads=1`` reads in the calling thread only; ``threads=n`` reads several sites at once, or splits one
site's chunks, on a shared pool of ``n`` threads (the codecs release the GIL). The default (None) is one thread
inside a torch ``DataLoader`` worker or a Dask task, whose caller already runs one read per worker or task, and
otherwise as many threads as there are CPUs this process may use (``os.sched_getaffinity``, not the machine's).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._crc import crc32c
from ._errors import ChunkReadError
from ._layout import SHARD_KEY, THUMBNAIL_LEVEL, SiteArraySpec
from ._shard import ShardCodec, ShardDataError, ShardIndexError, decode_thumbnail
from ._storage import StoreIO, store_io

if TYPE_CHECKING:  # imported with the first pool (with logging, ~5 ms of a cold open otherwise)
    from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "MAX_THREADS",
    "SiteReader",
    "SiteRef",
    "box_of",
    "check_threads",
    "codec_for",
    "crop_shape",
    "resolve_threads",
    "run_tasks",
]

Pixels = npt.NDArray[np.uint8]
Region = tuple[int, int, int, int]

#: The most threads a read may ask for (a typo such as ``threads=1000`` would otherwise start a thousand).
MAX_THREADS = 256
#: How many groups one site's chunks are split into at most: beyond that the split costs more than it saves on a
#: 6 MiB site.
_MAX_SPLIT = 4


# --- threads -------------------------------------------------------------------------------------------------------


def check_threads(threads: Any) -> int | None:
    """``threads=`` as given: None (the default) or an integer 1..:data:`MAX_THREADS`."""
    if threads is None:
        return None
    if not isinstance(threads, int | np.integer) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}, or None for the default; got {threads!r}")
    return int(threads)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or a job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def _in_torch_worker() -> bool:
    data = sys.modules.get("torch.utils.data")  # never imported here: if torch is not loaded, this is no worker
    return data is not None and data.get_worker_info() is not None


def _in_dask_task() -> bool:
    """Inside a task of a distributed worker, or of dask's local schedulers (threads, processes, synchronous)."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            distributed.get_worker()
            return True
        except ValueError:  # "No worker found": not inside a distributed task
            pass
    local = sys.modules.get("dask.local")
    if local is None:
        return False
    # dask's local schedulers mark their task threads in no other way (the pool's thread set is filled only after a
    # new thread may have started its first task): look for their task runner among the callers, a few microseconds
    runner = local.execute_task.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is runner:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def resolve_threads(threads: int | None) -> int:
    """How many threads a read with ``threads=`` (already checked) uses; see the module's docstring."""
    if threads is not None:
        return threads
    if _in_torch_worker() or _in_dask_task():
        return 1
    return available_cpus()


_POOLS_LOCK = threading.Lock()
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool of ``threads`` threads, created on first use (and again in a forked child, whose threads
    did not survive the fork)."""
    pid = os.getpid()
    with _POOLS_LOCK:
        if any(owner != pid for owner, _ in _POOLS):
            _POOLS.clear()
        pool = _POOLS.get((pid, threads))
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            pool = _POOLS[(pid, threads)] = ThreadPoolExecutor(threads, thread_name_prefix="rxrx2-read")
        return pool


def run_tasks(tasks: Sequence[Callable[[], object]], threads: int) -> None:
    """Run ``tasks`` (one per site, each reading in its own thread only) on ``threads`` threads; the first error
    raised by any of them is raised here."""
    if threads == 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    futures = [_pool(threads).submit(task) for task in tasks]
    for future in futures:
        future.result()


# --- one site ------------------------------------------------------------------------------------------------------


def box_of(spec: SiteArraySpec, region: Region | None) -> Region:
    """``region`` (checked), or the whole site's box when None."""
    return region if region is not None else (0, spec.height, 0, spec.width)


def crop_shape(spec: SiteArraySpec, channels: Sequence[int] | None, region: Region | None) -> tuple[int, int, int]:
    """(c, h, w) of a read of ``channels`` (0-based; None: all) and ``region`` (None: the whole site)."""
    y0, y1, x0, x1 = box_of(spec, region)
    return (len(channels) if channels is not None else spec.channels, y1 - y0, x1 - x0)



class SiteRef:
    """What a read needs to know about one site, built when the site is read (an object rather than a tuple of
    strings, which dask could mistake for keys; slotted rather than a frozen dataclass, which is slower to build).
    ``shard`` and ``thumbnail`` are the CRC32Cs that close the site's shard index and thumbnail chunk, as recorded
    in the index (None in layout-1 stores)."""

    __slots__ = ("checksum", "path", "shard", "site_id", "thumbnail")

    def __init__(self, site_id: str, path: str, checksum: int, shard: int | None, thumbnail: int | None) -> None:
        self.site_id = site_id
        self.path = path
        self.checksum = checksum
        self.shard = shard
        self.thumbnail = thumbnail

    def __repr__(self) -> str:
        return f"SiteRef({self.site_id!r}, {self.path!r}, {self.checksum}, {self.shard}, {self.thumbnail})"


@functools.lru_cache(maxsize=8)
def codec_for(array_document: str) -> ShardCodec:
    """The shard codec of a validated site array document (JSON text: hashable, and small to pickle)."""
    return ShardCodec.from_array_metadata(json.loads(array_document), "site array")


@dataclass(frozen=True)
class SiteReader:
    """Reads the sites of one store; small and picklable (url, options, spec, site array document)."""

    url: str
    storage_options: Mapping[str, Any]
    spec: SiteArraySpec
    array_document: str
    pixels: bool

    def read(
        self,
        ref: SiteRef,
        channels: Sequence[int] | None = None,
        region: Region | None = None,
        out: Pixels | None = None,
        threads: int = 1,
    ) -> Pixels:
        """One site as (c, h, w): ``channels`` 0-based, ``region`` checked by the caller. ``threads > 1`` splits the
        site's chunks over the shared pool (never from inside a pool task: see :func:`run_tasks`)."""
        if out is None:
            out = np.empty(crop_shape(self.spec, channels, region), dtype=np.uint8)
        if not self.pixels:
            out[...] = 0  # a --no-pixels store: the layout without image data
            return out
        io = store_io(self.url, self.storage_options)
        codec = codec_for(self.array_document)
        key = f"{ref.path}/{SHARD_KEY}"
        executor, tasks = (_pool(threads), min(threads, _MAX_SPLIT)) if threads > 1 else (None, 1)
        full = channels is None and region is None
        try:
            if full:
                codec.decode(io.read(key), out=out, executor=executor, tasks=tasks, expected=ref.shard)
            else:
                index = codec.parse_index(io.read_suffix(key, codec.index_nbytes), ref.shard)
                pieces = _fetch(io, key, codec.ranges_for(index, channels, region))
                codec.assemble(pieces, channels, region, out, executor=executor, tasks=tasks)
        except FileNotFoundError:
            raise ChunkReadError(f"site {ref.site_id}: shard object {key} is missing from store {self.url}") from None
        except (ShardIndexError, ShardDataError) as exc:
            raise ChunkReadError(f"site {ref.site_id}: shard object {key} in store {self.url} is corrupt: {exc}") from None
        except OSError as exc:
            raise ChunkReadError(f"site {ref.site_id}: cannot read shard object {key} from store {self.url}: {exc}") from None
        if full:
            # Every inner chunk carries its own CRC32C and the shard index is bound to the site; the CRC32C of the
            # decoded pixels (about 0.3 ms for a 6 MiB site) also catches a decoder that got it wrong.
            actual = crc32c(out.data if out.flags.c_contiguous else out.tobytes())
            if actual != ref.checksum:
                raise ChunkReadError(
                    f"site {ref.site_id}: shard object {key} in store {self.url} is corrupt: pixels' crc32c "
                    f"{actual} != {ref.checksum} recorded in the index"
                )
        return out

    def read_thumbnail(self, ref: SiteRef, out: Pixels | None = None) -> Pixels:
        """The site's thumbnail level: (6, ceil(H/f), ceil(W/f)) uint8 (f = THUMBNAIL_FACTOR), one small object."""
        shape = self.spec.thumbnail_shape
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        if not self.pixels:
            out[...] = 0
            return out
        io = store_io(self.url, self.storage_options)
        key = f"{ref.path.rsplit('/', 1)[0]}/{THUMBNAIL_LEVEL}/{SHARD_KEY}"
        try:
            out[...] = decode_thumbnail(io.read(key), shape, ref.thumbnail)
        except FileNotFoundError:
            raise ChunkReadError(f"site {ref.site_id}: thumbnail object {key} is missing from store {self.url}") from None
        except ShardDataError as exc:
            raise ChunkReadError(f"site {ref.site_id}: thumbnail object {key} in store {self.url} is corrupt: {exc}") from None
        except OSError as exc:
            raise ChunkReadError(f"site {ref.site_id}: cannot read thumbnail object {key} from store {self.url}: {exc}") from None
        return out


def _fetch(io: StoreIO, key: str, ranges: Mapping[int, tuple[int, int]]) -> dict[int, memoryview]:
    """Fetch the byte ranges of the needed chunks, merging chunks stored back to back into one request."""
    order = sorted(ranges.items(), key=lambda item: item[1][0])
    spans: list[list[Any]] = []  # [start, end, [(flat, start, end), ...]]
    for flat, (start, end) in order:
        if spans and spans[-1][1] == start:
            spans[-1][1] = end
            spans[-1][2].append((flat, start, end))
        else:
            spans.append([start, end, [(flat, start, end)]])
    blobs = io.read_ranges(key, [(s[0], s[1]) for s in spans])
    pieces: dict[int, memoryview] = {}
    for (span_start, span_end, members), blob in zip(spans, blobs, strict=True):
        if len(blob) != span_end - span_start:
            raise ShardDataError(f"bytes {span_start}..{span_end} lie beyond the end of the object")
        view = memoryview(blob)
        for flat, start, end in members:
            pieces[flat] = view[start - span_start : end - span_start]
    return pieces
