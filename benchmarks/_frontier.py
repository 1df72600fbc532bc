"""The zstd frontier of core-codec profiles: bytes vs PNG, encode seconds and decode speed per site.

Pure measurement, no store is written. Every profile is the Zarr v3 core chain a default store would use: a site is
a uint8 ``(6, H, W)`` array in one shard (``sharding_indexed``), inner chunks ``(1, cy, cx)``, each chunk
``bytes -> zstd -> crc32c`` (4 bytes per chunk), the shard index 16 bytes per chunk plus its own crc32c (4 bytes),
plus a thumbnail level per site: ``(6, ceil(H/f), ceil(W/f))`` uint8 block means (``f``: the store's ``THUMBNAIL_FACTOR``) (``(sum + n // 2) // n``) stored
as one plain chunk with the same ``bytes -> zstd -> crc32c`` chain. So ``total bytes = sum(frame + 4) + 16 * chunks
+ 4 + thumbnail frame + 4``, against the byte sizes of the site's six PNG files. JSON metadata is not counted.

Timings, one thread, all on in-memory bytes (OS cache and I/O excluded on both sides), in CPU seconds of this
process (``time.process_time``): the machine is shared, and wall time under a load of 2-4x the cores measures the
neighbours. Every codec library here runs on the calling thread only.

* encode: seconds per site to cut the chunks, zstd-compress them and compute their crc32c, plus the thumbnail
  (block means, compress, crc32c); one pass over every site, median over sites.
* decode: ms per site to verify each chunk's crc32c and ``imagecodecs.zstd_decode`` it into a preallocated buffer
  (straight into the site array when a chunk is a contiguous slab of it, else into a scratch chunk copied into
  place), against decoding the six PNGs with Pillow and with ``imagecodecs.png_decode``. Rounds interleave: in
  each round the PNG side, then every profile, over the same sites; per-round ratios, medians over rounds.
* crop: a 256 x 256 crop of all six channels, chunk-aligned (origin 256, 256: one chunk per channel whatever the
  chunk shape) and straddling (origin 384, 384), decoding every chunk it touches, as a ratio to decoding all six
  PNGs with Pillow in the same round.

Run ``python -m benchmarks._frontier --src DIR --out DIR [--quick] [--real]``: ``DIR`` is a PNG tree as the
generator writes it (``images/<exp>/Plate<p>/<well>_s<site>_w<c>.png``); writes ``frontier.json`` and
``frontier.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import imagecodecs
import numpy as np
import numpy.typing as npt
import zstandard
from PIL import Image

from rxrx2_zarr._layout import THUMBNAIL_FACTOR
from rxrx2_zarr._shard import thumbnail as _store_thumbnail

from ._machine import command_line, library_versions, machine_info

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_CODECS",
    "QUICK_CHUNKS",
    "QUICK_CODECS",
    "Codec",
    "find_sites",
    "plot_frontier",
    "run_frontier",
    "thumbnail",
]

U8 = npt.NDArray[np.uint8]

THUMB_FACTOR = THUMBNAIL_FACTOR  # the store's (see rxrx2_zarr._layout)
CHUNK_CRC = 4
INDEX_ENTRY = 16
INDEX_CRC = 4


@dataclass(frozen=True)
class Codec:
    """A zstd setting: a plain ``level`` or explicit ``params`` (``zstandard.ZstdCompressionParameters`` keywords,
    ``strategy`` by name: ``btopt``, ``btultra``, ``btultra2``, ``lazy2``, ...)."""

    name: str
    level: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def compressor(self) -> zstandard.ZstdCompressor:
        if not self.params:
            return zstandard.ZstdCompressor(
                level=self.level if self.level is not None else 3, write_content_size=True
            )
        kwargs = dict(self.params)
        if isinstance(kwargs.get("strategy"), str):
            kwargs["strategy"] = getattr(zstandard, "STRATEGY_" + str(kwargs["strategy"]).upper())
        if self.level is not None:
            kwargs.setdefault("compression_level", self.level)
        kwargs.setdefault("write_content_size", 1)
        kwargs.setdefault("write_checksum", 0)
        return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(**kwargs))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "params": dict(self.params)}


def _lv(level: int) -> Codec:
    return Codec(f"zstd{level}", level=level)


#: Custom parameter sets aimed at level-19 size for less encode time. Measured on the generated sites: search
#: depth (search_log, chain_log) and window (window_log 20 = the whole 1 MiB chunk) decide the size; shallow
#: searches (search_log 1-2, chain_log 16-18) lose 10-15% and are not worth it. zstd shrinks window/hash/chain logs
#: to the chunk's size by itself, so one set serves every chunk shape.
CUSTOM_CODECS: tuple[Codec, ...] = (
    Codec("btopt-s6", params={"strategy": "btopt", "window_log": 20, "chain_log": 21, "hash_log": 21,
                              "search_log": 6, "min_match": 3, "target_length": 256}),
    Codec("btultra-s5", params={"strategy": "btultra", "window_log": 20, "chain_log": 21, "hash_log": 21,
                                "search_log": 5, "min_match": 3, "target_length": 256}),
    Codec("btultra-s7", params={"strategy": "btultra", "window_log": 20, "chain_log": 21, "hash_log": 21,
                                "search_log": 7, "min_match": 3, "target_length": 256}),
    Codec("btultra2-s7-tl999", params={"strategy": "btultra2", "window_log": 20, "chain_log": 21, "hash_log": 21,
                                       "search_log": 7, "min_match": 3, "target_length": 999}),
)  # fmt: skip

DEFAULT_CODECS: tuple[Codec, ...] = (*(_lv(v) for v in (3, 6, 9, 12, 15, 17, 19, 22)), *CUSTOM_CODECS)
DEFAULT_CHUNKS: tuple[tuple[int, int], ...] = ((256, 256), (512, 512), (512, 1024), (1024, 1024))
QUICK_CODECS: tuple[Codec, ...] = (_lv(3), _lv(9), CUSTOM_CODECS[2])
QUICK_CHUNKS: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024))


# ---------------------------------------------------------------------------------------------------------------
# Inputs.

_PNG_NAME = re.compile(r"^(?P<well>[A-Z]+\d+)_s(?P<site>\d+)_w(?P<channel>\d+)\.png$")


def find_sites(src: Path, limit: int | None = None) -> list[list[Path]]:
    """The sites of a PNG tree (``images/<exp>/Plate<p>/<well>_s<site>_w<c>.png``), each its six paths w1..w6."""
    groups: dict[tuple[str, str], dict[int, Path]] = {}
    for path in sorted(Path(src).rglob("*.png")):
        match = _PNG_NAME.match(path.name)
        if match is None:
            continue
        key = (str(path.parent), f"{match['well']}_s{match['site']}")
        groups.setdefault(key, {})[int(match["channel"])] = path
    sites = [[chans[c] for c in sorted(chans)] for _, chans in sorted(groups.items()) if len(chans) == 6]
    return sites[:limit] if limit is not None else sites


def thumbnail(site: U8, factor: int = THUMB_FACTOR) -> U8:
    """The store's own thumbnail (``rxrx2_zarr._shard.thumbnail``): rounded means of ``f x f`` blocks."""
    return _store_thumbnail(site, factor)


# ---------------------------------------------------------------------------------------------------------------
# Encoding: the shard's chunk frames.


def _chunk_slices(h: int, w: int, cy: int, cx: int) -> list[tuple[int, int, int, int]]:
    return [(y, min(y + cy, h), x, min(x + cx, w)) for y in range(0, h, cy) for x in range(0, w, cx)]


def _encode_site(
    site: U8, cy: int, cx: int, compressor: zstandard.ZstdCompressor
) -> tuple[list[list[bytes]], bytes, int]:
    """Frames per channel and chunk (row-major), the thumbnail frame, and the total stored bytes."""
    c, h, w = site.shape
    frames: list[list[bytes]] = []
    stored = 0
    slices = _chunk_slices(h, w, cy, cx)
    for ch in range(c):
        row: list[bytes] = []
        for y0, y1, x0, x1 in slices:
            # Zarr pads edge chunks to the full chunk shape with the fill value (0).
            block = site[ch, y0:y1, x0:x1]
            if block.shape != (cy, cx):
                full = np.zeros((cy, cx), dtype=np.uint8)
                full[: y1 - y0, : x1 - x0] = block
                block = full
            frame = compressor.compress(np.ascontiguousarray(block).data)
            crc32c.crc32c(frame)
            row.append(frame)
            stored += len(frame) + CHUNK_CRC
        frames.append(row)
    stored += INDEX_ENTRY * c * len(slices) + INDEX_CRC
    thumb = compressor.compress(thumbnail(site).data)
    crc32c.crc32c(thumb)
    return frames, thumb, stored


# ---------------------------------------------------------------------------------------------------------------
# Decoding.


def _decoder(h: int, w: int, cy: int, cx: int) -> Callable[[list[list[bytes]], U8, U8], None]:
    slices = _chunk_slices(h, w, cy, cx)
    direct = cx == w and h % cy == 0

    def decode(frames: list[list[bytes]], out: U8, scratch: U8) -> None:
        flat = scratch.reshape(-1)  # imagecodecs decodes into 1-D buffers; a view, no copy
        for ch, row in enumerate(frames):
            for (y0, y1, x0, x1), frame in zip(slices, row, strict=True):
                crc32c.crc32c(frame)
                if direct:
                    imagecodecs.zstd_decode(frame, out=out[ch, y0:y1].reshape(-1))
                else:
                    imagecodecs.zstd_decode(frame, out=flat)
                    out[ch, y0:y1, x0:x1] = scratch[: y1 - y0, : x1 - x0]

    return decode


def _crop_decoder(
    h: int, w: int, cy: int, cx: int, y: int, x: int, size: int
) -> Callable[[list[list[bytes]], U8, U8], None]:
    slices = _chunk_slices(h, w, cy, cx)
    touched = [
        (i, max(y0, y), min(y1, y + size), max(x0, x), min(x1, x + size), y0, x0)
        for i, (y0, y1, x0, x1) in enumerate(slices)
        if y0 < y + size and y1 > y and x0 < x + size and x1 > x
    ]

    def decode(frames: list[list[bytes]], out: U8, scratch: U8) -> None:
        flat = scratch.reshape(-1)
        for ch, row in enumerate(frames):
            for i, a0, a1, b0, b1, y0, x0 in touched:
                crc32c.crc32c(row[i])
                imagecodecs.zstd_decode(row[i], out=flat)
                out[ch, a0 - y : a1 - y, b0 - x : b1 - x] = scratch[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]

    return decode


def _pillow(pngs: Sequence[bytes], out: U8) -> None:
    for ch, data in enumerate(pngs):
        with Image.open(io.BytesIO(data)) as img:
            out[ch] = np.asarray(img)


def _imagecodecs_png(pngs: Sequence[bytes], out: U8) -> None:
    for ch, data in enumerate(pngs):
        out[ch] = imagecodecs.png_decode(data)


# ---------------------------------------------------------------------------------------------------------------
# The measurement.


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_frontier(
    sites: Sequence[Sequence[Path]],
    out_dir: Path,
    *,
    codecs: Sequence[Codec] = DEFAULT_CODECS,
    chunks: Sequence[tuple[int, int]] = DEFAULT_CHUNKS,
    rounds: int = 3,
    encode_sites: int | None = None,
    label: str = "data",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every (chunk shape, codec) profile on ``sites`` (each six PNG paths, w1..w6); return the results.

    ``encode_sites`` limits the sites whose encoding is timed *and* sized for codecs slower than ~1 s/site
    (None: all). ``out_dir`` is created; nothing is written to it here (the CLI writes the JSON and plot).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = [[Path(p).read_bytes() for p in paths] for paths in sites]
    arrays: list[U8] = []
    for site_pngs in pngs:
        planes = [np.asarray(Image.open(io.BytesIO(b))) for b in site_pngs]
        for plane, data in zip(planes, site_pngs, strict=True):
            if plane.dtype != np.uint8 or plane.ndim != 2:
                raise ValueError(f"expected 8-bit grayscale PNGs, got {plane.dtype} {plane.shape}")
            if not np.array_equal(plane, imagecodecs.png_decode(data)):
                raise ValueError("Pillow and imagecodecs disagree on a PNG")
        arrays.append(np.stack(planes))
    c, h, w = arrays[0].shape
    if any(a.shape != (c, h, w) for a in arrays):
        raise ValueError("all sites must have the same shape")
    png_bytes = [sum(len(b) for b in s) for s in pngs]
    log(
        f"[{label}] {len(arrays)} sites of {c}x{h}x{w}, {statistics.mean(png_bytes) / c / 1e3:.1f} KB per PNG"
    )

    # Encode pass (sizes and encode time), one profile at a time.
    profiles: list[dict[str, Any]] = []
    frames_of: dict[int, list[list[list[bytes]]]] = {}
    for cy, cx in chunks:
        for codec in codecs:
            compressor = codec.compressor()
            seconds: list[float] = []
            stored: list[int] = []
            thumbs: list[int] = []
            site_frames: list[list[list[bytes]]] = []
            for i, site in enumerate(arrays):
                if encode_sites is not None and i >= encode_sites and seconds and _median(seconds) > 1.0:
                    break
                t0 = time.process_time()
                frames, thumb, total = _encode_site(site, cy, cx, compressor)
                seconds.append(time.process_time() - t0)
                stored.append(total + len(thumb) + CHUNK_CRC)
                thumbs.append(len(thumb) + CHUNK_CRC)
                site_frames.append(frames)
            n = len(stored)
            sample = site_frames[0][0][0]
            if zstandard.frame_content_size(sample) != cy * cx:
                raise AssertionError("frame does not declare its content size")
            check = np.empty((c, h, w), dtype=np.uint8)
            _decoder(h, w, cy, cx)(site_frames[0], check, np.empty((cy, cx), dtype=np.uint8))
            if not np.array_equal(check, arrays[0]):
                raise AssertionError(f"{codec.name} {cy}x{cx} does not round-trip")
            profile = {
                "chunk": [cy, cx],
                "codec": codec.describe(),
                "sites_encoded": n,
                "bytes_vs_png": sum(stored) / sum(png_bytes[:n]),
                "bytes_vs_png_per_site": [s / p for s, p in zip(stored, png_bytes, strict=False)],
                "bytes_vs_png_no_thumbnail": (sum(stored) - sum(thumbs)) / sum(png_bytes[:n]),
                "thumbnail_share": sum(thumbs) / sum(stored),
                "overhead_bytes_per_site": CHUNK_CRC * c * len(_chunk_slices(h, w, cy, cx))
                + INDEX_ENTRY * c * len(_chunk_slices(h, w, cy, cx))
                + INDEX_CRC
                + CHUNK_CRC,
                "encode_s_per_site": _median(seconds),
            }
            profiles.append(profile)
            frames_of[len(profiles) - 1] = site_frames
            log(
                f"[{label}] {cy}x{cx} {codec.name:12s} bytes {profile['bytes_vs_png']:.4f} "
                f"(thumb {profile['thumbnail_share']:.2%}) encode {profile['encode_s_per_site']:.3f} s/site "
                f"[{n} sites]"
            )

    # Decode rounds, interleaved: PNG side, then every profile. Decoding uses the first n_dec sites every
    # profile has frames for.
    n_dec = min(len(f) for f in frames_of.values())
    out = np.empty((c, h, w), dtype=np.uint8)
    crop_out = np.empty((c, 256, 256), dtype=np.uint8)
    scratch = {(cy, cx): np.empty((cy, cx), dtype=np.uint8) for cy, cx in chunks}
    decoders = {(cy, cx): _decoder(h, w, cy, cx) for cy, cx in chunks}
    crops = {
        (cy, cx): {
            "aligned": _crop_decoder(h, w, cy, cx, 256, 256, 256),
            "straddling": _crop_decoder(h, w, cy, cx, 384, 384, 256),
        }
        for cy, cx in chunks
    }
    timings: dict[str, list[float]] = {"pillow": [], "imagecodecs_png": []}
    for i in range(len(profiles)):
        for kind in ("full", "aligned", "straddling"):
            timings[f"{i}:{kind}"] = []

    def clock(fn: Callable[[int], None]) -> float:
        t0 = time.process_time()
        for s in range(n_dec):
            fn(s)
        return (time.process_time() - t0) / n_dec

    for r in range(rounds):
        timings["pillow"].append(clock(lambda s: _pillow(pngs[s], out)))
        timings["imagecodecs_png"].append(clock(lambda s: _imagecodecs_png(pngs[s], out)))
        for i, profile in enumerate(profiles):
            key = (profile["chunk"][0], profile["chunk"][1])
            frames = frames_of[i]
            timings[f"{i}:full"].append(clock(lambda s, k=key, f=frames: decoders[k](f[s], out, scratch[k])))
            for kind in ("aligned", "straddling"):
                timings[f"{i}:{kind}"].append(
                    clock(lambda s, k=key, f=frames, d=crops[key][kind]: d(f[s], crop_out, scratch[k]))
                )
        log(f"[{label}] decode round {r + 1}/{rounds}: Pillow {timings['pillow'][-1] * 1e3:.1f} ms/site")

    pil, icp = timings["pillow"], timings["imagecodecs_png"]
    for i, profile in enumerate(profiles):
        full = timings[f"{i}:full"]
        profile["decode_ms_per_site"] = _median(full) * 1e3
        profile["decode_speedup_vs_pillow"] = _median([p / f for p, f in zip(pil, full, strict=True)])
        profile["decode_speedup_vs_imagecodecs_png"] = _median(
            [p / f for p, f in zip(icp, full, strict=True)]
        )
        for kind in ("aligned", "straddling"):
            crop = timings[f"{i}:{kind}"]
            profile[f"crop_{kind}_ms"] = _median(crop) * 1e3
            profile[f"crop_{kind}_vs_pillow_site"] = _median([f / p for p, f in zip(pil, crop, strict=True)])
        profile["crop_chunks_touched"] = {
            "aligned": 6 * math.prod(-(-256 // d) for d in profile["chunk"]),
            "straddling": 6
            * sum(
                1
                for y0, y1, x0, x1 in _chunk_slices(h, w, *profile["chunk"])
                if y0 < 640 and y1 > 384 and x0 < 640 and x1 > 384
            ),
        }
    return {
        "label": label,
        "sites": len(arrays),
        "sites_decoded": n_dec,
        "shape": [c, h, w],
        "png_kb_per_file": statistics.mean(png_bytes) / c / 1e3,
        "rounds": rounds,
        "pillow_ms_per_site": _median(pil) * 1e3,
        "imagecodecs_png_ms_per_site": _median(icp) * 1e3,
        "imagecodecs_png_speedup_vs_pillow": _median([p / q for p, q in zip(pil, icp, strict=True)]),
        "zstd_version": zstandard.ZSTD_VERSION,
        "profiles": profiles,
    }


# ---------------------------------------------------------------------------------------------------------------
# Plot and CLI.


def plot_frontier(results: Sequence[dict[str, Any]], path: Path) -> None:
    """x = encode s/site (log), y = bytes vs PNG, colour = decode speed-up vs Pillow; one marker per chunk shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = ["o", "s", "^", "D", "v", "P"]
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5.5), squeeze=False)
    speeds = [p["decode_speedup_vs_pillow"] for res in results for p in res["profiles"]]
    norm = matplotlib.colors.Normalize(vmin=min(speeds), vmax=max(speeds))
    scatter = None
    for ax, res in zip(axes[0], results, strict=True):
        shapes = sorted({tuple(p["chunk"]) for p in res["profiles"]})
        for m, shape in zip(markers, shapes, strict=False):
            pts = sorted((p for p in res["profiles"] if tuple(p["chunk"]) == shape),
                         key=lambda p: p["encode_s_per_site"])  # fmt: skip
            xs = [p["encode_s_per_site"] for p in pts]
            ys = [p["bytes_vs_png"] for p in pts]
            ax.plot(xs, ys, "-", color="0.8", zorder=1)
            scatter = ax.scatter(xs, ys, c=[p["decode_speedup_vs_pillow"] for p in pts], cmap="viridis",
                                 norm=norm, marker=m, s=45, label=f"{shape[0]}x{shape[1]}", zorder=2)  # fmt: skip
            for p in pts:
                ax.annotate(p["codec"]["name"].replace("zstd", "z"), (p["encode_s_per_site"], p["bytes_vs_png"]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")  # fmt: skip
        ax.axhline(0.95, color="red", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("encode s/site (one thread, 6 channels + thumbnail)")
        ax.set_ylabel("stored bytes / PNG bytes (incl. crc32c, index, thumbnail)")
        ax.set_title(f"{res['label']}: {res['sites']} sites, {res['png_kb_per_file']:.0f} KB/PNG")
        ax.legend(title="inner chunk", fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes[0].tolist(), label="full-site decode speed-up vs Pillow")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._frontier", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--src", type=Path, action="append", required=True,
                        help="PNG tree (repeatable: one result per tree)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--quick", action="store_true", help="2 sites, 3 codecs, 2 chunk shapes (< 2 minutes)"
    )
    parser.add_argument("--sites", type=int, default=None, help="sites per tree (default all; quick: 2)")
    parser.add_argument("--rounds", type=int, default=None, help="decode rounds (default 5; quick: 3)")
    parser.add_argument("--encode-sites", type=int, default=None,
                        help="sites encoded for codecs slower than 1 s/site (default all)")  # fmt: skip
    args = parser.parse_args(argv)
    machine = machine_info()
    results = []
    for src in args.src:
        sites = find_sites(src, limit=args.sites if args.sites is not None else (2 if args.quick else None))
        if not sites:
            parser.error(f"no complete six-channel site under {src}")
        results.append(
            run_frontier(
                sites,
                args.out,
                codecs=QUICK_CODECS if args.quick else DEFAULT_CODECS,
                chunks=QUICK_CHUNKS if args.quick else DEFAULT_CHUNKS,
                rounds=args.rounds if args.rounds is not None else (3 if args.quick else 5),
                encode_sites=args.encode_sites,
                label=src.name,
            )
        )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine,
        "libraries": library_versions(),
        "command": command_line(),
        "results": results,
    }
    (args.out / "frontier.json").write_text(json.dumps(report, indent=1))
    plot_frontier(results, args.out / "frontier.png")
    print(f"wrote {args.out / 'frontier.json'} and {args.out / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
