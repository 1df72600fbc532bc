"""fsspec at the edges: turning a path or URL (plus storage options) into a filesystem and a path on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.core import url_to_fs

__all__ = ["is_local", "join", "resolve"]


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
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


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
