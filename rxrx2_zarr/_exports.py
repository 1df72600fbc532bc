"""Lazy exports of a package: its public names are imported from their modules on first use, so that importing
the package costs nothing (``open()`` needs the reader only; the converter, pandas, zarr-python and the generator
each cost tens to hundreds of milliseconds)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], public: Iterable[str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each name to the module
    (relative to ``package``) that defines it; a name once resolved is stored in ``namespace`` (the package's
    globals), so later look-ups do not come back here."""
    names = sorted(public)

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
