"""The compiled (numba) decoder of the ``rxrx2.turbo`` codec (``docs/turbo.md``); :mod:`._turbo_numpy` is the
pure-numpy reference that reads the same pixels (tests compare them on every kind of input).

Every kernel is ``nogil=True``: threads decoding different chunks run in parallel. A corrupt chunk makes
:func:`decode_chunk` return an error code; it is never read or written out of bounds: every offset, length and
count is checked before use, table lookups stay inside the chunk's tables whatever the data (states are at most
``2 * 2**log``), and the bit reads of a tile are guaranteed to stay 8 bytes inside the buffer (tiles near its
end are decoded from a zero-padded copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._turbo_format import (
    ALPHABET,
    CONTEXTS,
    ENTRY_ADVANCE_SHIFT,
    ENTRY_BASE_SHIFT,
    ENTRY_BITS_SHIFT,
    ERR_ENTRY,
    ERR_HEADER,
    ERR_OFFSETS,
    ERR_OVERRUN,
    ERR_SHAPE,
    ERR_STREAM_END,
    ERR_TABLE,
    ERR_TILE,
    FLAG_INVALID,
    HEADER_BYTES,
    MAGIC_U32,
    MAX_PLANES,
    MAX_TABLE_LOG,
    MIN_TABLE_LOG,
    PRED_NONE,
    PRED_UP,
    PRED_UP3,
    RUN_MAX,
    VERSION,
)
from ._turbo_jit import (
    U0,
    U1,
    U3,
    U7,
    bits,
    build_tables_jit,
    inline,
    jit,
    load_u64,
    read_tables,
    read_varint,
    transpose8,
    u16,
    u32,
    unzigzag,
    up3,
)
from ._turbo_tables import ADVANCE, LOG2

__all__ = ["decode_chunk"]

_BITS_SHIFT = np.uint64(ENTRY_BITS_SHIFT)
_ADVANCE_SHIFT = np.uint64(ENTRY_ADVANCE_SHIFT)
_BASE_SHIFT = np.uint64(ENTRY_BASE_SHIFT)


@inline
def _step(
    buf: Any, entries: Any, planes: Any, j: np.uint64, k: np.uint64, st: np.uint64, bp: np.uint64, tb: np.uint64,
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Decode one symbol of plane ``j``'s stream (state ``st``, an index into the plane's two tables at offset
    ``tb``, bit position ``bp``): write its byte at ``planes[8 * k + j]``. Returns the new position, state and bit
    position, and the entry (for its invalid flag).

    The bits are one unaligned 8-byte load, unchecked: :func:`_decode_tile` guarantees that ``buf`` extends 8
    bytes past the farthest bit a stream of the tile can reach (12 bits per symbol)."""
    e = np.uint64(entries[tb + st])
    planes[(k << U3) + j] = np.uint8(e & np.uint64(0xFF))
    nbits = (e >> _BITS_SHIFT) & np.uint64(0xF)
    word = load_u64(buf, bp >> U3) >> (bp & U7)
    st = (e >> _BASE_SHIFT) + (word & ((U1 << nbits) - U1))
    return k + ((e >> _ADVANCE_SHIFT) & np.uint64(0x3F)) + U1, st, bp + nbits, e


@jit
def _run_quad(src: Any, entries: Any, planes: Any, lanes: Any) -> np.uint64:
    """Advance four plane streams in lockstep until one of them ends (independent dependency chains keep the
    core busy: one stream alone waits on each table load). ``lanes[q]`` is (plane, symbols, position, state,
    bit position, table offset), read and written back; returns the OR of the entries."""
    j0, n0, k0, s0, b0, t0 = lanes[0, 0], lanes[0, 1], lanes[0, 2], lanes[0, 3], lanes[0, 4], lanes[0, 5]
    j1, n1, k1, s1, b1, t1 = lanes[1, 0], lanes[1, 1], lanes[1, 2], lanes[1, 3], lanes[1, 4], lanes[1, 5]
    j2, n2, k2, s2, b2, t2 = lanes[2, 0], lanes[2, 1], lanes[2, 2], lanes[2, 3], lanes[2, 4], lanes[2, 5]
    j3, n3, k3, s3, b3, t3 = lanes[3, 0], lanes[3, 1], lanes[3, 2], lanes[3, 3], lanes[3, 4], lanes[3, 5]
    flags = U0
    while k0 < n0 and k1 < n1 and k2 < n2 and k3 < n3:
        k0, s0, b0, e0 = _step(src, entries, planes, j0, k0, s0, b0, t0)
        k1, s1, b1, e1 = _step(src, entries, planes, j1, k1, s1, b1, t1)
        k2, s2, b2, e2 = _step(src, entries, planes, j2, k2, s2, b2, t2)
        k3, s3, b3, e3 = _step(src, entries, planes, j3, k3, s3, b3, t3)
        flags |= e0 | e1 | e2 | e3
    lanes[0, 2], lanes[0, 3], lanes[0, 4] = k0, s0, b0
    lanes[1, 2], lanes[1, 3], lanes[1, 4] = k1, s1, b1
    lanes[2, 2], lanes[2, 3], lanes[2, 4] = k2, s2, b2
    lanes[3, 2], lanes[3, 3], lanes[3, 4] = k3, s3, b3
    return flags


@jit
def _run_pair(src: Any, entries: Any, planes: Any, lanes: Any, qa: int, qb: int) -> np.uint64:
    """:func:`_run_quad` for two lanes (``qb == qa``: one lane alone), until one of them ends."""
    ja, na, ka, sa, ba, ta = lanes[qa, 0], lanes[qa, 1], lanes[qa, 2], lanes[qa, 3], lanes[qa, 4], lanes[qa, 5]
    jb, nb, kb, sb, bb, tb = lanes[qb, 0], lanes[qb, 1], lanes[qb, 2], lanes[qb, 3], lanes[qb, 4], lanes[qb, 5]
    flags = U0
    if qa == qb:
        while ka < na:
            ka, sa, ba, ea = _step(src, entries, planes, ja, ka, sa, ba, ta)
            flags |= ea
    else:
        while ka < na and kb < nb:
            ka, sa, ba, ea = _step(src, entries, planes, ja, ka, sa, ba, ta)
            kb, sb, bb, eb = _step(src, entries, planes, jb, kb, sb, bb, tb)
            flags |= ea | eb
        lanes[qb, 2], lanes[qb, 3], lanes[qb, 4] = kb, sb, bb
    lanes[qa, 2], lanes[qa, 3], lanes[qa, 4] = ka, sa, ba
    return flags


@jit
def _decode_streams(src: Any, entries: Any, planes: Any, lanes: Any, count: int) -> int:
    """Decode ``count`` (1..4) plane streams ``lanes[:count]``: four at a time while they last, then in pairs,
    then alone. Returns the OR of the entries."""
    flags = U0
    if count == 4:
        flags |= _run_quad(src, entries, planes, lanes)
    while True:
        qa = -1
        qb = -1
        for q in range(count):
            if lanes[q, 2] < lanes[q, 1]:
                if qa < 0:
                    qa = q
                elif qb < 0:
                    qb = q
        if qa < 0:
            break
        flags |= _run_pair(src, entries, planes, lanes, qa, qb if qb >= 0 else qa)
    return int(flags)


@jit
def _decode_tile(
    buf: Any, start: int, end: int, planes: int, log: int, entries: Any, th: int, tw: int, pred: int,
    out: Any, img: int, oy: int, ox: int, pbuf: Any, z64: Any, above: Any, lanes: Any, info: Any,
) -> int:
    """Decode one tile ``buf[start:end]`` into ``out[img, oy:oy + th, ox:ox + tw]``."""
    nb = (tw + 7) >> 3
    nsym = th * nb
    size = 1 << log
    if start >= end:
        return ERR_TILE
    w = int(buf[start])
    if w > planes:
        return ERR_TILE
    pos = start + 1
    lengths = np.empty(MAX_PLANES, dtype=np.int64)
    raw = np.empty(MAX_PLANES, dtype=np.int64)
    for j in range(w):
        value, pos = read_varint(buf, pos, end)
        if value < 0 or (value & 1 and value >> 1 != nsym):
            return ERR_TILE
        raw[j] = value & 1
        lengths[j] = value >> 1
    bit0 = np.empty(MAX_PLANES, dtype=np.int64)
    state = np.zeros(MAX_PLANES, dtype=np.int64)
    for j in range(w):
        if pos + lengths[j] > end or (not raw[j] and lengths[j] * 8 < log):
            return ERR_TILE
        bit0[j] = pos * 8
        if not raw[j]:
            state[j] = bits(buf, pos * 8, log)
            bit0[j] += log
        pos += lengths[j]
    if pos != end:
        return ERR_TILE
    pbuf[: nsym + RUN_MAX] = 0
    p8 = pbuf.view(np.uint8)
    coded = np.empty(MAX_PLANES, dtype=np.int64)
    ncoded = 0
    for j in range(w):
        if raw[j]:
            _deposit(buf, np.uint64(bit0[j] >> 3), pbuf, np.uint64(nsym), np.uint64(8 * j))
        else:
            coded[ncoded] = j
            ncoded += 1
    src = buf
    rebase = 0
    if end + (MAX_TABLE_LOG * nsym + 7) // 8 + 8 > buf.size:
        # the chunk's last tiles: decode a copy followed by zeros, so that no read can pass the buffer's end
        src = np.zeros(end - start + (MAX_TABLE_LOG * nsym + 7) // 8 + 16, dtype=np.uint8)
        src[: end - start] = buf[start:end]
        rebase = start * 8
    for q0 in range(0, ncoded, 4):
        count = min(4, ncoded - q0)
        for q in range(count):
            j = coded[q0 + q]
            lanes[q, 0] = j
            lanes[q, 1] = nsym
            lanes[q, 2] = 0
            lanes[q, 3] = state[j]
            lanes[q, 4] = bit0[j] - rebase
            lanes[q, 5] = j * CONTEXTS * size
        flags = _decode_streams(src, entries, p8, lanes, count)
        if flags & FLAG_INVALID:
            info[1] = coded[q0]
            return ERR_ENTRY
        for q in range(count):
            j = int(lanes[q, 0])
            k = int(lanes[q, 2])
            s = int(lanes[q, 3])
            b = int(lanes[q, 4]) + rebase
            stop = (bit0[j] - (0 if raw[j] else log)) + lengths[j] * 8
            if b > stop:
                info[1] = j
                return ERR_OVERRUN
            if k != nsym or s & (size - 1) != 0 or (b + 7) >> 3 != stop >> 3:  # final state 0 (either context)
                info[1] = j
                return ERR_STREAM_END
    _planes_to_codes(pbuf, nsym, z64)
    rows, width = out.shape[1], out.shape[2]
    _reconstruct_tile(
        z64.view(np.uint8), nb * 8, out.reshape(-1), width, (img * rows + oy) * width + ox, th, tw, pred, above
    )
    return 0


@jit
def _deposit(buf: Any, src: np.uint64, pbuf: Any, nsym: np.uint64, shift: np.uint64) -> None:
    """A raw plane ``buf[src:src + nsym]`` into byte ``shift / 8`` of the interleaved words ``pbuf`` (one
    vectorised pass; unsigned indices, so numba adds no wrap-around code)."""
    for k in range(nsym):
        pbuf[k] |= np.uint64(buf[src + k]) << shift


@jit
def _planes_to_codes(pbuf: Any, nsym: int, z64: Any) -> None:
    """Interleaved planes (byte ``j`` of ``pbuf[k]`` is plane ``j``'s byte ``k``) -> residual codes
    (byte ``i`` of ``z64[k]`` is the code of pixel ``8k + i``)."""
    for k in range(nsym):
        z64[k] = transpose8(pbuf[k])


@jit
def _reconstruct_tile(
    z: Any, stride: int, flat: Any, width: int, origin: int, th: int, tw: int, pred: int, above: Any
) -> None:
    """Undo zigzag and prediction of one tile: the residual codes of tile row ``y`` at ``z[y * stride:]`` ->
    ``flat[origin + y * width:][:tw]`` (``flat`` is the flattened output, rows ``width`` apart).

    Each row is one vectorised pass over the row above it, first copied to the scratch row ``above``: read from
    ``flat`` itself, the compiler cannot rule out that a store feeds a later load (the distance, ``width``, is not
    a constant) and does not vectorise, which is ten times slower. Indices are unsigned so that numba adds no
    wrap-around code to every access."""
    left = np.uint8(0)
    for x in range(tw):
        if pred == PRED_NONE:
            flat[origin + x] = z[x]
        else:  # the tile's first row is predicted from the left neighbour
            left = np.uint8(left + unzigzag(z[x]))
            flat[origin + x] = left
    u1 = np.uint64(1)
    end = np.uint64(tw)
    for y in range(1, th):
        a = np.uint64(origin + (y - 1) * width)
        b = a + np.uint64(width)
        c = np.uint64(y * stride)
        if pred == PRED_NONE:
            for x in range(end):
                flat[b + x] = z[c + x]
            continue
        for x in range(end):
            above[x] = flat[a + x]
        if pred == PRED_UP or tw == 1:
            for x in range(end):
                flat[b + x] = np.uint8(above[x] + unzigzag(z[c + x]))
        else:  # PRED_UP3 over the row above, its two ends replicated
            flat[b] = np.uint8(up3(above[0], above[0], above[1]) + unzigzag(z[c]))
            for x in range(u1, end - u1):
                flat[b + x] = np.uint8(up3(above[x - u1], above[x], above[x + u1]) + unzigzag(z[c + x]))
            last = end - u1
            flat[b + last] = np.uint8(up3(above[last - u1], above[last], above[last]) + unzigzag(z[c + last]))


@jit
def decode_chunk(buf: Any, out: Any, ty0: int, ty1: int, tx0: int, tx1: int, info: Any) -> int:
    """Decode tiles ``[ty0, ty1) x [tx0, tx1)`` of every image of the chunk ``buf`` (uint8) into ``out`` (uint8
    ``(images, rows, columns)``: exactly those tiles' pixels, ``out[:, 0, 0]`` at the first tile's origin).

    Returns 0, or an error code (``_turbo_format.ERR_*``) with ``info[0]`` the tile and ``info[1]`` the plane.
    """
    info[0] = -1
    info[1] = -1
    n = buf.size
    if n < HEADER_BYTES or u32(buf, 0) != MAGIC_U32 or buf[4] != VERSION:
        return ERR_HEADER
    pred = int(buf[5])
    log = int(buf[6])
    planes = int(buf[7])
    images = u32(buf, 8)
    height = u32(buf, 12)
    width = u32(buf, 16)
    th = u16(buf, 20)
    tw = u16(buf, 22)
    tsize = u32(buf, 24)
    if pred > PRED_UP3 or not MIN_TABLE_LOG <= log <= MAX_TABLE_LOG or planes > MAX_PLANES:
        return ERR_HEADER
    if images < 1 or height < 1 or width < 1 or th < 1 or tw < 1 or HEADER_BYTES + tsize > n:
        return ERR_HEADER
    tiles_y = (height + th - 1) // th
    tiles_x = (width + tw - 1) // tw
    if not (0 <= ty0 < ty1 <= tiles_y and 0 <= tx0 < tx1 <= tiles_x):
        return ERR_SHAPE
    rows = min(ty1 * th, height) - ty0 * th
    cols = min(tx1 * tw, width) - tx0 * tw
    if out.shape[0] != images or out.shape[1] != rows or out.shape[2] != cols:
        return ERR_SHAPE
    size = 1 << log
    ntables = planes * CONTEXTS
    counts = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    if read_tables(buf, HEADER_BYTES, HEADER_BYTES + tsize, ntables, log, counts) != 0:
        return ERR_TABLE
    dec = np.empty((max(ntables, 1), size), dtype=np.uint32)
    build_tables_jit(counts[:ntables], log, dec, np.empty((0, 0), dtype=np.int64), LOG2, ADVANCE)
    entries = dec.reshape(-1)
    ntiles = images * tiles_y * tiles_x
    table_end = HEADER_BYTES + tsize
    data = table_end + 4 * (ntiles + 1)
    if data > n or u32(buf, table_end) != 0 or u32(buf, table_end + 4 * ntiles) != n - data:
        return ERR_OFFSETS
    nb = (tw + 7) >> 3
    pbuf = np.empty(th * nb + RUN_MAX, dtype=np.uint64)  # a run may end RUN_MAX bytes past a corrupt plane
    z64 = np.empty(th * nb, dtype=np.uint64)
    above = np.empty(tw, dtype=np.uint8)
    lanes = np.zeros((4, 6), dtype=np.uint64)
    for img in range(images):
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                t = (img * tiles_y + ty) * tiles_x + tx
                start = u32(buf, table_end + 4 * t)
                end = u32(buf, table_end + 4 * t + 4)
                if start > end or data + end > n:
                    info[0] = t
                    return ERR_OFFSETS
                err = _decode_tile(
                    buf, data + start, data + end, planes, log, entries,
                    int(min(th, height - ty * th)), int(min(tw, width - tx * tw)), pred,
                    out, img, (ty - ty0) * th, (tx - tx0) * tw, pbuf, z64, above, lanes, info,
                )
                if err != 0:
                    info[0] = t
                    return err
    return 0
