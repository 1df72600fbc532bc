"""Workload ``worker_scaling``: conversion and read throughput at 1..N workers, with local threads and with a
distributed ``LocalCluster`` of worker processes. (How startup scales with the number of sites is the ``startup``
workload, in ``_startup``.)"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from rxrx2_zarr._convert import convert
from rxrx2_zarr._layout import DEFAULT_PROFILE

from ._access import open_store
from ._context import Context
from ._measure import PeakRSS, median, ratio, wall

__all__ = ["run_workers"]


def _compute_on(client: Any, expr: Any) -> Any:
    return client.compute(expr).result()


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
