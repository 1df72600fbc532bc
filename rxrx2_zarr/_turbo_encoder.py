"""The compiled (numba) encoder of the ``rxrx2.turbo`` codec (``docs/turbo.md``); :mod:`._turbo_numpy` is the
pure-numpy reference that writes the same bytes (tests compare them).

Two passes over a chunk: every tile's residual codes and bit planes, and the symbol counts of each plane and
context; then the tables, and each tile's plane streams, tANS-coded last symbol first so that the decoder reads
them first to last (a plane that would not shrink is stored raw).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._turbo_format import (
    ALPHABET,
    CONTEXTS,
    HEADER_BYTES,
    MAGIC_U32,
    MAX_PLANES,
    MAX_TABLE_LOG,
    PRED_NONE,
    PRED_UP,
    RAW_MARGIN,
    RUN_MAX,
    VERSION,
)
from ._turbo_jit import (
    build_tables_jit,
    inline,
    jit,
    normalize_counts_jit,
    put,
    put_u32,
    transpose8,
    up3,
    write_tables,
    write_varint,
)
from ._turbo_tables import ADVANCE, COST, LOG2

__all__ = ["encode_chunk"]


@inline
def _zigzag(r: Any) -> Any:
    return np.uint8((r << np.uint8(1)) ^ (np.uint8(0) - (r >> np.uint8(7))))


@jit
def _tile_codes(pixels: Any, img: int, y0: int, x0: int, th: int, tw: int, pred: int, z: Any) -> int:
    """Residual codes of one tile (the inverse of ``_turbo_kernels._reconstruct_tile``) into ``z[y, :tw]``
    (zero past ``tw`` up to the byte boundary); returns the OR of all codes. The rows after the first are one
    branch-free pass each (vectorised): the prediction reads the original pixels above."""
    nb8 = ((tw + 7) >> 3) << 3
    top = np.uint8(0)
    u1 = np.uint64(1)
    end = np.uint64(tw)
    for y in range(th):
        src = pixels[img, y0 + y, x0 : x0 + tw]
        row = z[y]
        if pred == PRED_NONE:
            for x in range(end):
                row[x] = src[x]
                top |= src[x]
        elif y == 0:  # left neighbour
            left = np.uint8(0)
            for x in range(tw):
                code = _zigzag(np.uint8(src[x] - left))
                row[x] = code
                top |= code
                left = src[x]
        else:
            up = pixels[img, y0 + y - 1, x0 : x0 + tw]
            if pred == PRED_UP or tw == 1:
                for x in range(end):
                    code = _zigzag(np.uint8(src[x] - up[x]))
                    row[x] = code
                    top |= code
            else:
                code = _zigzag(np.uint8(src[0] - up3(up[0], up[0], up[1])))
                row[0] = code
                top |= code
                for x in range(u1, end - u1):
                    code = _zigzag(np.uint8(src[x] - up3(up[x - u1], up[x], up[x + u1])))
                    row[x] = code
                    top |= code
                last = end - u1
                code = _zigzag(np.uint8(src[last] - up3(up[last - u1], up[last], up[last])))
                row[last] = code
                top |= code
        row[tw:nb8] = 0
    return int(top)


@jit
def _tile_planes(z: Any, th: int, nb: int, planes: Any) -> None:
    """Bit planes of a tile's codes, interleaved: byte ``j`` of ``planes[y * nb + k]`` is plane ``j``'s byte of
    pixels ``8k..8k + 7`` of row ``y`` (its bit ``i`` is bit ``j`` of the code of pixel ``8k + i``)."""
    for y in range(th):
        words = z[y].view(np.uint64)
        for k in range(nb):
            planes[y * nb + k] = transpose8(words[k])


@jit
def _symbols(planes: Any, j: int, nsym: int, syms: Any) -> int:
    """The symbols of plane ``j`` (interleaved ``planes`` bytes ``8k + j``): nonzero bytes and runs of 1..RUN_MAX
    zero bytes, into ``syms``; returns their number."""
    m = 0
    k = 0
    while k < nsym:
        v = planes[8 * k + j]
        if v:
            syms[m] = v
            k += 1
        else:
            r = 1
            while r < RUN_MAX and k + r < nsym and planes[8 * (k + r) + j] == 0:
                r += 1
            syms[m] = 255 + r
            k += r
        m += 1
    return m


@jit
def _count(syms: Any, m: int, t: int, hist: Any) -> None:
    ctx = 0
    for i in range(m):
        s = syms[i]
        hist[t + ctx, s] += 1
        ctx = 1 if s >= 256 else 0


@jit
def _encode_stream(
    syms: Any, m: int, t: int, counts: Any, cost: Any, shift: Any, start: Any, enc: Any, log: int, vals: Any,
    nbs: Any, out: Any, limit: int,
) -> int:
    """tANS-code symbols ``syms[:m]`` of tables ``t, t + 1`` into ``out``: coded last to first, so that the
    decoder reads them first to last. Returns the length, or -1 if it would not be below ``limit`` (bytes),
    decided first from the symbols' estimated cost (``cost``: ``COST`` of each table's counts), then from the
    coded length.

    Per table and symbol of count ``c``, ``shift`` is ``log - floor(log2(c))`` (the bits emitted from a state
    ``x`` are that, or one fewer when ``x >> shift < c``) and ``start`` is ``cum - c`` (where the encoder table's
    range for the symbol begins, minus ``c``)."""
    size = 1 << log
    estimate = cost[t, syms[0]] if m else 0
    for i in range(1, m):
        estimate += cost[t + (syms[i - 1] >= 256), syms[i]]
    if estimate >= limit * 8 * 64:  # about as large as raw: no need to code it to know
        return -1
    x_state = size
    total = log
    for i in range(m - 1, -1, -1):
        s = syms[i]
        tc = t + (1 if i > 0 and syms[i - 1] >= 256 else 0)
        nbits = shift[tc, s]
        high = x_state >> nbits
        if high < counts[tc, s]:
            nbits -= 1
            high = x_state >> nbits
        vals[i] = x_state & ((1 << nbits) - 1)
        nbs[i] = nbits
        total += nbits
        x_state = enc[tc, start[tc, s] + high]
    length = (total + 7) >> 3
    if length >= limit:
        return -1
    acc = np.uint64(x_state - size)
    nacc = log
    pos = 0
    for i in range(m):
        acc |= np.uint64(vals[i]) << np.uint64(nacc)
        nacc += nbs[i]
        if nacc >= 32:  # four whole bytes at a time
            for k in range(4):
                out[pos + k] = np.uint8((acc >> np.uint64(8 * k)) & np.uint64(0xFF))
            pos += 4
            acc >>= np.uint64(32)
            nacc -= 32
    pos, acc, nacc = put(out, pos, acc, nacc)
    if nacc:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
    return length


@jit
def _analyse(pixels: Any, th: int, tw: int, pred: int, store: Any, widths: Any, symbols: Any, lengths: Any, hist: Any) -> None:
    """First pass: every tile's interleaved bit planes into ``store[tile]``, its number of planes into ``widths``,
    each plane's symbols into ``symbols[tile, plane]`` (their number into ``lengths``) and the symbols' counts,
    per plane and context, into ``hist``."""
    images, height, width = pixels.shape
    tiles_y = (height + th - 1) // th
    tiles_x = (width + tw - 1) // tw
    nb = (tw + 7) >> 3
    z = np.zeros((th, nb * 8), dtype=np.uint8)
    for img in range(images):
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                t = (img * tiles_y + ty) * tiles_x + tx
                tht = min(th, height - ty * th)
                twt = min(tw, width - tx * tw)
                nbt = (twt + 7) >> 3
                top = _tile_codes(pixels, img, ty * th, tx * tw, tht, twt, pred, z)
                w = 0
                while top >> w:
                    w += 1
                widths[t] = w
                _tile_planes(z, tht, nbt, store[t])
                p8 = store[t].view(np.uint8)
                for j in range(w):
                    m = _symbols(p8, j, tht * nbt, symbols[t, j])
                    lengths[t, j] = m
                    _count(symbols[t, j], m, j * CONTEXTS, hist)


@jit
def _raw_plane(words: Any, shift: np.uint64, out: Any, pos: int, nsym: int) -> None:
    """Plane ``shift / 8`` of the interleaved words as bytes at ``out[pos:]`` (one vectorised pass)."""
    for k in range(np.uint64(nsym)):
        out[pos + k] = np.uint8((words[k] >> shift) & np.uint64(0xFF))


@jit
def encode_chunk(pixels: Any, th: int, tw: int, pred: int, log: int) -> Any:
    """Encode ``pixels`` (uint8 ``(images, height, width)``) as one chunk (``docs/turbo.md``); returns uint8."""
    images, height, width = pixels.shape
    tiles_y = (height + th - 1) // th
    tiles_x = (width + tw - 1) // tw
    ntiles = images * tiles_y * tiles_x
    nb = (tw + 7) >> 3
    store = np.empty((ntiles, th * nb), dtype=np.uint64)
    widths = np.zeros(ntiles, dtype=np.int64)
    symbols = np.empty((ntiles, MAX_PLANES, th * nb), dtype=np.int16)
    counted = np.zeros((ntiles, MAX_PLANES), dtype=np.int64)
    hist = np.zeros((MAX_PLANES * CONTEXTS, ALPHABET), dtype=np.int64)
    _analyse(pixels, th, tw, pred, store, widths, symbols, counted, hist)
    planes = 0
    for t in range(ntiles):
        planes = max(planes, widths[t])
    ntables = planes * CONTEXTS
    counts = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    normalize_counts_jit(hist[:ntables], log, counts)
    size = 1 << log
    dec = np.empty((max(ntables, 1), size), dtype=np.uint32)
    enc = np.zeros((max(ntables, 1), size), dtype=np.int64)
    build_tables_jit(counts[:ntables], log, dec, enc, LOG2, ADVANCE)
    shift = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    start = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    cost = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    for t in range(ntables):
        cum = 0
        for s in range(ALPHABET):
            c = counts[t, s]
            if c:
                shift[t, s] = log - LOG2[c]
                start[t, s] = cum - c
                cost[t, s] = COST[c << (MAX_TABLE_LOG - log)]
            cum += c
    capacity = HEADER_BYTES + ntables * 1024 + 16 + 4 * (ntiles + 1)
    capacity += ntiles * (1 + 5 * MAX_PLANES) + images * height * (width + 7 * tiles_x)
    out = np.zeros(capacity, dtype=np.uint8)
    table_end = write_tables(counts[:ntables], log, out, HEADER_BYTES)
    data = table_end + 4 * (ntiles + 1)
    pos = data
    streams = np.zeros((MAX_PLANES, th * nb + 16), dtype=np.uint8)
    lengths = np.zeros(MAX_PLANES, dtype=np.int64)
    vals = np.empty(th * nb, dtype=np.int64)
    nbs = np.empty(th * nb, dtype=np.int64)
    for img in range(images):
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                t = (img * tiles_y + ty) * tiles_x + tx
                nsym = min(th, height - ty * th) * ((min(tw, width - tx * tw) + 7) >> 3)
                put_u32(out, table_end + 4 * t, pos - data)
                w = widths[t]
                out[pos] = w
                pos += 1
                for j in range(w):
                    lengths[j] = _encode_stream(
                        symbols[t, j], counted[t, j], j * CONTEXTS, counts, cost, shift, start, enc, log, vals, nbs,
                        streams[j], nsym - nsym // RAW_MARGIN,
                    )
                    pos = write_varint(out, pos, nsym << 1 | 1 if lengths[j] < 0 else lengths[j] << 1)
                for j in range(w):
                    if lengths[j] < 0:  # coding saves too little: the plane's bytes as they are
                        _raw_plane(store[t], np.uint64(8 * j), out, pos, nsym)
                        pos += nsym
                    else:
                        out[pos : pos + lengths[j]] = streams[j, : lengths[j]]
                        pos += lengths[j]
    put_u32(out, table_end + 4 * ntiles, pos - data)
    put_u32(out, 0, MAGIC_U32)
    out[4] = VERSION
    out[5] = pred
    out[6] = log
    out[7] = planes
    put_u32(out, 8, images)
    put_u32(out, 12, height)
    put_u32(out, 16, width)
    out[20] = th & 0xFF
    out[21] = th >> 8
    out[22] = tw & 0xFF
    out[23] = tw >> 8
    put_u32(out, 24, table_end - HEADER_BYTES)
    return out[:pos]

