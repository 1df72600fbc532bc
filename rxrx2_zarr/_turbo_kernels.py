"""The compiled (numba) kernels of the ``rxrx2.turbo`` codec. ``docs/turbo.md`` specifies the format; the
pure-numpy reference in :mod:`._turbo_numpy` writes the same bytes and reads the same pixels (tests check both).

Importing this module imports numba (a few hundred ms; each kernel is compiled once and cached in
``__pycache__``), so only :mod:`._turbo` imports it, on the first encode or decode. Every kernel is
``nogil=True``: threads decoding different chunks run in parallel. ``boundscheck`` is off for speed, so the
kernels validate every offset, length and count they read from a chunk before using it, and bit reads past the
end of the buffer read zeros (:func:`_peek`): a corrupt chunk returns an error code, it is never read or written
out of bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

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
from ._turbo_tables import build_tables, normalize_counts

__all__ = ["decode_chunk", "encode_chunk"]

_JIT: dict[str, Any] = {"nogil": True, "cache": True, "boundscheck": False}
_INLINE: dict[str, Any] = {**_JIT, "inline": "always"}
_LOW_BITS = np.uint64(0x0101010101010101)
_GATHER = np.uint64(0x0102040810204080)


@intrinsic
def _load_u64(typingctx: Any, arr: Any, idx: Any) -> Any:
    """``arr[idx:idx + 8]`` as a little-endian uint64 in one unaligned load (the caller checks the bounds)."""
    sig = types.uint64(arr, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


def _spread_table() -> np.ndarray[Any, np.dtype[np.uint64]]:
    """``SPREAD[b]``: bit ``i`` of byte ``b`` moved to bit 0 of byte ``i`` (one plane's bits of 8 pixels)."""
    table = np.zeros(256, dtype=np.uint64)
    for b in range(256):
        for i in range(8):
            if b >> i & 1:
                table[b] |= np.uint64(1) << np.uint64(8 * i)
    return table


def _log2_table(n: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    table = np.zeros(n, dtype=np.int64)
    for x in range(2, n):
        table[x] = table[x >> 1] + 1
    return table


def _advance_table() -> np.ndarray[Any, np.dtype[np.int64]]:
    """Bytes of a plane that each symbol covers: 1 for a literal byte, ``r`` for symbol ``255 + r``."""
    return np.array([1] * 256 + list(range(1, RUN_MAX + 1)), dtype=np.int64)


SPREAD = _spread_table()
LOG2 = _log2_table(2 << MAX_TABLE_LOG)
ADVANCE = _advance_table()
_normalize_counts = njit(**_JIT)(normalize_counts)
_build_tables = njit(**_JIT)(build_tables)


@njit(**_INLINE)
def _peek(buf: Any, pos: int) -> np.uint64:
    """64 bits of ``buf`` from byte ``pos`` on; bytes past the end read as zeros (never out of bounds)."""
    n = buf.size
    if pos + 8 <= n:
        return _load_u64(buf, pos)
    word = np.uint64(0)
    for k in range(8):
        if pos + k < n:
            word |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return word


@njit(**_INLINE)
def _bits(buf: Any, bitpos: int, nbits: int) -> int:
    """``nbits`` (0..56) bits of ``buf`` from bit ``bitpos`` on (LSB first)."""
    word = _peek(buf, bitpos >> 3) >> np.uint64(bitpos & 7)
    return int(word & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1)))


@njit(**_JIT)
def _u32(buf: Any, pos: int) -> int:
    return int(buf[pos]) | int(buf[pos + 1]) << 8 | int(buf[pos + 2]) << 16 | int(buf[pos + 3]) << 24


@njit(**_JIT)
def _u16(buf: Any, pos: int) -> int:
    return int(buf[pos]) | int(buf[pos + 1]) << 8


# --- the table section ----------------------------------------------------------------------------------------------


@njit(**_JIT)
def _read_tables(buf: Any, start: int, end: int, ntables: int, log: int, counts: Any) -> int:
    """Parse the table section ``buf[start:end]`` into ``counts[table, symbol]``: 0, or ``ERR_TABLE``.

    Bits are consumed from a 64-bit window refilled whenever fewer than 32 remain (an exp-Golomb code of a count
    below ``2**12`` has at most 25 bits)."""
    size = 1 << log
    limit = end * 8
    bitpos = start * 8
    window = _bits(buf, bitpos, 56)
    avail = 56
    for t in range(ntables):
        if avail < 32:
            bitpos += 56 - avail
            window = _bits(buf, bitpos, 56)
            avail = 56
        mode = window & 3
        if mode == 0:
            window >>= 2
            avail -= 2
            continue
        first = (window >> 2) & 0x1FF
        window >>= 11
        avail -= 11
        if mode == 3 or first == 0 or first >= ALPHABET:
            return ERR_TABLE
        if mode == 1:
            counts[t, first] = size
            continue
        total = 0
        for s in range(1, ALPHABET):
            if s == first:
                continue
            if avail < 32:
                bitpos += 56 - avail
                window = _bits(buf, bitpos, 56)
                avail = 56
            if window & 1:  # count 0: the one-bit code
                window >>= 1
                avail -= 1
                continue
            zeros = 1
            while zeros < 13 and not (window >> zeros) & 1:
                zeros += 1
            if zeros >= 13:
                return ERR_TABLE
            value = (1 << zeros) + ((window >> (zeros + 1)) & ((1 << zeros) - 1)) - 1
            window >>= 2 * zeros + 1
            avail -= 2 * zeros + 1
            total += value
            if total >= size:
                return ERR_TABLE
            counts[t, s] = value
        counts[t, first] = size - total
    bitpos += 56 - avail
    if bitpos > limit or (bitpos + 7) >> 3 != end:
        return ERR_TABLE
    return 0


@njit(**_JIT)
def _put(out: Any, pos: int, acc: np.uint64, nacc: int) -> tuple[int, np.uint64, int]:
    """Flush the whole bytes of the bit accumulator ``acc`` (``nacc`` bits, LSB first) to ``out[pos:]``."""
    while nacc >= 8:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
        acc >>= np.uint64(8)
        nacc -= 8
    return pos, acc, nacc


@njit(**_JIT)
def _write_tables(counts: Any, log: int, out: Any, pos: int) -> int:
    """Write the table section of ``counts`` at ``out[pos:]``; returns the position after it."""
    size = 1 << log
    acc = np.uint64(0)
    nacc = 0
    for t in range(counts.shape[0]):
        first = -1
        for s in range(1, ALPHABET):
            if counts[t, s] > 0 and (first < 0 or counts[t, s] > counts[t, first]):
                first = s
        mode = 0 if first < 0 else (1 if counts[t, first] == size else 2)
        acc |= np.uint64(mode) << np.uint64(nacc)
        nacc += 2
        if mode:
            acc |= np.uint64(first) << np.uint64(nacc)
            nacc += 9
        pos, acc, nacc = _put(out, pos, acc, nacc)
        if mode != 2:
            continue
        for s in range(1, ALPHABET):
            if s == first:
                continue
            v = counts[t, s] + 1
            zeros = LOG2[v]
            nacc += zeros  # the unary prefix: zeros, then a one
            pos, acc, nacc = _put(out, pos, acc, nacc)
            acc |= np.uint64(1 | ((v - (1 << zeros)) << 1)) << np.uint64(nacc)
            nacc += zeros + 1
            pos, acc, nacc = _put(out, pos, acc, nacc)
    if nacc:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
    return pos


# --- decoding -------------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end or shift > 28:
            return -1, pos
        b = int(buf[pos])
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U3 = np.uint64(3)
_U7 = np.uint64(7)
_U8 = np.uint64(8)
_BITS_SHIFT = np.uint64(ENTRY_BITS_SHIFT)
_ADVANCE_SHIFT = np.uint64(ENTRY_ADVANCE_SHIFT)
_BASE_SHIFT = np.uint64(ENTRY_BASE_SHIFT)


@njit(**_INLINE)
def _step(
    buf: Any, entries: Any, planes: Any, j: np.uint64, k: np.uint64, st: np.uint64, bp: np.uint64, tb: np.uint64,
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64, np.uint64]:
    """Decode one symbol of plane ``j``'s stream (state ``st``, bit position ``bp``, table offset ``tb``, which
    includes the context): write its byte at ``planes[8 * k + j]``. Returns the new position, state, bit
    position, the context for the next symbol (0 or 1, to scale by the table size) and the entry (for its flag).

    The bits are one unaligned 8-byte load, unchecked: :func:`_decode_tile` guarantees that ``buf`` extends 8
    bytes past the farthest bit a stream of the tile can reach (12 bits per symbol)."""
    e = np.uint64(entries[tb + st])
    planes[(k << _U3) + j] = np.uint8(e & np.uint64(0xFF))
    nbits = (e >> _BITS_SHIFT) & np.uint64(0xF)
    word = _load_u64(buf, bp >> _U3) >> (bp & _U7)
    st = ((e >> _BASE_SHIFT) & np.uint64(0xFFF)) + (word & ((_U1 << nbits) - _U1))
    ctx = np.uint64((e & np.uint64(0xFF)) == _U0)
    return k + ((e >> _ADVANCE_SHIFT) & np.uint64(0x7F)), st, bp + nbits, ctx, e


@njit(**_JIT)
def _decode_pair(
    buf: Any, entries: Any, size: int, planes: Any, ja: int, jb: int, na: int, nb: int, sa: int, sb: int, ba: int,
    bb: int, ta: int, tb: int,
) -> tuple[int, int, int, int, int, int, int]:
    """Decode two plane streams in lockstep (two independent dependency chains keep the core busy), then the
    rest of the longer one. Returns the end positions, states and bit positions, and the OR of the entries."""
    usize = np.uint64(size)
    una = np.uint64(na)
    unb = np.uint64(nb)
    ka = _U0
    kb = _U0
    xa = np.uint64(sa)
    xb = np.uint64(sb)
    qa = np.uint64(ba)
    qb = np.uint64(bb)
    oa = np.uint64(ta)
    ob = np.uint64(tb)
    ua = oa
    ub = ob
    pa = np.uint64(ja)
    pb = np.uint64(jb)
    flags = _U0
    while ka < una and kb < unb:
        ka, xa, qa, ca, ea = _step(buf, entries, planes, pa, ka, xa, qa, ua)
        kb, xb, qb, cb, eb = _step(buf, entries, planes, pb, kb, xb, qb, ub)
        ua = oa + ca * usize
        ub = ob + cb * usize
        flags |= ea | eb
    while ka < una:
        ka, xa, qa, ca, ea = _step(buf, entries, planes, pa, ka, xa, qa, ua)
        ua = oa + ca * usize
        flags |= ea
    while kb < unb:
        kb, xb, qb, cb, eb = _step(buf, entries, planes, pb, kb, xb, qb, ub)
        ub = ob + cb * usize
        flags |= eb
    return int(ka), int(kb), int(xa), int(xb), int(qa), int(qb), int(flags)


@njit(**_JIT)
def _decode_tile(
    buf: Any, start: int, end: int, planes: int, log: int, entries: Any, th: int, tw: int, pred: int,
    out: Any, img: int, oy: int, ox: int, pbuf: Any, z64: Any, above: Any, info: Any,
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
        value, pos = _read_varint(buf, pos, end)
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
            state[j] = _bits(buf, pos * 8, log)
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
            src = bit0[j] >> 3
            for k in range(nsym):
                p8[8 * k + j] = buf[src + k]
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
    for q in range(0, ncoded, 2):
        ja = coded[q]
        jb = coded[q + 1] if q + 1 < ncoded else ja
        nbq = nsym if q + 1 < ncoded else 0
        ka, kb, sa, sb, ba, bb, flags = _decode_pair(
            src, entries, size, p8, ja, jb, nsym, nbq, state[ja], state[jb], bit0[ja] - rebase,
            bit0[jb] - rebase, ja * CONTEXTS * size, jb * CONTEXTS * size,
        )
        ba += rebase
        bb += rebase
        if flags & FLAG_INVALID:
            info[1] = ja
            return ERR_ENTRY
        for j, k, s, b in ((ja, ka, sa, ba), (jb, kb, sb, bb)):
            if j == jb and nbq == 0:
                continue
            stop = (bit0[j] - (0 if raw[j] else log)) + lengths[j] * 8
            if b > stop:
                info[1] = j
                return ERR_OVERRUN
            if k != nsym or s != 0 or (b + 7) >> 3 != stop >> 3:
                info[1] = j
                return ERR_STREAM_END
    _planes_to_codes(pbuf, nsym, z64)
    rows, width = out.shape[1], out.shape[2]
    _reconstruct_tile(
        z64.view(np.uint8), nb * 8, out.reshape(-1), width, (img * rows + oy) * width + ox, th, tw, pred, above
    )
    return 0


_T1 = np.uint64(0x00AA00AA00AA00AA)
_T2 = np.uint64(0x0000CCCC0000CCCC)
_T3 = np.uint64(0x00000000F0F0F0F0)


@njit(**_INLINE)
def _transpose8(x: np.uint64) -> np.uint64:
    """Transpose the 8 x 8 bit matrix ``x`` (bit ``8r + c`` -> bit ``8c + r``; Hacker's Delight 7-3): the
    8 plane bytes of 8 pixels become the 8 pixels' codes, and back."""
    t = (x ^ (x >> np.uint64(7))) & _T1
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & _T2
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & _T3
    return x ^ t ^ (t << np.uint64(28))


@njit(**_JIT)
def _planes_to_codes(pbuf: Any, nsym: int, z64: Any) -> None:
    """Interleaved planes (byte ``j`` of ``pbuf[k]`` is plane ``j``'s byte ``k``) -> residual codes
    (byte ``i`` of ``z64[k]`` is the code of pixel ``8k + i``)."""
    for k in range(nsym):
        z64[k] = _transpose8(pbuf[k])


@njit(**_INLINE)
def _unzigzag(v: Any) -> Any:
    return (v >> np.uint8(1)) ^ (np.uint8(0) - (v & np.uint8(1)))


@njit(**_INLINE)
def _up3(c: Any, b: Any, d: Any) -> Any:
    """``(c + 2b + d + 2) >> 2`` in uint8 arithmetic: the rounded mean of ``b`` and the floor mean of ``c`` and
    ``d`` (equal for all inputs; compilers turn the rounded mean into one vector instruction)."""
    m = (c & d) + ((c ^ d) >> np.uint8(1))
    return np.uint8((np.uint16(m) + np.uint16(b) + np.uint16(1)) >> np.uint16(1))


@njit(**_JIT)
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
            left = np.uint8(left + _unzigzag(z[x]))
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
                flat[b + x] = np.uint8(above[x] + _unzigzag(z[c + x]))
        else:  # PRED_UP3 over the row above, its two ends replicated
            flat[b] = np.uint8(_up3(above[0], above[0], above[1]) + _unzigzag(z[c]))
            for x in range(u1, end - u1):
                flat[b + x] = np.uint8(_up3(above[x - u1], above[x], above[x + u1]) + _unzigzag(z[c + x]))
            x = end - u1
            flat[b + x] = np.uint8(_up3(above[x - u1], above[x], above[x]) + _unzigzag(z[c + x]))


@njit(**_JIT)
def decode_chunk(buf: Any, out: Any, ty0: int, ty1: int, tx0: int, tx1: int, info: Any) -> int:
    """Decode tiles ``[ty0, ty1) x [tx0, tx1)`` of every image of the chunk ``buf`` (uint8) into ``out`` (uint8
    ``(images, rows, columns)``: exactly those tiles' pixels, ``out[:, 0, 0]`` at the first tile's origin).

    Returns 0, or an error code (``_turbo_format.ERR_*``) with ``info[0]`` the tile and ``info[1]`` the plane.
    """
    info[0] = -1
    info[1] = -1
    n = buf.size
    if n < HEADER_BYTES or _u32(buf, 0) != MAGIC_U32 or buf[4] != VERSION:
        return ERR_HEADER
    pred = int(buf[5])
    log = int(buf[6])
    planes = int(buf[7])
    images = _u32(buf, 8)
    height = _u32(buf, 12)
    width = _u32(buf, 16)
    th = _u16(buf, 20)
    tw = _u16(buf, 22)
    tsize = _u32(buf, 24)
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
    if _read_tables(buf, HEADER_BYTES, HEADER_BYTES + tsize, ntables, log, counts) != 0:
        return ERR_TABLE
    dec = np.empty((max(ntables, 1), size), dtype=np.uint32)
    _build_tables(counts[:ntables], log, dec, np.empty((0, 0), dtype=np.int64), LOG2, ADVANCE)
    entries = dec.reshape(-1)
    ntiles = images * tiles_y * tiles_x
    table_end = HEADER_BYTES + tsize
    data = table_end + 4 * (ntiles + 1)
    if data > n or _u32(buf, table_end) != 0 or _u32(buf, table_end + 4 * ntiles) != n - data:
        return ERR_OFFSETS
    nb = (tw + 7) >> 3
    pbuf = np.empty(th * nb + RUN_MAX, dtype=np.uint64)
    z64 = np.empty(th * nb, dtype=np.uint64)
    above = np.empty(tw, dtype=np.uint8)
    for img in range(images):
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                t = (img * tiles_y + ty) * tiles_x + tx
                start = _u32(buf, table_end + 4 * t)
                end = _u32(buf, table_end + 4 * t + 4)
                if start > end or data + end > n:
                    info[0] = t
                    return ERR_OFFSETS
                err = _decode_tile(
                    buf, data + start, data + end, planes, log, entries,
                    int(min(th, height - ty * th)), int(min(tw, width - tx * tw)), pred,
                    out, img, (ty - ty0) * th, (tx - tx0) * tw, pbuf, z64, above, info,
                )
                if err != 0:
                    info[0] = t
                    return err
    return 0


# --- encoding -------------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _tile_codes(pixels: Any, img: int, y0: int, x0: int, th: int, tw: int, pred: int, z: Any) -> int:
    """Residual codes of one tile (the inverse of :func:`_reconstruct_row`) into ``z[y, :tw]`` (zero past
    ``tw`` up to the byte boundary); returns the OR of all codes."""
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


@njit(**_JIT)
def _tile_planes(z: Any, th: int, nb: int, w: int, planes: Any) -> None:
    """Bit planes of the codes: bit ``i`` of ``planes[j, y * nb + k]`` is bit ``j`` of ``z[y, 8k + i]``."""
    for y in range(th):
        words = z[y].view(np.uint64)
        for k in range(nb):
            word = words[k]
            for j in range(w):
                bits = (word >> np.uint64(j)) & _LOW_BITS
                planes[j, y * nb + k] = np.uint8((bits * _GATHER) >> np.uint64(56))


@njit(**_JIT)
def _symbols(plane: Any, nsym: int, syms: Any) -> int:
    """The symbols of one plane (nonzero bytes and runs of zero bytes) into ``syms``; returns their number."""
    m = 0
    k = 0
    while k < nsym:
        v = plane[k]
        if v:
            syms[m] = v
            k += 1
        else:
            r = 1
            while r < RUN_MAX and k + r < nsym and plane[k + r] == 0:
                r += 1
            syms[m] = 255 + r
            k += r
        m += 1
    return m


@njit(**_JIT)
def _count(syms: Any, m: int, t: int, hist: Any) -> None:
    ctx = 0
    for i in range(m):
        s = syms[i]
        hist[t + ctx, s] += 1
        ctx = 1 if s >= 256 else 0


@njit(**_JIT)
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
        pos, acc, nacc = _put(out, pos, acc, nacc)
        acc |= np.uint64(vals[i]) << np.uint64(nacc)
        nacc += nbs[i]
    pos, acc, nacc = _put(out, pos, acc, nacc)
    if nacc:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
    return pos


@njit(**_JIT)
def _write_varint(out: Any, pos: int, value: int) -> int:
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


@njit(**_JIT)
def _put_u32(out: Any, pos: int, value: int) -> None:
    for k in range(4):
        out[pos + k] = (value >> (8 * k)) & 0xFF


@njit(**_JIT)
def _analyse(pixels: Any, th: int, tw: int, pred: int, store: Any, widths: Any, hist: Any) -> None:
    """First pass: every tile's bit planes into ``store`` and plane counts into ``widths``; symbol counts."""
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
                _tile_planes(z, tht, nbt, w, store[t])
                for j in range(w):
                    m = _symbols(store[t, j], tht * nbt, syms)
                    _count(syms, m, j * CONTEXTS, hist)


@njit(**_JIT)
def encode_chunk(pixels: Any, th: int, tw: int, pred: int, log: int) -> Any:
    """Encode ``pixels`` (uint8 ``(images, height, width)``) as one chunk (``docs/turbo.md``); returns uint8."""
    images, height, width = pixels.shape
    tiles_y = (height + th - 1) // th
    tiles_x = (width + tw - 1) // tw
    ntiles = images * tiles_y * tiles_x
    nb = (tw + 7) >> 3
    store = np.empty((ntiles, MAX_PLANES, th * nb), dtype=np.uint8)
    widths = np.zeros(ntiles, dtype=np.int64)
    hist = np.zeros((MAX_PLANES * CONTEXTS, ALPHABET), dtype=np.int64)
    _analyse(pixels, th, tw, pred, store, widths, hist)
    planes = 0
    for t in range(ntiles):
        planes = max(planes, widths[t])
    ntables = planes * CONTEXTS
    counts = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    _normalize_counts(hist[:ntables], log, counts)
    size = 1 << log
    dec = np.empty((max(ntables, 1), size), dtype=np.uint32)
    enc = np.zeros((max(ntables, 1), size), dtype=np.int64)
    _build_tables(counts[:ntables], log, dec, enc, LOG2, ADVANCE)
    cum = np.zeros((max(ntables, 1), ALPHABET), dtype=np.int64)
    for t in range(ntables):
        for s in range(1, ALPHABET):
            cum[t, s] = cum[t, s - 1] + counts[t, s - 1]
    capacity = HEADER_BYTES + ntables * 1024 + 16 + 4 * (ntiles + 1)
    capacity += ntiles * (1 + 5 * MAX_PLANES) + images * height * (width + 7 * tiles_x)
    out = np.zeros(capacity, dtype=np.uint8)
    table_end = _write_tables(counts[:ntables], log, out, HEADER_BYTES)
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
                _put_u32(out, table_end + 4 * t, pos - data)
                w = widths[t]
                out[pos] = w
                pos += 1
                for j in range(w):
                    m = _symbols(store[t, j], nsym, syms)
                    lengths[j] = _encode_stream(
                        syms, m, j * CONTEXTS, counts, cum, enc, log, vals, nbs, streams[j], 0, nsym
                    )
                    pos = _write_varint(out, pos, nsym << 1 | 1 if lengths[j] < 0 else lengths[j] << 1)
                for j in range(w):
                    if lengths[j] < 0:  # not smaller coded than raw: the plane's bytes as they are
                        out[pos : pos + nsym] = store[t, j, :nsym]
                        pos += nsym
                    else:
                        out[pos : pos + lengths[j]] = streams[j, : lengths[j]]
                        pos += lengths[j]
    _put_u32(out, table_end + 4 * ntiles, pos - data)
    _put_u32(out, 0, MAGIC_U32)
    out[4] = VERSION
    out[5] = pred
    out[6] = log
    out[7] = planes
    _put_u32(out, 8, images)
    _put_u32(out, 12, height)
    _put_u32(out, 16, width)
    out[20] = th & 0xFF
    out[21] = th >> 8
    out[22] = tw & 0xFF
    out[23] = tw >> 8
    _put_u32(out, 24, table_end - HEADER_BYTES)
    return out[:pos]
