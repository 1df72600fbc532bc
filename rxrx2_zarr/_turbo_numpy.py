"""The pure-numpy reference implementation of the ``rxrx2.turbo`` codec (``docs/turbo.md``): the same bytes as the
compiled encoder (:mod:`._turbo_encoder`), the same pixels as the compiled decoder (:mod:`._turbo_kernels`), with
the same entry points and error codes. It runs where numba is not installed, and tests hold the two to each other.

tANS is sequential within a stream, so each step here advances every stream of the chunk at once (hundreds of
lanes per numpy call); everything else is whole-array numpy. About two orders of magnitude slower than the
kernels, which is what a fallback may be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

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
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_PLANES,
    MAX_TABLE_LOG,
    MIN_TABLE_LOG,
    PRED_NONE,
    PRED_UP,
    PRED_UP3,
    RAW_MARGIN,
    RUN_MAX,
    VERSION,
)
from ._turbo_tables import ADVANCE, COST, LOG2, build_tables, normalize_counts

__all__ = ["decode_chunk", "encode_chunk"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
_T = (np.uint64(0x00AA00AA00AA00AA), np.uint64(0x0000CCCC0000CCCC), np.uint64(0x00000000F0F0F0F0))


def _transpose8(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Transpose each 8 x 8 bit matrix (bit ``8r + c`` -> bit ``8c + r``): plane bytes <-> pixel codes."""
    for shift, mask in zip((7, 14, 28), _T, strict=True):
        s = np.uint64(shift)
        t = (x ^ (x >> s)) & mask
        x = x ^ t ^ (t << s)
    return x


def _zigzag(r: U8) -> U8:
    out: U8 = (r << np.uint8(1)) ^ (np.uint8(0) - (r >> np.uint8(7)))
    return out


def _unzigzag(z: U8) -> U8:
    out: U8 = (z >> np.uint8(1)) ^ (np.uint8(0) - (z & np.uint8(1)))
    return out


def _up3(up: U8) -> U8:
    """``(c + 2b + d + 2) >> 2`` of rows ``up`` (``(..., width)``), ends replicated."""
    b = up.astype(np.uint16)
    c = np.concatenate([b[..., :1], b[..., :-1]], axis=-1)
    d = np.concatenate([b[..., 1:], b[..., -1:]], axis=-1)
    out: U8 = ((c + 2 * b + d + 2) >> 2).astype(np.uint8)
    return out


def _tiles(images: int, height: int, width: int, th: int, tw: int) -> list[tuple[int, int, int, int, int]]:
    """``(image, y0, x0, rows, columns)`` of every tile, in chunk order."""
    return [
        (img, y0, x0, min(th, height - y0), min(tw, width - x0))
        for img in range(images)
        for y0 in range(0, height, th)
        for x0 in range(0, width, tw)
    ]


# --- encoding -------------------------------------------------------------------------------------------------------


def _codes(tile: U8, pred: int) -> U8:
    """Residual codes of a tile (``(rows, columns)``), padded with zeros to whole bytes of 8 pixels."""
    th, tw = tile.shape
    z = np.zeros((th, -(-tw // 8) * 8), dtype=np.uint8)
    if pred == PRED_NONE:
        z[:, :tw] = tile
        return z
    r = np.empty_like(tile)
    r[0, 0] = tile[0, 0]
    r[0, 1:] = tile[0, 1:] - tile[0, :-1]
    if th > 1:
        above = tile[:-1]
        r[1:] = tile[1:] - (above if pred == PRED_UP or tw == 1 else _up3(above))
    z[:, :tw] = _zigzag(r)
    return z


def _symbols(plane: U8) -> I64:
    """The symbols of one plane: nonzero bytes, and runs of zero bytes cut into pieces of at most RUN_MAX."""
    n = plane.size
    zero = plane == 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], zero.astype(np.int8), [0]])))
    starts, lengths = edges[0::2], edges[1::2] - edges[0::2]
    pieces = -(-lengths // RUN_MAX)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    index = np.arange(pieces.sum()) - first  # piece number within its run
    run_of = np.repeat(np.arange(starts.size), pieces)
    piece_pos = starts[run_of] + index * RUN_MAX
    piece_len = np.minimum(RUN_MAX, lengths[run_of] - index * RUN_MAX)
    lit_pos = np.flatnonzero(~zero)
    pos = np.concatenate([lit_pos, piece_pos])
    sym = np.concatenate([plane[lit_pos].astype(np.int64), 255 + piece_len])
    order = np.argsort(pos, kind="stable")
    assert pos.size == 0 or int(pos[order][-1]) < n
    result: I64 = sym[order]
    return result


def _contexts(syms: I64) -> I64:
    ctx = np.zeros(syms.size, dtype=np.int64)
    ctx[1:] = syms[:-1] >= 256
    return ctx


def _write_tables(counts: I64, log: int) -> bytes:
    """The table section of ``counts`` (``docs/turbo.md``, "Tables")."""
    size = 1 << log
    acc = 0
    nacc = 0
    for row in counts:
        present = np.flatnonzero(row[1:]) + 1
        if present.size == 0:
            nacc += 2
            continue
        first = int(present[np.argmax(row[present])])
        mode = 1 if row[first] == size else 2
        acc |= (mode | first << 2) << nacc
        nacc += 11
        if mode == 1:
            continue
        for s in range(1, ALPHABET):
            if s == first:
                continue
            v = int(row[s]) + 1
            zeros = v.bit_length() - 1
            acc |= (1 | (v - (1 << zeros)) << 1) << (nacc + zeros)
            nacc += 2 * zeros + 1
    return acc.to_bytes(-(-nacc // 8), "little")


def _encode_streams(
    streams: Sequence[tuple[I64, int]], counts: I64, enc: I64, log: int
) -> tuple[I64, I64, I64]:
    """tANS-code every stream ``(symbols, first table)`` at once, last symbol first: the bits each symbol
    emits (``vals``, ``nbits``, aligned at the start of the rows) and each stream's final encoder state."""
    size = 1 << log
    cum = np.zeros_like(counts)
    cum[:, 1:] = np.cumsum(counts[:, :-1], axis=1)
    lengths = np.array([s.size for s, _ in streams], dtype=np.int64)
    longest = int(lengths.max(initial=0))
    sym = np.zeros((len(streams), longest), dtype=np.int64)
    tab = np.zeros((len(streams), longest), dtype=np.int64)
    for i, (s, t) in enumerate(streams):
        sym[i, : s.size] = s
        tab[i, : s.size] = t + _contexts(s)
    vals = np.zeros_like(sym)
    nbits = np.zeros_like(sym)
    state = np.full(len(streams), size, dtype=np.int64)
    for i in range(longest - 1, -1, -1):
        lanes = np.flatnonzero(lengths > i)
        s = sym[lanes, i]
        t = tab[lanes, i]
        c = counts[t, s]
        x = state[lanes]
        nb = log - LOG2[c]
        nb -= (x >> nb) < c
        vals[lanes, i] = x & ((1 << nb) - 1)
        nbits[lanes, i] = nb
        state[lanes] = enc[t, cum[t, s] + (x >> nb) - c]
    return vals, nbits, state - size


def _pack(vals: I64, nbits: I64, first: I64, log: int) -> list[bytes]:
    """Each row's bit stream: ``first`` (``log`` bits), then ``vals`` of ``nbits`` bits each, LSB first."""
    rows = vals.shape[0]
    v = np.concatenate([first[:, None], vals], axis=1)
    n = np.concatenate([np.full((rows, 1), log, dtype=np.int64), nbits], axis=1)
    ends = np.cumsum(n, axis=1)
    total = ends[:, -1] if n.shape[1] else np.zeros(rows, dtype=np.int64)
    size = -(-total // 8)
    base = np.concatenate([[0], np.cumsum(size)])
    out = np.zeros(int(base[-1]) + 3, dtype=np.uint32)
    start = ends - n + (base[:-1, None] * 8)
    shifted = (v << (start & 7)).astype(np.uint32)
    byte = start >> 3
    keep = n > 0
    for k in range(3):
        np.bitwise_or.at(out, byte[keep] + k, (shifted[keep] >> np.uint32(8 * k)) & np.uint32(0xFF))
    flat = out.astype(np.uint8)
    return [flat[base[i] : base[i + 1]].tobytes() for i in range(rows)]


def encode_chunk(pixels: U8, th: int, tw: int, pred: int, log: int) -> U8:
    """Encode ``pixels`` (uint8 ``(images, height, width)``) as one chunk; returns uint8 (the same bytes as
    ``_turbo_encoder.encode_chunk``)."""
    images, height, width = pixels.shape
    tiles = _tiles(images, height, width, th, tw)
    planes: list[U8] = []
    widths: list[int] = []
    symbols: list[list[I64]] = []
    hist = np.zeros((MAX_PLANES * CONTEXTS, ALPHABET), dtype=np.int64)
    for img, y0, x0, rows, cols in tiles:
        z = _codes(pixels[img, y0 : y0 + rows, x0 : x0 + cols], pred)
        w = int(z.max()).bit_length()
        p = _transpose8(z.view(np.uint64).reshape(-1)).view(np.uint8).reshape(-1, 8)
        planes.append(p)
        widths.append(w)
        symbols.append([_symbols(np.ascontiguousarray(p[:, j])) for j in range(w)])
        for j, s in enumerate(symbols[-1]):
            np.add.at(hist, (j * CONTEXTS + _contexts(s), s), 1)
    nplanes = max(widths)
    ntables = nplanes * CONTEXTS
    counts = np.zeros((ntables, ALPHABET), dtype=np.int64)
    normalize_counts(hist[:ntables], log, counts)
    size = 1 << log
    dec = np.zeros((ntables, size), dtype=np.uint32)
    enc = np.zeros((ntables, size), dtype=np.int64)
    build_tables(counts, log, dec, enc, LOG2, ADVANCE)
    # a plane whose estimated cost is about raw's is stored raw without coding it (the kernels' rule)
    limits = [(rows * -(-cols // 8)) - (rows * -(-cols // 8)) // RAW_MARGIN for _, _, _, rows, cols in tiles]
    scale = MAX_TABLE_LOG - log
    streams = [
        (s, j * CONTEXTS)
        for tile, limit in zip(symbols, limits, strict=True)
        for j, s in enumerate(tile)
        if COST[counts[j * CONTEXTS + _contexts(s), s] << scale].sum() < limit * 8 * 64
    ]
    vals, nbits, first = _encode_streams(streams, counts, enc, log)
    coded = iter(_pack(vals, nbits, first, log))
    parts: list[bytes] = []
    offsets = [0]
    for (_, _, _, rows, cols), p, tile_symbols, limit in zip(tiles, planes, symbols, limits, strict=True):
        nsym = rows * -(-cols // 8)
        body = [
            next(coded) if COST[counts[j * CONTEXTS + _contexts(s), s] << scale].sum() < limit * 8 * 64 else None
            for j, s in enumerate(tile_symbols)
        ]
        lengths = [len(b) << 1 if b is not None and len(b) < limit else nsym << 1 | 1 for b in body]
        head = bytes([len(body)]) + b"".join(_varint(v) for v in lengths)
        tile = head + b"".join(
            b if b is not None and len(b) < limit else p[:nsym, j].tobytes() for j, b in enumerate(body)
        )
        parts.append(tile)
        offsets.append(offsets[-1] + len(tile))
    table = _write_tables(counts, log)
    header = HEADER.pack(MAGIC, VERSION, pred, log, nplanes, images, height, width, th, tw, len(table))
    blob = header + table + np.array(offsets, dtype="<u4").tobytes() + b"".join(parts)
    return np.frombuffer(blob, dtype=np.uint8)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --- decoding -------------------------------------------------------------------------------------------------------


class _Corrupt(Exception):
    """Internal: the error code (``ERR_*``), tile and plane of the first problem found."""

    def __init__(self, code: int, tile: int = -1, plane: int = -1) -> None:
        super().__init__(code)
        self.code, self.tile, self.plane = code, tile, plane


def _read_tables(section: bytes, ntables: int, log: int) -> I64:
    """Parse the table section (the inverse of :func:`_write_tables`)."""
    size = 1 << log
    value = int.from_bytes(section, "little")
    limit = len(section) * 8
    pos = 0
    counts = np.zeros((ntables, ALPHABET), dtype=np.int64)

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > limit:
            raise _Corrupt(ERR_TABLE)
        bits = (value >> pos) & ((1 << n) - 1)
        pos += n
        return bits

    for t in range(ntables):
        mode = take(2)
        if mode == 0:
            continue
        first = take(9)
        if mode == 3 or not 0 < first < ALPHABET:
            raise _Corrupt(ERR_TABLE)
        if mode == 1:
            counts[t, first] = size
            continue
        for s in range(1, ALPHABET):
            if s == first:
                continue
            zeros = 0
            while not take(1):
                zeros += 1
                if zeros >= 13:
                    raise _Corrupt(ERR_TABLE)
            counts[t, s] = (1 << zeros) + take(zeros) - 1
            if counts[t].sum() >= size:
                raise _Corrupt(ERR_TABLE)
        counts[t, first] = size - counts[t].sum()
    if -(-pos // 8) != len(section):
        raise _Corrupt(ERR_TABLE)
    return counts


def _varints(buf: bytes, pos: int, end: int, count: int) -> tuple[list[int], int]:
    values = []
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= end or shift > 28:
                raise _Corrupt(ERR_TILE)
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        values.append(value)
    return values, pos


def _parse_tile(raw_bytes: bytes, start: int, end: int, planes: int, nsym: int, log: int) -> list[tuple[int, int, int]]:
    """The plane streams of a tile: ``(raw, first bit, length in bytes)`` per plane (the checks of
    ``_turbo_kernels._decode_tile``, in its order)."""
    if start >= end:
        raise _Corrupt(ERR_TILE)
    w = raw_bytes[start]
    if w > planes:
        raise _Corrupt(ERR_TILE)
    values, pos = _varints(raw_bytes, start + 1, end, w)
    streams = []
    for value in values:
        if value & 1 and value >> 1 != nsym:
            raise _Corrupt(ERR_TILE)
    for value in values:
        raw, length = value & 1, value >> 1
        if pos + length > end or (not raw and length * 8 < log):
            raise _Corrupt(ERR_TILE)
        streams.append((raw, pos * 8, length))
        pos += length
    if pos != end:
        raise _Corrupt(ERR_TILE)
    return streams


def _decode_lanes(buf: U8, entries: npt.NDArray[np.uint32], lanes: I64, planes: U8, log: int) -> I64:
    """Run every coded stream (rows of ``lanes``: symbols, first bit, table offset, plane byte offset) to its
    end at once; returns ``(position, state, bit position, OR of entries)`` per lane."""
    n = lanes[:, 0]
    bp = lanes[:, 1] + log
    padded = np.zeros(buf.size + (MAX_TABLE_LOG * int(n.max(initial=0)) + 7) // 8 + 16, dtype=np.uint8)
    padded[: buf.size] = buf
    words = np.ndarray((padded.size - 7,), dtype="<u8", buffer=padded.data, strides=(1,))
    state = ((words[lanes[:, 1] >> 3] >> (lanes[:, 1] & 7).astype(np.uint64)) & np.uint64((1 << log) - 1)).astype(np.int64)
    k = np.zeros_like(n)
    flags = np.zeros_like(n)
    active = np.flatnonzero(k < n)
    while active.size:
        e = entries[lanes[active, 2] + state[active]].astype(np.int64)
        planes[lanes[active, 3] + 8 * k[active]] = e & 0xFF
        nbits = (e >> ENTRY_BITS_SHIFT) & 0xF
        b = bp[active]
        word = (words[b >> 3] >> (b & 7).astype(np.uint64)).astype(np.int64) & ((1 << nbits) - 1)
        state[active] = (e >> ENTRY_BASE_SHIFT) + word
        bp[active] = b + nbits
        k[active] += ((e >> ENTRY_ADVANCE_SHIFT) & 0x3F) + 1
        flags[active] |= e
        active = active[k[active] < n[active]]
    return np.stack([k, state, bp, flags], axis=1)


def _reconstruct(codes: U8, pred: int) -> U8:
    """Undo zigzag and prediction of a stack of same-shaped tiles: codes ``(tiles, rows, columns)``."""
    if pred == PRED_NONE:
        return codes
    out = np.empty_like(codes)
    out[:, 0] = np.cumsum(_unzigzag(codes[:, 0]), axis=-1, dtype=np.uint8)
    tw = codes.shape[2]
    for y in range(1, codes.shape[1]):
        above = out[:, y - 1]
        out[:, y] = (above if pred == PRED_UP or tw == 1 else _up3(above)) + _unzigzag(codes[:, y])
    return out


def decode_chunk(buf: U8, out: U8, ty0: int, ty1: int, tx0: int, tx1: int, info: I64) -> int:
    """Decode tiles ``[ty0, ty1) x [tx0, tx1)`` of every image into ``out`` (as ``_turbo_kernels.decode_chunk``,
    with the same error codes)."""
    info[:] = -1
    try:
        _decode(buf, out, (ty0, ty1, tx0, tx1))
    except _Corrupt as exc:
        info[0], info[1] = exc.tile, exc.plane
        return exc.code
    return 0


def _decode(buf: U8, out: U8, window: tuple[int, int, int, int]) -> None:
    data = buf.tobytes()
    n = len(data)
    if n < HEADER_BYTES:
        raise _Corrupt(ERR_HEADER)
    magic, version, pred, log, planes, images, height, width, th, tw, tsize = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise _Corrupt(ERR_HEADER)
    if pred > PRED_UP3 or not MIN_TABLE_LOG <= log <= MAX_TABLE_LOG or planes > MAX_PLANES:
        raise _Corrupt(ERR_HEADER)
    if min(images, height, width, th, tw) < 1 or HEADER_BYTES + tsize > n:
        raise _Corrupt(ERR_HEADER)
    ty0, ty1, tx0, tx1 = window
    tiles_y, tiles_x = -(-height // th), -(-width // tw)
    if not (0 <= ty0 < ty1 <= tiles_y and 0 <= tx0 < tx1 <= tiles_x):
        raise _Corrupt(ERR_SHAPE)
    if out.shape != (images, min(ty1 * th, height) - ty0 * th, min(tx1 * tw, width) - tx0 * tw):
        raise _Corrupt(ERR_SHAPE)
    size = 1 << log
    ntables = planes * CONTEXTS
    counts = _read_tables(data[HEADER_BYTES : HEADER_BYTES + tsize], ntables, log)
    entries = np.zeros((ntables, size), dtype=np.uint32)
    build_tables(counts, log, entries, np.empty((0, 0), dtype=np.int64), LOG2, ADVANCE)
    ntiles = images * tiles_y * tiles_x
    table_end = HEADER_BYTES + tsize
    start_data = table_end + 4 * (ntiles + 1)
    if start_data > n:
        raise _Corrupt(ERR_OFFSETS)
    offsets = np.frombuffer(data, dtype="<u4", count=ntiles + 1, offset=table_end).astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != n - start_data:
        raise _Corrupt(ERR_OFFSETS)
    nb = -(-tw // 8)
    chosen = [
        (img, ty, tx, (img * tiles_y + ty) * tiles_x + tx)
        for img in range(images)
        for ty in range(ty0, ty1)
        for tx in range(tx0, tx1)
    ]
    plane_bytes = np.zeros((len(chosen), (th * nb + RUN_MAX) * 8), dtype=np.uint8)
    lanes: list[tuple[int, int, int, int]] = []
    owners: list[tuple[int, int, int, int]] = []  # tile, plane, first bit of the stream, its length
    for i, (_, ty, tx, t) in enumerate(chosen):
        start, end = int(offsets[t]), int(offsets[t + 1])
        if start > end or start_data + end > n:
            raise _Corrupt(ERR_OFFSETS, t)
        nsym = min(th, height - ty * th) * -(-min(tw, width - tx * tw) // 8)
        try:
            streams = _parse_tile(data, start_data + start, start_data + end, planes, nsym, log)
        except _Corrupt as exc:
            raise _Corrupt(exc.code, t) from None
        for j, (raw, bit0, length) in enumerate(streams):
            if raw:
                plane_bytes[i, j : 8 * nsym : 8] = buf[bit0 >> 3 : (bit0 >> 3) + nsym]
            else:
                lanes.append((nsym, bit0, j * CONTEXTS * size, i * plane_bytes.shape[1] + j))
                owners.append((t, j, bit0, length))
    if lanes:
        ends = _decode_lanes(buf, entries.reshape(-1), np.array(lanes, dtype=np.int64), plane_bytes.reshape(-1), log)
        _check_lanes(ends, lanes, owners, log)
    _write_tiles(plane_bytes, chosen, out, (th, tw, height, width, ty0, tx0), pred)


def _check_lanes(ends: I64, lanes: Sequence[tuple[int, int, int, int]], owners: Sequence[tuple[int, int, int, int]], log: int) -> None:
    """The end-of-stream checks of ``_turbo_kernels._decode_tile``, tile by tile in chunk order."""
    size = 1 << log
    for (k, state, bp, flags), (nsym, _, _, _), (t, j, bit0, length) in zip(ends, lanes, owners, strict=True):
        stop = bit0 + length * 8
        if flags & FLAG_INVALID:
            raise _Corrupt(ERR_ENTRY, t, j)
        if bp > stop:
            raise _Corrupt(ERR_OVERRUN, t, j)
        if k != nsym or state & (size - 1) or (bp + 7) >> 3 != stop >> 3:
            raise _Corrupt(ERR_STREAM_END, t, j)


def _write_tiles(plane_bytes: U8, chosen: Sequence[tuple[int, int, int, int]], out: U8, geometry: tuple[int, ...], pred: int) -> None:
    """Bit planes -> codes -> pixels, tiles of one shape at a time, into ``out``."""
    th, tw, height, width, ty0, tx0 = geometry
    nb = -(-tw // 8)
    words = plane_bytes.view(np.uint64)[:, : th * nb]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, ty, tx, _) in enumerate(chosen):
        groups.setdefault((min(th, height - ty * th), min(tw, width - tx * tw)), []).append(i)
    for (rows, cols), members in groups.items():
        nbt = -(-cols // 8)
        codes = _transpose8(words[members][:, : rows * nbt]).view(np.uint8).reshape(len(members), rows, nbt * 8)
        pixels = _reconstruct(np.ascontiguousarray(codes[:, :, :cols]), pred)
        for m, i in enumerate(members):
            img, ty, tx, _ = chosen[i]
            y0, x0 = (ty - ty0) * th, (tx - tx0) * tw
            out[img, y0 : y0 + rows, x0 : x0 + cols] = pixels[m]
