"""fsspec at the edges: turning a path or URL (plus storage options) into a filesystem and a path on it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import url_to_fs

__all__ = ["async_filesystem", "is_local", "is_process_local", "join", "portable_url", "resolve"]

#: Filesystems whose data lives in the memory of one process: a worker process sees its own, empty, copy.
_PROCESS_LOCAL = frozenset({"memory"})


def resolve(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a plain path or an fsspec URL (``s3://``, ``memory://``, ``file://``...)."""
    fs, path = url_to_fs(str(url), **dict(storage_options or {}))
    return fs, str(path).rstrip("/") or str(path)


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
