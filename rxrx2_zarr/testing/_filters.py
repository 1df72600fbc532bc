"""The image operations of the generator, in numpy only (no scipy): box blurs by cumulative sums, bilinear
upsampling by 2, and the window of a canvas around a point."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["blur", "up2", "window"]

F32 = npt.NDArray[np.float32]


def _box(a: F32, r: int, axis: int) -> F32:
    """Mean over a window of 2r+1 along ``axis`` (edges clamped), by cumulative sums: O(n) whatever r."""
    if r <= 0:
        return a
    moved = np.moveaxis(a, axis, -1)
    n = moved.shape[-1]
    padded = np.concatenate(
        [np.repeat(moved[..., :1], r + 1, axis=-1), moved, np.repeat(moved[..., -1:], r, axis=-1)], axis=-1
    )
    c = np.cumsum(padded, axis=-1, dtype=np.float32)
    out = (c[..., 2 * r + 1 :] - c[..., :n]) * np.float32(1.0 / (2 * r + 1))
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def blur(a: F32, ry: int, rx: int | None = None) -> F32:
    """Box mean over the last two axes, ``2ry+1`` rows by ``2rx+1`` columns (``rx`` defaults to ``ry``)."""
    return _box(_box(a, ry if rx is None else rx, -1), ry, -2)


def up2(a: F32) -> F32:
    """Bilinear upsampling by 2 over the last two axes (pixel centres aligned, edges clamped)."""
    h, w = a.shape[-2:]
    lead = a.shape[:-2]
    p = np.concatenate([a[..., :1, :], a, a[..., -1:, :]], axis=-2)
    rows = np.empty((*lead, h, 2, w), dtype=np.float32)
    np.multiply(p[..., 1:-1, :], np.float32(0.75), out=rows[..., 0, :])
    rows[..., 0, :] += np.float32(0.25) * p[..., :-2, :]
    np.multiply(p[..., 1:-1, :], np.float32(0.75), out=rows[..., 1, :])
    rows[..., 1, :] += np.float32(0.25) * p[..., 2:, :]
    tall = rows.reshape((*lead, 2 * h, w))
    p = np.concatenate([tall[..., :1], tall, tall[..., -1:]], axis=-1)
    out = np.empty((*lead, 2 * h, w, 2), dtype=np.float32)
    np.multiply(p[..., 1:-1], np.float32(0.75), out=out[..., 0])
    out[..., 0] += np.float32(0.25) * p[..., :-2]
    np.multiply(p[..., 1:-1], np.float32(0.75), out=out[..., 1])
    out[..., 1] += np.float32(0.25) * p[..., 2:]
    return out.reshape((*lead, 2 * h, 2 * w))


def window(cy: float, cx: float, radius: int, n: int) -> tuple[slice, slice, F32, F32] | None:
    """Slices of an n x n canvas around (cy, cx) and the coordinates relative to the centre, or None if outside."""
    y0, x0 = math.floor(cy) - radius, math.floor(cx) - radius
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + 2 * radius + 2, n), min(x0 + 2 * radius + 2, n)
    if ya >= yb or xa >= xb:
        return None
    yy = (np.arange(ya, yb, dtype=np.float32) - np.float32(cy))[:, None]
    xx = (np.arange(xa, xb, dtype=np.float32) - np.float32(cx))[None, :]
    return slice(ya, yb), slice(xa, xb), yy, xx

