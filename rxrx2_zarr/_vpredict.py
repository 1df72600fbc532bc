"""The arithmetic of the ``rxrx2.vpredict`` codec (see :mod:`._codec`), apart from its zarr-python class: the
reader decodes with it and must not import zarr-python (about 60 ms) to open a store."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["vpredict_decode", "vpredict_encode"]

#: From this many elements per row (across stacked chunks) on, one numpy add per row (~1 us of call overhead)
#: beats imagecodecs' per-element running sum (~1 ns per element).
_ROW_VECTOR = 1024
U8 = npt.NDArray[np.uint8]


def vpredict_encode(pixels: U8) -> U8:
    """Zigzag-coded residuals of ``pixels`` (..., rows, columns) against the row above (new array)."""
    residual = pixels.copy()
    np.subtract(pixels[..., 1:, :], pixels[..., :-1, :], out=residual[..., 1:, :])
    sign = (residual.view(np.int8) >> 7).view(np.uint8)  # 0xFF where the residual is negative, else 0
    zigzag: U8 = np.left_shift(residual, 1, dtype=np.uint8)
    np.bitwise_xor(zigzag, sign, out=zigzag)
    return zigzag


def vpredict_decode(coded: U8) -> U8:
    """Invert :func:`vpredict_encode` in place on ``coded`` (..., rows, columns) and return it."""
    low = coded & 1
    np.negative(low, out=low)  # 0 -> 0x00, 1 -> 0xFF (uint8 wrap-around)
    np.right_shift(coded, 1, out=coded)
    coded ^= low
    rows = coded.shape[-2]
    if coded.size // max(rows, 1) >= _ROW_VECTOR:
        # long rows or many chunks stacked (a whole site): one vector add per row across all of them (~3 ms/site)
        for row in range(1, rows):
            np.add(coded[..., row, :], coded[..., row - 1, :], out=coded[..., row, :])
    else:
        # a single chunk (zarr-python's per-chunk pipeline): imagecodecs' running sum in C (~60 us per 64 KiB)
        import imagecodecs  # imported when first needed: about 60 ms, and open() decodes nothing

        imagecodecs.delta_decode(coded, axis=-2, out=coded)
    return coded
