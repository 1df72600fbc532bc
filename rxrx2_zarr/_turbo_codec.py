"""The ``rxrx2.turbo`` codec (:mod:`._turbo`, ``docs/turbo.md``) for zarr-python and numcodecs.

* :class:`TurboCodec`: a Zarr v3 array-to-bytes codec (it takes the place of ``bytes`` in a chain, e.g.
  ``[rxrx2.turbo, crc32c]`` inside ``sharding_indexed``), registered through this package's ``zarr.codecs``
  entry point, so zarr-python reads and writes turbo arrays through its own pipeline once rxrx2-zarr is installed.
* :class:`TurboNumcodec`: the same codec for numcodecs (``{"id": "rxrx2.turbo"}``; entry point
  ``numcodecs.codecs``), e.g. as a Zarr v2 compressor.

This module imports zarr-python and numcodecs; :mod:`._turbo` (what this package's own reader uses) imports
neither.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from zarr.abc.codec import ArrayBytesCodec

from . import _turbo
from ._errors import CodecError
from ._turbo import TurboConfig, config_from_json, config_to_json
from ._turbo_format import DEFAULT_TABLE_LOG, DEFAULT_TILE

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["CODEC_NAME", "TurboCodec", "TurboNumcodec", "register"]

CODEC_NAME = "rxrx2.turbo"


def _config(configuration: Any, where: str) -> TurboConfig:
    try:
        return config_from_json(configuration)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class TurboCodec(ArrayBytesCodec):
    """Zarr v3 codec ``rxrx2.turbo`` for uint8 arrays; decoding needs no configuration (the chunk header has it),
    encoding uses ``config``."""

    config: TurboConfig = field(default_factory=TurboConfig)
    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"not a {CODEC_NAME} codec document: {data}")
        return cls(_config(data.get("configuration"), "codec document"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": config_to_json(self.config)}

    # chunk_grid is a ChunkGrid in zarr 3.1 and chunk-grid metadata in 3.4; this codec does not look at it
    def validate(self, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} encodes uint8 arrays, got {dtype}")

    def resolve_metadata(self, chunk_spec: ArraySpec) -> ArraySpec:
        return chunk_spec

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        return self

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"{CODEC_NAME} chunks vary in size")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # in a worker thread, like zarr-python's own numcodecs wrappers: the compiled decoder releases the GIL
        pixels = await asyncio.to_thread(_decode_chunk, chunk_bytes.as_numpy_array(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(pixels)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = await asyncio.to_thread(_turbo.encode, chunk_array.as_numpy_array(), self.config)
        return chunk_spec.prototype.buffer.from_bytes(data)


def _decode_chunk(data: Any, shape: tuple[int, ...]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Decode one chunk and give it ``shape``, which must hold exactly the chunk's pixels."""
    pixels = _turbo.decode(data)
    expected = (1, 1, shape[0]) if len(shape) == 1 else (int(np.prod(shape[:-2], dtype=np.int64)), *shape[-2:])
    if pixels.shape != expected:
        raise CodecError(f"{CODEC_NAME} chunk holds {pixels.shape} pixels, but the array's chunks are {shape}")
    return pixels.reshape(shape)


class TurboNumcodec(NumcodecsCodec):  # type: ignore[misc]  # numcodecs is untyped
    """numcodecs codec ``rxrx2.turbo``: ``encode`` takes a uint8 array (its last two dimensions are images),
    ``decode`` returns a ``(images, height, width)`` array, or fills ``out`` (any shape of that size)."""

    codec_id = CODEC_NAME

    def __init__(self, tile: Any = DEFAULT_TILE, predictor: str = "up3", table_log: int = DEFAULT_TABLE_LOG) -> None:
        self.config = _config({"tile": list(tile), "predictor": predictor, "table_log": table_log}, "numcodecs config")

    def encode(self, buf: Any) -> bytes:
        array = np.asarray(buf)
        if array.dtype != np.uint8:
            raise ValueError(f"{CODEC_NAME} encodes uint8 arrays, got {array.dtype}")
        return _turbo.encode(array, self.config)

    def decode(self, buf: Any, out: Any = None) -> Any:
        pixels = _turbo.decode(buf)
        if out is None:
            return pixels
        target = np.asarray(out).reshape(-1).view(np.uint8)
        if target.size != pixels.size:
            raise ValueError(f"out holds {target.size} bytes, the chunk {pixels.size}")
        target[:] = pixels.reshape(-1)
        return out

    def get_config(self) -> dict[str, Any]:
        return {"id": CODEC_NAME, **config_to_json(self.config)}

    def __repr__(self) -> str:
        c = self.config
        return f"TurboNumcodec(tile={c.tile}, predictor={c.predictor!r}, table_log={c.table_log})"


def register() -> None:
    """Register both codecs by hand, for an environment where this package's entry points are not installed
    (a source checkout on ``sys.path``); installed, zarr-python and numcodecs find them by themselves."""
    import zarr.registry

    zarr.registry.register_codec(CODEC_NAME, TurboCodec)
    numcodecs.register_codec(TurboNumcodec)
