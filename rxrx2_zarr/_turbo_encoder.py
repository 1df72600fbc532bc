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
    PRED_NONE,
    PRED_UP,
    RUN_MAX,
    VERSION,
)
from ._turbo_jit import (
    build_tables_jit,
    jit,
    normalize_counts_jit,
    put,
    put_u32,
    transpose8,
    write_tables,
    write_varint,
)
from ._turbo_tables import ADVANCE, LOG2

__all__ = ["encode_chunk"]


@jit
def _tile_codes(pixels: Any, img: int, y0: int, x0: int, th: int, tw: int, pred: int, z: Any) -> int:
    """Residual codes of one tile (the inverse of ``_turbo_kernels._reconstruct_tile``) into ``z[y, :tw]``
    (zero past ``tw`` up to the byte boundary); returns the OR of all codes."""
    nb8 = ((tw + 7) >> 3) << 3
    top = 0
    for y in range(th):
        src = pixels[img, y0 + y, x0 : x0 + tw]
        row = z[y]
        if pred == PRED_NONE:
            row[:tw] = src
        elif y == 0:
            left = np.uint8(0)
            for x in range(tw):
                r = np.uint8(src[x] - left)
                row[x] = np.uint8((r << np.uint8(1)) ^ (np.uint8(0) - (r >> np.uint8(7))))
                left = src[x]
        else:
            up = pixels[img, y0 + y - 1, x0 : x0 + tw]
            for x in range(tw):
                b = np.uint16(up[x])
                if pred == PRED_UP or tw == 1:
                    p = np.uint8(b)
                else:
                    c = np.uint16(up[x - 1]) if x > 0 else b
                    d = np.uint16(up[x + 1]) if x + 1 < tw else b
                    p = np.uint8((c + b * np.uint16(2) + d + np.uint16(2)) >> np.uint16(2))
                r = np.uint8(src[x] - p)
                row[x] = np.uint8((r << np.uint8(1)) ^ (np.uint8(0) - (r >> np.uint8(7))))
        row[tw:nb8] = 0
        for x in range(tw):
            top |= int(row[x])
    return top


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
    syms: Any, m: int, t: int, counts: Any, cum: Any, enc: Any, log: int, vals: Any, nbs: Any, out: Any, pos: int,
    limit: int,
) -> int:
    """tANS-code symbols ``syms[:m]`` of tables ``t, t + 1`` at ``out[pos:]``: coded last to first, so that the
    decoder reads them first to last. Returns the end position, or -1 if that would pass ``pos + limit``."""
    size = 1 << log
    x_state = size
    total = log
    for i in range(m - 1, -1, -1):
        s = syms[i]
        tc = t + (1 if i > 0 and syms[i - 1] >= 256 else 0)
        c = counts[tc, s]
        nbits = log - LOG2[c]
        if (x_state >> nbits) < c:
            nbits -= 1
        vals[i] = x_state & ((1 << nbits) - 1)
        nbs[i] = nbits
        total += nbits
        x_state = enc[tc, cum[tc, s] + (x_state >> nbits) - c]
    if (total + 7) >> 3 >= limit:
        return -1
    acc = np.uint64(x_state - size)
    nacc = log
    for i in range(m):
        pos, acc, nacc = put(out, pos, acc, nacc)
        acc |= np.uint64(vals[i]) << np.uint64(nacc)
        nacc += nbs[i]
    pos, acc, nacc = put(out, pos, acc, nacc)
    if nacc:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
    return pos


@jit
def _analyse(pixels: Any, th: int, tw: int, pred: int, store: Any, widths: Any, hist: Any) -> None:
    """First pass: every tile's interleaved bit planes into ``store[tile]``, its number of planes into ``widths``
    and its symbols' counts, per plane and context, into ``hist``."""
    images, height, width = pixels.shape
    tiles_y = (height + th - 1) // th
    tiles_x = (width + tw - 1) // tw
    nb = (tw + 7) >> 3
    z = np.zeros((th, nb * 8), dtype=np.uint8)
    syms = np.empty(th * nb, dtype=np.int64)
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
                    m = _symbols(p8, j, tht * nbt, syms)
                    _count(syms, m, j * CONTEXTS, hist)


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
    hist = np.zeros((MAX_PLANES * CONTEXTS, ALPHABET), dtype=np.int64)
    _analyse(pixels, th, tw, pred, store, widths, hist)
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
    cum = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    for t in range(ntables):
        for s in range(1, ALPHABET):
            cum[t, s] = cum[t, s - 1] + counts[t, s - 1]
    capacity = HEADER_BYTES + ntables * 1024 + 16 + 4 * (ntiles + 1)
    capacity += ntiles * (1 + 5 * MAX_PLANES) + images * height * (width + 7 * tiles_x)
    out = np.zeros(capacity, dtype=np.uint8)
    table_end = write_tables(counts[:ntables], log, out, HEADER_BYTES)
    data = table_end + 4 * (ntiles + 1)
    pos = data
    streams = np.zeros((MAX_PLANES, th * nb + 16), dtype=np.uint8)
    lengths = np.zeros(MAX_PLANES, dtype=np.int64)
    syms = np.empty(th * nb, dtype=np.int64)
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
                p8 = store[t].view(np.uint8)
                for j in range(w):
                    m = _symbols(p8, j, nsym, syms)
                    lengths[j] = _encode_stream(
                        syms, m, j * CONTEXTS, counts, cum, enc, log, vals, nbs, streams[j], 0, nsym
                    )
                    pos = write_varint(out, pos, nsym << 1 | 1 if lengths[j] < 0 else lengths[j] << 1)
                for j in range(w):
                    if lengths[j] < 0:  # not smaller coded than raw: the plane's bytes as they are
                        for k in range(nsym):
                            out[pos + k] = p8[8 * k + j]
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

