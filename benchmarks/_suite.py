"""Runs the suite: data first (cached), then every workload in turn, then the JSON, Markdown and plots.

A workload that fails is recorded with its traceback under its key and the others still run; the command then
exits non-zero. Workloads run in an order that lets later ones reuse what earlier ones wrote (the default store
from ``convert``, the other profiles' stores from ``storage``); the JSON keys are the fixed workload names.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _convert_bench, _loader, _peers, _reads, _scaling, _startup, _storage_bench
from ._config import WORKLOADS, Config
from ._context import Context
from ._data import metadata_store, pixel_data, tree_stats
from ._machine import command_line, library_versions, load_average, machine_info
from ._measure import log
from ._report import evaluate_targets, write_json, write_markdown, write_plots

__all__ = ["run"]

#: Execution order (not the report order).
RUNNERS: tuple[tuple[str, Callable[[Context], dict[str, Any]]], ...] = (
    ("convert", _convert_bench.run),
    ("storage", _storage_bench.run_storage),
    ("codecs", _storage_bench.run_codecs),
    ("read_full", _reads.run_full),
    ("read_crop", _reads.run_crop),
    ("scan", _reads.run_scan),
    ("query", _reads.run_query),
    ("worker_scaling", _scaling.run_workers),
    ("peers", _peers.run),
    ("startup", _startup.run_startup),
    ("loader", _loader.run),
)
assert sorted(k for k, _ in RUNNERS) == sorted(WORKLOADS)


def run(
    config: Config, out: Path, cache: Path, *, keep_work: bool = False, only: set[str] | None = None
) -> tuple[dict[str, Any], int]:
    """Run the suite into ``out``; returns the results and the number of failed workloads."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    meta: dict[str, Any] = {
        "mode": config.mode,
        "command": command_line(),
        "machine": machine_info(),
        "versions": library_versions(),
        "config": config.to_json(),
        "out": str(out),
        "cache": str(cache),
    }
    log(f"benchmarks, mode {config.mode}: out {out}, cache {cache}")
    data = pixel_data(config, cache)
    images = tree_stats(data.root, lambda rel: rel.startswith("images/"))
    meta["data"] = {
        "root": str(data.root),
        "sites": len(data.site_ids),
        "png_files": images.objects,
        "png_mb": images.bytes / 1e6,
        "from_cache": data.cached,
        "prepare_seconds": round(data.seconds, 2),
    }
    ctx = Context(config=config, out=out, work=work, cache=cache, data=data)
    if only is None or bool(only & {"query", "startup"}):
        for n in config.startup_sizes:
            try:
                tree, store, hit = metadata_store(n, cache)
            except Exception:  # noqa: BLE001 - recorded; startup reports the gap
                meta.setdefault("data_errors", []).append(traceback.format_exc())
                continue
            ctx.metadata_stores[n] = (tree, store)
            meta.setdefault("metadata_stores", {})[str(n)] = {"store": str(store), "from_cache": hit}
    meta["data"]["total_prepare_seconds"] = round(time.perf_counter() - started, 2)

    results: dict[str, Any] = {}
    failures = 0
    for key, runner in RUNNERS:
        if only is not None and key not in only:
            results[key] = {"skipped": "not selected with --only"}
            continue
        log(f"workload {key}")
        t0 = time.perf_counter()
        try:
            if key == "startup" and not ctx.metadata_stores:
                raise RuntimeError("no metadata-only store could be built (see meta.data_errors)")
            result = runner(ctx)
        except Exception:  # noqa: BLE001 - one failing workload must not lose the others
            failures += 1
            result = {"error": traceback.format_exc()}
            log(f"workload {key} FAILED:\n{result['error']}")
        result["workload_seconds"] = round(time.perf_counter() - t0, 2)
        result["load_average_after"] = load_average()
        results[key] = result
        log(f"workload {key}: {result['workload_seconds']} s")

    meta["load_average_at_end"] = load_average()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    document: dict[str, Any] = {"meta": meta, "targets": [], **{k: results[k] for k in WORKLOADS}}
    document["targets"] = evaluate_targets(document)
    plots, plot_errors = write_plots(document, out)
    meta["plots"] = plots
    if plot_errors:
        meta["plot_errors"] = plot_errors
    meta["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "results.json", document)
    write_markdown(out / "results.md", document)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(plots)} plot(s) in {meta['seconds']} s")
    return document, failures
