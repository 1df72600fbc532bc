"""Workload ``startup``: a new user's first second, each step timed in fresh interpreters.

From ``import rxrx2_zarr`` to a lazy dask array of every site and to the first pixels: on metadata-only stores of
1e3 / 1e4 / 131,953 sites (how open and graph construction scale with the number of sites), and on a store with
pixels, read from the local disk and from S3 (moto in server mode on loopback: the time to the first pixels over
HTTP, and the requests it takes, counted where they arrive).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rxrx2_zarr._convert import convert
from rxrx2_zarr._layout import DEFAULT_PROFILE

from ._context import Context
from ._machine import load_average
from ._measure import log, median

__all__ = ["run_startup"]

#: A new user's first steps, in a fresh interpreter (argv: store, storage options as JSON, treatment to select,
#: a site_id). Every step is timed on its own. ``import_dask`` is ``import dask.array``, which the reader defers to
#: the first lazy array and which imports xarray, pandas and scipy wherever they are installed; ``images`` is then
#: the graph of every site alone (the first in the process: nothing of it is cached), ``selection_images`` the
#: selection's; ``open_again`` is a second open of the same store once everything is imported (the open's own work).
_STARTUP_SCRIPT = """
import json, sys, time
marks = [(time.perf_counter(), time.process_time())]
def mark():
    marks.append((time.perf_counter(), time.process_time()))
import rxrx2_zarr
mark()
options = json.loads(sys.argv[2])
ds = rxrx2_zarr.open(sys.argv[1], storage_options=options)
mark()
selection = ds.select(treatment=sys.argv[3])
mark()
import dask.array
mark()
images = ds.images
mark()
again = selection.images
mark()
pixels = ds.site(sys.argv[4])
mark()
block = images[0].compute(scheduler="sync")
mark()
rxrx2_zarr.open(sys.argv[1], storage_options=options)
mark()
layers = images.__dask_graph__().layers
import pickle
out = {"sites": len(ds), "selected": len(selection), "layers": len(layers),
       "pickled_bytes": len(pickle.dumps(images)), "pickled_chunks_bytes": len(pickle.dumps(images.chunks)),
       "materialized": sum(bool(layer.is_materialized()) for layer in layers.values()),
       "same": bool((block[0] == pixels).all()),
       "optional_imported": sorted(m for m in ("xarray", "scipy", "pandas") if m in sys.modules)}
names = ("import", "open", "select", "import_dask", "images", "selection_images", "first_site", "first_block",
         "open_again")
for clock, suffix in ((0, "s"), (1, "cpu_s")):
    step = {name: marks[i + 1][clock] - marks[i][clock] for i, name in enumerate(names)}
    step["total"] = marks[-1][clock] - marks[0][clock]
    step["to_lazy_array"] = step["import"] + step["open"] + step["import_dask"] + step["images"]
    step["to_first_pixels"] = step["import"] + step["open"] + step["first_site"]
    out.update({f"{name}_{suffix}": value for name, value in step.items()})
print(json.dumps(out))
"""
STEPS = (
    "import", "open", "select", "import_dask", "images", "selection_images", "first_site", "first_block", "total",
    "open_again", "to_lazy_array", "to_first_pixels",
)  # fmt: skip

#: Sites converted for the pixel rows when no earlier workload converted the pixel dataset (``--only startup``),
#: or when its store is too large to upload to the S3 server quickly (full mode: 191 sites, ~250 MB).
_PIXEL_SITES = 4
_UPLOAD_SITES = 32


#: Another interpreter to time the startup steps with, on the largest metadata-only store (e.g. a virtual
#: environment with only ``pip install rxrx2-zarr``, without the test extras: there ``import dask.array`` does not
#: import xarray, pandas and scipy, which it does wherever they are installed).
STARTUP_PYTHON_ENV = "RXRX2_BENCH_STARTUP_PYTHON"


def _startup_point(
    store: str, treatment: str, site_id: str, runs: int, *, options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None, s3: Any = None, python: str = sys.executable,
) -> dict[str, Any]:
    """Medians (ms) of ``runs`` fresh interpreters running :data:`_STARTUP_SCRIPT` on ``store``; with ``s3`` (a
    running ``MotoS3``), the requests its server received during the last run, by method."""
    samples, requests = [], []
    argv = [python, "-c", _STARTUP_SCRIPT, store, json.dumps(dict(options or {})), treatment, site_id]
    load_before = load_average()
    for _ in range(runs):
        if s3 is not None:
            s3.record()
        done = subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(env or os.environ))
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if s3 is not None:
            requests = s3.recorded()
    point: dict[str, Any] = {"sites": samples[0]["sites"], "selected": samples[0]["selected"], "runs": runs}
    for step in STEPS:
        values = [sample[f"{step}_s"] for sample in samples]
        point[f"{step}_ms"] = round(median(values) * 1e3, 1)
        point[f"{step}_ms_max"] = round(max(values) * 1e3, 1)
        # CPU time of this process (all its threads): less sensitive than wall time to other jobs on the machine
        point[f"{step}_cpu_ms"] = round(median([sample[f"{step}_cpu_s"] for sample in samples]) * 1e3, 1)
    point["graph_layers"] = samples[0]["layers"]
    # ds.images pickled (its one layer, the chunks tuple and a Dataset); a client ships more: see _shipped_kb
    point["pickled_kb"] = round(samples[0]["pickled_bytes"] / 1024, 1)
    point["pickled_chunks_kb"] = round(samples[0]["pickled_chunks_bytes"] / 1024, 1)
    point["materialized_layers"] = max(sample["materialized"] for sample in samples)
    point["block_equals_site"] = all(sample["same"] for sample in samples)
    point["optional_imported"] = samples[0]["optional_imported"]
    point["load_average"] = [load_before, load_average()]
    if s3 is not None:
        point["requests_per_run"] = dict(Counter(r.method for r in requests))
        point["objects_read"] = len({r.path for r in requests})
    return point


def _shipped_kb(store: str) -> dict[str, float]:
    """What a distributed client serializes to send (as ``Client.compute`` does: the collection's expression) for
    ``ds.images`` and for a scan of every site (per-site sums): the first is the array's one layer, chunks tuple
    and output keys; the second adds dask's reduction, whose layers are materialized per block."""
    from dask.base import collections_to_expr
    from distributed.protocol.serialize import serialize, to_serialize

    from rxrx2_zarr._dataset import open as open_store

    images = open_store(store).images
    sizes = {}
    scan = images.sum(axis=(1, 2, 3))  # type: ignore[no-untyped-call]
    for name, collection in (("shipped_images_kb", images), ("shipped_scan_kb", scan)):
        _, frames = serialize(to_serialize(collections_to_expr([collection])), on_error="raise")  # type: ignore[no-untyped-call]
        sizes[name] = round(sum(memoryview(frame).nbytes for frame in frames) / 1024, 1)
    return sizes


def _pixel_store(ctx: Context) -> Path:
    """The convert workload's default-profile store, or (when it did not run, or is large) a few sites converted
    now: only the first site is read, and the open reads a fixed number of objects whatever the store's size."""
    if DEFAULT_PROFILE in ctx.stores and len(ctx.data.site_ids) <= _UPLOAD_SITES:
        return ctx.stores[DEFAULT_PROFILE]
    path = ctx.work / "startup-pixels.zarr"
    log(f"converting {_PIXEL_SITES} sites with profile {DEFAULT_PROFILE!r} for the startup workload")
    convert(str(ctx.src), str(path), ctx.options(DEFAULT_PROFILE, limit=_PIXEL_SITES, workers=ctx.config.max_threads))
    return path


def _pixel_points(ctx: Context, runs: int) -> list[dict[str, Any]]:
    """The pixel store from the local disk and from a bucket of a loopback S3 server."""
    from rxrx2_zarr._dataset import open as open_store
    from tests._services import moto_s3, service_env

    store = _pixel_store(ctx)
    dataset = open_store(str(store))
    treatment = str(dataset.sites["treatment"].value_counts().index[0])
    site_id = dataset.site_ids[0]
    label = f"pixels ({DEFAULT_PROFILE})"
    points = [{"store": label, **_startup_point(str(store), treatment, site_id, runs)}]
    with moto_s3(ctx.work) as s3:
        bucket = s3.create_bucket("startup")
        s3.filesystem().put(str(store), f"{bucket}/store.zarr", recursive=True)
        url = f"s3://{bucket}/store.zarr"
        point = _startup_point(url, treatment, site_id, runs, options=s3.storage_options, env=service_env(), s3=s3)
        points.append({"store": f"{label}, S3 (moto on loopback)", **point})
    return points


def _compile_package() -> None:
    """Write the package's bytecode, as ``pip install`` does: an editable checkout run with
    PYTHONDONTWRITEBYTECODE (set on some machines) would otherwise compile every module in every fresh
    interpreter, about 25 ms that no installed copy pays."""
    import compileall

    import rxrx2_zarr

    compileall.compile_dir(str(Path(rxrx2_zarr.__file__).parent), quiet=1)


def run_startup(ctx: Context) -> dict[str, Any]:
    """Time to a lazy array of every site and to the first pixels, each step in a fresh process."""
    runs = ctx.config.startup_runs
    _compile_package()
    points = []
    other_python = os.environ.get(STARTUP_PYTHON_ENV)
    for n in sorted(ctx.metadata_stores):
        tree, store = ctx.metadata_stores[n]
        metadata = pd.read_csv(tree / "metadata.csv", usecols=["site_id", "treatment"])
        treatment = str(metadata["treatment"].value_counts().index[0])
        site_id = str(metadata["site_id"].iloc[0])
        point = _startup_point(str(store), treatment, site_id, runs)
        points.append({"store": "metadata-only", **point, **_shipped_kb(str(store))})
        if other_python and n == max(ctx.metadata_stores):
            point = _startup_point(str(store), treatment, site_id, runs, python=other_python)
            points.append({"store": f"metadata-only, {other_python}", **point})
    points += _pixel_points(ctx, runs)
    return {
        "points": points,
        "largest": max((p["sites"] for p in points), default=0),
        "notes": (
            f"Each row: medians of {runs} fresh interpreters (`python -c`), each step timed apart: `import rxrx2_zarr`, "
            "`open(store)`, `select(treatment=<most common>)`, `import dask.array` (the reader defers it to the first "
            "lazy array; it also imports the optional modules listed when they are installed), `ds.images` (the graph of "
            "every site, the first in the process), `selection.images`, `ds.site(first)`, `images[0].compute()`; "
            "'to lazy array' is import + open + import dask.array + images, 'to first pixels' import + open + site(); "
            "'open again' is a second open in the same process (the open's own work, no imports); 'pickled' is "
            "`pickle.dumps(ds.images)`, of which 'chunks' is dask's chunks tuple; 'shipped' is what a distributed "
            "client serializes to compute `ds.images` and a scan of every site (`images.sum(axis=(1, 2, 3))`: dask's "
            "reduction materializes its layers per block). The package's "
            "bytecode is compiled first, as pip does at install. Wall time; the CPU-time table "
            "(`time.process_time`) counts every thread of the process, so it can exceed the wall time (numpy's BLAS "
            "threads start at its import), but it moves less than wall time with other jobs on a shared machine. Metadata-only stores (`convert "
            "--no-pixels`) hold no shards, so their site reads return zeros without a request; the pixel rows read "
            "and decode real shards, from the local disk (warm OS page cache) and from a bucket of moto's S3 server "
            "on 127.0.0.1 (the S3 open includes importing s3fs and making its client; requests counted by the "
            "server during one run)."
        ),
    }
