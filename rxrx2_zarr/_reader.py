"""Reading an rxrx2-zarr store lazily: ``open(url) -> Dataset``.

Opening reads a fixed number of objects whatever the number of sites: the root ``zarr.json``, the documents and
chunks of the root index arrays, the embeddings array's document (its chunks are read on first use of
:attr:`Dataset.embeddings`) and one site array's document, to cross-check the site array specification recorded in
the root attributes. Nothing walks plates, wells or sites.

Stores are treated as untrusted input. Every array document is parsed here, and its codec names are checked
against :data:`ALLOWED_CODECS` before any byte of the array is decoded; zarr-python is not involved at all (its
per-chunk overhead would make reads slow, see ``_shard.py``), so no codec is ever instantiated from a store's
metadata. Index ``path`` values must be safe keys and exactly the path their ``site_id`` maps to. Missing or corrupt
shards raise :class:`ChunkReadError` naming the site and the object; a full-site read is checked against the
CRC32C of the pixels recorded in the index, so corruption inside a chunk cannot come back as plausible pixels.

Pixels are read by :class:`ShardCodec`: a full site is one request for its shard object; a crop or a channel subset
is a suffix request for the shard index, then one request per run of adjacent inner chunks it intersects.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np
import numpy.typing as npt

from ._channels import CHANNEL_SPECS
from ._columns import METADATA_COLUMNS
from ._errors import ChunkReadError, SiteNotFoundError, StoreFormatError
from ._layout import (
    ALLOWED_CODECS,
    EMBEDDINGS_ARRAY,
    INDEX_CHECKSUM_COLUMNS,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_PARQUET,
    INDEX_STRING_COLUMNS,
    LAYOUT_VERSION,
    SHARD_KEY,
    THUMBNAIL_LEVEL,
    TRANSCODABLE_LAYOUTS,
    SiteArraySpec,
)
from ._paths import CHANNELS, check_experiment
from ._shard import ShardCodec, ShardDataError, ShardIndexError, decode_thumbnail
from ._storage import StoreIO, check_key

if TYPE_CHECKING:
    import dask.array
    import pandas as pd
    import xarray

__all__ = ["Dataset", "open"]

Pixels = npt.NDArray[np.uint8]
Region = tuple[int, int, int, int]

_STRING_COLUMNS = INDEX_STRING_COLUMNS
_INT_COLUMNS = ("plate", "site")
_FLOAT_COLUMNS = ("treatment_conc",)
_NUMERIC_COLUMNS = (*_INT_COLUMNS, *_FLOAT_COLUMNS)
_INTEGER_TYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"})
_COLUMN_TYPES: Mapping[str, frozenset[str]] = {
    **{c: frozenset({"string"}) for c in _STRING_COLUMNS},
    **{c: _INTEGER_TYPES for c in _INT_COLUMNS},
    "treatment_conc": frozenset({"float32", "float64"}),
    **{c: frozenset({"uint32", "uint64", "int64"}) for c in INDEX_CHECKSUM_COLUMNS},
}
_CHECKSUM_COLUMNS = INDEX_CHECKSUM_COLUMNS
#: The index columns of layout 1 (before the shard and thumbnail checksums).
_LEGACY_INDEX_COLUMNS: tuple[str, ...] = (*METADATA_COLUMNS, "path", "checksum")
_NUMPY_TYPES = {
    "bool": "?",
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "int64": "i8",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "float32": "f4",
    "float64": "f8",
}
#: Sanity bounds for untrusted documents: more sites than this, or a longer metadata string, is a corrupt store.
MAX_SITES = 50_000_000
MAX_TEXT_BYTES = 4096
MAX_EMBEDDING_DIM = 1_000_000
#: How many elements a chunk may exceed its array by (chunks may overhang the array; absurd ones would make a
#: missing chunk's fill value allocate without bound).
MAX_CHUNK_SLACK = 2**24
#: Relative tolerance of ``select(treatment_conc=value)``: the release stores doses with float artefacts
#: (``0.0009999999999999`` for 1e-3), which an exact comparison would make unselectable by their nominal value.
CONC_RTOL = 1e-9


# --- array documents: a minimal, strict Zarr v3 reader for the index and embeddings ------------------------------


def _check_codec_names(codecs: Any, where: str) -> None:
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
                    _check_codec_names(config[nested], where)


def _positive_ints(value: Any, n: int, where: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in value)
    ):
        raise StoreFormatError(f"{where}: {what} must be {n} integer(s) >= {minimum}, got {value!r}")
    return tuple(value)


def _fill_value(value: Any, data_type: str, where: str) -> Any:
    if data_type == "string":
        if not isinstance(value, str):
            raise StoreFormatError(f"{where}: fill_value {value!r} is not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StoreFormatError(f"{where}: unsupported fill_value {value!r}")
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value not in special or not data_type.startswith("float"):
            raise StoreFormatError(f"{where}: unsupported fill_value {value!r} for {data_type}")
        return special[value]
    return value


@dataclass(frozen=True)
class _ArrayDoc:
    """A validated array document: a regular chunk grid and a codec chain of (bytes | vlen-utf8) + compressors."""

    key: str
    shape: tuple[int, ...]
    data_type: str
    chunks: tuple[int, ...]
    encoding: str
    separator: str
    endian: str
    compressors: tuple[tuple[str, Mapping[str, Any]], ...]
    fill_value: Any

    @classmethod
    def parse(cls, doc: Any, key: str, data_types: frozenset[str], ndim: int, where: str) -> _ArrayDoc:
        if not isinstance(doc, Mapping) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise StoreFormatError(f"{where}: not a Zarr v3 array document")
        # Codec names first: nothing below looks at a codec's configuration before its name is known to be safe.
        _check_codec_names(doc.get("codecs"), where)
        if doc.get("storage_transformers") not in (None, []):
            raise StoreFormatError(f"{where}: storage transformers are not supported")
        data_type = doc.get("data_type")
        if data_type not in data_types:
            raise StoreFormatError(f"{where}: data type {data_type!r}, expected one of {sorted(data_types)}")
        shape = _positive_ints(doc.get("shape"), ndim, where, "shape", minimum=0)
        if shape[0] > MAX_SITES or (ndim > 1 and shape[1] > MAX_EMBEDDING_DIM):
            raise StoreFormatError(f"{where}: implausible shape {list(shape)}")
        grid = doc.get("chunk_grid")
        if not isinstance(grid, Mapping) or grid.get("name") != "regular" or not isinstance(grid.get("configuration"), Mapping):
            raise StoreFormatError(f"{where}: only a regular chunk grid is supported, got {grid!r}")
        chunks = _positive_ints(grid["configuration"].get("chunk_shape"), ndim, where, "chunk shape")
        if math.prod(chunks) > math.prod(shape) + MAX_CHUNK_SLACK:
            raise StoreFormatError(f"{where}: chunk shape {list(chunks)} is implausible for shape {list(shape)}")
        encoding_doc = doc.get("chunk_key_encoding", {"name": "default"})
        encoding = encoding_doc.get("name") if isinstance(encoding_doc, Mapping) else None
        config = (encoding_doc.get("configuration") or {}) if isinstance(encoding_doc, Mapping) else {}
        separator = config.get("separator", "/" if encoding == "default" else ".") if isinstance(config, Mapping) else None
        if encoding not in ("default", "v2") or separator not in ("/", "."):
            raise StoreFormatError(f"{where}: unsupported chunk key encoding {encoding_doc!r}")
        codecs = doc["codecs"]
        first, rest = codecs[0], codecs[1:]
        endian = "little"
        if data_type == "string":
            if first.get("name") != "vlen-utf8":
                raise StoreFormatError(f"{where}: a string array must start with the vlen-utf8 codec")
        else:
            if first.get("name") != "bytes":
                raise StoreFormatError(f"{where}: a {data_type} array must start with the bytes codec")
            endian = (first.get("configuration") or {}).get("endian", "little")
            if endian not in ("little", "big"):
                raise StoreFormatError(f"{where}: unsupported endianness {endian!r}")
        compressors = []
        for codec in rest:
            name = codec.get("name")
            if name not in ("zstd", "blosc", "crc32c"):
                raise StoreFormatError(f"{where}: codec {name!r} in an unexpected position of the chain")
            compressors.append((str(name), dict(codec.get("configuration") or {})))
        fill = _fill_value(doc.get("fill_value"), data_type, where)
        return cls(key, shape, data_type, chunks, encoding, separator, endian, tuple(compressors), fill)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))

    def chunk_key(self, position: Sequence[int]) -> str:
        parts = [str(int(p)) for p in position]
        if self.encoding == "default":
            return f"{self.key}/{self.separator.join(['c', *parts])}"
        return f"{self.key}/{self.separator.join(parts)}"

    @property
    def dtype(self) -> np.dtype[Any]:
        if self.data_type == "string":
            return np.dtype(object)
        return np.dtype(("<" if self.endian == "little" else ">") + _NUMPY_TYPES[self.data_type])

    def _decoded_cap(self) -> int:
        elements = math.prod(self.chunks)
        if self.data_type == "string":
            return 4 + elements * (4 + MAX_TEXT_BYTES)
        return elements * self.dtype.itemsize

    def decode(self, data: bytes | None, where: str) -> npt.NDArray[Any]:
        """One chunk's bytes to an array of the chunk shape. This package writes every chunk of its index and
        embeddings arrays, so an absent chunk is a damaged store, not the fill value."""
        if data is None:
            raise ChunkReadError(f"{where}: chunk is missing (the store is damaged; it would read as fill values)")
        buf: bytes | memoryview = data
        cap = self._decoded_cap()
        for name, _config in reversed(self.compressors):
            if name == "crc32c":
                if len(buf) < 4 or crc32c.crc32c(buf[:-4]) != int.from_bytes(buf[-4:], "little"):
                    raise ChunkReadError(f"{where}: chunk fails its crc32c checksum (corrupt data)")
                buf = memoryview(buf)[:-4]
            elif name == "zstd":
                buf = _zstd_decode(buf, cap, where)
            else:
                buf = _blosc_decode(buf, cap, where)
        elements = math.prod(self.chunks)
        if self.data_type == "string":
            if len(buf) < 4 or int.from_bytes(buf[:4], "little") != elements:
                raise StoreFormatError(f"{where}: string chunk does not hold {elements} items")
            import numcodecs  # layout-1 string columns only: about 30 ms that opening a layout-2 store skips

            try:
                values = numcodecs.VLenUTF8().decode(buf)
            except (ValueError, UnicodeDecodeError) as exc:
                raise StoreFormatError(f"{where}: corrupt string chunk ({exc})") from None
            return np.asarray(values, dtype=object).reshape(self.chunks)
        if len(buf) != elements * self.dtype.itemsize:
            raise StoreFormatError(f"{where}: chunk decodes to {len(buf)} bytes, expected {elements * self.dtype.itemsize}")
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.chunks)

    def read(self, io: StoreIO, rows: npt.NDArray[np.int64] | None = None) -> npt.NDArray[Any]:
        """The whole array, or only ``rows`` of it (reading only the chunks that hold them)."""
        grid = self.grid
        wanted_rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        if not len(wanted_rows) or 0 in self.shape:
            return np.empty((len(wanted_rows), *self.shape[1:]), dtype=self.dtype)
        row_chunks = np.unique(wanted_rows // self.chunks[0])
        positions = [(int(r), *rest) for r in row_chunks for rest in np.ndindex(*grid[1:])]
        keys = [self.chunk_key(p) for p in positions]
        blobs = _read_many(io, keys)
        padded_shape = tuple(g * c for g, c in zip(grid, self.chunks, strict=True))
        block = np.empty((len(row_chunks) * self.chunks[0], *padded_shape[1:]), dtype=self.dtype)
        slot = {int(r): i for i, r in enumerate(row_chunks)}
        for position, key in zip(positions, keys, strict=True):
            chunk = self.decode(blobs[key], f"{io.url}: {key}")
            index = tuple(
                slice(s * c, (s + 1) * c) for s, c in zip((slot[position[0]], *position[1:]), self.chunks, strict=True)
            )
            block[index] = chunk
        slots = np.searchsorted(row_chunks, wanted_rows // self.chunks[0])
        local = slots * self.chunks[0] + wanted_rows % self.chunks[0]
        out: npt.NDArray[Any] = block[local]
        if self.ndim > 1:
            out = out[(slice(None), *(slice(0, s) for s in self.shape[1:]))]
        return out

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _zstd_content_size(data: bytes | memoryview) -> int | None:
    """The decompressed size a zstd frame header declares (None when absent), read before any allocation."""
    if len(data) < 6 or bytes(data[:4]) != b"\x28\xb5\x2f\xfd":
        raise ValueError("not a zstd frame")
    descriptor = data[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    position = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(data) < position + size:
        raise ValueError("truncated zstd frame header")
    value = int.from_bytes(data[position : position + size], "little")
    return value + 256 if size == 2 else value


def _buffer(data: bytes | memoryview) -> Any:
    """imagecodecs' stubs say bytes; it takes any contiguous buffer (no copy needed)."""
    return data


def _zstd_decode(data: bytes | memoryview, cap: int, where: str) -> bytes:
    import imagecodecs  # imported on first decode, not at open (about 60 ms)

    try:
        size = _zstd_content_size(data)
        if size is None or size > cap:
            raise ValueError(f"zstd frame declares {size} bytes (limit {cap})")
        decoded = imagecodecs.zstd_decode(_buffer(data), out=size)
    except (ValueError, imagecodecs.ZstdError) as exc:
        raise StoreFormatError(f"{where}: corrupt zstd chunk ({exc})") from None
    if len(decoded) != size:
        raise StoreFormatError(f"{where}: zstd chunk decoded to {len(decoded)} bytes, expected {size}")
    return bytes(decoded)


def _blosc_decode(data: bytes | memoryview, cap: int, where: str) -> bytes:
    import imagecodecs  # imported on first decode, not at open (about 60 ms)

    if len(data) < 16:
        raise StoreFormatError(f"{where}: corrupt blosc chunk (shorter than its header)")
    nbytes, _blocksize, cbytes = struct.unpack_from("<III", data, 4)
    if nbytes > cap or cbytes != len(data):
        raise StoreFormatError(f"{where}: corrupt blosc chunk header ({nbytes} bytes, {cbytes} compressed)")
    try:
        return bytes(imagecodecs.blosc_decode(_buffer(data), numthreads=1))
    except (imagecodecs.BloscError, RuntimeError, ValueError) as exc:
        raise StoreFormatError(f"{where}: corrupt blosc chunk ({exc})") from None


def _read_many(io: StoreIO, keys: Sequence[str]) -> dict[str, bytes | None]:
    """Fetch several small objects in one batch (concurrent on object stores); absent ones map to None."""
    try:
        return io.read_many(keys)
    except OSError as exc:
        raise ChunkReadError(f"{io.url}: cannot read {list(keys)[:3]}...: {exc}") from None


def _json(data: bytes | None, where: str) -> Any:
    if data is None:
        raise StoreFormatError(f"{where}: missing")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreFormatError(f"{where}: not valid JSON ({exc})") from None


# --- the columnar index: Arrow columns to numpy without pandas ----------------------------------------------------

#: Text columns with few distinct values: read dictionary-encoded, decoded once per distinct value.
_DICTIONARY_COLUMNS = ["well_id", "cell_type", "experiment", "well", "treatment"]


def _arrow_column(chunked: Any, column: str, where: str) -> npt.NDArray[Any]:
    """One index column as numpy (object arrays of str for text), from Arrow's buffers.

    pyarrow's ``to_numpy`` imports pandas (~150 ms, most of a cold open), so numbers are viewed straight from their
    value buffers (nulls only where allowed: a blank concentration is NaN), and text is decoded per distinct value
    (dictionary columns) or once per row (site_id, path).
    """
    import pyarrow as pa

    array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    kind = array.type
    if column in _STRING_COLUMNS:
        if pa.types.is_dictionary(kind) and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)):
            _no_nulls(array, column, where)
            values = np.array(array.dictionary.to_pylist(), dtype=object)
            indices = _buffer_values(array.indices, where, column)
            if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= len(values)):
                raise StoreFormatError(f"{where}: column {column!r} has a malformed dictionary")
            return np.asarray(values[indices], dtype=object)
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
        _no_nulls(array, column, where)
        return np.array(array.to_pylist(), dtype=object)
    if column in _FLOAT_COLUMNS:
        if not pa.types.is_floating(kind):
            raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
        values = _buffer_values(array, where, column).astype(np.float64)
        if array.null_count:
            valid = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
            values[~valid[array.offset : array.offset + len(array)].astype(bool)] = np.nan
        return values
    if not pa.types.is_integer(kind):
        raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
    _no_nulls(array, column, where)
    return _buffer_values(array, where, column)


def _no_nulls(array: Any, column: str, where: str) -> None:
    if array.null_count:
        raise StoreFormatError(f"{where}: column {column!r} has {array.null_count} null value(s)")


def _buffer_values(array: Any, where: str, column: str) -> npt.NDArray[Any]:
    """A primitive Arrow array's values as a (copied) numpy array of its own dtype."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    buffer = array.buffers()[1]
    if buffer is None or buffer.size < (array.offset + len(array)) * dtype.itemsize:
        raise StoreFormatError(f"{where}: column {column!r} has a malformed value buffer")
    return np.frombuffer(buffer, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize).copy()


# --- site paths: one vectorised check for the whole index ---------------------------------------------------------

#: The plate grid's rows (A..Z, AA..AF) and columns (01..48) as character classes rather than alternations of 32
#: and 48 literals: the index check below runs about 1.5x faster (tests check that they accept exactly the grid).
_ROW = "(?:A[A-F]|[A-Z])"
_COLUMN = "(?:0[1-9]|[1-3][0-9]|4[0-8])"
_SITE_ID = (
    rf"(?P<experiment>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?P<plate>[1-9][0-9]*)_(?P<row>{_ROW})(?P<column>{_COLUMN})_(?P<site>[1-9][0-9]*)"
)
#: site_id -> the key of its array (``site_paths(parse_site_id(site_id)).array``).
_SITE_ID_RE = re.compile(rf"^{_SITE_ID}$")
_SITE_PATH = r"\g<experiment>/Plate\g<plate>/\g<row>/\g<column>/\g<site>/0"
#: One "<site_id>\t<path>" pair whose path is exactly the one its site_id maps to, then the next pair's tab or the
#: end (back-references, no Python callback per row: the whole index is checked inside the regular expression
#: engine). No value may hold a tab: the pairs are told apart by counting them.
_ROW_PAIR = re.compile(
    rf"{_SITE_ID}\t(?P=experiment)/Plate(?P=plate)/(?P=row)/(?P=column)/(?P=site)/0(?:\t|\Z)"
)


def _check_paths(site_ids: npt.NDArray[Any], paths: npt.NDArray[Any], where: str) -> None:
    """Every ``path`` must be the array key its ``site_id`` maps to, and a safe key.

    Parsing 131,953 ids one by one costs over a second; one regular expression over all "<site_id>\t<path>"
    pairs, deleting each pair that is right, costs tens of milliseconds. Only on a mismatch is the first bad row
    located, row by row.
    """
    n = len(site_ids)
    if n == 0:
        return
    # site_id, path, site_id, path, ... joined by tabs in one join (a join per row costs twice the time)
    values = np.empty(2 * n, dtype=object)
    values[0::2], values[1::2] = site_ids, paths
    try:
        joined = "\t".join(values.tolist())
    except TypeError:  # a value that is not a string: found and named row by row below
        joined = ""
    # every pair must match (and be removed), leaving nothing: n matches of two tab-free values each account for
    # all 2n values and their 2n - 1 tabs, so a value holding a tab cannot pass, and each match is one row. ".." can
    # only come from an experiment name, which the pattern allows but check_experiment does not.
    left, matched = _ROW_PAIR.subn("", joined)
    if matched == n and not left and ".." not in joined:
        return
    for i, (site_id, path) in enumerate(zip(site_ids, paths, strict=True)):
        if not isinstance(path, str):
            raise StoreFormatError(f"{where}: row {i}: path {path!r} is not a string")
        check_key(path)
        match = _SITE_ID_RE.match(site_id) if isinstance(site_id, str) else None
        want = match.expand(_SITE_PATH) if match else ""
        if match is None:
            raise StoreFormatError(f"{where}: row {i}: invalid site_id {site_id!r}")
        try:
            check_experiment(site_id.split("_", 1)[0])
        except ValueError as exc:
            raise StoreFormatError(f"{where}: row {i}: invalid site_id {site_id!r}: {exc}") from None
        if path != want:
            raise StoreFormatError(
                f"{where}: row {i}: path {path!r} of site {site_id!r} is not where that site lives ({want!r})"
            )
    raise StoreFormatError(f"{where}: index paths do not match their site_ids")


# --- the store, opened once per process ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _store_io(url: str, options_json: str, pid: int) -> StoreIO:
    """One StoreIO per store and process (the pid is part of the key: filesystems must not cross a fork)."""
    del pid
    return StoreIO(url, json.loads(options_json))


def _io_for(url: str, storage_options: Mapping[str, Any]) -> StoreIO:
    return _store_io(url, json.dumps(dict(storage_options), sort_keys=True, default=str), os.getpid())


@functools.lru_cache(maxsize=8)
def _codec_for(array_document: str) -> ShardCodec:
    """The shard codec of a validated site array document (JSON text: hashable, and small to pickle)."""
    return ShardCodec.from_array_metadata(json.loads(array_document), "site array")


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """The shared read pool, created on first use (and again in a forked child, whose threads did not survive)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = min(32, (os.cpu_count() or 1) + 4)  # I/O waits overlap decoding on remote stores
            _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="rxrx2-read"))
        return _POOL[1]


def _decode_tasks() -> int:
    """How many groups one site's chunks are split into when a single site is read (at most 4: beyond that the
    split costs more than it saves on a 6 MiB site)."""
    return max(1, min(4, os.cpu_count() or 1))


class _SiteRef:
    """What a read needs to know about one site, built when the site is read (an object rather than a tuple of
    strings, which dask could mistake for keys; slotted rather than a frozen dataclass, which is slower to build). ``shard`` and ``thumbnail`` are the CRC32Cs
    that close the site's shard index and thumbnail chunk, as recorded in the index (None in layout-1 stores)."""

    __slots__ = ("checksum", "path", "shard", "site_id", "thumbnail")

    def __init__(self, site_id: str, path: str, checksum: int, shard: int | None, thumbnail: int | None) -> None:
        self.site_id = site_id
        self.path = path
        self.checksum = checksum
        self.shard = shard
        self.thumbnail = thumbnail

    def __reduce__(self) -> tuple[type[_SiteRef], tuple[str, str, int, int | None, int | None]]:
        return (_SiteRef, (self.site_id, self.path, self.checksum, self.shard, self.thumbnail))

    def __repr__(self) -> str:
        return f"_SiteRef({self.site_id!r}, {self.path!r}, {self.checksum}, {self.shard}, {self.thumbnail})"


@dataclass(frozen=True)
class _SiteReader:
    """Reads sites from one store; small and picklable (url, options, spec)."""

    url: str
    storage_options: Mapping[str, Any]
    spec: SiteArraySpec
    array_document: str
    pixels: bool

    def __hash__(self) -> int:
        return hash((self.url, json.dumps(dict(self.storage_options), sort_keys=True, default=str), self.array_document))

    def __call__(self, ref: _SiteRef) -> Pixels:
        """One full site as a (1, 6, H, W) block, as in :attr:`Dataset.images`."""
        out = np.empty((1, *self.spec.shape), dtype=np.uint8)
        self.read(ref, out=out[0])
        return out

    def read(
        self,
        ref: _SiteRef,
        channels: Sequence[int] | None = None,
        region: Region | None = None,
        out: Pixels | None = None,
        parallel: bool = False,
    ) -> Pixels:
        """Read one site; ``channels`` 0-based, ``region`` validated by the caller. ``parallel`` splits the site's
        chunks over the shared pool (for single-site reads; never from inside a pool task, see :func:`_pool`)."""
        spec = self.spec
        height, width = spec.height, spec.width
        y0, y1, x0, x1 = region if region is not None else (0, height, 0, width)
        shape = (len(channels) if channels is not None else spec.channels, y1 - y0, x1 - x0)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        if not self.pixels:
            out[...] = 0  # a --no-pixels store: the layout without image data
            return out
        io = _io_for(self.url, self.storage_options)
        codec = _codec_for(self.array_document)
        key = f"{ref.path}/{SHARD_KEY}"
        executor, tasks = (_pool(), _decode_tasks()) if parallel else (None, 1)
        full = channels is None and region is None
        try:
            if full:
                data = io.read(key)
                codec.decode(data, out=out, executor=executor, tasks=tasks, expected=ref.shard)
            else:
                index = codec.parse_index(io.read_suffix(key, codec.index_nbytes), ref.shard)
                pieces = self._fetch(io, key, codec.ranges_for(index, channels, region))
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
            actual = crc32c.crc32c(out.data if out.flags.c_contiguous else out.tobytes())
            if actual != ref.checksum:
                raise ChunkReadError(
                    f"site {ref.site_id}: shard object {key} in store {self.url} is corrupt: pixels' crc32c "
                    f"{actual} != {ref.checksum} recorded in the index"
                )
        return out

    def read_thumbnail(self, ref: _SiteRef) -> Pixels:
        """The site's thumbnail level: (6, ceil(H/f), ceil(W/f)) uint8 (f = THUMBNAIL_FACTOR), one small object."""
        shape = self.spec.thumbnail_shape
        if not self.pixels:
            return np.zeros(shape, dtype=np.uint8)
        io = _io_for(self.url, self.storage_options)
        key = f"{ref.path.rsplit('/', 1)[0]}/{THUMBNAIL_LEVEL}/{SHARD_KEY}"
        try:
            return decode_thumbnail(io.read(key), shape, ref.thumbnail)
        except FileNotFoundError:
            raise ChunkReadError(f"site {ref.site_id}: thumbnail object {key} is missing from store {self.url}") from None
        except ShardDataError as exc:
            raise ChunkReadError(f"site {ref.site_id}: thumbnail object {key} in store {self.url} is corrupt: {exc}") from None
        except OSError as exc:
            raise ChunkReadError(f"site {ref.site_id}: cannot read thumbnail object {key} from store {self.url}: {exc}") from None

    @staticmethod
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


class _ImageBlocks:
    """The one callable of :attr:`Dataset.images`' layer: dask passes it a block index, it returns that site.

    It holds a Dataset without its cached graph (no reference cycle), which pickles as URL, options and selection:
    a worker process re-opens the store once (see :func:`_store_for_pickle`) and then reads any site of it.
    """

    __slots__ = ("dataset",)

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, block_id: tuple[int, ...] | None = None) -> Pixels:
        if block_id is None:  # dask always passes it; a direct call without one has no site to read
            raise TypeError("_ImageBlocks needs the block_id of the site to read")
        return self.dataset._block(block_id[0])

    def __reduce__(self) -> tuple[type[_ImageBlocks], tuple[Dataset]]:
        return (_ImageBlocks, (self.dataset,))

    def __repr__(self) -> str:
        return f"_ImageBlocks({self.dataset!r})"


class _Store:
    """Everything read at open: root attributes, the site array spec, the index columns; embeddings on demand."""

    def __init__(self, url: str, storage_options: Mapping[str, Any], *, legacy: bool = False) -> None:
        self.url = url
        self.storage_options = dict(storage_options)
        self.io = _io_for(url, self.storage_options)
        self.legacy = legacy
        self.attrs = self._root_attributes(legacy)
        self.layout = int(self.attrs["layout_version"])
        try:
            self.spec = SiteArraySpec.from_options(self.attrs["options"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(f"{url}: root attributes: invalid site array options ({exc})") from None
        self.pixels = self.attrs.get("pixels", True)
        if not isinstance(self.pixels, bool):
            raise StoreFormatError(f"{url}: root attributes: 'pixels' must be true or false, got {self.pixels!r}")
        self.columns = self._read_index()
        self.n = len(self.columns["site_id"])
        self.embedding_features: tuple[str, ...] = ()
        self._embeddings_doc, array_document = self._documents()
        self._embeddings_lock = threading.Lock()
        self._embeddings: npt.NDArray[np.float32] | None = None
        _codec_for(array_document)  # validates the site array's codec chains before any read
        self.reader = _SiteReader(url, self.storage_options, self.spec, array_document, self.pixels)
        self._frame: pd.DataFrame | None = None
        self._frame_lock = threading.Lock()
        # site_id -> position, the lookup of site()/read(); a dict, not a pandas Index, so that open() does not
        # import pandas (about 200 ms with pyarrow's pandas glue): the DataFrame is built on first use of `sites`
        self.site_index: dict[str, int] = dict(zip(self.columns["site_id"].tolist(), range(self.n), strict=True))
        if len(self.site_index) != self.n:
            counts = Counter(self.columns["site_id"].tolist())
            duplicated = [site_id for site_id, k in counts.items() if k > 1][:5]
            raise StoreFormatError(f"{url}: index/site_id has duplicate site_ids, e.g. {duplicated}")

    @property
    def frame(self) -> pd.DataFrame:
        """The nine metadata columns as a DataFrame indexed by site_id, built on first use."""
        with self._frame_lock:
            if self._frame is None:
                self._frame = self._build_frame()
            return self._frame

    def _build_frame(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(
            {
                c: (
                    pd.Series(self.columns[c]).astype(str)
                    if c in _STRING_COLUMNS
                    else pd.Series(self.columns[c].astype(np.int64 if c in _INT_COLUMNS else np.float64))
                )
                for c in METADATA_COLUMNS
            }
        )
        # Index: the site_ids, unnamed. Naming it "site_id" as well as keeping the column would make
        # sort_values/groupby/merge on "site_id" fail as ambiguous.
        frame.index = pd.Index(frame["site_id"].to_numpy(), dtype=frame["site_id"].dtype)
        return frame

    def _root_attributes(self, legacy: bool) -> dict[str, Any]:
        where = f"{self.url}: zarr.json"
        try:
            data = self.io.read("zarr.json")
        except FileNotFoundError:
            raise StoreFormatError(f"{self.url}: no zarr.json: not a Zarr v3 store (or the path does not exist)") from None
        doc = _json(data, where)
        attrs = doc.get("attributes", {}).get("rxrx2") if isinstance(doc, Mapping) and isinstance(doc.get("attributes"), Mapping) else None
        if not isinstance(doc, Mapping) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
            raise StoreFormatError(f"{where}: not a Zarr v3 group")
        if not isinstance(attrs, Mapping) or attrs.get("format") != "rxrx2-zarr":
            raise StoreFormatError(f"{self.url}: not an rxrx2-zarr store (the root group has no 'rxrx2' attributes)")
        version = attrs.get("layout_version")
        if version != LAYOUT_VERSION and not (legacy and version in TRANSCODABLE_LAYOUTS):
            if version in TRANSCODABLE_LAYOUTS:
                raise StoreFormatError(
                    f"{self.url}: layout version {version} is an older rxrx2-zarr layout (no per-chunk checksums, no "
                    f"thumbnails, no columnar index); rewrite it as layout {LAYOUT_VERSION} with "
                    f"`rxrx2-zarr transcode {self.url} NEW_STORE` (no PNGs needed)"
                )
            raise StoreFormatError(
                f"{self.url}: layout version {version!r} is not one this version of rxrx2-zarr "
                f"reads ({LAYOUT_VERSION}); upgrade rxrx2-zarr or re-convert the store"
            )
        if attrs.get("complete") is not True:
            raise StoreFormatError(
                f"{self.url}: the store is incomplete (its conversion did not finish); "
                "finish it with `rxrx2-zarr convert SRC DST --resume` before reading it"
            )
        return dict(attrs)

    def _read_index(self) -> dict[str, npt.NDArray[Any]]:
        columns = self._read_parquet_index() if self.layout >= 2 else self._read_index_arrays()
        _check_paths(columns["site_id"], columns["path"], f"{self.url}: index")
        for column in _CHECKSUM_COLUMNS:
            if column in columns:
                columns[column] = columns[column].astype(np.int64)
        return columns

    def _read_parquet_index(self) -> dict[str, npt.NDArray[Any]]:
        """The columnar index: one object, checked against the CRC32C that the root attributes record for it."""

        import pyarrow as pa
        import pyarrow.parquet as pq

        where = f"{self.url}: {INDEX_PARQUET}"
        try:
            data = self.io.read(INDEX_PARQUET)
        except FileNotFoundError:
            raise ChunkReadError(f"{where}: missing (the store's index; the store is damaged)") from None
        except OSError as exc:
            raise ChunkReadError(f"{where}: cannot be read: {exc}") from None
        expected = (self.attrs.get("index") or {}).get("parquet_crc32c") if isinstance(self.attrs.get("index"), Mapping) else None
        if not isinstance(expected, int) or crc32c.crc32c(data) != expected:
            raise ChunkReadError(f"{where}: fails the crc32c recorded in the root attributes ({expected!r}): corrupt index")
        try:
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas (~150 ms);
            # the repeated text columns come back dictionary-encoded (a few distinct values per column)
            # pa.BufferReader, not io.BytesIO: through a Python file object, Arrow reads on its I/O threads, which
            # intermittently aborted the interpreter at exit ("terminate called without an active exception", ~5%
            # of fresh processes here); from an Arrow buffer it reads in this thread
            reader = pa.BufferReader(data)
            parquet = pq.ParquetFile(reader, page_checksum_verification=True, read_dictionary=_DICTIONARY_COLUMNS)
            table = parquet.read(use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StoreFormatError(f"{where}: not a readable Parquet file ({exc})") from None
        columns: dict[str, npt.NDArray[Any]] = {}
        for column in INDEX_COLUMNS:
            if column not in table.column_names:
                raise StoreFormatError(f"{where}: has no column {column!r}")
            columns[column] = _arrow_column(table.column(column), column, where)
        return columns

    def _read_index_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Layout 1: one Zarr array per index column (read for ``transcode`` only)."""
        keys = [f"{INDEX_GROUP}/{c}/zarr.json" for c in _LEGACY_INDEX_COLUMNS]
        docs = _read_many(self.io, keys)
        arrays: dict[str, _ArrayDoc] = {}
        for column, key in zip(_LEGACY_INDEX_COLUMNS, keys, strict=True):
            where = f"{self.url}: {key}"
            arrays[column] = _ArrayDoc.parse(_json(docs[key], where), f"{INDEX_GROUP}/{column}", _COLUMN_TYPES[column], 1, where)
        lengths = {c: a.shape[0] for c, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise StoreFormatError(f"{self.url}: index arrays differ in length: {lengths}")
        # All index chunks in one batch (one chunk per column as written: a fixed number of objects).
        chunk_keys = {c: [a.chunk_key((i,)) for i in range(a.grid[0])] for c, a in arrays.items()}
        blobs = _read_many(self.io, [k for keys_ in chunk_keys.values() for k in keys_])
        columns: dict[str, npt.NDArray[Any]] = {}
        for column, array in arrays.items():
            parts = [array.decode(blobs[k], f"{self.url}: {k}") for k in chunk_keys[column]]
            values = np.concatenate(parts)[: array.shape[0]] if parts else np.empty(0, dtype=array.dtype)
            columns[column] = values
        return columns

    def _documents(self) -> tuple[_ArrayDoc | None, str]:
        """The embeddings array's document (None if absent) and the site array document, in one batch."""
        key = f"{EMBEDDINGS_ARRAY}/zarr.json"
        site_key = f"{self.columns['path'][0]}/zarr.json" if self.n else None
        docs = _read_many(self.io, [key] + ([site_key] if site_key else []))
        if site_key is not None:
            array_document = self._site_document(_json(docs[site_key], f"{self.url}: {site_key}"), site_key)
        else:
            array_document = json.dumps(self.spec.array_metadata())  # an empty store: nothing will be decoded
        if docs[key] is None:
            counts = self.attrs.get("counts")
            if isinstance(counts, Mapping) and counts.get("embedding_dim"):
                raise ChunkReadError(
                    f"{self.url}: {key} is missing, but the root attributes record {counts['embedding_dim']}-dim "
                    "embeddings: the store is damaged"
                )
            return None, array_document  # the source had no embeddings.csv
        where = f"{self.url}: {key}"
        document = _json(docs[key], where)
        doc = _ArrayDoc.parse(document, EMBEDDINGS_ARRAY, frozenset({"float32", "float64"}), 2, where)
        features = ((document.get("attributes") or {}).get("rxrx2") or {}).get("features")
        if isinstance(features, list) and len(features) == doc.shape[1] and all(isinstance(f, str) for f in features):
            self.embedding_features = tuple(features)
        if doc.shape[0] != self.n:
            raise StoreFormatError(f"{where}: {doc.shape[0]} rows for {self.n} sites in the index")
        return doc, array_document

    def _site_document(self, doc: Any, key: str) -> str:
        """Check one site array's document against the root attributes; return it (JSON) to decode every site with.

        The codec chain is taken from the document rather than rebuilt from the profile name, so a store stays
        readable whatever the profile meant when it was written, as long as its chain is one ShardCodec decodes.
        """
        where = f"{self.url}: {key}"
        if not isinstance(doc, Mapping):
            raise StoreFormatError(f"{where}: not a JSON object")
        _check_codec_names(doc.get("codecs"), where)
        expected = self.spec.array_metadata()
        for field in ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value"):
            if doc.get(field) != expected[field]:
                raise StoreFormatError(
                    f"{where}: {field} is {doc.get(field)!r}, but the root attributes describe {expected[field]!r}"
                )
        sharding = doc["codecs"][0].get("configuration") or {}
        want = expected["codecs"][0]["configuration"]["chunk_shape"]
        if doc["codecs"][0].get("name") != "sharding_indexed" or sharding.get("chunk_shape") != want:
            raise StoreFormatError(f"{where}: expected one shard of {want} inner chunks, as the root attributes describe")
        document = json.dumps({field: doc[field] for field in ("zarr_format", "shape", "data_type", "chunk_grid", "codecs")})
        try:
            _codec_for(document)  # validates the inner and index codec chains
        except StoreFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise StoreFormatError(f"{where}: malformed sharding configuration ({exc})") from None
        return document

    def embeddings(self, positions: npt.NDArray[np.int64] | None) -> npt.NDArray[np.float32] | None:
        if self._embeddings_doc is None:
            return None
        if positions is not None and len(positions) < self.n // 4:
            return self._embeddings_doc.read(self.io, positions).astype(np.float32, copy=False)
        with self._embeddings_lock:
            if self._embeddings is None:
                matrix = self._embeddings_doc.read(self.io).astype(np.float32, copy=False)
                matrix.flags.writeable = False
                self._embeddings = matrix
        return self._embeddings if positions is None else self._embeddings[positions]

    def ref(self, position: int) -> _SiteRef:
        columns = self.columns
        legacy = self.layout < 2
        return _SiteRef(
            str(columns["site_id"][position]),
            str(columns["path"][position]),
            int(columns["checksum"][position]),
            None if legacy else int(columns["shard_checksum"][position]),
            None if legacy else int(columns["thumbnail_checksum"][position]),
        )


_STORES_LOCK = threading.Lock()
_STORES: dict[tuple[str, str, int, bool], _Store] = {}


def _store_for_pickle(url: str, storage_options: Mapping[str, Any], legacy: bool = False) -> _Store:
    """The store as re-opened in a process that unpickled a Dataset: opened once per process and store."""
    key = (url, json.dumps(dict(storage_options), sort_keys=True, default=str), os.getpid(), legacy)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            if len(_STORES) >= 8:  # a long-lived worker that saw many stores keeps only the latest few
                del _STORES[next(iter(_STORES))]
            store = _STORES[key] = _Store(url, storage_options, legacy=legacy)
        return store


def open(url: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """Open an rxrx2-zarr store (a path or fsspec URL) for reading.

    Reads the root attributes and the root index only (a fixed number of objects, whatever the number of sites),
    refusing stores that are not complete rxrx2-zarr stores of a known layout or whose metadata is unsafe.
    """
    return Dataset(_Store(str(url), dict(storage_options or {})), None)


def open_any_layout(url: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """Open a store of any layout that ``transcode`` reads (older ones too), for ``transcode`` and ``verify``."""
    return Dataset(_Store(str(url), dict(storage_options or {}), legacy=True), None)


def _restore(
    url: str, storage_options: Mapping[str, Any], positions: npt.NDArray[np.integer[Any]] | None, n_sites: int, legacy: bool = False
) -> Dataset:
    store = _store_for_pickle(url, storage_options, legacy)
    if store.n != n_sites:
        raise StoreFormatError(
            f"{url}: the store changed since this Dataset was pickled ({store.n} sites now, {n_sites} then)"
        )
    selected: npt.NDArray[np.int64] | None = None
    if positions is not None:
        selected = np.asarray(positions, dtype=np.int64)
        if len(selected) and (selected[0] < 0 or selected[-1] >= store.n):
            raise StoreFormatError(f"{url}: a pickled selection refers to sites beyond the store's {store.n}")
    return Dataset(store, selected)


def _compact_positions(positions: npt.NDArray[np.int64] | None, n_sites: int) -> npt.NDArray[np.integer[Any]] | None:
    """A selection as pickled: uint32 when the store is small enough (always, for RxRx2), half the bytes of int64,
    so a selection of the whole release's 131,953 sites pickles in 0.5 MB."""
    if positions is None or n_sites >= 2**32:
        return positions
    return positions.astype(np.uint32)


# --- selection -----------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _is_pandas_vector(value: Any) -> bool:
    """A pandas Series or Index, without importing pandas (if it is not imported, the value cannot be one)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.Series | pandas.Index)


def _match(column: str, values: npt.NDArray[Any], wanted: Any) -> npt.NDArray[np.bool_]:
    """The rows of ``values`` (one column of the selection) that ``wanted`` selects."""
    numeric = column in _NUMERIC_COLUMNS
    if isinstance(wanted, tuple):
        if not numeric:
            raise ValueError(
                f"select({column}=...): a (lo, hi) tuple is a numeric range, valid for {list(_NUMERIC_COLUMNS)}; "
                "use a list to select any of several values"
            )
        if len(wanted) != 2 or any(v is not None and not _is_number(v) for v in wanted):
            raise ValueError(f"select({column}=...): a range must be (lo, hi) with numbers (or None), got {wanted!r}")
        lo, hi = wanted
        mask = np.ones(len(values), dtype=bool)
        if lo is not None:
            mask &= values >= lo
        if hi is not None:
            mask &= values <= hi
        return mask
    if isinstance(wanted, list | set | frozenset | np.ndarray) or _is_pandas_vector(wanted):
        items = list(wanted)
        if column in _STRING_COLUMNS:
            if any(not isinstance(item, str) for item in items):
                raise ValueError(f"select({column}=...): expected a list of strings, got {wanted!r}")
            wanted_set = set(items)
            return np.fromiter((v in wanted_set for v in values.tolist()), bool, len(values))
        mask = np.zeros(len(values), dtype=bool)
        for item in items:
            mask |= _equal(column, values, item)
        return mask
    return _equal(column, values, wanted)


def _equal(column: str, values: npt.NDArray[Any], wanted: Any) -> npt.NDArray[np.bool_]:
    if column in _NUMERIC_COLUMNS:
        if column in _FLOAT_COLUMNS and (wanted is None or (_is_number(wanted) and math.isnan(float(wanted)))):
            return np.asarray(np.isnan(values), dtype=bool)  # the EMPTY controls have no concentration
        if not _is_number(wanted):
            raise ValueError(f"select({column}=...): expected a number, a list of numbers or a (lo, hi) range, got {wanted!r}")
        if column in _FLOAT_COLUMNS:
            return np.asarray(np.isclose(values, float(wanted), rtol=CONC_RTOL, atol=0.0), dtype=bool)
        return np.asarray(values == wanted)
    if not isinstance(wanted, str):
        raise ValueError(f"select({column}=...): expected a string or a list of strings, got {wanted!r}")
    return np.asarray(values == wanted)


# --- the public dataset ------------------------------------------------------------------------------------------


class Dataset:
    """A lazily read rxrx2-zarr store, or a selection of its sites (in store order).

    Also a map-style dataset (``len(ds)``, ``ds[i] -> (pixels, metadata)``) that pickles as its URL, storage
    options and selection, so PyTorch ``DataLoader`` workers and dask workers re-open it themselves.
    """

    def __init__(self, store: _Store, positions: npt.NDArray[np.int64] | None) -> None:
        self._store = store
        self._positions = positions  # None: every site of the store
        self._frame: pd.DataFrame | None = None
        self._images: dask.array.Array | None = None

    # --- identity, pickling ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self._store.storage_options)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's root ``rxrx2`` attributes (counts, options, source, versions...)."""
        return json.loads(json.dumps(self._store.attrs))  # type: ignore[no-any-return]

    @property
    def spec(self) -> SiteArraySpec:
        return self._store.spec

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(sites, channels, height, width) of :attr:`images`."""
        return (len(self), *self._store.spec.shape)

    @property
    def pixels(self) -> bool:
        """False for a ``--no-pixels`` store (every read returns zeros)."""
        return bool(self._store.pixels)

    def __reduce__(self) -> tuple[Callable[..., Dataset], tuple[Any, ...]]:
        positions = _compact_positions(self._positions, self._store.n)
        return (_restore, (self.url, self.storage_options, positions, self._store.n, self._store.legacy))

    def __repr__(self) -> str:
        spec = self._store.spec
        return (
            f"<rxrx2_zarr.Dataset {self.url!r}: {len(self)} of {self._store.n} sites, "
            f"{spec.channels} x {spec.height} x {spec.width} uint8, profile {spec.profile!r}"
            f"{'' if self.pixels else ', no pixels'}>"
        )

    # --- metadata -------------------------------------------------------------------------------------------------

    @property
    def positions(self) -> npt.NDArray[np.int64]:
        """Positions of this selection's sites in the store's index (ascending)."""
        if self._positions is None:
            return np.arange(self._store.n, dtype=np.int64)
        return self._positions

    def __len__(self) -> int:
        return self._store.n if self._positions is None else len(self._positions)

    @property
    def sites(self) -> pd.DataFrame:
        """The metadata of the selected sites: the nine columns of ``metadata.csv`` with its dtypes, indexed by
        site_id, in store order (a copy: changing it does not change the dataset)."""
        if self._frame is None:
            full = self._store.frame
            self._frame = full if self._positions is None else full.iloc[self._positions]
        return self._frame.copy(deep=False)

    @property
    def site_ids(self) -> list[str]:
        return [str(s) for s in self._store.columns["site_id"][self.positions]]

    @property
    def embedding_features(self) -> tuple[str, ...]:
        """The names of the embedding columns (``feature_0`` ...), as in ``embeddings.csv``."""
        return self._store.embedding_features

    @property
    def embeddings(self) -> npt.NDArray[np.float32] | None:
        """float32 (sites, K) aligned with :attr:`sites` (NaN rows for sites without one), or None when the store
        has no embeddings. Read on first use, not at open."""
        return self._store.embeddings(self._positions)

    def _row(self, position: int) -> dict[str, Any]:
        columns = self._store.columns
        row: dict[str, Any] = {}
        for column in METADATA_COLUMNS:
            value = columns[column][position]
            row[column] = str(value) if column in _STRING_COLUMNS else int(value) if column in _INT_COLUMNS else float(value)
        return row

    # --- selection ------------------------------------------------------------------------------------------------

    def select(self, **columns: Any) -> Dataset:
        """Sites matching every keyword (AND), one keyword per metadata column.

        A scalar selects equal values (``treatment="EMPTY"`` the controls; ``treatment_conc=None`` too), a list any
        of its values, a ``(lo, hi)`` tuple an inclusive range of a numeric column (plate, site, treatment_conc;
        ``None`` leaves a side open). Concentrations compare with a relative tolerance of 1e-9, so the nominal
        ``0.001`` finds the release's ``0.0009999999999999``.
        """
        unknown = [c for c in columns if c not in METADATA_COLUMNS]
        if unknown:
            raise ValueError(f"select(): unknown column(s) {unknown}; columns are {list(METADATA_COLUMNS)}")
        positions = self.positions
        mask = np.ones(len(positions), dtype=bool)
        for column, wanted in columns.items():
            mask &= _match(column, self._store.columns[column][positions], wanted)
        return Dataset(self._store, positions[mask])

    def _positions_of(self, site_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        lookup = self._store.site_index
        found = np.fromiter((lookup.get(s, -1) if isinstance(s, str) else -1 for s in site_ids), np.int64, len(site_ids))
        missing = [s for s, p in zip(site_ids, found, strict=True) if p < 0]
        if missing:
            raise SiteNotFoundError(f"site(s) not in store {self.url}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if self._positions is not None:
            selected = self._positions  # ascending: a binary search per id
            slots = np.minimum(np.searchsorted(selected, found), max(len(selected) - 1, 0))
            inside = selected[slots] == found if len(selected) else np.zeros(len(found), dtype=bool)
            if not inside.all():
                outside = [s for s, ok in zip(site_ids, inside, strict=True) if not ok]
                raise SiteNotFoundError(f"site(s) in the store but not in this selection: {outside[:5]}")
        return found

    # --- pixels ---------------------------------------------------------------------------------------------------

    def _check_channels(self, channels: Iterable[int] | None) -> list[int] | None:
        if channels is None:
            return None
        numbers = [channels] if isinstance(channels, int) else list(channels)
        bad = [c for c in numbers if not isinstance(c, int | np.integer) or isinstance(c, bool) or not 1 <= c <= self.spec.channels]
        if bad or not numbers:
            raise ValueError(f"channels must be channel numbers 1..{self.spec.channels} (w1..w6), got {channels!r}")
        return [int(c) - 1 for c in numbers]

    def _check_region(self, region: Sequence[int] | None) -> Region | None:
        if region is None:
            return None
        height, width = self.spec.height, self.spec.width
        values = list(region)
        if len(values) != 4 or any(not isinstance(v, int | np.integer) or isinstance(v, bool) for v in values):
            raise ValueError(f"region must be (y0, y1, x0, x1) integers, got {region!r}")
        y0, y1, x0, x1 = (int(v) for v in values)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(
                f"region {(y0, y1, x0, x1)} is not a non-empty half-open box inside the {height} x {width} site"
            )
        return (y0, y1, x0, x1)

    def site(self, site_id: str, *, parallel: bool = True) -> Pixels:
        """One site's (6, H, W) uint8 pixels. ``parallel=False`` decodes in the calling thread only (for fair
        one-thread comparisons, or inside a caller's own worker pool)."""
        (position,) = self._positions_of([site_id])
        return self._store.reader.read(self._store.ref(int(position)), parallel=parallel)

    def thumbnails(self, sites: str | Sequence[str]) -> Pixels:
        """The thumbnail level of ``sites``: (n, 6, ceil(H/16), ceil(W/16)) uint8, each pixel the rounded mean of a
        16 x 16 block; one small object per site (what viewers show for a plate)."""
        reader, store = self._store.reader, self._store
        if store.layout < 2:
            raise StoreFormatError(f"{self.url}: a layout-1 store has no thumbnails; rewrite it with `rxrx2-zarr transcode`")
        ids = [sites] if isinstance(sites, str) else list(sites)
        positions = self._positions_of(ids)
        out = np.empty((len(ids), *self.spec.thumbnail_shape), dtype=np.uint8)
        futures = [_pool().submit(reader.read_thumbnail, store.ref(int(p))) for p in positions]
        for k, future in enumerate(futures):
            out[k] = future.result()
        return out

    def read(
        self,
        sites: str | Sequence[str],
        channels: Iterable[int] | None = None,
        region: Sequence[int] | None = None,
        *,
        parallel: bool = True,
    ) -> Pixels:
        """Pixels of ``sites`` (site_ids) as (n, c, h, w) uint8: ``channels`` are numbers 1..6 (default all, in
        that order), ``region`` is ``(y0, y1, x0, x1)`` in pixels, half-open (default the whole site).

        Sites are read in parallel (``parallel=False``: one after the other in the calling thread); a crop reads
        only the inner chunks it intersects.
        """
        ids = [sites] if isinstance(sites, str) else list(sites)
        chans = self._check_channels(channels)
        box = self._check_region(region)
        positions = self._positions_of(ids)
        spec = self.spec
        y0, y1, x0, x1 = box if box is not None else (0, spec.height, 0, spec.width)
        out = np.empty((len(ids), len(chans) if chans is not None else spec.channels, y1 - y0, x1 - x0), dtype=np.uint8)
        reader, store = self._store.reader, self._store
        if not parallel:
            for k, p in enumerate(positions):
                reader.read(store.ref(int(p)), chans, box, out[k], parallel=False)
        elif len(ids) == 1:
            reader.read(store.ref(int(positions[0])), chans, box, out[0], parallel=True)
        elif ids:
            futures = [_pool().submit(reader.read, store.ref(int(p)), chans, box, out[k]) for k, p in enumerate(positions)]
            for future in futures:
                future.result()
        return out

    def __getitem__(self, index: int) -> tuple[Pixels, dict[str, Any]]:
        """``(pixels (6, H, W), metadata row)`` of the i-th site of the selection (negative indices count back)."""
        if not isinstance(index, int | np.integer) or isinstance(index, bool):
            raise TypeError(f"Dataset indices must be integers, got {type(index).__name__}; use select() for subsets")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"site index {index} out of range for {n} site(s)")
        position = int(self.positions[i])
        return self._store.reader.read(self._store.ref(position), parallel=True), self._row(position)

    @property
    def images(self) -> dask.array.Array:
        """All selected sites as a lazy dask array (sites, 6, H, W) uint8, one chunk per site, row k = ``sites.iloc[k]``.

        Built from the index alone (no per-site metadata is read); each task reads its site's shard object. Runs
        on dask's threaded scheduler (the codecs release the GIL) or on a distributed cluster.
        """
        if self._images is None:
            self._images = self._build_images()
        return self._images

    def _build_images(self) -> dask.array.Array:
        """One Blockwise layer whatever the number of sites: its single callable maps a block index to a site, so
        no task exists until the graph is executed or sliced (a dict of one task per site took about 2 s and tens
        of MB to build for 131,953 sites, and was shipped whole to a cluster). Slicing culls the layer to the blocks
        asked for; pickling carries the layer once (the chunks tuple and this Dataset: URL, options, selection)."""
        import dask.array as da
        from dask.base import tokenize

        spec, store = self.spec, self._store
        n = len(self)
        if not n:
            empty: dask.array.Array = da.zeros((0, *spec.shape), dtype=np.uint8, chunks=(1, *spec.shape))
            return empty
        # the index checksum (layout 2) tells stores with the same URL and site count apart, without hashing columns
        fingerprint = store.attrs.get("index")
        name = "rxrx2-images-" + tokenize(
            self.url, store.storage_options, spec, store.pixels, store.n, fingerprint, self._positions
        )
        chunks = ((1,) * n, (spec.channels,), (spec.height,), (spec.width,))
        array: dask.array.Array = da.map_blocks(  # type: ignore[no-untyped-call]
            _ImageBlocks(Dataset(store, self._positions)),
            name=name,
            chunks=chunks,
            dtype=np.uint8,
            meta=np.empty((0, 0, 0, 0), dtype=np.uint8),
        )
        return array

    def _block(self, k: int) -> Pixels:
        """The k-th selected site as a (1, c, h, w) block (no ``positions`` array built for the whole store)."""
        position = k if self._positions is None else int(self._positions[k])
        return self._store.reader(self._store.ref(position))

    # --- views ----------------------------------------------------------------------------------------------------

    def to_xarray(self) -> xarray.DataArray:
        """A lazily backed ``xarray.DataArray`` (site, c, y, x): ``site`` holds the site_ids, the other metadata
        columns are coordinates along ``site`` (the site-in-well number as ``field``), ``c`` is labelled w1..w6."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("Dataset.to_xarray() needs xarray: pip install 'rxrx2-zarr[xarray]'") from None
        frame = self.sites
        coords: dict[str, Any] = {
            "site": frame["site_id"].to_numpy(dtype=object),
            "c": [spec.label for spec in CHANNEL_SPECS],
        }
        for column in METADATA_COLUMNS[1:]:
            values = frame[column].to_numpy(dtype=object) if column in _STRING_COLUMNS else frame[column].to_numpy()
            coords["field" if column == "site" else column] = ("site", values)
        attrs = {
            "url": self.url,
            "channel_rgb": json.dumps({s.label: list(s.rgb) for s in CHANNEL_SPECS}),
            "channel_window": json.dumps({s.label: list(s.window) for s in CHANNEL_SPECS}),
        }
        return xr.DataArray(self.images, dims=("site", "c", "y", "x"), coords=coords, name="pixels", attrs=attrs)

    def to_rgb(
        self, sites: str | Sequence[str], channels: Sequence[int] = CHANNELS, vmax: float = 255.0
    ) -> Pixels:
        """Recursion's RGB rendering (:func:`rxrx2_zarr._render.to_rgb`) of one site (H, W, 3) or several (n, H, W, 3)."""
        from ._render import render_planes

        channels = tuple(channels)
        planes = self.read(sites, channels=channels)  # only the channels rendered are read
        rgb = render_planes(planes, channels, vmax=vmax)
        return rgb[0] if isinstance(sites, str) else rgb
