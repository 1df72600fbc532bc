"""Store I/O through fsspec: one small object that the converter and the reader share.

Keys are ``/``-separated and relative to the store root. Every key is checked before use so that a key taken
from an untrusted store (the index's ``path`` column) can never address anything outside the store.

Object stores: every write is one whole object (a site's shard is one PUT), so concurrent writers never
read-modify-write a shared object, and a reader sees a site's old object or its new one, never a mix. The
filesystem comes from :func:`._fs.resolve` without a listings cache: other processes (cluster workers, a second
converter) write the same store, and a listing made before a worker wrote a key would make that key look absent
(to s3fs even when reading it).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import _fs
from ._errors import StoreFormatError, StoreWriteError

if TYPE_CHECKING:
    import fsspec

__all__ = ["StoreIO", "check_key", "store_io"]

_KEY_PART = re.compile(r"^[A-Za-z0-9._\-]+$")
#: Write failures that retrying cannot fix: the device is full or the quota is exhausted.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative store key, else raise :class:`StoreFormatError`."""
    parts = key.split("/") if isinstance(key, str) else []
    if not parts or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise StoreFormatError(f"unsafe store key {key!r}: must be a relative path of plain names, no '..'")
    return key


def _named_if_full(exc: OSError, url: str, what: str) -> OSError:
    """A full disk or quota as a :class:`StoreWriteError` naming the store and what was being written; any other
    OSError keeps its type (a transient one is retried by the cluster)."""
    if exc.errno not in _NO_SPACE or isinstance(exc, StoreWriteError):
        return exc
    return StoreWriteError(exc.errno, f"{url}: no space left to write {what}: {exc.strerror or exc}")


@contextlib.contextmanager
def naming_full_disk(url: str, what: str) -> Iterator[None]:
    """Writes through another library (zarr-python's index and embeddings arrays) report a full disk like ours."""
    try:
        yield
    except OSError as exc:
        error = _named_if_full(exc, url, what)
        if error is exc:
            raise
        raise error from exc


class StoreIO:
    """Read and write whole objects, byte ranges and listings under one store root (a path or fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        root = _fs.local_root(self.url, self.storage_options)
        self._fs: fsspec.AbstractFileSystem | None = None
        if root is None:
            self._fs, self.root = _fs.resolve(self.url, self.storage_options)
            self.local = _fs.is_local(self._fs)
        else:  # a plain local path: reads go to the OS, the filesystem object is made (fsspec imported) when needed
            self.root, self.local = root, True

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of the store (listings, writes, and every access to a remote store)."""
        if self._fs is None:
            self._fs, _ = _fs.resolve(self.url, self.storage_options)
        return self._fs

    @property
    def portable_url(self) -> str:
        """The URL as a worker process can open it (a relative local path made absolute)."""
        return _fs.portable_url(self.url)

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable for worker processes: rebuilt there from the URL (made absolute: a worker's working directory
        # is its own) and the options
        return (StoreIO, (self.portable_url, self.storage_options))

    def path(self, key: str) -> str:
        return _fs.join(self.root, check_key(key))

    # --- reads ----------------------------------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        """A whole object. Locally only a regular file is read: a FIFO, device or socket in its place raises
        :class:`~rxrx2_zarr.SpecialFileError` naming ``key``, without blocking."""
        if self.local:
            return _fs.read_local(self.path(key), key)
        return bytes(self.fs.cat_file(self.path(key)))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if self.local:
            return _fs.read_local(self.path(key), key, start, end)
        return bytes(self.fs.cat_file(self.path(key), start=start, end=end))

    def read_suffix(self, key: str, nbytes: int) -> bytes:
        """The last ``nbytes`` of an object (one ranged request on object stores)."""
        if self.local:
            return _fs.read_local(self.path(key), key, -nbytes)
        return bytes(self.fs.cat_file(self.path(key), start=-nbytes))

    def read_ranges(self, key: str, ranges: Iterable[tuple[int, int]]) -> list[bytes]:
        spans = list(ranges)
        path = self.path(key)
        if not spans:
            return []
        if self.local:
            # one open, several preads: cat_ranges would reopen the file per range
            with open(path, "rb") as handle:
                return [os.pread(handle.fileno(), end - start, start) for start, end in spans]
        return [
            bytes(b)
            for b in self.fs.cat_ranges([path] * len(spans), [s for s, _ in spans], [e for _, e in spans])
        ]

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Several whole objects, fetched concurrently on object stores; absent ones map to None."""
        wanted = list(keys)
        if not wanted:
            return {}
        paths = [self.path(k) for k in wanted]
        if self.local:
            out: dict[str, bytes | None] = {}
            for key, path in zip(wanted, paths, strict=True):
                try:
                    out[key] = _fs.read_local(path, key)
                except FileNotFoundError:
                    out[key] = None
            return out
        # cat_ranges, not cat: no glob expansion of the paths; concurrent requests on async filesystems
        found = self.fs.cat_ranges(
            paths, [None] * len(paths), [None] * len(paths), on_error="return"
        )
        result: dict[str, bytes | None] = {}
        for key, value in zip(wanted, found, strict=True):
            if isinstance(value, FileNotFoundError):
                result[key] = None
            elif isinstance(value, BaseException):
                raise value
            else:
                result[key] = bytes(value)
        return result

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def is_empty_or_missing(self) -> bool:
        if not self.fs.exists(self.root):
            return True
        if self.fs.isfile(self.root):
            return False
        return len(self.fs.ls(self.root, detail=False)) == 0

    def find(self, prefix: str = "", detail: bool = False) -> dict[str, int]:
        """``{key: size}`` of every object under ``prefix`` (sizes are 0 unless ``detail``), listed afresh."""
        if not detail:
            base = self.path(prefix) if prefix else self.root
            if not self.fs.exists(base):
                return {}
            return {self._relative(p): 0 for p in self.fs.find(base)}
        return {key: size for key, (size, _) in self.find_typed(prefix).items()}

    def find_typed(self, prefix: str = "") -> dict[str, tuple[int, str | None]]:
        """``{key: (size, special)}`` of every entry under ``prefix`` that is not a directory, from one listing;
        ``special`` says what a local entry is when it is not a regular file (``"a FIFO (named pipe)"``, a device,
        a socket, a symlink to one, a broken symlink), else None. Nothing is opened."""
        base = self.path(prefix) if prefix else self.root
        if not self.fs.exists(base):
            return {}
        found = self.fs.find(base, detail=True)
        out: dict[str, tuple[int, str | None]] = {}
        for p, info in found.items():
            special: str | None = None
            if self.local and info.get("type") != "file":
                try:
                    special = _fs.special_file_kind(str(p)) or "not a regular file"
                except OSError:
                    special = "unreadable"
            out[self._relative(str(p))] = (int(info.get("size") or 0), special)
        return out

    def _relative(self, path: str) -> str:
        """A listed path as a key: relative to the root, whatever the root (empty at the top of a zip, a URL)."""
        text = str(path)
        root = self.root.rstrip("/")
        if root and text.startswith(root + "/"):
            return text[len(root) + 1 :]
        return text.lstrip("/") if not root else text[len(root) :].lstrip("/")

    # --- writes ---------------------------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """Write a whole object. Locally the write is atomic (temp file + rename), so a killed writer never leaves
        a torn object; object stores make whole-object PUTs atomic themselves."""
        path = self.path(key)
        try:
            if self.local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{uuid.uuid4().hex}.partial"
                try:
                    with open(tmp, "wb") as handle:
                        handle.write(data)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise _named_if_full(exc, self.url, f"{key} ({len(data):,} bytes)") from exc

    def write_many(self, items: Mapping[str, bytes]) -> None:
        """Write many small objects (bulk metadata); remote filesystems send them concurrently."""
        if self.local:
            for key, data in items.items():
                self.write(key, data)
        elif items:
            self.fs.pipe({self.path(k): v for k, v in items.items()})

    def write_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; return False if it already exists.

        Atomic locally (``O_EXCL``) and on ``memory://``. On object stores the PUT is conditional
        (``If-None-Match: *`` through fsspec's ``mode="create"``): atomic on AWS S3 (and moto, and any
        S3-compatible store that implements the header); filesystems without a native create-if-absent fall back
        to fsspec's check-then-put. The existence check first is the only guard on a store that silently ignores
        the header, and saves a failing PUT in the common case.
        """
        path = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        if self.fs.exists(path):
            return False
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    # --- zarr -----------------------------------------------------------------------------------------------------

    def zarr_store(self, read_only: bool = True) -> Any:
        """A zarr-python store over the same filesystem and root (for the index and embeddings arrays)."""
        import zarr.storage

        if self.local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore(_fs.async_filesystem(self.fs), path=self.root, read_only=read_only)


def store_io(url: str, storage_options: Mapping[str, Any] | None = None) -> StoreIO:
    """The process's one :class:`StoreIO` for a store: every reader and site task of a process shares it (and
    with it the filesystem's connection pool), rather than resolving the URL again per read."""
    options = json.dumps(dict(storage_options or {}), sort_keys=True, default=str)
    return _cached_store_io(str(url), options, os.getpid())


@functools.lru_cache(maxsize=16)
def _cached_store_io(url: str, options_json: str, pid: int) -> StoreIO:
    # the pid is part of the key: a forked child must not reuse its parent's filesystem (an s3fs session is bound
    # to the parent's event loop and sockets)
    del pid
    return StoreIO(url, json.loads(options_json))
