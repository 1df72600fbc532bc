"""Codec-level benchmark of ``rxrx2.turbo`` against the PNG side and the default profile, on the same sites.

Per site (six 1024 x 1024 channels), all on in-memory bytes, one thread unless stated, CPU seconds of this
process (``time.process_time``: the machine is shared, and wall time under load measures the neighbours):

* PNG side: decoding the six PNGs with Pillow and with ``imagecodecs.png_decode`` (a crop from PNGs costs the
  same: a PNG decodes whole);
* ``standard`` (the default profile): one zstd-19 frame per channel (1024 x 1024 inner chunks) with its crc32c,
  decoded with ``imagecodecs.zstd_decode`` after checking the crc32c (a crop decodes the whole channel);
* ``turbo``: one ``rxrx2.turbo`` chunk per channel (default settings) with its crc32c, decoded through the public
  API (``_turbo.decode``, ``_turbo.decode_region``: header parse and Python call included);
* crops: 256 x 256 of all six channels, tile-aligned (origin 256, 256) and at a random origin (the same for every
  codec in a round);
* bytes: stored bytes (chunks + crc32c + the shard index) over the six PNG files' bytes (thumbnails, the same
  for both profiles, are left out);
* encode: ``turbo`` encoding a site (with crc32c) over decoding its six PNGs: conversion stays bound by the PNG
  side while this is below 1;
* threads: wall time to decode a batch of sites' chunks with 1 and with 2 threads (``ThreadPoolExecutor``), the
  ratio; on a loaded machine this measures the neighbours too, so it is reported with the load average.

Rounds interleave: in each round the PNG side, then each codec, over the same sites; ratios per round, medians
over rounds. The report states which turbo implementation ran (``numba`` or ``numpy``).

Run ``python -m benchmarks._turbo_bench --src TREE [--real img2d.tif] --out DIR``. ``TREE`` is a PNG tree as
``rxrx2-zarr synth`` writes it; ``--real`` takes a real fluorescence image (StarDist's ``img2d.tif``, from
``pip download --no-deps stardist==0.9.2``; the frontier benchmark's real-pixel data), made into sites of six
1024 x 1024 channels from rotations of its 512 x 512 tiles (no channel repeats another byte for byte), written as
PNGs the way the generator writes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import crc32c
import imagecodecs
import numpy as np
import numpy.typing as npt

from rxrx2_zarr import _turbo
from rxrx2_zarr._codec_table import zstd_compress
from rxrx2_zarr.testing._synth import PNG_LEVEL, PNG_STRATEGY

from ._frontier import _imagecodecs_png, _pillow, find_sites
from ._machine import command_line, library_versions, load_average, machine_info

__all__ = ["main", "real_sites", "run"]

U8 = npt.NDArray[np.uint8]
CROP = 256
ALIGNED = (256, 256)
#: The default profile's codec (``_layout.PROFILES["standard"]``): zstd level 19 on whole 1024 x 1024 channels.
STANDARD_LEVEL = 19
_INDEX_BYTES = 16 * 6 + 4  # one shard per site: (offset, nbytes) per inner chunk + the index's crc32c


class Site:
    """One site's PNG bytes, pixels and encodings."""

    def __init__(self, pngs: Sequence[bytes]) -> None:
        self.pngs = list(pngs)
        self.pixels = np.stack([imagecodecs.png_decode(p) for p in self.pngs])
        self.turbo = [_with_crc(_turbo.encode(c)) for c in self.pixels]
        self.standard: list[bytes] | None = None

    def encode_standard(self) -> None:
        self.standard = [_with_crc(zstd_compress(np.ascontiguousarray(c), STANDARD_LEVEL)) for c in self.pixels]


def _with_crc(data: bytes) -> bytes:
    return data + crc32c.crc32c(data).to_bytes(4, "little")


def _body(data: bytes) -> memoryview:
    view = memoryview(data)
    if crc32c.crc32c(view[:-4]) != int.from_bytes(view[-4:], "little"):
        raise ValueError("crc32c mismatch")
    return view[:-4]


def real_sites(tiff: Path, count: int) -> list[list[bytes]]:
    """Sites of six 1024 x 1024 channels made from a real 2-D image (its four rotations as quarters, in a different
    order in every channel), as PNGs."""
    image = np.asarray(imagecodecs.tiff_decode(tiff.read_bytes()))
    if image.ndim != 2:
        raise ValueError(f"{tiff}: expected a 2-D image, got shape {image.shape}")
    scale = 255.0 / max(float(image.max()), 1.0) if image.max() > 255 else 1.0
    base = np.clip(np.rint(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)[:512, :512]
    # the four rotations read rows, reversed rows, columns and reversed columns of the image: no two share a byte
    # sequence, so no codec finds the repeats a plain tiling would offer (a flip or a transpose would)
    rotations = [np.rot90(base, k) for k in range(4)]
    orders = list(itertools.permutations(range(4)))
    sites = []
    for s in range(count):
        channels = []
        for c in range(6):
            pick = [rotations[k] for k in orders[(s * 6 + c) % len(orders)]]
            plane = np.block([[pick[0], pick[1]], [pick[2], pick[3]]])
            channels.append(imagecodecs.png_encode(np.ascontiguousarray(plane), level=PNG_LEVEL, strategy=PNG_STRATEGY))
        sites.append(channels)
    return sites


# --- the operations timed -------------------------------------------------------------------------------------------


def _turbo_full(site: Site, out: U8) -> None:
    for c, data in enumerate(site.turbo):
        _turbo.decode(_body(data), out=out[c])


def _turbo_crop(site: Site, out: U8, origin: tuple[int, int]) -> None:
    y, x = origin
    for c, data in enumerate(site.turbo):
        _turbo.decode_region(_body(data), (y, y + CROP, x, x + CROP), out=out[c : c + 1])


def _standard_full(site: Site, out: U8) -> None:
    assert site.standard is not None
    for c, data in enumerate(site.standard):
        imagecodecs.zstd_decode(_body(data), out=out[c].reshape(-1))


def _standard_crop(site: Site, out: U8, origin: tuple[int, int], scratch: U8) -> None:
    assert site.standard is not None
    y, x = origin
    for c, data in enumerate(site.standard):  # 1024 x 1024 inner chunks: a crop decodes whole channels
        imagecodecs.zstd_decode(_body(data), out=scratch.reshape(-1))
        out[c] = scratch[y : y + CROP, x : x + CROP]


def _turbo_encode(site: Site) -> None:
    for channel in site.pixels:
        _with_crc(_turbo.encode(channel))


def _cpu(function: Callable[[], Any]) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def _threads(sites: Sequence[Site], threads: int) -> tuple[float, float]:
    """Wall seconds to decode every chunk of ``sites`` with ``threads`` threads (one task per chunk), and the CPU
    seconds the process used meanwhile (CPU / wall near ``threads`` means that many cores were free)."""
    outs = [np.ones_like(s.pixels) for s in sites]  # written before the clock starts: no page faults timed
    tasks = [(outs[i], c, data) for i, s in enumerate(sites) for c, data in enumerate(s.turbo)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: i, range(threads)))  # the workers exist before the clock starts
        start, cpu = time.perf_counter(), time.process_time()
        list(pool.map(lambda t: _turbo.decode(_body(t[2]), out=t[0][t[1]]), tasks))
        return time.perf_counter() - start, time.process_time() - cpu


def gil_free_fraction(sites: Sequence[Site], seconds: float = 0.3) -> float:
    """How fast a pure-Python thread runs while another thread decodes, relative to while it sleeps: near 1 (or
    0.5 on a single free core) when decoding releases the GIL, near 0 when it holds it."""
    import threading

    def spin(stop: threading.Event, result: list[float]) -> None:
        count = 0
        start = time.perf_counter()
        while not stop.is_set():
            count += 1
        result.append(count / (time.perf_counter() - start))

    rates = []
    for busy in (False, True):
        stop, result = threading.Event(), []  # type: ignore[var-annotated]
        thread = threading.Thread(target=spin, args=(stop, result))
        thread.start()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if busy:
                _turbo_full(sites[0], np.empty_like(sites[0].pixels))
            else:
                time.sleep(0.01)
        stop.set()
        thread.join()
        rates.append(result[0])
    return rates[1] / rates[0]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run(label: str, pngs: Sequence[Sequence[bytes]], rounds: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure one data set; returns its results (medians, ratios) as a JSON-able dict."""
    sites = [Site(p) for p in pngs]
    for site in sites:
        site.encode_standard()
        for c, data in enumerate(site.turbo):
            if not np.array_equal(_turbo.decode(_body(data))[0], site.pixels[c]):
                raise AssertionError(f"{label}: turbo does not round-trip channel {c}")
    png_bytes = sum(len(b) for s in sites for b in s.pngs)
    turbo_bytes = sum(len(b) for s in sites for b in s.turbo) + _INDEX_BYTES * len(sites)
    standard_bytes = sum(len(b) for s in sites for b in s.standard or []) + _INDEX_BYTES * len(sites)
    log(f"[{label}] {len(sites)} sites, {png_bytes / len(sites) / 6e3:.0f} KB per PNG; turbo backend {_turbo.backend()}")
    out = np.ones((6, 1024, 1024), dtype=np.uint8)
    crop = np.ones((6, CROP, CROP), dtype=np.uint8)
    scratch = np.ones((1024, 1024), dtype=np.uint8)
    rng = random.Random(7)
    samples: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    for _ in range(rounds):
        for site in sites:
            origin = (rng.randrange(0, 1024 - CROP), rng.randrange(0, 1024 - CROP))
            add("pillow", _cpu(lambda s=site: _pillow(s.pngs, out)))
            add("imagecodecs", _cpu(lambda s=site: _imagecodecs_png(s.pngs, out)))
            add("standard_full", _cpu(lambda s=site: _standard_full(s, out)))
            add("turbo_full", _cpu(lambda s=site: _turbo_full(s, out)))
            add("standard_crop_aligned", _cpu(lambda s=site: _standard_crop(s, crop, ALIGNED, scratch)))
            add("turbo_crop_aligned", _cpu(lambda s=site: _turbo_crop(s, crop, ALIGNED)))
            add("standard_crop_random", _cpu(lambda s=site, o=origin: _standard_crop(s, crop, o, scratch)))
            add("turbo_crop_random", _cpu(lambda s=site, o=origin: _turbo_crop(s, crop, o)))
            add("turbo_encode", _cpu(lambda s=site: _turbo_encode(s)))
        for threads in (1, 2):
            wall, cpu = _threads(sites, threads)
            add(f"threads_{threads}", wall)
            add(f"threads_{threads}_cpu", cpu)
    per = len(sites)
    ms = {k: _median(v) * 1e3 for k, v in samples.items() if not k.startswith("threads")}

    def ratios(numerator: str, denominator: str) -> float:
        """Median over rounds of per-round ratios (sum over the sites of a round)."""
        a, b = samples[numerator], samples[denominator]
        k = 1 if numerator.startswith("threads") else per
        return _median([sum(a[i : i + k]) / sum(b[i : i + k]) for i in range(0, len(a), k)])

    result = {
        "label": label,
        "sites": len(sites),
        "backend": _turbo.backend(),
        "png_kb_per_file": png_bytes / len(sites) / 6e3,
        "ms_per_site": ms,
        "bytes_vs_png": {"turbo": turbo_bytes / png_bytes, "standard": standard_bytes / png_bytes},
        "speedup": {
            "turbo_full_vs_pillow": ratios("pillow", "turbo_full"),
            "turbo_full_vs_imagecodecs": ratios("imagecodecs", "turbo_full"),
            "standard_full_vs_pillow": ratios("pillow", "standard_full"),
            "turbo_crop_aligned_vs_pillow": ratios("pillow", "turbo_crop_aligned"),
            "turbo_crop_random_vs_pillow": ratios("pillow", "turbo_crop_random"),
            "turbo_crop_aligned_vs_imagecodecs": ratios("imagecodecs", "turbo_crop_aligned"),
            "turbo_crop_random_vs_imagecodecs": ratios("imagecodecs", "turbo_crop_random"),
            "standard_crop_random_vs_pillow": ratios("pillow", "standard_crop_random"),
            "turbo_encode_vs_pillow_decode": ratios("turbo_encode", "pillow"),
            "turbo_encode_vs_imagecodecs_decode": ratios("turbo_encode", "imagecodecs"),
            "threads_1_to_2": ratios("threads_1", "threads_2"),
            "threads_2_cpu_per_wall": ratios("threads_2_cpu", "threads_2"),
        },
        "python_thread_speed_while_decoding": gil_free_fraction(sites),
        "rounds": rounds,
    }
    log(_table(result))
    return result


def _table(r: dict[str, Any]) -> str:
    s, ms, b = r["speedup"], r["ms_per_site"], r["bytes_vs_png"]
    rows = [
        ("bytes vs PNG", f"turbo {b['turbo']:.3f}, standard {b['standard']:.3f}", "<= 0.9"),
        ("full site vs Pillow", f"{s['turbo_full_vs_pillow']:.1f}x (standard {s['standard_full_vs_pillow']:.1f}x)", ">= 10x"),
        ("full site vs imagecodecs PNG", f"{s['turbo_full_vs_imagecodecs']:.1f}x", ">= 8x"),
        ("256 crop aligned vs Pillow", f"{s['turbo_crop_aligned_vs_pillow']:.0f}x", ">= 50x"),
        ("256 crop random vs Pillow", f"{s['turbo_crop_random_vs_pillow']:.0f}x (standard {s['standard_crop_random_vs_pillow']:.0f}x)", ">= 50x"),
        ("encode / Pillow decode", f"{s['turbo_encode_vs_pillow_decode']:.2f}", "<= 1"),
        ("encode / imagecodecs decode", f"{s['turbo_encode_vs_imagecodecs_decode']:.2f}", "<= 1"),
        ("1 -> 2 threads", f"{s['threads_1_to_2']:.2f}x (CPU/wall with 2: {s['threads_2_cpu_per_wall']:.2f})", ">= 1.8x"),
        ("Python thread speed while decoding", f"{r['python_thread_speed_while_decoding']:.2f} of idle", "GIL released"),
    ]
    lines = [f"| {r['label']} ({r['backend']}) | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {m} | {t} |" for a, m, t in rows]
    lines.append("ms per site: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._turbo_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, help="generated PNG tree (rxrx2-zarr synth)")
    parser.add_argument("--real", type=Path, help="a real 2-D fluorescence image (TIFF), e.g. StarDist's img2d.tif")
    parser.add_argument("--sites", type=int, default=4, help="sites per data set (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.src is None and args.real is None:
        parser.error("give --src, --real or both")
    report: dict[str, Any] = {"machine": machine_info(), "libraries": library_versions(), "command": command_line()}
    report["load_average_before"] = load_average()
    results = []
    if args.src is not None:
        sites = find_sites(args.src, limit=args.sites)
        if not sites:
            parser.error(f"no complete six-channel site under {args.src}")
        results.append(run("generated", [[p.read_bytes() for p in s] for s in sites], args.rounds))
    if args.real is not None:
        results.append(run("real", real_sites(args.real, args.sites), args.rounds))
    report["results"] = results
    report["load_average_after"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "turbo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'turbo.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
