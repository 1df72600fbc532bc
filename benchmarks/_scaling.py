"""Workloads ``startup`` (a new user's first second: import, open, select, the images graph and the first site,
each timed in a fresh interpreter), ``open_scaling`` (open and graph-construction time against the number of sites, on metadata-only
stores up to RxRx2's 131,953 sites) and ``worker_scaling`` (conversion and read throughput at 1..N workers, with
local threads and with a distributed ``LocalCluster`` of worker processes)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from typing import Any

import pandas as pd

from rxrx2_zarr._convert import convert
from rxrx2_zarr._layout import DEFAULT_PROFILE

from ._access import open_store
from ._context import Context
from ._measure import PeakRSS, median, ratio, wall

__all__ = ["run_open", "run_startup", "run_workers"]

#: Run in a fresh interpreter: imports first (timed apart), then the first open of the store and its graph.
_COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import dask.array
from rxrx2_zarr._dataset import open as open_store
t1 = time.perf_counter()
ds = open_store(sys.argv[1])
t2 = time.perf_counter()
images = ds.images
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "images_s": t3 - t2, "sites": len(ds), "tasks": len(images.dask)}))
"""


def _cold_open(store: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _COLD_SCRIPT, store], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _compute_on(client: Any, expr: Any) -> Any:
    return client.compute(expr).result()


#: A new user's first steps, in a fresh interpreter (argv: store, treatment to select, a site_id). Every step is
#: timed on its own; ``images`` includes dask's first import (the reader defers it to first use), ``images_again``
#: is a second graph (of the selection), i.e. the graph construction alone.
_STARTUP_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import rxrx2_zarr
t1 = time.perf_counter()
ds = rxrx2_zarr.open(sys.argv[1])
t2 = time.perf_counter()
selection = ds.select(treatment=sys.argv[2])
t3 = time.perf_counter()
images = ds.images
t4 = time.perf_counter()
again = selection.images
t5 = time.perf_counter()
pixels = ds.site(sys.argv[3])
t6 = time.perf_counter()
block = images[0].compute(scheduler="sync")
t7 = time.perf_counter()
layers = images.__dask_graph__().layers
print(json.dumps({
    "import_s": t1 - t0, "open_s": t2 - t1, "select_s": t3 - t2, "images_s": t4 - t3, "images_again_s": t5 - t4,
    "first_site_s": t6 - t5, "first_block_s": t7 - t6, "total_s": t7 - t0, "sites": len(ds), "selected": len(selection),
    "layers": len(layers), "materialized": sum(bool(layer.is_materialized()) for layer in layers.values()),
    "same": bool((block[0] == pixels).all()),
}))
"""
_STARTUP_STEPS = ("import", "open", "select", "images", "images_again", "first_site", "first_block", "total")


def _startup_point(store: str, treatment: str, site_id: str, runs: int) -> dict[str, Any]:
    """Medians (ms) of ``runs`` fresh interpreters running :data:`_STARTUP_SCRIPT` on ``store``."""
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _STARTUP_SCRIPT, store, treatment, site_id], capture_output=True, text=True, check=True
        )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    point: dict[str, Any] = {"sites": samples[0]["sites"], "selected": samples[0]["selected"], "runs": runs}
    for step in _STARTUP_STEPS:
        values = [sample[f"{step}_s"] for sample in samples]
        point[f"{step}_ms"] = round(median(values) * 1e3, 1)
        point[f"{step}_ms_max"] = round(max(values) * 1e3, 1)
    point["graph_layers"] = samples[0]["layers"]
    point["materialized_layers"] = max(sample["materialized"] for sample in samples)
    point["block_equals_site"] = all(sample["same"] for sample in samples)
    return point


def run_startup(ctx: Context) -> dict[str, Any]:
    """Time to a lazy array of every site and to the first pixels, each step in a fresh process."""
    runs = ctx.config.cold_repeat + 2  # medians of 3 (smoke) to 5 (full) interpreters
    points = []
    for n in sorted(ctx.metadata_stores):
        tree, store = ctx.metadata_stores[n]
        metadata = pd.read_csv(tree / "metadata.csv", usecols=["site_id", "treatment"])
        treatment = str(metadata["treatment"].value_counts().index[0])
        points.append({"store": "metadata-only", **_startup_point(str(store), treatment, str(metadata["site_id"].iloc[0]), runs)})
    pixel_store = ctx.stores.get(DEFAULT_PROFILE)
    if pixel_store is not None:  # the convert workload's store: first_site_ms there reads and decodes a real shard
        dataset = open_store(str(pixel_store))
        treatment = str(dataset.sites["treatment"].value_counts().index[0])
        points.append({"store": f"pixels ({DEFAULT_PROFILE})", **_startup_point(str(pixel_store), treatment, dataset.site_ids[0], runs)})
    return {
        "points": points,
        "largest": max((p["sites"] for p in points), default=0),
        "notes": (
            f"Each row: medians of {runs} fresh interpreters (`python -c`), each step timed apart: `import rxrx2_zarr`, "
            "`open(store)`, `select(treatment=<most common>)`, `ds.images` (includes importing dask), a second "
            "graph (`selection.images`: graph construction alone), `ds.site(first)`, `images[0].compute()`. "
            "Metadata-only stores (`convert --no-pixels`) hold no shards, so their site reads return zeros without "
            "a request; the pixel-store row (when the convert workload ran) reads and decodes one shard. Warm OS "
            "page cache."
        ),
    }


def run_open(ctx: Context) -> dict[str, Any]:
    import dask.array  # noqa: F401 - imported before timing: the first graph would otherwise pay for it

    config = ctx.config
    points: list[dict[str, Any]] = []
    for n in sorted(ctx.metadata_stores):
        tree, store = ctx.metadata_stores[n]
        url = str(store)
        treatment = str(
            pd.read_csv(tree / "metadata.csv", usecols=["treatment"])["treatment"].value_counts().index[0]
        )
        opens, graphs, selects = [], [], []
        sites = tasks = 0
        for _ in range(config.open_repeat):
            t_open, dataset = wall(functools.partial(open_store, url))
            t_graph, images = wall(functools.partial(getattr, dataset, "images"))
            t_select, selection = wall(functools.partial(dataset.select, treatment=treatment))
            opens.append(t_open)
            graphs.append(t_graph)
            selects.append(t_select)
            sites, tasks = len(dataset), len(images.dask)
        cold = [_cold_open(url) for _ in range(config.cold_repeat)]
        points.append(
            {
                "sites": sites,
                "graph_tasks": tasks,
                "open_ms": round(median(opens) * 1e3, 2),
                "open_ms_p_max": round(max(opens) * 1e3, 2),
                "images_graph_ms": round(median(graphs) * 1e3, 2),
                "select_ms": round(median(selects) * 1e3, 2),
                "selected": len(selection),
                "cold_process": {
                    "open_ms": round(median([c["open_s"] for c in cold]) * 1e3, 2),
                    "images_graph_ms": round(median([c["images_s"] for c in cold]) * 1e3, 2),
                    "import_ms": round(median([c["import_s"] for c in cold]) * 1e3, 2),
                    "runs": len(cold),
                },
            }
        )
    return {
        "points": points,
        "largest": max(p["sites"] for p in points) if points else 0,
        "notes": (
            "Metadata-only stores (convert --no-pixels: the full group tree, index and embeddings, no shards). "
            "open_ms/images_graph_ms: medians in this process after a first open; cold_process: a new interpreter "
            "per run (imports timed apart, not included in open_ms). Warm OS page cache."
        ),
    }


def run_workers(ctx: Context) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    config = ctx.config
    n = min(config.scaling_sites, len(ctx.data.site_ids))
    url = str(ctx.store())  # the read side reads the default store
    dst = ctx.work / "scaling.zarr"
    repeat = max(1, config.repeat - 1)

    def convert_rate(**options: Any) -> float:
        return convert(
            str(ctx.src), str(dst), ctx.options(DEFAULT_PROFILE, limit=n, **options)
        ).sites_per_second

    def mean_expr() -> Any:
        return open_store(url).images[:n].mean(axis=(0, 2, 3))

    # threads: every worker count in each round, in turn
    threads: dict[int, dict[str, list[float]]] = {k: {"convert": [], "read": []} for k in config.threads}
    for _ in range(repeat):
        for k in config.threads:
            threads[k]["convert"].append(convert_rate(workers=k))
            seconds, _ = wall(functools.partial(mean_expr().compute, scheduler="threads", num_workers=k))
            threads[k]["read"].append(n / seconds)
    rows: list[dict[str, Any]] = []
    for k in config.threads:
        row: dict[str, Any] = {"workers": k}
        row["threads"] = {
            "convert_sites_per_second": round(median(threads[k]["convert"]), 3),
            "read_sites_per_second": round(median(threads[k]["read"]), 2),
        }
        started = time.perf_counter()
        with (
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,  # type: ignore[no-untyped-call]
        ):
            startup = time.perf_counter() - started
            # warm-up (untimed): the workers import the codecs and open the stores once
            convert(
                str(ctx.src),
                str(dst),
                ctx.options(DEFAULT_PROFILE, limit=k, scheduler=cluster.scheduler_address),
            )
            _compute_on(client, open_store(url).images[:k].mean(axis=(0, 2, 3)))
            conv, reads = [], []
            peak = 0.0
            for _ in range(repeat):
                with PeakRSS() as memory:
                    conv.append(convert_rate(scheduler=cluster.scheduler_address))
                peak = max(peak, memory.peak_bytes / 1e6)
                seconds, _ = wall(functools.partial(_compute_on, client, mean_expr()))
                reads.append(n / seconds)
            row["distributed"] = {
                "convert_sites_per_second": round(median(conv), 3),
                "read_sites_per_second": round(median(reads), 2),
                "cluster_startup_s": round(startup, 2),
                "convert_peak_rss_mb": round(peak, 1),
            }
        rows.append(row)
    base = rows[0]
    for row in rows:
        for kind in ("threads", "distributed"):
            for metric in ("convert_sites_per_second", "read_sites_per_second"):
                row[kind][metric.replace("_sites_per_second", "_speedup")] = ratio(
                    row[kind][metric], base[kind][metric]
                )
    return {
        "sites": n,
        "profile": DEFAULT_PROFILE,
        "cores": os.cpu_count(),
        "rows": rows,
        "repeat": repeat,
        "notes": (
            "threads: ConvertOptions(workers=k) and images.mean().compute(scheduler='threads', num_workers=k). "
            "distributed: LocalCluster(n_workers=k, threads_per_worker=1, processes=True), ConvertOptions(scheduler="
            "address) and client.compute(images.mean()); cluster startup and one untimed warm-up per cluster are "
            "excluded, the client connection made by each convert() is included. Thread rounds alternate the worker "
            "counts. Conversion rates include convert()'s fixed costs (planning, documents, index). Peak RSS sums "
            "this process and the worker processes."
        ),
    }
