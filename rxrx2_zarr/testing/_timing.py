"""Timing helpers shared by ``rxrx2-zarr demo`` and the benchmark suite (``python -m benchmarks``).

Both sides of every comparison run here in the same process, on the same sites, with the same number of
threads: reading a site from the PNGs (six files decoded) versus from the store.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt

from .._paths import parse_site_id
from .._storage import StoreIO

__all__ = ["PngSiteReader", "Timing", "time_calls", "time_throughput"]

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Timing:
    """Per-call latencies in seconds (medians and percentiles of repeated calls)."""

    samples: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1e3


def time_calls(function: Callable[[Any], Any], items: Sequence[Any], repeat: int = 1) -> Timing:
    """Latency of ``function(item)`` for each item, ``repeat`` rounds (one thread)."""
    samples = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter()
            function(item)
            samples.append(time.perf_counter() - start)
    return Timing(tuple(samples))


def time_throughput(function: Callable[[Any], Any], items: Sequence[Any], threads: int, repeat: int = 3) -> float:
    """Median over ``repeat`` rounds of items per second with ``threads`` threads calling ``function``."""
    rates = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(function, items))
            rates.append(len(items) / (time.perf_counter() - start))
    return statistics.median(rates)


class PngSiteReader:
    """Reads a site the way users of the PNG release do: six files, each decoded (imagecodecs or Pillow)."""

    def __init__(self, src: str, decoder: str = "imagecodecs", storage_options: dict[str, Any] | None = None) -> None:
        if decoder not in ("imagecodecs", "pillow"):
            raise ValueError(f"unknown PNG decoder {decoder!r}")
        self.decoder = decoder
        self.store = StoreIO(src, storage_options)

    def _decode(self, data: bytes) -> Pixels:
        if self.decoder == "pillow":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image)
        pixels: Pixels = imagecodecs.png_decode(data)
        return pixels

    def site(self, site_id: str) -> Pixels:
        paths = parse_site_id(site_id).image_paths()
        return np.stack([self._decode(self.store.read(path)) for path in paths])

    def crop(self, site_id: str, region: tuple[int, int, int, int]) -> Pixels:
        """A PNG cannot be partially decoded: a crop costs a whole site's decode."""
        y0, y1, x0, x1 = region
        return self.site(site_id)[:, y0:y1, x0:x1]
