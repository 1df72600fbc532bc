"""``rxrx2.turbo``: this package's own lossless codec for uint8 image chunks, built to decode at memory speed.

A chunk (``(..., height, width)`` uint8; leading dimensions are a stack of images) is cut into tiles (default
64 x 256) that decode independently, so a crop decodes only the tiles it touches. In a tile, each pixel is
replaced by its difference from a prediction made from the row above (so a row decodes in one vectorised pass),
zigzag-coded so small residuals have their high bits clear; the codes are split into bit planes; each plane is a
sequence of symbols, nonzero bytes (8 pixels of the plane) and runs of zero bytes, coded with tANS on tables
stored once per chunk. ``docs/turbo.md`` specifies the format exactly; the design figures are in its "Why" part.

Two implementations write the same bytes and read the same pixels: compiled kernels (numba, GIL released: threads
decode in parallel) and a pure-numpy reference, used when numba is not importable or when the environment
variable ``RXRX2_TURBO_BACKEND=numpy`` asks for it. :func:`backend` says which one runs. Importing this module
imports neither (nor numba); the first encode or decode does.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ._errors import CodecError
from ._turbo_format import (
    DEFAULT_TABLE_LOG,
    DEFAULT_TILE,
    ERR_MESSAGES,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_PLANES,
    MAX_TABLE_LOG,
    MAX_TILE_EDGE,
    MIN_TABLE_LOG,
    PREDICTORS,
    VERSION,
)

__all__ = [
    "BACKEND_ENV",
    "ChunkHeader",
    "TurboConfig",
    "backend",
    "config_from_json",
    "config_to_json",
    "decode",
    "decode_region",
    "encode",
]

Pixels = npt.NDArray[np.uint8]
#: Environment variable choosing the implementation: ``auto`` (default: numba if importable), ``numba``, ``numpy``.
BACKEND_ENV = "RXRX2_TURBO_BACKEND"
#: Largest chunk edge accepted from a header (a corrupt header must not make a reader allocate absurd sizes).
MAX_CHUNK_EDGE = 1 << 20


@dataclass(frozen=True)
class TurboConfig:
    """Encoder settings (each is recorded in the chunk header, so decoding needs none of them).

    ``tile``: tile (rows, columns), each 1..4096; smaller tiles make crops cheaper and cost bytes (a tile's first
    row is predicted from the left, its plane streams restart). ``predictor``: ``up3`` (smoothed pixel above,
    the default), ``up`` (pixel above) or ``none``. ``table_log``: tANS table size, ``2**table_log`` states,
    9..12 (10 by measurement: 0.4% larger than 11 and faster to build and to look up)."""

    tile: tuple[int, int] = DEFAULT_TILE
    predictor: str = "up3"
    table_log: int = DEFAULT_TABLE_LOG

    def __post_init__(self) -> None:
        tile = self.tile
        if (
            not isinstance(tile, tuple)
            or len(tile) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_TILE_EDGE for v in tile)
        ):
            raise ValueError(f"rxrx2.turbo tile must be two integers (rows, columns) in 1..{MAX_TILE_EDGE}, got {tile!r}")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"rxrx2.turbo predictor must be one of {sorted(PREDICTORS)}, got {self.predictor!r}")
        log = self.table_log
        if not isinstance(log, int) or isinstance(log, bool) or not MIN_TABLE_LOG <= log <= MAX_TABLE_LOG:
            raise ValueError(f"rxrx2.turbo table_log must be {MIN_TABLE_LOG}..{MAX_TABLE_LOG}, got {log!r}")


_CONFIG_KEYS = frozenset({"tile", "predictor", "table_log"})


def config_from_json(configuration: Any) -> TurboConfig:
    """A :class:`TurboConfig` from the ``configuration`` of a Zarr codec document (every key optional);
    ValueError for anything else."""
    if configuration is None:
        return TurboConfig()
    if not isinstance(configuration, dict) or set(configuration) - _CONFIG_KEYS:
        raise ValueError(f"rxrx2.turbo configuration must be an object with keys {sorted(_CONFIG_KEYS)}, got {configuration!r}")
    tile = configuration.get("tile", list(DEFAULT_TILE))
    if not isinstance(tile, list | tuple):
        raise ValueError(f"rxrx2.turbo tile must be [rows, columns], got {tile!r}")
    return TurboConfig(
        tile=tuple(tile),  # TurboConfig checks it is two integers
        predictor=configuration.get("predictor", "up3"),
        table_log=configuration.get("table_log", DEFAULT_TABLE_LOG),
    )


def config_to_json(config: TurboConfig) -> dict[str, Any]:
    """The ``configuration`` of a Zarr codec document for ``config`` (the inverse of :func:`config_from_json`)."""
    return {"tile": list(config.tile), "predictor": config.predictor, "table_log": config.table_log}


@dataclass(frozen=True)
class ChunkHeader:
    """The fixed header of a chunk (``docs/turbo.md``, "Header"), validated."""

    predictor: int
    table_log: int
    planes: int
    images: int
    height: int
    width: int
    tile_height: int
    tile_width: int
    table_bytes: int

    @classmethod
    def parse(cls, data: Any) -> ChunkHeader:
        """The header of a chunk (any bytes-like object or uint8 array)."""
        buf = _buffer(data)
        if buf.size < HEADER_BYTES:
            raise CodecError(f"rxrx2.turbo chunk is {buf.size} bytes, shorter than its {HEADER_BYTES}-byte header")
        fields = HEADER.unpack(buf[:HEADER_BYTES].tobytes())
        magic, version, pred, log, planes, images, height, width, th, tw, tbytes = fields
        if magic != MAGIC:
            raise CodecError(f"not an rxrx2.turbo chunk (starts {bytes(magic)!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise CodecError(f"rxrx2.turbo chunk of format version {version}; this package reads version {VERSION}")
        problems = []
        if pred not in PREDICTORS.values():
            problems.append(f"predictor {pred}")
        if not MIN_TABLE_LOG <= log <= MAX_TABLE_LOG:
            problems.append(f"table log {log}")
        if planes > MAX_PLANES:
            problems.append(f"{planes} planes")
        if not (images >= 1 and 1 <= height <= MAX_CHUNK_EDGE and 1 <= width <= MAX_CHUNK_EDGE):
            problems.append(f"shape {images} x {height} x {width}")
        if not (1 <= th <= MAX_TILE_EDGE and 1 <= tw <= MAX_TILE_EDGE):
            problems.append(f"tile {th} x {tw}")
        if HEADER_BYTES + tbytes > buf.size:
            problems.append(f"a {tbytes}-byte table section in a {buf.size}-byte chunk")
        if problems:
            raise CodecError(f"rxrx2.turbo chunk header is invalid: {', '.join(problems)}")
        return cls(pred, log, planes, images, height, width, th, tw, tbytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.images, self.height, self.width)

    def tiles_for(self, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The tile rows and columns ``(ty0, ty1, tx0, tx1)`` that cover ``region = (y0, y1, x0, x1)``."""
        y0, y1, x0, x1 = region
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"region {region} is not inside the {self.height} x {self.width} chunk")
        th, tw = self.tile_height, self.tile_width
        return y0 // th, -(-y1 // th), x0 // tw, -(-x1 // tw)


_BACKEND_LOCK = threading.Lock()
_BACKEND: list[tuple[str, ModuleType, ModuleType]] = []


def _implementation() -> tuple[str, ModuleType, ModuleType]:
    """``(name, encoder module, decoder module)`` of the implementation chosen by :data:`BACKEND_ENV`, resolved
    once per process (numba's import and the kernels' cache load happen here, on first use)."""
    if _BACKEND:
        return _BACKEND[0]
    with _BACKEND_LOCK:
        if not _BACKEND:
            _BACKEND.append(_load_implementation(os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"))
    return _BACKEND[0]


def _load_implementation(choice: str) -> tuple[str, ModuleType, ModuleType]:
    if choice not in ("auto", "numba", "numpy"):
        raise ValueError(f"{BACKEND_ENV} must be auto, numba or numpy, got {choice!r}")
    if choice != "numpy":
        # the kernels load 8 bytes at a time as little-endian words: on a big-endian machine only numpy is right
        if sys.byteorder == "little":
            try:
                from . import _turbo_encoder, _turbo_kernels
            except ImportError as exc:
                if choice == "numba":
                    raise
                warnings.warn(
                    f"rxrx2.turbo: numba is not importable ({exc}); using the numpy reference (about 100x slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                return "numba", _turbo_encoder, _turbo_kernels
        elif choice == "numba":
            raise ValueError(f"{BACKEND_ENV}=numba needs a little-endian machine")
    from . import _turbo_numpy

    return "numpy", _turbo_numpy, _turbo_numpy


def backend() -> str:
    """The implementation that encodes and decodes in this process: ``numba`` or ``numpy``."""
    return _implementation()[0]


def _as_images(pixels: npt.ArrayLike) -> tuple[Pixels, tuple[int, ...]]:
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"rxrx2.turbo encodes uint8 pixels, got {array.dtype}")
    if array.ndim < 1 or array.size == 0:
        raise ValueError(f"rxrx2.turbo encodes a non-empty array of one or more dimensions, got shape {array.shape}")
    shape = array.shape
    array = array.reshape(1, 1, -1) if array.ndim == 1 else array.reshape(-1, shape[-2], shape[-1])
    if array.shape[1] > MAX_CHUNK_EDGE or array.shape[2] > MAX_CHUNK_EDGE or array.shape[0] >= 1 << 32:
        raise ValueError(f"rxrx2.turbo chunks are at most {MAX_CHUNK_EDGE} pixels on a side, got shape {shape}")
    return np.ascontiguousarray(array), shape


def encode(pixels: npt.ArrayLike, config: TurboConfig | None = None) -> bytes:
    """Encode a uint8 array (1-D: one row; N-D: a stack of ``(height, width)`` images) as one chunk."""
    config = config or TurboConfig()
    images, _ = _as_images(pixels)
    _, encoder, _ = _implementation()
    th, tw = config.tile
    data = encoder.encode_chunk(images, th, tw, PREDICTORS[config.predictor], config.table_log)
    return bytes(data)


def _buffer(data: Any) -> npt.NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data.reshape(-1).view(np.uint8))
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def _run(buf: npt.NDArray[np.uint8], out: Pixels, tiles: tuple[int, int, int, int]) -> None:
    _, _, decoder = _implementation()
    info = np.zeros(2, dtype=np.int64)
    code = int(decoder.decode_chunk(buf, out, *tiles, info))
    if code:
        where = "".join(
            f", {name} {int(v)}" for name, v in (("tile", info[0]), ("plane", info[1])) if int(v) >= 0
        )
        raise CodecError(f"rxrx2.turbo chunk is corrupt: {ERR_MESSAGES.get(code, f'error {code}')}{where}")


_SHAPE_AND_TILE = struct.Struct("<IIIHH")  # images, height, width, tile height, tile width (header bytes 8..23)


def decode(data: Any, out: Pixels | None = None) -> Pixels:
    """Decode a whole chunk into a new ``(images, height, width)`` array, or into ``out`` (any shape with that
    many elements, C-contiguous uint8)."""
    buf = _buffer(data)
    if out is None or buf.size < HEADER_BYTES:
        header = ChunkHeader.parse(buf)  # validated before allocating what the header asks for
        shape, tile = header.shape, (header.tile_height, header.tile_width)
        target = np.empty(shape, dtype=np.uint8) if out is None else out
    else:
        # into a caller's buffer: only the shape is read here (the kernel validates the whole header, and a bad
        # one is then described by ChunkHeader.parse); this keeps the GIL-holding part of a decode short
        images, height, width, th, tw = _SHAPE_AND_TILE.unpack(buf[8:24].tobytes())
        shape, tile = (images, height, width), (max(th, 1), max(tw, 1))
    if out is not None:
        if out.dtype != np.uint8 or out.size != _pixels_in(shape) or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 with {_pixels_in(shape)} elements, got {out.dtype} {out.shape}")
        target = out.reshape(shape)
    tiles = (0, -(-shape[1] // tile[0]), 0, -(-shape[2] // tile[1]))
    try:
        _run(buf, target, tiles)
    except CodecError as exc:
        if "malformed chunk header" in str(exc) or "shape differs" in str(exc):
            ChunkHeader.parse(buf)  # names what is wrong with the header
        raise
    return target if out is None else out


def _pixels_in(shape: tuple[int, int, int]) -> int:
    """Pixels in an ``(images, height, width)`` chunk."""
    return shape[0] * shape[1] * shape[2]


def decode_region(data: Any, region: tuple[int, int, int, int], out: Pixels | None = None) -> Pixels:
    """Decode ``region = (y0, y1, x0, x1)`` of every image of a chunk, decoding only the tiles it touches: a new
    ``(images, y1 - y0, x1 - x0)`` array, or ``out`` of that shape filled in (any strides)."""
    buf = _buffer(data)
    header = ChunkHeader.parse(buf)
    ty0, ty1, tx0, tx1 = tiles = header.tiles_for(region)
    y0, y1, x0, x1 = region
    shape = (header.images, y1 - y0, x1 - x0)
    if out is not None and (out.shape != shape or out.dtype != np.uint8):
        raise ValueError(f"out has shape {out.shape} {out.dtype}, expected {shape} uint8")
    th, tw = header.tile_height, header.tile_width
    oy, ox = ty0 * th, tx0 * tw
    rows, cols = min(ty1 * th, header.height) - oy, min(tx1 * tw, header.width) - ox
    if (oy, ox, rows, cols) == (y0, x0, y1 - y0, x1 - x0) and (out is None or out.flags.c_contiguous):
        target = out if out is not None else np.empty(shape, dtype=np.uint8)
        _run(buf, target, tiles)  # the region is whole tiles: decode in place
        return target
    scratch = np.empty((header.images, rows, cols), dtype=np.uint8)
    _run(buf, scratch, tiles)
    window = scratch[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    if out is None:
        return np.ascontiguousarray(window)
    out[...] = window
    return out
