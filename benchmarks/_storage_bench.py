"""Workloads ``storage`` (bytes and objects of the store per codec profile vs the PNG tree) and ``codecs`` (each
profile x inner chunk shape on the same sites: bytes vs PNG, encode and decode time per site, one thread)."""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np

from rxrx2_zarr._layout import DEFAULT_PROFILE, LEVEL, PROFILES, SHARD_KEY, SiteArraySpec
from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr._shard import ShardCodec
from rxrx2_zarr._storage import StoreIO
from rxrx2_zarr.testing import time_calls

from ._access import decode_png_bytes
from ._context import Context
from ._data import tree_stats
from ._measure import interleaved_latency, log, ratio, timing_json

__all__ = ["run_codecs", "run_storage"]

SHARD_SUFFIX = f"/{LEVEL}/{SHARD_KEY}"


def run_storage(ctx: Context) -> dict[str, Any]:
    n_sites = len(ctx.data.site_ids)
    tree = tree_stats(ctx.src)
    images = tree_stats(ctx.src, lambda rel: rel.startswith("images/"))
    profiles: dict[str, Any] = {}
    for name, profile in PROFILES.items():
        path = ctx.store(name)
        report = ctx.reports[name]
        total = tree_stats(path)
        shards = tree_stats(path, lambda rel: rel.endswith(SHARD_SUFFIX))
        profiles[name] = {
            "description": profile.description,
            "store": total.to_json(),
            "shards": shards.to_json(),
            "bytes_vs_png_tree": ratio(total.bytes, tree.bytes),
            "shard_bytes_vs_png_images": ratio(shards.bytes, images.bytes),
            "allocated_vs_png_tree": ratio(total.allocated_bytes, tree.allocated_bytes),
            "objects_vs_png_tree": ratio(total.objects, tree.objects),
            "objects_per_site": round(total.objects / n_sites, 2),
            "convert_seconds": round(report.seconds, 2),
            "convert_sites_per_second": round(report.sites_per_second, 3),
        }
    return {
        "sites": n_sites,
        "inner_chunks": list(ctx.inner_chunks),
        "png_tree": tree.to_json(),
        "png_images": images.to_json(),
        "png_objects_per_site": round(tree.objects / n_sites, 2),
        "default_profile": DEFAULT_PROFILE,
        "profiles": profiles,
        "notes": (
            "bytes are apparent file sizes; the PNG tree includes metadata.csv and embeddings.csv, the store its "
            "index, embeddings and group/array documents. allocated_bytes is what the file system reserves "
            "(small documents take a whole block each). Conversion times here are single runs with "
            f"{ctx.config.max_threads} thread(s); see 'convert' for the repeated measurement of the default profile."
        ),
    }


def _pillow_encode(pixels: np.ndarray[Any, Any]) -> int:
    from PIL import Image

    total = 0
    for plane in pixels:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="PNG")
        total += buffer.tell()
    return total


def _encode(codec: ShardCodec, pixels: dict[str, Any], site_id: str) -> bytes:
    return codec.encode(pixels[site_id])


def _decode(codec: ShardCodec, encoded: dict[str, bytes], site_id: str) -> Any:
    return codec.decode(encoded[site_id])


def run_codecs(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    size = config.size
    ids = ctx.sample("codecs", config.codec_sites)
    src = StoreIO(str(ctx.src))
    png: dict[str, list[bytes]] = {s: [src.read(p) for p in parse_site_id(s).image_paths()] for s in ids}
    png_bytes = sum(len(b) for files in png.values() for b in files)
    pixels = {s: np.stack([decode_png_bytes(b, "imagecodecs") for b in files]) for s, files in png.items()}
    repeat = max(1, config.repeat - 1)

    # PNG reference points: decoding the six in-memory files of a site (the codec alone, no file reads)
    png_decode = interleaved_latency(
        {
            "pillow": lambda s: [decode_png_bytes(b, "pillow") for b in png[s]],
            "imagecodecs": lambda s: [decode_png_bytes(b, "imagecodecs") for b in png[s]],
        },
        ids,
        repeat,
    )
    pillow_encode = time_calls(lambda s: _pillow_encode(pixels[s]), ids[:1], 1)
    baselines = {
        "png_pillow": {
            "bytes_vs_png": 1.0,
            "decode": timing_json(png_decode["pillow"]),
            "encode": timing_json(pillow_encode),
        },
        "png_imagecodecs": {"bytes_vs_png": 1.0, "decode": timing_json(png_decode["imagecodecs"])},
    }

    rows: list[dict[str, Any]] = []
    for profile in PROFILES:
        for inner in config.codec_inner:
            if inner > size:
                continue
            codec = ShardCodec(SiteArraySpec(size, size, (inner, inner), profile))
            encoded = {s: codec.encode(pixels[s]) for s in ids}  # also the warm-up
            for s in ids:
                if not np.array_equal(codec.decode(encoded[s]), pixels[s]):
                    raise AssertionError(f"codec {profile} {inner}: site {s} does not round-trip")
            encode = time_calls(functools.partial(_encode, codec, pixels), ids, repeat)
            decode = time_calls(functools.partial(_decode, codec, encoded), ids, repeat)
            stored = sum(len(b) for b in encoded.values())
            rows.append(
                {
                    "profile": profile,
                    "inner": inner,
                    "bytes_per_site": round(stored / len(ids)),
                    "bytes_vs_png": ratio(stored, png_bytes),
                    "encode": timing_json(encode),
                    "decode": timing_json(decode),
                    "decode_speedup_vs_pillow": ratio(png_decode["pillow"].median_ms, decode.median_ms),
                    "decode_speedup_vs_imagecodecs": ratio(
                        png_decode["imagecodecs"].median_ms, decode.median_ms
                    ),
                }
            )
            log(
                f"  codec {profile:8s} {inner:4d}: {rows[-1]['bytes_vs_png']}x PNG, decode {decode.median_ms:.1f} ms"
            )
    return {
        "sites": len(ids),
        "site_shape": [6, size, size],
        "png_bytes_per_site": round(png_bytes / len(ids)),
        "threads": 1,
        "baselines": baselines,
        "matrix": rows,
        "notes": (
            "In memory, one thread: ShardCodec.encode/decode of a whole site (every inner chunk, the shard index "
            "and its CRC32C) vs decoding the site's six PNG files. Pillow's PNG encode (its default level) is one "
            "site, one run, for scale only."
        ),
    }
