"""Workload ``convert``: conversion throughput against the decode-only bound, and peak memory.

The bound is what the same worker count does when it only reads and decodes the same PNGs (with the converter's
own PNG decoder): a converter cannot beat it, so ``efficiency = converter sites/s / bound sites/s`` says how much
the encoding, writing and bookkeeping cost on top of the PNG decode that any conversion must pay.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from rxrx2_zarr._convert import ConvertReport, convert
from rxrx2_zarr._layout import DEFAULT_PROFILE
from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr._png import decode_png
from rxrx2_zarr._storage import StoreIO
from rxrx2_zarr.testing import time_throughput

from ._context import Context
from ._http import serve
from ._measure import PeakRSS, log, median, ratio

__all__ = ["run"]

#: The profile of the source-kind rows: quick to encode, so that reading the source (a zip, a web server) is what
#: the rows compare; with the default profile every kind would run at the encoder's speed.
SOURCE_PROFILE = "zstd"


def decode_only(ctx: Context) -> Any:
    """Read and decode a site's six PNGs exactly as the converter does, and nothing else."""
    src = StoreIO(str(ctx.src))
    size = (ctx.config.size, ctx.config.size)

    def site(site_id: str) -> int:
        total = 0
        for path in parse_site_id(site_id).image_paths():
            total += int(decode_png(src.read(path), path, size).shape[0])
        return total

    return site


def run(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    workers = config.max_threads
    ids = ctx.data.site_ids
    bound = decode_only(ctx)
    bound(ids[0])  # warm-up
    runs: list[dict[str, Any]] = []
    bound_rates: list[float] = []
    kept: tuple[Any, ConvertReport] | None = None
    for r in range(config.convert_repeat):
        dst = ctx.work / f"convert-{r}.zarr"
        with PeakRSS() as memory:
            report = convert(str(ctx.src), str(dst), ctx.options(DEFAULT_PROFILE, workers=workers))
        runs.append(
            {
                "seconds": round(report.seconds, 3),
                "sites_per_second": round(report.sites_per_second, 3),
                "png_mb_per_second": round(report.png_mb_per_second, 2),
                **memory.to_json(),
            }
        )
        bound_rates.append(time_throughput(bound, ids, workers, repeat=1))
        if kept is not None:
            shutil.rmtree(kept[0], ignore_errors=True)
        kept = (dst, report)
    assert kept is not None
    report = kept[1]
    ctx.adopt(DEFAULT_PROFILE, kept[0], report)
    # convert()'s fixed costs, approximately: the same conversion without pixels (plan, documents, index, embeddings)
    fixed_dst = ctx.work / "convert-no-pixels.zarr"
    fixed = convert(
        str(ctx.src), str(fixed_dst), ctx.options(DEFAULT_PROFILE, workers=workers, no_pixels=True)
    ).seconds
    shutil.rmtree(fixed_dst, ignore_errors=True)
    seconds = median([r["seconds"] for r in runs])
    per_site = report.converted / (seconds - fixed) if seconds > fixed else None
    sites_per_second = median([r["sites_per_second"] for r in runs])
    png_mb_per_site = report.png_bytes / 1e6 / max(report.converted, 1)
    bound_rate = median(bound_rates)
    return {
        "sites": report.converted,
        "workers": workers,
        "execution": report.execution,
        "profile": DEFAULT_PROFILE,
        "inner_chunks": list(ctx.inner_chunks),
        "png_bytes": report.png_bytes,
        "stored_bytes": report.stored_bytes,
        "stored_vs_png": round(report.ratio, 4),
        "sites_per_second": round(sites_per_second, 3),
        "png_mb_per_second": round(sites_per_second * png_mb_per_site, 2),
        "seconds_median": round(seconds, 3),
        "decode_only_sites_per_second": round(bound_rate, 3),
        "decode_only_png_mb_per_second": round(bound_rate * png_mb_per_site, 2),
        "efficiency": ratio(sites_per_second, bound_rate),
        "fixed_seconds_estimate": round(fixed, 3),
        "sites_per_second_excluding_fixed": None if per_site is None else round(per_site, 3),
        "efficiency_excluding_fixed": ratio(per_site, bound_rate),
        "sources": sources(ctx, workers),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_delta_mb": max(r["peak_delta_mb"] for r in runs),
        "runs": runs,
        "decode_only_runs": [round(v, 3) for v in bound_rates],
        "notes": (
            "Wall time of convert() includes planning (metadata, listing), the static documents, the index and "
            "embeddings: fixed costs that weigh more on small datasets; they are estimated by the same conversion "
            "with no_pixels=True, and 'efficiency_excluding_fixed' discounts them (the target uses the total). The decode-only bound reads and decodes the "
            f"same PNGs with the same {workers} thread(s). Both read from a warm OS page cache."
        ),
    }


def _zip_tree(root: Path, out: Path, top: str) -> Path:
    """The tree as RxRx2 publishes it: one deflated zip (``zip -r``'s default), under a top folder."""
    if not out.exists():
        partial = out.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{top}/{path.relative_to(root).as_posix()}")
        os.replace(partial, out)
    return out


def sources(ctx: Context, workers: int) -> dict[str, Any]:
    """The same conversion from each kind of source, measured one after the other under the same conditions: the
    unpacked tree, a local zip (deflated, as published), the zip over a loopback HTTP server with Range, and the
    tree as an HTTP directory listing.

    The HTTP server runs in this process (a thread), so it competes with the converter for the GIL and the cores:
    a lower bound on what a server on another machine gives.
    """
    www = ctx.work / "www"
    www.mkdir(exist_ok=True)
    archive = _zip_tree(ctx.src, www / "rxrx2-images.zip", "rxrx2")
    tree_link = www / "rxrx2"
    if not tree_link.exists():
        tree_link.symlink_to(ctx.src.resolve(), target_is_directory=True)
    rows: dict[str, Any] = {}
    with serve(www) as base:
        kinds = {
            "directory": (str(ctx.src), "DIR"),
            "local zip": (str(archive), "DIR.zip"),
            "zip over HTTP (Range)": (f"zip::{base}/rxrx2-images.zip", "zip::http://127.0.0.1:PORT/rxrx2-images.zip"),
            "HTTP directory": (f"{base}/rxrx2/", "http://127.0.0.1:PORT/rxrx2/"),
        }
        for kind, (url, shown) in kinds.items():
            log(f"convert from {kind}")
            rates: list[float] = []
            png_rates: list[float] = []
            for r in range(ctx.config.convert_repeat):
                dst = ctx.work / f"convert-source-{r}.zarr"
                report = convert(url, str(dst), ctx.options(SOURCE_PROFILE, workers=workers))
                rates.append(report.sites_per_second)
                png_rates.append(report.png_mb_per_second)
                shutil.rmtree(dst, ignore_errors=True)
            rows[kind] = {
                "src": shown,
                "sites_per_second": round(median(rates), 3),
                "png_mb_per_second": round(median(png_rates), 2),
                "runs": [round(v, 3) for v in rates],
            }
    for row in rows.values():
        row["vs_directory"] = ratio(row["sites_per_second"], rows["directory"]["sites_per_second"])
    return {
        "workers": workers,
        "archive_bytes": archive.stat().st_size,
        "rows": rows,
        "profile": SOURCE_PROFILE,
        "notes": "Same sites, profile (zstd: quick to encode, so the source side is what differs) and workers for "
        "every source, measured back to back; median of the repeats. "
        "The loopback HTTP server is a thread of the benchmark process (it shares the GIL and cores with the "
        "converter).",
    }
