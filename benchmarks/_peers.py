"""Workload ``peers``: the same plate written and read with ome-zarr-py's HCS writer and reader, and our store read
with plain zarr-python and with the ``zarrs`` Rust codec pipeline, next to this library's reader.

Writes start from the PNG tree on both sides (decode included) with the same number of threads. Reads are one
thread per call on every side: zarr-python and zarrs get ``threading.max_workers = 1`` (zarrs sizes its Rust thread
pool from it), ome-zarr-py's dask arrays are computed with the synchronous scheduler.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rxrx2_zarr._convert import convert
from rxrx2_zarr._layout import DEFAULT_PROFILE, PROFILES, site_paths
from rxrx2_zarr._paths import WellAddress, parse_site_id

from ._access import PngSiteReader, StoreSiteReader, open_store, same
from ._context import Context
from ._data import tree_stats
from ._measure import interleaved_latency, interleaved_runs, median, quiet_warnings, ratio, timing_json, wall

__all__ = ["run"]

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


@contextlib.contextmanager
def _zarr_settings(zarrs: bool) -> Iterator[None]:
    import zarr

    settings: dict[str, Any] = {"threading.max_workers": 1}
    if zarrs:
        settings["codec_pipeline.path"] = ZARRS_PIPELINE
    with zarr.config.set(settings):
        yield


def _write_ome_zarr(ctx: Context, path: Path, site_ids: list[str], threads: int) -> None:
    """The plate with ome-zarr-py's writers: plate and well metadata, then one write_image per field."""
    import dask
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    frame = ctx.data.metadata.set_index("site_id").loc[site_ids]
    wells: dict[WellAddress, list[int]] = {}
    for well, site in zip(frame["well"], frame["site"], strict=True):
        wells.setdefault(WellAddress.parse(str(well)), []).append(int(site))
    ordered = sorted(wells, key=lambda w: (w.row_index, w.column))
    rows = sorted({w.row for w in ordered}, key=lambda r: (len(r), r))
    columns = sorted({w.column_name for w in ordered})
    root = zarr.open_group(str(path), mode="w")
    write_plate_metadata(
        root, rows, columns, [f"{w.row}/{w.column_name}" for w in ordered],
        field_count=max(len(s) for s in wells.values()), name=str(frame["experiment"].iloc[0]) + "_" + str(frame["plate"].iloc[0]),
    )  # fmt: skip
    groups: dict[str, Any] = {}
    for well in ordered:
        group = root.require_group(well.row).require_group(well.column_name)
        write_well_metadata(group, [str(s) for s in sorted(wells[well])])
        for site in wells[well]:
            groups[f"{well}_{site}"] = group.require_group(str(site))
    png = PngSiteReader(str(ctx.src), "imagecodecs")
    size = ctx.config.size
    cy, cx = ctx.inner_chunks
    options = {"chunks": (1, cy, cx), "shards": (6, size, size)}

    def one(site_id: str) -> None:
        key = parse_site_id(site_id)
        write_image(
            png.site(site_id),
            groups[f"{key.well}_{key.site}"],
            scale_factors=[],
            axes="cyx",
            storage_options=options,
        )

    with dask.config.set(scheduler="synchronous"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, site_ids))


def _open_node(path: Path) -> list[Any]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


def _ome_zarr_image_path(root: Path, site_id: str) -> Path:
    key = parse_site_id(site_id)
    return root / key.well.row / key.well.column_name / str(key.site)


def _zarr_side(
    array_path: Callable[[str], str], ids: list[str], zarrs: bool
) -> tuple[dict[str, Any], Callable[[str], Any], list[str]]:
    """Pre-open the arrays (open time measured) and return a reader of a pre-opened array, and any warnings."""
    import zarr

    with quiet_warnings() as messages, _zarr_settings(zarrs):
        opened: dict[str, Any] = {}
        opens = []
        for s in ids:
            seconds, opened[s] = wall(functools.partial(zarr.open_array, array_path(s), mode="r"))
            opens.append(seconds)
        opened[ids[0]][:]  # first read: surfaces a fallback warning or an error
    pipeline = type(opened[ids[0]]._async_array.codec_pipeline).__name__

    def read(s: str) -> Any:
        with _zarr_settings(zarrs):
            return opened[s][:]

    return {"open_ms": round(median(opens) * 1e3, 3), "pipeline": pipeline}, read, messages


def _zarr_reads(
    label: str,
    array_path: Callable[[str], str],
    ids: list[str],
    expect: Callable[[str], Any],
    repeat: int,
    ours: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """zarr-python's own pipeline vs the zarrs pipeline on one store (and this library's one-thread reader of
    the same store, when it is one of ours)."""
    out: dict[str, Any] = {"store": label}
    functions: dict[str, Callable[[str], Any]] = {}
    if ours is not None:
        if not same(ours(ids[0]), expect(ids[0])):
            raise AssertionError(f"{label}: pixels differ")
        out["rxrx2_zarr"] = {"status": "this library's reader, one thread", "pixels_match": True}
        functions["rxrx2_zarr"] = ours
    for name, zarrs in (("zarr_python", False), ("zarrs", True)):
        try:
            info, read, messages = _zarr_side(array_path, ids, zarrs)
            with quiet_warnings() as more:
                ok = same(read(ids[0]), expect(ids[0]))
        except Exception as exc:  # noqa: BLE001 - any failure of a peer library is a result to record
            out[name] = {"status": f"error: {type(exc).__name__}: {exc}"}
            continue
        warnings = sorted(set(messages) | set(more))
        fallback = [w for w in warnings if "unsupported" in w.lower() or "not supported" in w.lower()]
        if zarrs and fallback:
            status = "fell back to zarr-python's codec pipeline"
        elif zarrs:
            status = "zarrs codec pipeline"
        else:
            status = "zarr-python codec pipeline"
        out[name] = {
            "status": status,
            "pixels_match": ok,
            "warnings": [w for w in warnings if "Numcodecs codecs are not in" not in w],
            **info,
        }
        functions[name] = read
    if functions:
        with quiet_warnings():
            timings = interleaved_latency(functions, ids, repeat)
        for name, timing in timings.items():
            out[name]["read"] = timing_json(timing)
        if "zarrs" in timings and "zarr_python" in timings:
            out["zarrs_speedup"] = ratio(timings["zarr_python"].median_ms, timings["zarrs"].median_ms)
        if "rxrx2_zarr" in timings:
            out["rxrx2_zarr_speedup"] = {
                name: ratio(timings[name].median_ms, timings["rxrx2_zarr"].median_ms)
                for name in ("zarr_python", "zarrs")
                if name in timings
            }
    return out


def run(ctx: Context) -> dict[str, Any]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    config = ctx.config
    threads = config.max_threads
    repeat = max(2, config.repeat - 1)  # many readers here: fewer rounds than the store-vs-PNG workloads
    first = ctx.data.metadata.iloc[0]
    experiment, plate = str(first["experiment"]), int(first["plate"])
    frame = ctx.data.metadata
    plate_ids = [
        str(s) for s in frame.loc[(frame["experiment"] == experiment) & (frame["plate"] == plate), "site_id"]
    ]
    ours = ctx.work / "peers-rxrx2.zarr"
    theirs = ctx.work / "peers-ome-zarr-py.zarr"

    def write_ours() -> None:
        convert(
            str(ctx.src),
            str(ours),
            ctx.options(DEFAULT_PROFILE, workers=threads, experiments=(experiment,), plates=(plate,)),
        )

    with quiet_warnings():
        write_seconds = interleaved_runs(
            {
                "rxrx2_zarr": write_ours,
                "ome_zarr_py": lambda: _write_ome_zarr(ctx, theirs, plate_ids, threads),
            },
            1,
        )
    ours_stats, theirs_stats = tree_stats(ours), tree_stats(theirs)

    ids = [s for s in ctx.sample("peers", len(ctx.data.site_ids)) if s in set(plate_ids)][: config.read_sites]
    store = StoreSiteReader(str(ours))
    png = PngSiteReader(str(ctx.src), "imagecodecs")

    # ome-zarr-py's reader: one image node per field (opened beforehand, open time measured apart)
    nodes: dict[str, Any] = {}
    node_opens = []
    with quiet_warnings():
        for s in ids:
            seconds, found = wall(functools.partial(_open_node, _ome_zarr_image_path(theirs, s)))
            nodes[s] = found[0].data[0]
            node_opens.append(seconds)
        if not same(nodes[ids[0]].compute(scheduler="synchronous"), png.site(ids[0])):
            raise AssertionError("ome-zarr-py: pixels differ from the PNGs")
        timings = interleaved_latency(
            {
                "rxrx2_zarr": store.site,
                "rxrx2_zarr_default": store.default_site,
                "ome_zarr_py": lambda s: nodes[s].compute(scheduler="synchronous"),
            },
            ids,
            repeat,
        )
        plate_open = interleaved_runs(
            {
                "rxrx2_zarr": lambda: open_store(str(ours)),
                "ome_zarr_py": lambda: list(Reader(parse_url(str(theirs)))()),
            },
            repeat,
        )

    def our_array(root: Path) -> Callable[[str], str]:
        return lambda s: str(root / site_paths(parse_site_id(s)).array)

    import zarr

    with quiet_warnings():
        attrs: Any = zarr.open_group(str(_ome_zarr_image_path(theirs, ids[0])), mode="r").attrs.asdict()
        level = attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    zarr_reads = []
    for profile in PROFILES:
        if profile == DEFAULT_PROFILE or profile in ctx.stores:
            root = ours if profile == DEFAULT_PROFILE else ctx.stores[profile]
            reader = store if profile == DEFAULT_PROFILE else StoreSiteReader(str(root))
            label = f"rxrx2_zarr, profile {profile}"
            zarr_reads.append(_zarr_reads(label, our_array(root), ids, store.site, repeat, reader.site))
    zarr_reads.append(
        _zarr_reads(
            "ome-zarr-py plate",
            lambda s: str(_ome_zarr_image_path(theirs, s) / str(level)),
            ids,
            store.site,
            repeat,
        )
    )
    ours_ms = timings["rxrx2_zarr"].median_ms
    return {
        "plate": f"{experiment} plate {plate}",
        "sites": len(plate_ids),
        "read_sites": len(ids),
        "repeat": repeat,
        "write": {
            "threads": threads,
            "rxrx2_zarr": {
                "seconds": round(write_seconds["rxrx2_zarr"][0], 3),
                "sites_per_second": round(len(plate_ids) / write_seconds["rxrx2_zarr"][0], 3),
                **ours_stats.to_json(),
                "layout": f"one shard per site, inner chunks {ctx.inner_chunks}, profile {DEFAULT_PROFILE}",
            },
            "ome_zarr_py": {
                "seconds": round(write_seconds["ome_zarr_py"][0], 3),
                "sites_per_second": round(len(plate_ids) / write_seconds["ome_zarr_py"][0], 3),
                **theirs_stats.to_json(),
                "layout": f"write_image(scale_factors=[], chunks (1, {ctx.inner_chunks[0]}, {ctx.inner_chunks[1]}), one shard per site), default compressor",
            },
            "speedup": ratio(write_seconds["ome_zarr_py"][0], write_seconds["rxrx2_zarr"][0]),
            "bytes_ratio_ours_vs_ome_zarr_py": ratio(ours_stats.bytes, theirs_stats.bytes),
        },
        "read_1_thread": {
            **{name: timing_json(t) for name, t in timings.items()},
            "ome_zarr_py_node_open_ms": round(median(node_opens) * 1e3, 3),
            "speedup_vs_ome_zarr_py": ratio(timings["ome_zarr_py"].median_ms, ours_ms),
            "note": "rxrx2_zarr_default is Dataset.site() (its read pool); every other row is one thread",
        },
        "plate_open_ms": {name: round(median(v) * 1e3, 2) for name, v in plate_open.items()},
        "zarr_python_and_zarrs": zarr_reads,
        "notes": (
            "zarr-python and zarrs read pre-opened arrays (open time reported apart) with threading.max_workers=1; "
            "zarrs falls back to zarr-python's pipeline when it lacks a codec (numcodecs.astype/pcodec), which "
            "'status' records. The ome-zarr-py plate uses its default compressor (not ours), so its bytes differ."
        ),
    }
