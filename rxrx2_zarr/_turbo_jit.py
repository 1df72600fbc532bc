"""Numba primitives shared by the compiled encoder (:mod:`._turbo_encoder`) and decoder (:mod:`._turbo_kernels`)
of the ``rxrx2.turbo`` codec: compile options, an unaligned load, bit and integer I/O on byte arrays, the table
section of a chunk, and the pixel arithmetic (bit transpose, zigzag, the ``up3`` predictor).

Importing this module imports numba (a few hundred milliseconds); :mod:`._turbo` imports it only on the first
encode or decode, never when a store is opened. ``docs/turbo.md`` specifies every structure read or written here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._turbo_format import ALPHABET, ERR_TABLE
from ._turbo_tables import LOG2, build_tables, normalize_counts

__all__ = [
    "JIT",
    "U0",
    "U1",
    "U3",
    "U7",
    "bits",
    "build_tables_jit",
    "inline",
    "jit",
    "load_u64",
    "normalize_counts_jit",
    "put",
    "put_u32",
    "read_tables",
    "read_varint",
    "transpose8",
    "u16",
    "u32",
    "unzigzag",
    "up3",
    "write_tables",
    "write_varint",
]

#: Every kernel releases the GIL (threads decode chunks in parallel) and is cached on disk; bounds checks are off,
#: so the kernels validate every offset and length they read from a chunk before using it.
JIT: dict[str, Any] = {"nogil": True, "cache": True, "boundscheck": False}
F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """Compile ``fn`` with :data:`JIT` (typed as returning ``fn``'s own signature)."""
    return cast(F, njit(**JIT)(fn))


def inline(fn: F) -> F:
    """:func:`jit`, and inlined into its callers by numba (the per-symbol and per-pixel helpers)."""
    return cast(F, njit(**JIT, inline="always")(fn))


normalize_counts_jit = jit(normalize_counts)
build_tables_jit = jit(build_tables)


@intrinsic
def _load_u64(typingctx: Any, arr: Any, idx: Any) -> Any:
    """``arr[idx:idx + 8]`` as a little-endian uint64 in one unaligned load (the caller checks the bounds)."""
    sig = types.uint64(arr, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


load_u64 = cast(Callable[[Any, Any], np.uint64], _load_u64)


@inline
def peek(buf: Any, pos: int) -> np.uint64:
    """64 bits of ``buf`` from byte ``pos`` on; bytes past the end read as zeros (never out of bounds)."""
    n = buf.size
    if pos + 8 <= n:
        return load_u64(buf, pos)
    word = np.uint64(0)
    for k in range(8):
        if pos + k < n:
            word |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return word


@inline
def bits(buf: Any, bitpos: int, nbits: int) -> int:
    """``nbits`` (0..56) bits of ``buf`` from bit ``bitpos`` on (LSB first)."""
    word = peek(buf, bitpos >> 3) >> np.uint64(bitpos & 7)
    return int(word & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1)))


@jit
def u32(buf: Any, pos: int) -> int:
    return int(buf[pos]) | int(buf[pos + 1]) << 8 | int(buf[pos + 2]) << 16 | int(buf[pos + 3]) << 24


@jit
def u16(buf: Any, pos: int) -> int:
    return int(buf[pos]) | int(buf[pos + 1]) << 8


@jit
def put(out: Any, pos: int, acc: np.uint64, nacc: int) -> tuple[int, np.uint64, int]:
    """Flush the whole bytes of the bit accumulator ``acc`` (``nacc`` bits, LSB first) to ``out[pos:]``."""
    while nacc >= 8:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
        acc >>= np.uint64(8)
        nacc -= 8
    return pos, acc, nacc


@jit
def put_u32(out: Any, pos: int, value: int) -> None:
    for k in range(4):
        out[pos + k] = (value >> (8 * k)) & 0xFF


@jit
def read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
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


@jit
def write_varint(out: Any, pos: int, value: int) -> int:
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


@jit
def read_tables(buf: Any, start: int, end: int, ntables: int, log: int, counts: Any) -> int:
    """Parse the table section ``buf[start:end]`` into ``counts[table, symbol]``: 0, or ``ERR_TABLE``.

    Bits are consumed from a 64-bit window refilled whenever fewer than 32 remain (an exp-Golomb code of a count
    below ``2**12`` has at most 25 bits)."""
    size = 1 << log
    limit = end * 8
    bitpos = start * 8
    window = bits(buf, bitpos, 56)
    avail = 56
    for t in range(ntables):
        if avail < 32:
            bitpos += 56 - avail
            window = bits(buf, bitpos, 56)
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
                window = bits(buf, bitpos, 56)
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


@jit
def write_tables(counts: Any, log: int, out: Any, pos: int) -> int:
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
        pos, acc, nacc = put(out, pos, acc, nacc)
        if mode != 2:
            continue
        for s in range(1, ALPHABET):
            if s == first:
                continue
            v = counts[t, s] + 1
            zeros = LOG2[v]
            nacc += zeros  # the unary prefix: zeros, then a one
            pos, acc, nacc = put(out, pos, acc, nacc)
            acc |= np.uint64(1 | ((v - (1 << zeros)) << 1)) << np.uint64(nacc)
            nacc += zeros + 1
            pos, acc, nacc = put(out, pos, acc, nacc)
    if nacc:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
    return pos


U0 = np.uint64(0)
U1 = np.uint64(1)
U3 = np.uint64(3)
U7 = np.uint64(7)


_T1 = np.uint64(0x00AA00AA00AA00AA)
_T2 = np.uint64(0x0000CCCC0000CCCC)
_T3 = np.uint64(0x00000000F0F0F0F0)


@inline
def transpose8(x: np.uint64) -> np.uint64:
    """Transpose the 8 x 8 bit matrix ``x`` (bit ``8r + c`` -> bit ``8c + r``; Hacker's Delight 7-3): the
    8 plane bytes of 8 pixels become the 8 pixels' codes, and back."""
    t = (x ^ (x >> np.uint64(7))) & _T1
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & _T2
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & _T3
    return x ^ t ^ (t << np.uint64(28))


@inline
def unzigzag(v: Any) -> Any:
    return (v >> np.uint8(1)) ^ (np.uint8(0) - (v & np.uint8(1)))


@inline
def up3(c: Any, b: Any, d: Any) -> Any:
    """``(c + 2b + d + 2) >> 2`` in uint8 arithmetic: the rounded mean of ``b`` and the floor mean of ``c`` and
    ``d`` (equal for all inputs; compilers turn the rounded mean into one vector instruction)."""
    m = (c & d) + ((c ^ d) >> np.uint8(1))
    return np.uint8((np.uint16(m) + np.uint16(b) + np.uint16(1)) >> np.uint16(1))
