"""Entropy-table arithmetic of the ``rxrx2.turbo`` codec that both implementations share, written once.

These are plain loops over numpy arrays that call no other Python function, so that :mod:`._turbo_kernels`
compiles this very source with numba while the numpy reference (:mod:`._turbo_numpy`) runs it as it is: it is
per-table work (``ALPHABET`` symbols, ``2**table_log`` states, a dozen tables per chunk), not per pixel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._turbo_format import (
    ALPHABET,
    ENTRY_ADVANCE_SHIFT,
    ENTRY_BASE_SHIFT,
    ENTRY_BITS_SHIFT,
    FLAG_INVALID,
    MAX_TABLE_LOG,
    RUN_MAX,
)

__all__ = ["ADVANCE", "COST", "LOG2", "build_tables", "normalize_counts"]

#: ``LOG2[x] = floor(log2(x))`` for ``1 <= x < 2**(MAX_TABLE_LOG + 1)`` (the sub-states of a table).
LOG2 = np.zeros(2 << MAX_TABLE_LOG, dtype=np.int64)
for _x in range(2, LOG2.size):
    LOG2[_x] = LOG2[_x >> 1] + 1
#: ``COST[c]``: the bits a symbol of count ``c`` in a table of ``2**MAX_TABLE_LOG`` states costs, in 1/64 bit
#: (``-log2(c / size)``, rounded): the encoder's estimate of a plane stream's size, to store a plane raw without
#: coding it first. Computed once here, so both implementations use the same integers.
COST = np.array([0] + [round(-math.log2(c / (1 << MAX_TABLE_LOG)) * 64) for c in range(1, (1 << MAX_TABLE_LOG) + 1)], dtype=np.int64)
#: Bytes of a plane each symbol covers: 1 for a literal byte (1..255), ``r`` for the run symbol ``255 + r``.
ADVANCE = np.array([1] * 256 + list(range(1, RUN_MAX + 1)), dtype=np.int64)


def normalize_counts(hist: Any, log: int, counts: Any) -> None:
    """Scale each row of ``hist`` (int64 symbol frequencies, ``(tables, ALPHABET)``) to integers summing to
    ``2**log`` in ``counts``, every present symbol at least 1; an all-zero row stays zero. This is the encoder's
    choice only (decoders read the counts it stores), shared so that both implementations write the same bytes."""
    size = 1 << log
    for t in range(hist.shape[0]):
        total = 0
        best = -1
        for s in range(ALPHABET):
            h = hist[t, s]
            total += h
            if h > 0 and (best < 0 or h > hist[t, best]):
                best = s
        for s in range(ALPHABET):
            counts[t, s] = 0
        if total == 0:
            continue
        assigned = 0
        for s in range(ALPHABET):
            h = hist[t, s]
            if h > 0:
                c = (h * size) // total
                if c < 1:
                    c = 1
                counts[t, s] = c
                assigned += c
        diff = size - assigned
        if diff >= 0:
            counts[t, best] += diff
            continue
        while diff < 0:  # the symbols raised to 1 overfilled the table: take from the largest counts
            top = 0
            for s in range(ALPHABET):
                if counts[t, s] > counts[t, top]:
                    top = s
            take = counts[t, top] >> 2
            if take < 1:
                take = 1
            if take > -diff:
                take = -diff
            counts[t, top] -= take
            diff += take


def build_tables(counts: Any, log: int, decode: Any, encode: Any, log2: Any, advance: Any) -> None:
    """The tANS tables of normalised ``counts`` (``(tables, ALPHABET)``, rows summing to ``2**log`` or zero).

    Symbol by symbol in increasing order, the ``i``-th of symbol ``s``'s ``n = counts[s]`` states is the state
    reached by ``i`` steps of ``size/2 + size/8 + 3`` (mod ``size``) after the previous symbol's last, and its
    sub-state is ``x = n + i`` (``docs/turbo.md``, "Decoding tables"). ``decode[t, u]`` is then the uint32 entry
    of state ``u``: the byte the symbol writes, ``nbits = log - floor(log2(x))`` bits to read, the bytes it
    advances (``advance[s]``, stored minus one) and the next state's base ``(x << nbits) - size``, plus ``size``
    if the symbol is a run (the two tables of a plane are consecutive: context 1 follows context 0); the rows of
    unused tables are ``FLAG_INVALID``. Unless ``encode`` is empty, ``encode[t, c + i]`` is the encoder
    state ``size + u`` of that same state, ``c`` being the sum of the counts below ``s``. ``log2[x]`` is
    ``floor(log2(x))``. (Numbering the sub-states in this spread order rather than in state order costs about
    0.7% of the coded size and makes building a table one pass without lookups: 4x faster, and a chunk's
    tables are built on every read.)
    """
    size = 1 << log
    mask = size - 1
    step = (size >> 1) + (size >> 3) + 3
    with_encode = encode.shape[0] > 0
    for t in range(counts.shape[0]):
        total = 0
        for s in range(ALPHABET):
            total += counts[t, s]
        if total == 0:
            for u in range(size):
                decode[t, u] = FLAG_INVALID
            continue
        pos = 0
        cum = 0
        row = decode[t]
        for s in range(ALPHABET):
            c = counts[t, s]
            if c == 0:
                continue
            run = s >= 256
            fixed = (0 if run else s) | ((advance[s] - 1) << ENTRY_ADVANCE_SHIFT)
            # x runs over [c, 2c): nbits is log - floor(log2(c)) up to the next power of two, one less after it
            nbits = log - log2[c]
            split = min(2 * c, 1 << (log2[c] + 1))
            x = c
            while x < 2 * c:
                stop = split if x < split else 2 * c
                if x >= split:
                    nbits = log - log2[split]
                part = fixed | (nbits << ENTRY_BITS_SHIFT)
                base = (x << nbits) - size + (size if run else 0)
                for _ in range(stop - x):
                    row[pos] = part | (base << ENTRY_BASE_SHIFT)
                    base += 1 << nbits
                    pos = (pos + step) & mask
                x = stop
            if with_encode:
                pos = (pos - c * step) & mask  # the same states again, for the encoder's table
                for i in range(c):
                    encode[t, cum + i] = size + pos
                    pos = (pos + step) & mask
            cum += c
