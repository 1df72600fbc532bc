"""Read workloads, store vs PNG on the same sites with the same threads: ``read_full`` (random full sites),
``read_crop`` (random 256 x 256 crops of all channels, and single channels), ``scan`` (per-channel mean of every
site with Dask) and ``query`` (select one treatment, read its sites)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from rxrx2_zarr._layout import DEFAULT_PROFILE, PROFILES

from ._access import PngSiteReader, StoreSiteReader, open_store, png_channel, same
from ._context import Context
from ._measure import (
    interleaved_latency,
    interleaved_runs,
    interleaved_throughput,
    median,
    ratio,
    timing_json,
)

__all__ = ["run_crop", "run_full", "run_query", "run_scan"]

SIDES = ("store", "pillow", "imagecodecs")


def _png_readers(ctx: Context) -> dict[str, PngSiteReader]:
    return {name: PngSiteReader(str(ctx.src), name) for name in ("pillow", "imagecodecs")}


def _latency_block(
    timings: dict[str, Any], baseline_names: tuple[str, ...] = ("pillow", "imagecodecs")
) -> dict[str, Any]:
    block: dict[str, Any] = {name: timing_json(t) for name, t in timings.items()}
    block["speedup_p50"] = {
        f"vs_{b}": ratio(timings[b].median_ms, timings["store"].median_ms) for b in baseline_names
    }
    block["speedup_p95"] = {
        f"vs_{b}": ratio(timings[b].p95_ms, timings["store"].p95_ms) for b in baseline_names
    }
    return block


def run_full(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    ids = ctx.sample("read_full", config.read_sites)
    png = _png_readers(ctx)
    store = StoreSiteReader(str(ctx.store()))
    for s in ids:  # the store must give back exactly the PNGs' pixels
        if not same(store.site(s), png["imagecodecs"].site(s)):
            raise AssertionError(f"store and PNG pixels differ for site {s}")
    functions: dict[str, Callable[[Any], Any]] = {
        "store": store.site,
        "pillow": png["pillow"].site,
        "imagecodecs": png["imagecodecs"].site,
    }
    latency = interleaved_latency(functions, ids, config.repeat)
    throughput: dict[str, Any] = {}
    for threads in config.threads:
        rates = interleaved_throughput(functions, ids, threads, config.repeat)
        throughput[str(threads)] = {
            **{f"{name}_sites_per_second": round(rate, 2) for name, rate in rates.items()},
            "speedup": {f"vs_{b}": ratio(rates["store"], rates[b]) for b in ("pillow", "imagecodecs")},
        }
    # the library's default single-site read, which splits a site over its read pool
    default = interleaved_latency({"store_default": store.default_site}, ids, config.repeat)["store_default"]
    profiles = _profile_rows(ctx, lambda reader, site: reader.site(site), ids, latency)
    return {
        "sites": len(ids),
        "site_shape": [6, config.size, config.size],
        "profile": DEFAULT_PROFILE,
        "inner_chunks": list(ctx.inner_chunks),
        "store_read_path": store.path,
        "latency_1_thread": _latency_block(latency),
        "throughput": throughput,
        "store_library_default": {
            **timing_json(default),
            "note": "Dataset.site(): one site split over the library's read pool (up to min(4, cores) tasks), not a one-thread figure",
            "speedup_p50_vs_pillow_1_thread": ratio(latency["pillow"].median_ms, default.median_ms),
        },
        "profiles_1_thread": profiles,
        "verified": True,
        "notes": "Random sites in random order; PNG sides read and decode the six files of a site; warm OS page cache on both sides.",
    }


def _profile_rows(
    ctx: Context, read: Callable[[StoreSiteReader, Any], Any], items: Sequence[Any], latency: Mapping[str, Any]
) -> dict[str, Any]:
    """One-thread latency of ``read(reader, item)`` on every codec profile's store (the default profile's is
    ``latency["store"]``; the others' stores were written by the 'storage' workload), against the PNG sides'
    medians in ``latency``."""
    profiles: dict[str, Any] = {}
    for name in PROFILES:
        if name not in ctx.stores:
            continue
        if name == DEFAULT_PROFILE:
            timing = latency["store"]
        else:
            reader = StoreSiteReader(str(ctx.stores[name]))
            timing = interleaved_latency({name: functools.partial(read, reader)}, items, ctx.config.repeat)[name]
        profiles[name] = {
            **timing_json(timing),
            "speedup_vs_pillow": ratio(latency["pillow"].median_ms, timing.median_ms),
            "speedup_vs_imagecodecs": ratio(latency["imagecodecs"].median_ms, timing.median_ms),
        }
    return profiles


def _random_regions(ctx: Context, ids: list[str]) -> list[tuple[str, tuple[int, int, int, int]]]:
    size, crop = ctx.config.size, ctx.config.crop
    rng = ctx.rng("read_crop/regions")
    items = []
    for s in ids:
        y0, x0 = (int(v) for v in rng.integers(0, size - crop + 1, size=2))
        items.append((s, (y0, y0 + crop, x0, x0 + crop)))
    return items


def run_crop(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    ids = ctx.sample("read_crop", config.read_sites)
    png = _png_readers(ctx)
    store = StoreSiteReader(str(ctx.store()))
    crops = _random_regions(ctx, ids)
    for s, region in crops[:4]:
        if not same(store.crop(s, region), png["imagecodecs"].crop(s, region)):
            raise AssertionError(f"store and PNG crops differ for site {s} {region}")
    crop_latency = interleaved_latency(
        {
            "store": lambda item: store.crop(*item),
            "pillow": lambda item: png["pillow"].crop(*item),
            "imagecodecs": lambda item: png["imagecodecs"].crop(*item),
        },
        crops,
        config.repeat,
    )
    rng = ctx.rng("read_crop/channels")
    channels = [(s, int(c)) for s, c in zip(ids, rng.integers(1, 7, size=len(ids)), strict=True)]
    for s, c in channels[:4]:
        if not same(store.channel(s, c), png_channel(png["imagecodecs"], s, c)):
            raise AssertionError(f"store and PNG channel {c} differ for site {s}")
    channel_latency = interleaved_latency(
        {
            "store": lambda item: store.channel(*item),
            "pillow": lambda item: png_channel(png["pillow"], *item),
            "imagecodecs": lambda item: png_channel(png["imagecodecs"], *item),
        },
        channels,
        config.repeat,
    )
    # a single-channel crop: the store reads one channel's chunks; a PNG must still decode that whole file
    crop_channels = [(s, c, r) for (s, c), (_, r) in zip(channels, crops, strict=True)]
    single_crop = interleaved_latency(
        {
            "store": lambda item: store.read(item[0], [item[1]], item[2]),
            "imagecodecs": lambda item: png_channel(png["imagecodecs"], item[0], item[1])[
                item[2][0] : item[2][1], item[2][2] : item[2][3]
            ],
        },
        crop_channels,
        config.repeat,
    )
    return {
        "sites": len(ids),
        "crop": [6, config.crop, config.crop],
        "inner_chunks": list(ctx.inner_chunks),
        "store_read_path": store.path,
        "crop_all_channels_1_thread": _latency_block(crop_latency),
        "crop_profiles_1_thread": _profile_rows(ctx, lambda reader, item: reader.crop(*item), crops, crop_latency),
        "single_channel_1_thread": _latency_block(channel_latency),
        "single_channel_crop_1_thread": _latency_block(single_crop, ("imagecodecs",)),
        "verified": True,
        "notes": (
            f"Crops at random positions (not aligned to the {ctx.inner_chunks[0]}-pixel inner chunks, so a crop "
            "usually touches 4 chunks per channel). A PNG cannot be decoded in part: a crop costs the six files, a "
            "single channel one file."
        ),
    }


def run_scan(ctx: Context) -> dict[str, Any]:
    import dask
    import dask.array as da

    config = ctx.config
    threads = config.max_threads
    dataset = open_store(str(ctx.store()))
    ids = dataset.site_ids
    png = _png_readers(ctx)
    shape = (6, config.size, config.size)
    store_images = dataset.images

    def png_images(reader: PngSiteReader) -> Any:
        load = dask.delayed(reader.site, pure=True)  # type: ignore[attr-defined]
        blocks = [da.from_delayed(load(s), shape=shape, dtype=np.uint8) for s in ids]  # type: ignore[no-untyped-call]
        return da.stack(blocks)  # type: ignore[no-untyped-call]

    expressions = {
        "store": store_images.mean(axis=(0, 2, 3)),  # type: ignore[no-untyped-call]
        "pillow": png_images(png["pillow"]).mean(axis=(0, 2, 3)),
        "imagecodecs": png_images(png["imagecodecs"]).mean(axis=(0, 2, 3)),
    }
    results = {
        name: expr.compute(scheduler="threads", num_workers=threads) for name, expr in expressions.items()
    }
    for name in ("pillow", "imagecodecs"):
        if not np.allclose(results[name], results["store"], rtol=0, atol=1e-9):
            raise AssertionError(f"scan: per-channel means differ between store and {name}")
    seconds = interleaved_runs(
        {
            name: functools.partial(expr.compute, scheduler="threads", num_workers=threads)
            for name, expr in expressions.items()
        },
        config.repeat,
    )
    medians = {name: median(v) for name, v in seconds.items()}
    raw_mb = len(ids) * int(np.prod(shape)) / 1e6
    return {
        "sites": len(ids),
        "threads": threads,
        "scheduler": "dask threaded",
        "channel_means": [round(float(v), 4) for v in results["store"]],
        **{
            name: {
                "seconds_median": round(medians[name], 3),
                "sites_per_second": round(len(ids) / medians[name], 2),
                "raw_mb_per_second": round(raw_mb / medians[name], 1),
                "runs": [round(v, 3) for v in seconds[name]],
            }
            for name in SIDES
        },
        "speedup": {f"vs_{b}": ratio(medians[b], medians["store"]) for b in ("pillow", "imagecodecs")},
        "verified": True,
        "notes": "store: Dataset.images.mean(axis=(0, 2, 3)); PNG: the same reduction over dask.delayed site reads; graphs built before timing.",
    }


def _query_treatment(frame: pd.DataFrame) -> str:
    counts = frame.loc[frame["treatment"] != "EMPTY", "treatment"].value_counts()
    top = counts[counts == counts.max()]
    return str(sorted(top.index)[0])


def run_query(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    threads = config.max_threads
    url = str(ctx.store())
    treatment = _query_treatment(ctx.data.metadata)
    png = _png_readers(ctx)

    def store_side() -> Any:
        selection = open_store(url).select(treatment=treatment)
        pixels = selection.images.compute(scheduler="threads", num_workers=threads)  # type: ignore[no-untyped-call]
        return selection.site_ids, pixels

    def png_side(reader: PngSiteReader) -> Callable[[], Any]:
        def run() -> Any:
            frame = pd.read_csv(ctx.src / "metadata.csv")
            ids = frame.loc[frame["treatment"] == treatment, "site_id"].tolist()
            with ThreadPoolExecutor(threads) as pool:
                return ids, np.stack(list(pool.map(reader.site, ids)))

        return run

    functions = {
        "store": store_side,
        "pillow": png_side(png["pillow"]),
        "imagecodecs": png_side(png["imagecodecs"]),
    }
    store_ids, store_pixels = store_side()
    png_ids, png_pixels = functions["imagecodecs"]()
    order = {s: k for k, s in enumerate(png_ids)}
    if sorted(store_ids) != sorted(png_ids) or not same(
        store_pixels, png_pixels[[order[s] for s in store_ids]]
    ):
        raise AssertionError("query: store and PNG selections differ")
    seconds = interleaved_runs(functions, config.repeat)
    medians = {name: median(v) for name, v in seconds.items()}
    result: dict[str, Any] = {
        "treatment": treatment,
        "sites": len(store_ids),
        "threads": threads,
        **{
            name: {"seconds_median": round(medians[name], 4), "runs": [round(v, 4) for v in seconds[name]]}
            for name in SIDES
        },
        "speedup": {f"vs_{b}": ratio(medians[b], medians["store"]) for b in ("pillow", "imagecodecs")},
        "verified": True,
        "notes": (
            "store: open + select(treatment=...) + .images.compute(threads); PNG: pandas.read_csv(metadata.csv) + "
            "filter + decode the selected sites' PNGs with a thread pool of the same size."
        ),
    }
    if ctx.metadata_stores:
        result["metadata_at_scale"] = _metadata_query(ctx)
    return result


def _metadata_query(ctx: Context) -> dict[str, Any]:
    """The metadata half of a query on the largest metadata-only store: open + select vs read_csv + filter."""
    n = max(ctx.metadata_stores)
    tree, store = ctx.metadata_stores[n]
    frame = pd.read_csv(tree / "metadata.csv")
    treatment = _query_treatment(frame)

    def store_side() -> int:
        return len(open_store(str(store)).select(treatment=treatment))

    def csv_side() -> int:
        table = pd.read_csv(tree / "metadata.csv")
        return int((table["treatment"] == treatment).sum())

    if store_side() != csv_side():
        raise AssertionError("metadata query: store and CSV selections differ")
    seconds = interleaved_runs({"store": store_side, "csv": csv_side}, ctx.config.open_repeat)
    return {
        "sites_in_store": n,
        "treatment": treatment,
        "selected": store_side(),
        "store_open_select_ms": round(median(seconds["store"]) * 1e3, 2),
        "pandas_read_csv_filter_ms": round(median(seconds["csv"]) * 1e3, 2),
        "speedup": ratio(median(seconds["csv"]), median(seconds["store"])),
    }
