"""Embeddings of generated sites, and the ``embeddings.csv`` writer.

A site's embedding is a common mean, plus a per-factor direction scaled by the factor's effect strength at the
dose (the same strength that changes its cells, :mod:`._phenotype`), a per-plate batch offset, a per-well offset
and per-site noise; each term is a pure function of its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .._paths import SiteKey, parse_site_id
from ._phenotype import strength
from ._seeding import TAG_EMBED, normal_table, rng_for

__all__ = ["site_embeddings", "write_embeddings"]

F32 = npt.NDArray[np.float32]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keyed_normals(keys: npt.NDArray[np.uint64], dim: int, salt: int) -> F32:
    """N(0, 1) of shape (len(keys), dim), a pure function of each key: a counter-based hash, vectorised."""
    counters = np.arange(dim, dtype=np.uint64) * _GOLDEN + np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
    bits = _splitmix64(keys[:, None] ^ counters[None, :])
    return np.take(normal_table(), (bits >> np.uint64(48)).astype(np.intp))


def _hash_keys(texts: Sequence[str], seed: int) -> npt.NDArray[np.uint64]:
    salt = seed.to_bytes(8, "little", signed=False)
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8, salt=salt).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def site_embeddings(
    sites: Sequence[str | SiteKey], treatments: Sequence[str], concs: Sequence[float], dim: int, seed: int = 0
) -> F32:
    """Embeddings of shape (n, dim) for sites given as site_ids or :class:`SiteKey`: a common mean, plus a
    per-factor direction scaled by the factor's effect strength at the dose (the signal), a per-plate batch
    offset, a per-well offset and per-site noise. Each term is a pure function of its id, so a site's embedding
    does not depend on which other sites are generated with it."""
    keys = [s if isinstance(s, SiteKey) else parse_site_id(s) for s in sites]
    n = len(keys)
    # Integer codes per treatment and per plate, so each term is one gather instead of one pass per group.
    t_index: dict[str, int] = {}
    t_codes = np.fromiter((t_index.setdefault(t, len(t_index)) for t in treatments), dtype=np.intp, count=n)
    p_index: dict[tuple[str, int], int] = {}
    p_codes = np.fromiter(
        (p_index.setdefault((k.experiment, k.plate), len(p_index)) for k in keys), np.intp, n
    )
    strengths = np.fromiter(
        (strength(seed, t, c) for t, c in zip(treatments, concs, strict=True)), np.float32, n
    )
    directions = np.stack(
        [rng_for(seed, TAG_EMBED, "factor", t).standard_normal(dim).astype(np.float32) for t in t_index]
        or [np.zeros(dim, np.float32)]
    )
    batches = np.stack(
        [rng_for(seed, TAG_EMBED, "plate", e, p).standard_normal(dim).astype(np.float32) for e, p in p_index]
        or [np.zeros(dim, np.float32)]
    )
    base = rng_for(seed, TAG_EMBED, "base").standard_normal(dim).astype(np.float32) * np.float32(0.5)
    well_keys = _hash_keys([k.well_id for k in keys], seed)
    site_keys = _hash_keys([k.site_id for k in keys], seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):  # in blocks, to bound the memory of the temporaries
        b = slice(start, min(start + 8192, n))
        block = out[b]
        block[:] = base
        block += strengths[b, None] * directions[t_codes[b]]
        block += np.float32(0.3) * batches[p_codes[b]]
        block += np.float32(0.3) * _keyed_normals(well_keys[b], dim, 1)
        block += np.float32(0.5) * _keyed_normals(site_keys[b], dim, 2)
    return out


def _format_fixed(values: F32, decimals: int = 4) -> list[bytes]:
    """Format each row as ``v0,v1,...\\n`` with ``decimals`` fixed decimals, vectorised (``%``-formatting 17 M
    numbers takes ~8 s; this ~1 s). Values must satisfy |v| < 1e6."""
    scale = 10**decimals
    q = np.rint(values.astype(np.float64) * scale).astype(np.int64)
    if q.size and np.abs(q).max() >= 10**6 * scale:
        raise ValueError("embedding value out of range for fixed formatting")
    negative = q < 0
    a = np.abs(q)
    whole, frac = a // scale, a % scale
    n, k = q.shape
    int_digits = 6
    width = 1 + int_digits + 1 + decimals + 1
    chars = np.zeros((n, k, width), np.uint8)
    keep = np.zeros((n, k, width), bool)
    chars[..., 0] = ord("-")
    keep[..., 0] = negative
    n_digits = 1 + sum((whole >= 10**p).astype(np.int64) for p in range(1, int_digits))
    for j in range(int_digits):
        power = int_digits - 1 - j
        chars[..., 1 + j] = ord("0") + (whole // 10**power) % 10
        keep[..., 1 + j] = power < n_digits
    chars[..., 1 + int_digits] = ord(".")
    keep[..., 1 + int_digits] = True
    for j in range(decimals):
        chars[..., 2 + int_digits + j] = ord("0") + (frac // 10 ** (decimals - 1 - j)) % 10
        keep[..., 2 + int_digits + j] = True
    chars[..., -1] = ord(",")
    chars[:, -1, -1] = ord("\n")
    keep[..., -1] = True
    flat = chars[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=(1, 2)))
    starts = np.concatenate([[0], ends[:-1]])
    return [flat[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def write_embeddings(path: Path, site_ids: Sequence[str], matrix: F32) -> None:
    dim = matrix.shape[1]
    with path.open("wb") as handle:
        handle.write(("site_id," + ",".join(f"feature_{j}" for j in range(dim)) + "\n").encode())
        for start in range(0, len(site_ids), 4096):
            rows = _format_fixed(matrix[start : start + 4096])
            handle.write(
                b"".join(
                    s.encode() + b"," + r for s, r in zip(site_ids[start : start + 4096], rows, strict=True)
                )
            )

