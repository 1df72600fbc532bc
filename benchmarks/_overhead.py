"""The default profile's read path against its decoder: ``Dataset.site(threads=1)`` vs ``imagecodecs.zstd_decode``
of the same six chunk payloads already in memory, interleaved, one thread; the difference is the per-site work
outside the codec calls (the file read, the shard index, every crc32c check, the output array).

    python -m benchmarks._overhead STORE [ROUNDS]

STORE: a store of the ``standard`` profile (one 1024 x 1024 chunk per channel).
"""

from __future__ import annotations

import statistics
import sys
import time

import imagecodecs
import numpy as np

import rxrx2_zarr
from rxrx2_zarr import parse_site_id
from rxrx2_zarr._layout import site_paths

CRC = 4  # bytes of the crc32c closing every inner chunk and the shard index


def _payloads(store: str, site_id: str, chunks: int) -> list[bytes]:
    """The zstd frames of a site's shard, without their crc32c (the shard index is at the end)."""
    with open(f"{store}/{site_paths(parse_site_id(site_id)).shard}", "rb") as f:
        raw = f.read()
    index = np.frombuffer(raw[-(16 * chunks + CRC) : -CRC], dtype="<u8").reshape(chunks, 2)
    return [raw[int(offset) : int(offset) + int(size) - CRC] for offset, size in index]


def main(store: str, rounds: int) -> str:
    ds = rxrx2_zarr.open(store)
    spec = ds.spec
    if tuple(spec.chunks[-2:]) != (spec.height, spec.width):
        raise SystemExit(f"{store}: needs one chunk per channel (the standard profile), got {spec.chunks}")
    payloads = {sid: _payloads(store, sid, spec.channels) for sid in ds.site_ids}
    out = np.empty(spec.height * spec.width, np.uint8)

    def codec(site_id: str) -> None:
        for frame in payloads[site_id]:
            imagecodecs.zstd_decode(frame, out=out)

    reads: list[float] = []
    codecs: list[float] = []
    for site_id in ds.site_ids:  # warm both sides
        ds.site(site_id, threads=1)
        codec(site_id)
    for _ in range(rounds):
        for site_id in ds.site_ids:
            start = time.perf_counter()
            ds.site(site_id, threads=1)
            reads.append(time.perf_counter() - start)
            start = time.perf_counter()
            codec(site_id)
            codecs.append(time.perf_counter() - start)
    read, decode = statistics.median(reads) * 1e3, statistics.median(codecs) * 1e3
    return (
        f"{len(ds)} sites x {rounds} rounds: site() {read:.2f} ms, codec calls {decode:.2f} ms, "
        f"outside the codec {read - decode:.2f} ms (p50)"
    )


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
