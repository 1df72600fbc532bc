"""fsspec at the edges: turning a path or URL (plus storage options) into a filesystem and a path on it."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import url_to_fs

__all__ = [
    "async_filesystem",
    "is_local",
    "is_process_local",
    "join",
    "portable_url",
    "resolve",
    "whole_read_options",
]

#: Filesystems whose data lives in the memory of one process: a worker process sees its own, empty, copy.
_PROCESS_LOCAL = frozenset({"memory"})


def resolve(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a plain path or an fsspec URL (``s3://``, ``memory://``, ``file://``...).

    Object-store filesystems (fsspec's async ones: s3fs, gcsfs, adlfs) come without a listings cache. A store is
    written by several processes at once (cluster workers, the coordinator, a second converter), and a listing
    cached before another process wrote a key makes that key look absent to ``exists``, ``info`` and, in s3fs,
    even to a whole-object read. The instance is still shared process-wide (fsspec's instance cache), but not with
    callers that asked for a cached one: ``use_listings_cache`` is part of the instance's identity.
    """
    fs, path = url_to_fs(str(url), **dict(storage_options or {}))
    if fs.async_impl and fs.storage_options.get("use_listings_cache", True):
        fs = type(fs)(*fs.storage_args, **{**fs.storage_options, "use_listings_cache": False})
    return fs, str(path).rstrip("/") or str(path)


def whole_read_options(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Extra ``cat_file``/``cat_ranges`` arguments that make a whole-object read one request.

    s3fs (2025 and later) asks for an object's size before reading it whole, to split large objects into
    concurrent ranged reads: a HEAD before every GET, which doubles the requests for PNGs and documents (none of
    them near its 50 MB threshold). ``max_concurrency=1`` skips it; older s3fs has neither the HEAD nor the argument.
    """
    return {"max_concurrency": 1} if _cat_file_has(type(fs), "max_concurrency") else {}


_SIGNATURES: dict[tuple[type, str], bool] = {}


def _cat_file_has(cls: type, parameter: str) -> bool:
    key = (cls, parameter)
    if key not in _SIGNATURES:
        method = getattr(cls, "_cat_file", None)
        try:
            found = (
                bool(getattr(cls, "async_impl", False))
                and method is not None
                and (parameter in inspect.signature(method).parameters)
            )
        except (TypeError, ValueError):  # not introspectable: do not guess
            found = False
        _SIGNATURES[key] = found
    return _SIGNATURES[key]


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
