"""The store's small Zarr arrays, read with zarr-python: the embeddings matrix, and a layout-1 store's index columns.

Stores are untrusted input, so zarr-python never sees an array document this module has not checked: every codec
name must be in :data:`ALLOWED_CODECS` (no codec is instantiated from a store's metadata otherwise), the chain must
be one this package writes (``bytes`` or ``vlen-utf8``, then ``zstd``, then optionally ``crc32c``), and shapes and
chunk shapes must be plausible. The array is then built from that very document (the store's ``zarr.json`` is not
read a second time), over a store wrapper that adds what zarr-python leaves out:

* a missing chunk is an error: zarr-python would return the fill value (NaN embeddings, blank treatments), but this
  package writes every chunk of these arrays, so an absent one means a damaged store;
* a chunk's zstd frame must declare its decoded size, and no more than the chunk holds, before it is decoded: a
  few kilobytes of a crafted frame could otherwise expand to gigabytes (a decompression bomb).

Each chunk's ``crc32c`` is checked by zarr-python's codec. Importing this module imports no zarr: opening a layout-2
store parses array documents here but reads no array.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._errors import ChunkReadError, StoreFormatError
from ._layout import ALLOWED_CODECS
from ._storage import StoreIO

__all__ = ["ArrayDocument", "check_codec_names", "parse_json", "read_array"]

#: Sanity bounds for untrusted documents: more rows than this, or more features, is a corrupt store.
MAX_ROWS = 50_000_000
MAX_FEATURES = 1_000_000
#: The longest metadata string a chunk may hold (bounds a string chunk's decoded size).
MAX_TEXT_BYTES = 4096
#: How many elements a chunk may exceed its array by (chunks may overhang the array; absurd ones would allocate
#: without bound).
MAX_CHUNK_SLACK = 2**24
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_codec_names(codecs: Any, where: str) -> None:
    """Refuse any codec name outside the allowlist, including codecs nested in a sharding configuration."""
    if not isinstance(codecs, list) or not codecs:
        raise StoreFormatError(f"{where}: 'codecs' must be a non-empty list")
    for codec in codecs:
        if not isinstance(codec, Mapping):
            raise StoreFormatError(f"{where}: codec entry {codec!r} is not an object with a 'name'")
        name = codec.get("name")
        if not isinstance(name, str) or name not in ALLOWED_CODECS:
            raise StoreFormatError(f"{where}: codec {name!r} is not one this library writes; refusing to read it")
        config = codec.get("configuration")
        if config is not None and not isinstance(config, Mapping):
            raise StoreFormatError(f"{where}: codec {name!r} has a malformed configuration")
        if isinstance(config, Mapping):
            for nested in ("codecs", "index_codecs"):
                if nested in config:
                    check_codec_names(config[nested], where)


def parse_json(data: bytes | None, where: str) -> Any:
    """A JSON document read from the store (None: the object is absent)."""
    if data is None:
        raise StoreFormatError(f"{where}: missing")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreFormatError(f"{where}: not valid JSON ({exc})") from None


def _ints(value: Any, n: int, where: str, what: str, minimum: int) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in value)
    ):
        raise StoreFormatError(f"{where}: {what} must be {n} integer(s) >= {minimum}, got {value!r}")
    return tuple(value)


def _check_chain(codecs: list[Mapping[str, Any]], data_type: str, where: str) -> None:
    """The chains this package writes: (bytes | vlen-utf8), zstd, then crc32c (layout 2) or nothing (layout 1)."""
    names = [codec.get("name") for codec in codecs]
    first = "vlen-utf8" if data_type == "string" else "bytes"
    if names not in ([first, "zstd"], [first, "zstd", "crc32c"]):
        raise StoreFormatError(f"{where}: codec chain {names} is not one this library writes ({first}, zstd, crc32c)")


@dataclass(frozen=True)
class ArrayDocument:
    """A checked array document: ``key`` is the array's key in the store, ``document`` its ``zarr.json`` as JSON
    text (hashable, and what zarr-python is given), ``chunk_bytes`` the most bytes one chunk may decode to."""

    key: str
    document: str
    shape: tuple[int, ...]
    chunk_bytes: int
    checksummed: bool

    @classmethod
    def parse(cls, doc: Any, key: str, data_types: frozenset[str], ndim: int, where: str) -> ArrayDocument:
        if not isinstance(doc, Mapping) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise StoreFormatError(f"{where}: not a Zarr v3 array document")
        # codec names first: nothing below looks at a codec's configuration before its name is known to be safe
        check_codec_names(doc.get("codecs"), where)
        if doc.get("storage_transformers") not in (None, []):
            raise StoreFormatError(f"{where}: storage transformers are not supported")
        data_type = doc.get("data_type")
        if data_type not in data_types:
            raise StoreFormatError(f"{where}: data type {data_type!r}, expected one of {sorted(data_types)}")
        _check_chain(doc["codecs"], data_type, where)
        shape = _ints(doc.get("shape"), ndim, where, "shape", 0)
        if shape[0] > MAX_ROWS or (ndim > 1 and shape[1] > MAX_FEATURES):
            raise StoreFormatError(f"{where}: implausible shape {list(shape)}")
        grid = doc.get("chunk_grid")
        if not isinstance(grid, Mapping) or grid.get("name") != "regular" or not isinstance(grid.get("configuration"), Mapping):
            raise StoreFormatError(f"{where}: only a regular chunk grid is supported, got {grid!r}")
        chunks = _ints(grid["configuration"].get("chunk_shape"), ndim, where, "chunk shape", 1)
        elements = math.prod(chunks)
        if elements > math.prod(shape) + MAX_CHUNK_SLACK:
            raise StoreFormatError(f"{where}: chunk shape {list(chunks)} is implausible for shape {list(shape)}")
        # vlen-utf8: a 4-byte count, then a 4-byte length and the text of each item
        itemsize = 4 + MAX_TEXT_BYTES if data_type == "string" else np.dtype(str(data_type)).itemsize
        checksummed = doc["codecs"][-1].get("name") == "crc32c"
        return cls(key, json.dumps(doc), shape, 4 + elements * itemsize, checksummed)


class _MissingChunk(LookupError):
    """A chunk key the store does not hold (raised through zarr-python's read, caught by :func:`read_array`)."""


class _OversizedChunk(ValueError):
    """A chunk whose zstd frame does not declare its size, or declares more than the chunk can hold."""


def _zstd_content_size(data: bytes | memoryview) -> int | None:
    """The decoded size a zstd frame header declares (None when absent), read before anything is decoded."""
    if len(data) < 6 or bytes(data[:4]) != _ZSTD_MAGIC:
        raise _OversizedChunk("not a zstd frame")
    descriptor = data[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    position = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(data) < position + size:
        raise _OversizedChunk("truncated zstd frame header")
    value = int.from_bytes(data[position : position + size], "little")
    return value + 256 if size == 2 else value


@functools.cache
def _strict_store_class() -> type[Any]:
    """zarr-python's store wrapper, subclassed on first read (importing zarr at module level would weigh on open)."""
    from zarr.storage import WrapperStore

    class StrictStore(WrapperStore[Any]):
        """A missing chunk raises; a zstd frame is bounded before it is decoded. ``limit``: the most bytes one
        chunk of the array read through this store may decode to."""

        def __init__(self, store: Any, limit: int) -> None:
            super().__init__(store)
            self.limit = limit

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            buffer = await super().get(key, prototype, byte_range)
            if buffer is None:
                raise _MissingChunk(key)
            declared = _zstd_content_size(buffer.as_numpy_array().data)
            if declared is None or declared > self.limit:
                raise _OversizedChunk(f"{key}: zstd frame declares {declared} bytes (a chunk holds at most {self.limit})")
            return buffer

    return StrictStore


@functools.lru_cache(maxsize=32)
def _zarr_array(io: StoreIO, array: ArrayDocument) -> Any:
    """The zarr-python array of ``array`` on ``io`` (cached: building it parses the document again)."""
    from zarr import Array
    from zarr.core.array import AsyncArray
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.storage import StorePath

    where = f"{io.url}: {array.key}/zarr.json"
    try:
        metadata = ArrayV3Metadata.from_dict(json.loads(array.document))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{where}: not an array document zarr-python reads ({exc})") from None
    store = _strict_store_class()(io.zarr_store(), array.chunk_bytes)
    return Array(AsyncArray(metadata, StorePath(store, array.key)))


def read_array(io: StoreIO, array: ArrayDocument, rows: npt.NDArray[np.int64] | None = None) -> npt.NDArray[Any]:
    """The whole array, or only ``rows`` of it (reading only the chunks that hold them). Text comes back as an
    object array of ``str``; a missing or corrupt chunk raises :class:`ChunkReadError` naming the array."""
    where = f"{io.url}: {array.key}"
    zarray = _zarr_array(io, array)
    if rows is not None and not len(rows):
        return np.empty((0, *array.shape[1:]), dtype=object if zarray.dtype.kind == "T" else zarray.dtype)
    try:
        rest = (slice(None),) * (len(array.shape) - 1)
        values = zarray[...] if rows is None else zarray.oindex[(np.asarray(rows, dtype=np.int64), *rest)]
    except _MissingChunk as exc:
        raise ChunkReadError(f"{where}: chunk {exc} is missing (the store is damaged; it would read as fill values)") from None
    except _OversizedChunk as exc:
        raise StoreFormatError(f"{where}: corrupt chunk: {exc}") from None
    except (ValueError, RuntimeError) as exc:  # what zarr-python's codecs raise on a corrupt chunk
        what = "fails its crc32c checksum or does not decode" if array.checksummed else "does not decode"
        raise ChunkReadError(f"{where}: a chunk {what} (corrupt data): {exc}") from None
    except OSError as exc:
        raise ChunkReadError(f"{where}: cannot be read: {exc}") from None
    out = np.asarray(values)
    return out.astype(object) if out.dtype.kind == "T" else out
