"""Which part of a site one training sample is: the whole site, its centre, a random box, a random box aligned to
the store's inner chunks, or one tile of a fixed grid (:class:`Crop`, planned against a store by :class:`CropPlan`).

Random boxes are drawn from a generator keyed by ``(seed, epoch, sample index)``, not from a process-wide
generator: the box of a sample depends on nothing else (not on the worker that reads it, the number of workers,
the rank or what was read before), so a run is reproducible, every epoch draws new boxes, and forked DataLoader
workers cannot repeat each other's draws (the classic shared-seed bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Crop", "CropKind", "CropPlan", "Region"]

#: ``(y0, y1, x0, x1)``, half-open, in pixels (the ``region`` of :meth:`rxrx2_zarr.Dataset.read`).
Region = tuple[int, int, int, int]
CropKind = Literal["full", "center", "random", "aligned", "grid"]
_KINDS: tuple[str, ...] = ("full", "center", "random", "aligned", "grid")


def _pair(value: int | tuple[int, int] | None, what: str) -> tuple[int, int] | None:
    """An edge or a (height, width) pair of positive integers, as a pair."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1 for v in pair):
        raise ValueError(f"crop {what} must be a positive integer or (height, width) of positive integers, got {value!r}")
    return (int(pair[0]), int(pair[1]))


@dataclass(frozen=True)
class Crop:
    """The part of a site that makes one sample. Build it with :meth:`full`, :meth:`center`, :meth:`random`,
    :meth:`aligned` or :meth:`grid`; ``size`` and ``stride`` are an edge or ``(height, width)``."""

    kind: CropKind = "full"
    size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    """Grid only: the step between tiles (default ``size``: tiles side by side, none overlapping)."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"crop kind must be one of {list(_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "size", _pair(self.size, "size"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        if (self.kind == "full") != (self.size is None):
            raise ValueError(f"a {self.kind!r} crop {'takes no' if self.kind == 'full' else 'needs a'} size")
        if self.stride is not None and self.kind != "grid":
            raise ValueError(f"only a grid crop takes a stride, not a {self.kind!r} one")

    @classmethod
    def full(cls) -> Crop:
        """The whole site."""
        return cls("full")

    @classmethod
    def center(cls, size: int | tuple[int, int]) -> Crop:
        """A box of ``size`` in the middle of the site (rounded towards the top left)."""
        return cls("center", _pair(size, "size"))

    @classmethod
    def random(cls, size: int | tuple[int, int]) -> Crop:
        """A box of ``size`` at a uniformly random position, new each epoch (seeded, reproducible)."""
        return cls("random", _pair(size, "size"))

    @classmethod
    def aligned(cls, size: int | tuple[int, int]) -> Crop:
        """A random box of ``size`` whose top-left corner lies on the store's inner-chunk grid: a box of one inner
        chunk's size reads and decodes exactly one chunk per channel (the cheapest crop a store can give)."""
        return cls("aligned", _pair(size, "size"))

    @classmethod
    def grid(cls, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> Crop:
        """Every box of ``size`` at multiples of ``stride`` that fits in the site, each box one sample (a site of
        1024 with size 256 gives 16 samples; what is left at the right and bottom edges is not used)."""
        return cls("grid", _pair(size, "size"), _pair(stride, "stride"))

    def plan(self, height: int, width: int, chunks: tuple[int, int]) -> CropPlan:
        """This crop on sites of ``height`` x ``width`` stored in inner chunks of ``chunks`` (Y, X)."""
        size = self.size
        if size is not None and (size[0] > height or size[1] > width):
            raise ValueError(f"a {size[0]} x {size[1]} {self.kind} crop does not fit in the {height} x {width} sites")
        clipped = (min(chunks[0], height), min(chunks[1], width))
        return CropPlan(self, height, width, clipped, _fixed_regions(self, height, width))


def _fixed_regions(crop: Crop, height: int, width: int) -> tuple[Region, ...]:
    """The regions that do not depend on the sample: one for full and center, every tile for grid, none else."""
    h, w = crop.size if crop.size is not None else (height, width)
    if crop.kind == "full":
        return ((0, height, 0, width),)
    if crop.kind == "center":
        y0, x0 = (height - h) // 2, (width - w) // 2
        return ((y0, y0 + h, x0, x0 + w),)
    if crop.kind != "grid":
        return ()
    sy, sx = crop.stride or (h, w)
    return tuple((y0, y0 + h, x0, x0 + w) for y0 in range(0, height - h + 1, sy) for x0 in range(0, width - w + 1, sx))


@dataclass(frozen=True)
class CropPlan:
    """A :class:`Crop` checked against a store's site and chunk shape (:meth:`Crop.plan`); gives the region of any
    sample."""

    crop: Crop
    height: int
    width: int
    chunks: tuple[int, int]
    fixed: tuple[Region, ...]
    """The sample-independent regions (see :func:`_fixed_regions`)."""

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of every sample."""
        return self.crop.size if self.crop.size is not None else (self.height, self.width)

    @property
    def tiles(self) -> int:
        """Samples per site: the number of grid tiles, otherwise 1."""
        return len(self.fixed) if self.crop.kind == "grid" else 1

    def region(self, tile: int, seed: int, epoch: int, index: int) -> Region | None:
        """The region of sample ``index`` (tile ``tile`` of its site) in ``epoch``; None for the whole site."""
        kind = self.crop.kind
        if kind == "full":
            return None
        if kind in ("center", "grid"):
            return self.fixed[tile]
        h, w = self.shape
        rng = np.random.default_rng((seed, epoch, index))
        if kind == "random":
            y0, x0 = (int(v) for v in rng.integers(0, (self.height - h + 1, self.width - w + 1)))
        else:  # aligned: a corner on the chunk grid such that the box still fits
            cy, cx = self.chunks
            gy, gx = (int(v) for v in rng.integers(0, ((self.height - h) // cy + 1, (self.width - w) // cx + 1)))
            y0, x0 = gy * cy, gx * cx
        return (y0, y0 + h, x0, x0 + w)
