"""CRC32C (Castagnoli), the checksum of every object and site this package writes: the ``crc32c`` package's
function, loaded without the package's ``__init__``.

``import crc32c`` costs 20-40 ms of a cold ``open()`` (most of it ``importlib.metadata``, which the package's
``__init__`` imports to set ``__version__``), against under 1 ms for its compiled extension module alone. So the
extension is loaded straight from the installed package's directory; if that directory or file is not where this
expects (a future layout of the package, a zipped install), the package is imported the ordinary way. Either way the
function is the package's own; nothing is registered in ``sys.modules``, so ``import crc32c`` elsewhere is unchanged.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import cast

__all__ = ["crc32c"]


def _extension() -> ModuleType | None:
    """``crc32c._crc32c`` loaded from its file, or None where it cannot be found that way."""
    spec = importlib.util.find_spec("crc32c")  # a top-level name: found without importing the package
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for directory in locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, f"_crc32c{suffix}")
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
            module_spec = importlib.util.spec_from_file_location("crc32c._crc32c", path, loader=loader)
            if module_spec is None:
                return None
            module = importlib.util.module_from_spec(module_spec)
            loader.exec_module(module)
            return module
    return None


def _load() -> Callable[..., int]:
    try:
        module = _extension()
    except ImportError:  # the file is there but does not load as the extension: the ordinary import decides
        module = None
    function = getattr(module, "crc32c", None)
    if not callable(function):
        import crc32c as package

        function = package.crc32c
    return cast("Callable[..., int]", function)


#: ``crc32c(data) -> int``: the CRC32C of a bytes-like object (the GIL is released on large inputs).
crc32c: Callable[..., int] = _load()
