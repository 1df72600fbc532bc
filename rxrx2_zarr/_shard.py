"""Direct encoding and decoding of a site's shard, bypassing zarr-python's per-chunk pipeline.

A site array is one ``sharding_indexed`` chunk (Zarr v3 spec): the inner chunks' encoded bytes, then an index of
``n`` little-endian ``(offset, nbytes)`` uint64 pairs in C order over the inner-chunk grid, then the CRC32C of
that index (``index_location: end``; ``offset = nbytes = 2**64 - 1`` marks an absent chunk, read as zeros).
zarr-python spends ~0.3 ms of bookkeeping per inner chunk, which makes a naive sharded read no faster than
decoding PNGs (../shared/RXRX2.md); here each inner chunk costs one call into the codec library, which releases
the GIL, so threads decode in parallel. The bytes written are exactly what zarr-python reads (tests check both
directions), so the store stays a standard Zarr v3 store.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._codec_table import Chain, ShardDataError, parse_chain
from ._crc import crc32c
from ._errors import StoreFormatError
from ._layout import THUMBNAIL_CODECS, SiteArraySpec

if TYPE_CHECKING:
    from concurrent.futures import Executor

__all__ = ["MISSING", "ShardCodec", "ShardDataError", "ShardIndexError", "decode_thumbnail", "encode_thumbnail", "thumbnail"]

MISSING = np.uint64(2**64 - 1)

Pixels = npt.NDArray[np.uint8]


class ShardIndexError(ValueError):
    """The shard's index is truncated or fails its checksum (the caller names the site and object)."""


def thumbnail(pixels: Pixels, factor: int) -> Pixels:
    """The (c, ceil(h/f), ceil(w/f)) thumbnail of a (c, h, w) site: each pixel the rounded mean of its f x f
    block (edge blocks average the pixels they have)."""
    c, h, w = pixels.shape
    th, tw = -(-h // factor), -(-w // factor)
    if h % factor or w % factor:
        padded = np.zeros((c, th * factor, tw * factor), dtype=np.uint8)
        padded[:, :h, :w] = pixels
    else:
        padded = pixels
    sums = padded.reshape(c, th, factor, tw, factor).sum(axis=(2, 4), dtype=np.uint32)
    rows = np.minimum(factor, h - np.arange(th) * factor).astype(np.uint32)
    cols = np.minimum(factor, w - np.arange(tw) * factor).astype(np.uint32)
    counts = rows[:, None] * cols[None, :]
    means: Pixels = ((sums + counts // 2) // counts).astype(np.uint8)
    return means


class ShardCodec:
    """Encode a (c, y, x) uint8 site into one shard and decode all or part of it."""

    def __init__(self, spec: SiteArraySpec, where: str = "site array") -> None:
        self._configure(spec.array_metadata(), where, spec.codec_profile.zstd_parameters)

    @classmethod
    def from_array_metadata(cls, meta: Mapping[str, Any], where: str) -> ShardCodec:
        """Build a codec from a site array's ``zarr.json`` after checking it is one this library writes."""
        try:
            if meta.get("data_type") != "uint8" or meta.get("zarr_format") != 3:
                raise StoreFormatError(f"{where}: expected a Zarr v3 uint8 array")
            shape = [int(v) for v in meta["shape"]]
            outer = [int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            (sharding,) = meta["codecs"]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(f"{where}: malformed array metadata ({exc})") from None
        config = sharding.get("configuration", {}) if isinstance(sharding, Mapping) else {}
        inner = [int(v) for v in config.get("chunk_shape", [])]
        if len(inner) != 3 or inner[0] != 1 or len(shape) != 3:
            raise StoreFormatError(f"{where}: unexpected inner chunk shape {inner} for array shape {shape}")
        padded = [shape[0]] + [-(-s // c) * c for s, c in zip(shape[1:], inner[1:], strict=True)]
        if sharding.get("name") != "sharding_indexed" or outer != padded:
            raise StoreFormatError(f"{where}: expected one shard spanning the (c, y, x) array")
        self = cls.__new__(cls)
        self._configure(dict(meta), where)
        return self

    def _configure(self, meta: Mapping[str, Any], where: str, parameters: tuple[tuple[str, int], ...] = ()) -> None:
        sharding = meta["codecs"][0]
        config = sharding["configuration"]
        if config.get("index_location", "end") != "end":
            raise StoreFormatError(f"{where}: shard index must be at the end")
        index_names = [c.get("name") for c in config.get("index_codecs", [])]
        if index_names != ["bytes", "crc32c"]:
            raise StoreFormatError(f"{where}: unexpected shard index codecs {index_names}")
        self.shape: tuple[int, int, int] = tuple(int(v) for v in meta["shape"])  # type: ignore[assignment]
        self.chunk: tuple[int, int, int] = tuple(int(v) for v in config["chunk_shape"])  # type: ignore[assignment]
        self.grid: tuple[int, int, int] = tuple(-(-s // c) for s, c in zip(self.shape, self.chunk, strict=True))  # type: ignore[assignment]
        self.n_chunks = int(np.prod(self.grid))
        self.index_nbytes = 16 * self.n_chunks + 4
        self.chain: Chain = parse_chain(config["codecs"], where, self.chunk[1:], parameters)
        """The inner chunks' codecs (the codec table's entries, configured from this document)."""
        self._chunk_nbytes = int(np.prod(self.chunk))

    # --- encoding -------------------------------------------------------------------------------------------------

    def encode(self, pixels: Pixels) -> bytes:
        """Encode a whole site; all-zero inner chunks are stored as absent (they read back as the fill value 0)."""
        if pixels.shape != self.shape or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels of shape {self.shape}, got {pixels.dtype} {pixels.shape}")
        _, cy, cx = self.chunk
        parts: list[bytes] = []
        index = np.full((self.n_chunks, 2), MISSING, dtype="<u8")
        offset = 0
        padded = np.zeros(self.chunk[1:], dtype=np.uint8)
        for flat, (c, gy, gx) in enumerate(np.ndindex(*self.grid)):
            block = pixels[c, gy * cy : (gy + 1) * cy, gx * cx : (gx + 1) * cx]
            if block.shape != (cy, cx):  # edge chunks are stored full size, padded with the fill value
                padded[:] = 0
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            if not block.any():
                continue
            encoded = self.chain.encode(block)
            index[flat] = (offset, len(encoded))
            parts.append(encoded)
            offset += len(encoded)
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        parts.append(crc32c(index_bytes).to_bytes(4, "little"))
        return b"".join(parts)

    # --- decoding -------------------------------------------------------------------------------------------------

    def parse_index(self, tail: bytes | memoryview, expected: int | None = None) -> npt.NDArray[np.uint64]:
        """Parse the shard index from the shard's last :attr:`index_nbytes` bytes (or the whole shard).

        Besides the CRC32C, every present entry must describe a plausible chunk (no longer than
        :attr:`max_chunk_nbytes`), so that an untrusted index can never make a reader fetch or allocate absurd sizes.
        ``expected`` is the index's CRC32C as recorded for this site in the store's index: a shard of another site,
        or an index rewritten with a valid checksum of its own, then fails too.
        """
        if len(tail) < self.index_nbytes:
            raise ShardIndexError(f"shard is {len(tail)} bytes, shorter than its index ({self.index_nbytes} bytes)")
        view = memoryview(tail)[len(tail) - self.index_nbytes :]
        body, checksum = view[:-4], int.from_bytes(view[-4:], "little")
        if crc32c(body) != checksum:
            raise ShardIndexError("shard index checksum mismatch (corrupt or truncated object)")
        if expected is not None and checksum != expected:
            raise ShardIndexError(
                f"shard index checksum {checksum} is not the {expected} recorded for this site "
                "(a shard of another site, or a rewritten index)"
            )
        index = np.frombuffer(body, dtype="<u8").reshape(self.n_chunks, 2)
        offsets, sizes = index[:, 0], index[:, 1]
        missing = (offsets == MISSING) & (sizes == MISSING)
        if np.any(~missing & ((sizes > self.max_chunk_nbytes) | (offsets > np.uint64(2**62)))):
            raise ShardIndexError(f"shard index has an implausible chunk entry (larger than {self.max_chunk_nbytes} bytes)")
        return index

    def chunks_for(self, channels: Sequence[int] | None, region: tuple[int, int, int, int] | None) -> list[int]:
        """Flat indices of the inner chunks touched by 0-based ``channels`` and ``region=(y0, y1, x0, x1)``."""
        _, height, width = self.shape
        _, cy, cx = self.chunk
        y0, y1, x0, x1 = region if region is not None else (0, height, 0, width)
        chans = range(self.shape[0]) if channels is None else channels
        gy_range = range(y0 // cy, -(-y1 // cy))
        gx_range = range(x0 // cx, -(-x1 // cx))
        return [(c * self.grid[1] + gy) * self.grid[2] + gx for c in chans for gy in gy_range for gx in gx_range]

    @property
    def max_chunk_nbytes(self) -> int:
        """Upper bound on an encoded inner chunk: raw size plus generous codec overhead (zstd/blosc worst case),
        plus the 4 bytes of the crc32c codec."""
        return self._chunk_nbytes + self._chunk_nbytes // 8 + 4096 + 4

    def _decode_into(self, data: bytes | memoryview, out: Pixels, flat: int) -> None:
        """Decode inner chunk ``flat`` into the flat uint8 buffer ``out`` (one call into each codec library)."""
        self.chain.decode_into(data, out, f"inner chunk {flat}")

    def decode(
        self,
        shard: bytes | memoryview,
        channels: Sequence[int] | None = None,
        region: tuple[int, int, int, int] | None = None,
        out: Pixels | None = None,
        executor: Executor | None = None,
        tasks: int = 1,
        expected: int | None = None,
    ) -> Pixels:
        """Decode a whole shard object (or the chunks of it that ``channels``/``region`` need); ``expected``: the
        shard index's CRC32C recorded for this site (see :meth:`parse_index`)."""
        index = self.parse_index(shard, expected)
        view = memoryview(shard)
        data_end = len(view) - self.index_nbytes
        pieces = {}
        for flat, (start, end) in self.ranges_for(index, channels, region).items():
            if end > data_end:
                raise ShardIndexError(f"inner chunk {flat} lies outside the shard ({end} > {data_end} bytes)")
            pieces[flat] = view[start:end]
        return self.assemble(pieces, channels, region, out, executor=executor, tasks=tasks)

    def ranges_for(
        self, index: npt.NDArray[np.uint64], channels: Sequence[int] | None, region: tuple[int, int, int, int] | None
    ) -> dict[int, tuple[int, int]]:
        """``{flat: (start, end)}`` byte ranges of the stored inner chunks that a read needs."""
        ranges = {}
        for flat in self.chunks_for(channels, region):
            offset, nbytes = index[flat]
            if offset == MISSING and nbytes == MISSING:
                continue
            ranges[flat] = (int(offset), int(offset) + int(nbytes))
        return ranges

    def assemble(
        self,
        pieces: Mapping[int, bytes | memoryview],
        channels: Sequence[int] | None = None,
        region: tuple[int, int, int, int] | None = None,
        out: Pixels | None = None,
        executor: Executor | None = None,
        tasks: int = 1,
    ) -> Pixels:
        """Decode inner chunks ``{flat: bytes}`` into the (c, h, w) output of ``channels`` x ``region``.

        Chunks absent from ``pieces`` read as the fill value 0. With an ``executor``, the chunks are split into
        ``tasks`` groups decoded concurrently (each group writes disjoint parts of ``out``).
        """
        _, height, width = self.shape
        _, cy, cx = self.chunk
        y0, y1, x0, x1 = region if region is not None else (0, height, 0, width)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(f"region {(y0, y1, x0, x1)} is not inside the {height} x {width} site")
        chans = list(range(self.shape[0])) if channels is None else list(channels)
        shape = (len(chans), y1 - y0, x1 - x0)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)  # every pixel is written below: no need to zero it first
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out has shape {out.shape} {out.dtype}, expected {shape} uint8")
        jobs: list[_Job] = []
        for k, c in enumerate(chans):
            for gy in range(y0 // cy, -(-y1 // cy)):
                for gx in range(x0 // cx, -(-x1 // cx)):
                    flat = (c * self.grid[1] + gy) * self.grid[2] + gx
                    # intersection of this chunk with the region, in output and chunk coordinates
                    ay0, ay1 = max(y0, gy * cy), min(y1, (gy + 1) * cy)
                    ax0, ax1 = max(x0, gx * cx), min(x1, (gx + 1) * cx)
                    target = (k, slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
                    source = (slice(ay0 - gy * cy, ay1 - gy * cy), slice(ax0 - gx * cx, ax1 - gx * cx))
                    jobs.append((flat, pieces.get(flat), target, source))
        groups = max(1, min(tasks, len(jobs)))
        if executor is None or groups == 1:
            self._run_jobs(jobs, out)
        else:
            futures = [executor.submit(self._run_jobs, jobs[i::groups], out) for i in range(groups)]
            for future in futures:
                future.result()
        return out

    def _run_jobs(self, jobs: Sequence[_Job], out: Pixels) -> None:
        if self.chain.filters:
            self._run_filtered_jobs(jobs, out)
            return
        chunk = np.empty(self.chunk[1:], dtype=np.uint8)
        for flat, data, target, source in jobs:
            view = out[target]
            if data is None:
                view[...] = 0  # absent chunk: fill value
            elif view.shape == chunk.shape and view.flags.c_contiguous:
                # the chunk lands on a contiguous block of the output (full-width chunks): decode straight into it
                self._decode_into(data, view.reshape(-1), flat)
            elif self.chain.windowed:  # a crop of a chunk: decode only what it needs (rxrx2.turbo's tiles)
                self.chain.decode_window_into(data, source, view, f"inner chunk {flat}")
            else:
                self._decode_into(data, chunk.reshape(-1), flat)
                view[...] = chunk[source]

    def _run_filtered_jobs(self, jobs: Sequence[_Job], out: Pixels) -> None:
        """Chains with a filter (``rxrx2.vpredict``): decompress all chunks into one stack, then undo the filters
        once for the stack. The predictor's running sum costs one numpy call per row; done per chunk that is
        ~25,000 calls per site, done on the stack it is one call per row for all chunks together.
        """
        present = [job for job in jobs if job[1] is not None]
        for _, data, target, _ in jobs:
            if data is None:
                out[target] = 0
        if not present:
            return
        stack = np.empty((len(present), *self.chunk[1:]), dtype=np.uint8)
        for k, (flat, data, _, _) in enumerate(present):
            self.chain.decompress_into(data, stack[k].reshape(-1), f"inner chunk {flat}")  # type: ignore[arg-type]
        self.chain.unfilter(stack)
        for k, (_, _, target, source) in enumerate(present):
            out[target] = stack[k][source]


_Job = tuple[int, "bytes | memoryview | None", tuple[int, slice, slice], tuple[slice, slice]]


@functools.lru_cache(maxsize=8)
def _thumbnail_chain(shape: tuple[int, ...]) -> Chain:
    return parse_chain(THUMBNAIL_CODECS, "thumbnail array", shape)


def encode_thumbnail(pixels: Pixels) -> bytes:
    """The thumbnail array's one chunk (``THUMBNAIL_CODECS``: bytes, zstd, crc32c) for (c, h, w) uint8 pixels."""
    return _thumbnail_chain(pixels.shape).encode(pixels)


def decode_thumbnail(data: bytes | memoryview, shape: tuple[int, int, int], expected: int | None = None) -> Pixels:
    """Decode a thumbnail chunk; ``expected`` is its CRC32C as recorded in the store's index for this site."""
    if expected is not None and (len(data) < 4 or int.from_bytes(bytes(data[-4:]), "little") != expected):
        raise ShardDataError("thumbnail chunk's checksum is not the one recorded for this site (another site's chunk?)")
    out = np.empty(shape, dtype=np.uint8)
    _thumbnail_chain(shape).decode_into(data, out.reshape(-1), "thumbnail chunk")
    return out
