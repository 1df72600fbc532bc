"""Seeding of the generator: one independent random stream per (seed, purpose, key), so that a site's pixels,
layout or embedding never depend on which other sites are generated, nor in which order."""

from __future__ import annotations

import hashlib
import math
import statistics
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "TAG_EMBED",
    "TAG_FACTOR",
    "TAG_LAYOUT",
    "TAG_PLATE",
    "TAG_SHORT",
    "TAG_SITE",
    "normal_table",
    "normals",
    "rng_for",
]

F32 = npt.NDArray[np.float32]

#: What a stream is for: the same key under two tags gives unrelated draws.
TAG_LAYOUT, TAG_SHORT, TAG_SITE, TAG_FACTOR, TAG_PLATE, TAG_EMBED = 1, 2, 3, 4, 5, 6


def _words(text: str) -> list[int]:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def rng_for(seed: int, tag: int, *keys: str | int) -> np.random.Generator:
    """The stream of ``(seed, tag, keys...)``; string keys enter through a BLAKE2 hash (Python's ``hash`` is
    salted per process, so it would make workers disagree)."""
    entropy: list[int] = [seed, tag]
    for key in keys:
        entropy.extend(_words(key) if isinstance(key, str) else [key])
    return np.random.default_rng(entropy)


@lru_cache(maxsize=1)
def normal_table() -> F32:
    """Quantiles of N(0, 1) at 65,536 levels: a table lookup is ~2.5x faster than ``standard_normal``."""
    nd = statistics.NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)


def normals(rng: np.random.Generator, shape: tuple[int, ...]) -> F32:
    """Approximately N(0, 1) draws of ``shape`` from ``rng`` (16-bit quantiles: plenty for camera noise)."""
    count = math.prod(shape)
    index = np.frombuffer(rng.bytes(2 * count), dtype="<u2")
    return np.take(normal_table(), index).reshape(shape)
