"""fsspec at the edges: turning a path or URL (plus storage options) into a filesystem and a path on it.

fsspec is imported when a filesystem is first needed, not with this module: reading a local store goes through the
operating system directly (:func:`local_root`), and importing fsspec (with asyncio) costs about 30 ms of a cold
``open()``.
"""

from __future__ import annotations

import functools
import inspect
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import SpecialFileError, TransferError

if TYPE_CHECKING:
    import fsspec

__all__ = [
    "RETRIES",
    "async_filesystem",
    "fetch",
    "is_http",
    "is_local",
    "is_process_local",
    "join",
    "join_url",
    "object_store_overrides",
    "portable_url",
    "read_regular",
    "resolve",
    "split_zip_url",
]

#: Filesystems whose data lives in the memory of one process: a worker process sees its own, empty, copy.
_PROCESS_LOCAL = frozenset({"memory"})


def resolve(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a plain path or an fsspec URL (``s3://``, ``memory://``, ``file://``...).

    Object-store filesystems (fsspec's async ones: s3fs, gcsfs, adlfs) are tuned for a store that several processes
    write at once (see :func:`object_store_overrides`). The instance is still shared process-wide through fsspec's
    instance cache, but not with callers that configured their own: the overrides are part of its identity.
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(url), **dict(storage_options or {}))
    overrides = object_store_overrides(fs)
    if overrides:
        fs = type(fs)(*fs.storage_args, **{**fs.storage_options, **overrides})
    return fs, str(path).rstrip("/") or str(path)


def local_root(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The path :func:`resolve` would return for ``url`` when it is a plain local path without storage options
    (fsspec's own rule for such paths, without importing fsspec); None for anything else: URLs, chains, options,
    and non-POSIX systems (fsspec's Windows rules are not repeated here)."""
    text = str(url)
    if storage_options or "://" in text or "::" in text or os.sep != "/" or not text:
        return None
    if text.startswith("/"):
        path = text
    elif text.startswith("~"):
        path = os.path.expanduser(text)
    else:
        rest = text[2:] if text.startswith("./") else "" if text == "." else text
        path = f"{os.getcwd()}/{rest}"
    return path.rstrip("/") or path


def object_store_overrides(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Options an object-store filesystem needs here, unless the caller set them.

    * ``use_listings_cache=False``: cluster workers, the coordinator and other converters write the same store, and
      a listing cached before another process wrote a key makes that key look absent to ``exists`` and ``info``,
      and in s3fs even to a whole-object read (which asks for the size first).
    * ``max_concurrency=1`` (s3fs 2025 and later): s3fs asks for an object's size before reading it whole, to split
      large objects into concurrent ranged reads. That is a HEAD before every GET, doubling the requests for PNGs,
      shards and zarr.json documents, none of them near its 50 MB threshold. (It also bounds the concurrency of
      multipart uploads, which start at 100 MB: never used here.)
    """
    if not fs.async_impl:
        return {}
    given = fs.storage_options
    overrides: dict[str, Any] = {}
    if "use_listings_cache" not in given:  # an explicit choice of the caller is kept
        overrides["use_listings_cache"] = False
    if "max_concurrency" not in given and _reads_whole_concurrently(type(fs)):
        overrides["max_concurrency"] = 1
    return overrides


_CONCURRENT_READS: dict[type, bool] = {}


def _reads_whole_concurrently(cls: type) -> bool:
    """Whether ``cls`` is an s3fs-like filesystem whose whole-object reads HEAD first: both its ``_cat_file`` and
    its constructor take ``max_concurrency``."""
    if cls not in _CONCURRENT_READS:
        found = False
        cat_file = getattr(cls, "_cat_file", None)
        if cat_file is not None:
            try:
                # not inspect.signature(cls): fsspec's caching metaclass hides the constructor's parameters;
                # getattr: mypy rejects __init__ read from a class object
                init = getattr(cls, "__init__")  # noqa: B009
                found = all("max_concurrency" in inspect.signature(m).parameters for m in (cat_file, init))
            except (TypeError, ValueError):  # not introspectable: do not guess
                found = False
        _CONCURRENT_READS[cls] = found
    return _CONCURRENT_READS[cls]


def join(base: str, *parts: str) -> str:
    """Join store or filesystem path components with ``/`` (the separator of every fsspec filesystem)."""
    out = base.rstrip("/")
    for part in parts:
        if part:
            out = f"{out}/{part.strip('/')}"
    return out


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else str(fs.protocol[0])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return _protocol(fs) in ("file", "local")


def is_process_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for filesystems that another process cannot see (``memory://``): fine for threads, not for a cluster."""
    return _protocol(fs) in _PROCESS_LOCAL


def portable_url(url: str) -> str:
    """``url`` as another process can resolve it: a relative local path becomes absolute.

    Task arguments travel as URLs and are resolved again in each worker process, whose working directory need not
    be the caller's (``dask worker`` started elsewhere). URLs with a protocol are returned unchanged.
    """
    text = str(url)
    if "://" in text or "::" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def async_filesystem(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """An asynchronous filesystem on the same storage as ``fs``, for zarr-python's ``FsspecStore``.

    zarr-python runs its own event loop. A synchronous instance of an async filesystem (s3fs, gcsfs) is bound to
    fsspec's loop, and its sessions fail with "attached to a different loop" when awaited from zarr's. So async
    filesystems get their own instance created with ``asynchronous=True``, without a listings cache (zarr-python
    reads documents by key and never needs one; a stale one would hide what other processes wrote). It stays in
    fsspec's instance cache, so repeated calls reuse one connection pool rather than leaving unclosed sessions
    behind. Synchronous filesystems (local, memory) are wrapped, keeping the very same instance (a ``memory://``
    store must stay the same dictionary).
    """
    if fs.async_impl:
        options = {**fs.storage_options, "asynchronous": True, "use_listings_cache": False}
        filesystem: fsspec.AbstractFileSystem = type(fs)(*fs.storage_args, **options)
        return filesystem
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    return AsyncFileSystemWrapper(fs, asynchronous=True)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def special_file_kind(path: str) -> str | None:
    """For a local path: what it is if it is not a regular file (following symlinks), else None. Only ``stat``s."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "a broken symlink"
        raise
    return None if stat.S_ISREG(mode) else _kind(mode)


def refuse_special(name: str, kind: str) -> SpecialFileError:
    return SpecialFileError(f"{name}: is {kind}, not a regular file; refusing to read it")


def open_regular(path: str, name: str) -> int:
    """Open a local file for reading, only if it is a regular file: checked by ``stat`` before opening (a FIFO is
    never opened), and again on the open descriptor (opened non-blocking, so a FIFO swapped in meanwhile cannot
    block). Returns the descriptor; ``name`` is how errors name the file."""
    kind = special_file_kind(path)
    if kind is not None:
        raise refuse_special(name, kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse_special(name, _kind(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_local(path: str, name: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start:end`` of the local file ``path`` (``start`` < 0: that many from the end; ``end`` None: to the
    end), refusing anything but a regular file (see :func:`open_regular`)."""
    fd = open_regular(path, name)
    try:
        if start == 0 and end is None:
            with os.fdopen(fd, "rb") as handle:
                fd = -1  # closed by the handle
                return handle.read()
        size = os.fstat(fd).st_size
        first = max(0, size + start) if start < 0 else start
        last = size if end is None else min(end, size)
        return os.pread(fd, max(0, last - first), first)
    finally:
        if fd >= 0:
            os.close(fd)


def read_regular(fs: fsspec.AbstractFileSystem, path: str, name: str) -> bytes:
    """The whole content of ``path`` on ``fs``; locally, refusing anything but a regular file (see
    :func:`open_regular`). Object stores have no FIFOs or devices: one GET, no extra request."""
    if is_local(fs):
        return read_local(path, name)
    return bytes(fs.cat_file(path))
def is_http(fs: fsspec.AbstractFileSystem) -> bool:
    """HTTP(S): listings are parsed from HTML pages and carry no sizes; every file is fetched by URL."""
    return _protocol(fs) in ("http", "https")


def join_url(url: str, rel: str) -> str:
    """``rel`` appended to the path of ``url``. In an fsspec chain (``simplecache::s3://b/p``) the path belongs to
    the last link; a trailing ``/`` of ``url`` (an HTTP directory) is kept out of the result."""
    if not rel:
        return url
    head, sep, last = url.rpartition("::")
    return f"{head}{sep}{join(last, rel)}"


def split_zip_url(url: str) -> tuple[str, str] | None:
    """``zip://INNER::TARGET`` or ``zip::TARGET`` as ``(INNER, TARGET)``; None for any other URL.

    ``INNER`` is a folder or member inside the archive (``""``: its root); ``TARGET`` the URL of the archive itself,
    which may be chained in turn (``zip::simplecache::https://host/x.zip``).
    """
    text = str(url)
    for prefix in ("zip://", "zip::"):
        if text.startswith(prefix):
            rest = text[len(prefix):]
            if prefix == "zip::":
                return "", rest
            inner, sep, target = rest.partition("::")
            if not sep or not target:
                return None
            return inner.strip("/"), target
    return None


# --- bounded retries of source reads ----------------------------------------------------------------------------

#: A read that fails transiently (HTTP 5xx or 429, connection lost, short transfer) is tried this many times more.
RETRIES = 3
#: Pause before the first retry; doubled before each further one (0.25 + 0.5 + 1 s at most in all).
BACKOFF_SECONDS = 0.25


@functools.cache
def _client_errors() -> tuple[type[BaseException], ...]:
    """aiohttp's error classes (HTTP filesystems), when aiohttp is installed: they are not all OSErrors."""
    try:
        import aiohttp
    except ImportError:  # no HTTP filesystem without it
        return ()
    return (aiohttp.ClientError,)


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a transfer may fail with (a subset of which, by status, is retried): OSError, timeouts, aiohttp's."""
    return (OSError, TimeoutError, *_client_errors())


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def describe_error(exc: BaseException) -> str:
    """A short account of a failed transfer: the HTTP status and reason when there is one."""
    status = _status_of(exc)
    if status is not None:
        reason = getattr(exc, "message", "") or ""
        return f"HTTP {status} {reason}".rstrip()
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text != exc.__class__.__name__ else text


def fetch(
    what: str,
    read: Callable[[], bytes],
    *,
    expected: int | None = None,
    retries: int = RETRIES,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """``read()``, retried (bounded, with backoff) when it fails transiently or returns other than ``expected``
    bytes; then :class:`TransferError` naming ``what`` (a URL, or a member and its archive) and the last status.

    Errors that retrying cannot fix propagate at once: ``FileNotFoundError`` (callers know whether a missing file is
    the file's problem or the server's), permission errors, and HTTP 4xx statuses other than 408 and 429 (as a
    TransferError).
    """
    problem = "no attempt"
    transient = transient_errors()
    for attempt in range(retries + 1):
        if attempt:
            sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            data = read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, SpecialFileError):
            raise
        except transient as exc:
            status = _status_of(exc)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise TransferError(f"{what}: {describe_error(exc)}") from None
            problem = describe_error(exc)
            continue
        if expected is not None and len(data) > expected:  # retrying would fetch as much again
            raise TransferError(
                f"{what}: {len(data)} bytes received for {expected} asked: the server ignores Range requests"
            )
        if expected is not None and len(data) < expected:
            problem = f"short transfer: {len(data)} of {expected} bytes"
            continue
        return data
    raise TransferError(f"{what}: {problem} (after {retries + 1} attempts)")
