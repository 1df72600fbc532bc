"""This package's own Zarr v3 codec: a vertical predictor with zigzag coding, for the ``compact`` profile.

``rxrx2.vpredict`` is an array-to-array codec over uint8 chunks: each pixel is replaced by its difference from the
pixel above it (mod 256; the first row is kept), and the difference is zigzag-coded (0, -1, 1, -2, ... -> 0, 1,
2, 3, ...) so that the small residuals of dark, smooth microscopy images have their high bits clear. Followed by
Blosc's bit-shuffle and zstd, the high bit planes then compress to almost nothing. numcodecs has a horizontal
delta but neither zigzag nor a predictor along another axis; without zigzag, negative residuals set every high
bit and bit-shuffling gains nothing (../shared/RXRX2.md).

The codec is registered with zarr-python through the ``zarr.codecs`` entry point of this package, so any
zarr-python that has ``rxrx2-zarr`` installed reads ``compact`` stores; other Zarr implementations cannot.
Decoding is a running sum down the rows, vectorised across each row, so it costs a few numpy passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayArrayCodec

from ._vpredict import vpredict_decode, vpredict_encode

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import NDBuffer

__all__ = ["CODEC_NAME", "VerticalPredictorCodec", "vpredict_decode", "vpredict_encode"]

CODEC_NAME = "rxrx2.vpredict"


@dataclass(frozen=True)
class VerticalPredictorCodec(ArrayArrayCodec):
    """Zarr v3 codec ``rxrx2.vpredict`` (no configuration): uint8 chunks of two or more dimensions."""

    is_fixed_size = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if data.get("name") != CODEC_NAME or data.get("configuration") not in (None, {}):
            raise ValueError(f"not a {CODEC_NAME} codec document: {data}")
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME}

    # chunk_grid is a ChunkGrid in zarr 3.1 and chunk-grid metadata in 3.4; this codec does not look at it
    def validate(self, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if len(shape) < 2 or np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} needs uint8 arrays of two or more dimensions, got {dtype} {shape}")

    def resolve_metadata(self, chunk_spec: ArraySpec) -> ArraySpec:
        return chunk_spec

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        return input_byte_length

    async def _decode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> NDBuffer:
        coded = np.array(chunk_array.as_numpy_array(), dtype=np.uint8, copy=True)
        return chunk_array.from_numpy_array(vpredict_decode(coded))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> NDBuffer | None:
        pixels = np.ascontiguousarray(chunk_array.as_numpy_array(), dtype=np.uint8)
        return chunk_array.from_numpy_array(vpredict_encode(pixels))
