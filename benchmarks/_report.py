"""Targets, and the three outputs of a run: ``results.json``, ``results.md`` and the ``*.png`` plots.

Every figure is read from the results of the run; a target whose workload did not run (or failed) is reported as
NOT RUN, never guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import FULL_SCALE_SITES, WORKLOADS

__all__ = ["evaluate_targets", "write_json", "write_markdown", "write_plots"]


def get(results: Any, *path: str | int) -> Any:
    """``results[a][b]...`` or None when any step is missing."""
    node: Any = results
    for key in path:
        if isinstance(node, dict):
            if key not in node:
                return None
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    extract: Callable[[dict[str, Any]], tuple[float | None, str]]
    """The measured value (None: not measured) and a description of it."""
    met: Callable[[float], bool]


def _speedup(
    workload: str, block: str, baseline: str, label: str
) -> Callable[[dict[str, Any]], tuple[float | None, str]]:
    def extract(results: dict[str, Any]) -> tuple[float | None, str]:
        value = get(results, workload, block, "speedup_p50", f"vs_{baseline}")
        store = get(results, workload, block, "store", "p50_ms")
        base = get(results, workload, block, baseline, "p50_ms")
        return value, f"{_num(value)}x (store {_num(store)} ms vs {label} {_num(base)} ms, p50)"

    return extract


def _storage(results: dict[str, Any]) -> tuple[float | None, str]:
    profile = get(results, "storage", "default_profile")
    value = get(results, "storage", "profiles", profile, "bytes_vs_png_tree") if profile else None
    shards = get(results, "storage", "profiles", profile, "shard_bytes_vs_png_images") if profile else None
    return value, f"{_num(value, 3)}x (profile {profile}; shards alone {_num(shards, 3)}x the PNG files)"


def _convert(results: dict[str, Any]) -> tuple[float | None, str]:
    value = get(results, "convert", "efficiency")
    ours = get(results, "convert", "sites_per_second")
    bound = get(results, "convert", "decode_only_sites_per_second")
    workers = get(results, "convert", "workers")
    return (
        value,
        f"{_num(None if value is None else 100 * value, 0)}% ({_num(ours)} vs {_num(bound)} sites/s, {workers} workers)",
    )


def _full_scale_startup(results: dict[str, Any], step: str) -> tuple[dict[str, Any] | None, str]:
    """Startup's metadata-only row of the full-scale store (this interpreter's), or None and why not."""
    points = [p for p in get(results, "startup", "points") or [] if p.get("store") == "metadata-only"]
    full = [p for p in points if p.get("sites") == FULL_SCALE_SITES]
    if full:
        return full[0], ""
    largest = max(points, key=lambda p: p.get("sites", 0), default=None)
    seen = f"; at the largest store run ({largest['sites']:,} sites): {_num(largest.get(step))} ms" if largest else ""
    return None, f"not measured in this mode (full mode only){seen}"


def _startup_step(step: str, what: str) -> Callable[[dict[str, Any]], tuple[float | None, str]]:
    """One startup step at full scale, in seconds."""

    def extract(results: dict[str, Any]) -> tuple[float | None, str]:
        p, why = _full_scale_startup(results, f"{step}_ms")
        if p is None:
            return None, why
        value = p.get(f"{step}_ms")
        detail = f"{_num(value)} ms {what} in a fresh process (median of {p.get('runs')}, max {_num(p.get(f'{step}_ms_max'))})"
        if step == "images":
            optional = ", ".join(p.get("optional_imported", [])) or "nothing optional"
            detail += f", after `import dask.array` ({_num(p.get('import_dask_ms'))} ms, which imports {optional})"
        return None if value is None else value / 1e3, detail

    return extract


def _graph_flat(results: dict[str, Any]) -> tuple[float | None, str]:
    """The slowest ``ds.images`` (every site, dask imported) over the metadata-only stores, in seconds, with how it
    grows: no task exists until the graph runs, but dask's chunks are a tuple with one entry per site, which its
    ``Array`` sums to find the shape."""
    points = sorted(
        (p for p in get(results, "startup", "points") or [] if p.get("store") == "metadata-only"), key=lambda p: p["sites"]
    )
    values = [p.get("images_ms") for p in points]
    if not points or any(v is None for v in values):
        return None, "no metadata-only store measured"
    sizes = ", ".join(f"{_num(v)} ms at {p['sites']:,}" for p, v in zip(points, values, strict=True))
    layers = max(p.get("materialized_layers", 0) for p in points)
    return max(values) / 1e3, f"{sizes} sites; materialized layers {layers}"


def _startup_target(results: dict[str, Any]) -> tuple[float | None, str]:
    """A fresh interpreter's import + open + ``images`` of the full-scale store (startup's metadata-only row)."""
    p, why = _full_scale_startup(results, "to_lazy_array_ms")
    if p is None:
        return None, why
    total = p.get("to_lazy_array_ms")
    return (
        None if total is None else total / 1e3,
        f"{_num(total)} ms from import to a lazy array in a fresh process (import {_num(p.get('import_ms'))} + open "
        f"{_num(p.get('open_ms'))} + import dask.array {_num(p.get('import_dask_ms'))} + images "
        f"{_num(p.get('images_ms'))} ms, median of {p.get('runs')}), "
        f"{FULL_SCALE_SITES:,} sites",
    )


def _loader_crops(mode: str) -> Callable[[dict[str, Any]], tuple[float | None, str]]:
    def extract(results: dict[str, Any]) -> tuple[float | None, str]:
        row = get(results, "loader", "modes", mode, "workers", "2")
        value = get(row, "speedup", "vs_pillow")
        crop = get(results, "loader", "crop")
        store, png = get(row, "store", "samples_per_second"), get(row, "pillow", "samples_per_second")
        return value, f"{_num(value)}x ({crop}x{crop}: store {_num(store)} vs Pillow {_num(png)} samples/s, 2 workers)"

    return extract


def _loader_full(results: dict[str, Any]) -> tuple[float | None, str]:
    """The loader's full-site ratio over the same store's direct-read ratio (one thread both): >= 1 loses nothing."""
    loaded = get(results, "loader", "modes", "full", "workers", "0", "speedup", "vs_pillow")
    direct = get(results, "loader", "modes", "full", "direct_1_thread", "speedup", "vs_pillow")
    full = get(results, "read_full", "latency_1_thread", "speedup_p50", "vs_pillow")
    value = None if loaded is None or not direct else loaded / direct
    seen = f"; read_full on the default store: {_num(full)}x" if full is not None else ""
    return value, f"{_num(value, 3)} (loader {_num(loaded)}x vs direct reads {_num(direct)}x the Pillow side, 0 workers / 1 thread{seen})"


TARGETS: tuple[Target, ...] = (
    Target("Random full-site reads vs Pillow PNG (1 thread)", ">= 10x", _speedup("read_full", "latency_1_thread", "pillow", "Pillow"), lambda v: v >= 10),
    Target("Random full-site reads vs imagecodecs PNG (1 thread)", ">= 8x", _speedup("read_full", "latency_1_thread", "imagecodecs", "imagecodecs"), lambda v: v >= 8),
    Target("Random 256x256 crops vs decoding the PNGs (imagecodecs, 1 thread)", ">= 50x", _speedup("read_crop", "crop_all_channels_1_thread", "imagecodecs", "imagecodecs"), lambda v: v >= 50),
    Target("Store bytes vs PNG bytes, default profile", "<= 1.0x", _storage, lambda v: v <= 1.0),
    Target("Conversion vs the decode-only bound", ">= 80%", _convert, lambda v: v >= 0.8),
    Target("Loader: random crops vs the Pillow PNG loader", ">= 50x", _loader_crops("random"), lambda v: v >= 50),
    Target("Loader: crops aligned to the inner chunks vs the Pillow PNG loader", ">= 50x", _loader_crops("aligned"), lambda v: v >= 50),
    Target("Loader: full sites vs Pillow, over the direct-read ratio", ">= 1.0", _loader_full, lambda v: v >= 1.0),
    Target("Open at full scale (131,953 sites): import to a lazy array", "< 1 s", _startup_target, lambda v: v < 1.0),
    Target("Startup at full scale: import rxrx2_zarr", "< 300 ms", _startup_step("import", "to import"), lambda v: v < 0.3),
    Target("Startup at full scale: open()", "< 150 ms", _startup_step("open", "to open"), lambda v: v < 0.15),
    Target("Startup at full scale: ds.images", "< 100 ms", _startup_step("images", "to build images"), lambda v: v < 0.1),
    Target("Startup: ds.images at every size (1e3 to 131,953 sites)", "< 100 ms", _graph_flat, lambda v: v < 0.1),
)  # fmt: skip


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for target in TARGETS:
        value, text = target.extract(results)
        if value is None and not text.startswith("not measured"):
            text = "not measured (the workload did not run or failed)"
        status = "NOT RUN" if value is None else ("MET" if target.met(value) else "MISSED")
        rows.append(
            {"target": target.name, "goal": target.goal, "value": value, "measured": text, "status": status}
        )
    return rows


def _finite(value: Any) -> Any:
    """NaN and infinities (not valid JSON) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(_finite(results), indent=1, default=str, allow_nan=False) + "\n")


# --- Markdown ------------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_num(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return [*lines, ""]


def _latency_rows(block: dict[str, Any] | None, sides: Sequence[str]) -> list[list[Any]]:
    if not block:
        return []
    rows = []
    for side in sides:
        if side in block:
            speed = "1.00x" if side == "store" else f"{_num(get(block, 'speedup_p50', f'vs_{side}'))}x"
            rows.append([side, block[side]["p50_ms"], block[side]["p95_ms"], speed])
    return rows


def _section_convert(r: dict[str, Any]) -> list[str]:
    c = r["convert"]
    return [
        f"{c['sites']} sites, profile `{c['profile']}`, inner chunks {c['inner_chunks']}, {c['execution']}.",
        "",
        *_table(
            ["", "sites/s", "PNG MB/s"],
            [["convert()", c["sites_per_second"], c["png_mb_per_second"]],
             ["decode-only bound (same PNGs, same workers)", c["decode_only_sites_per_second"], c["decode_only_png_mb_per_second"]]],
        ),
        f"Efficiency {_num(c['efficiency'], 3)} ({_num(c.get('efficiency_excluding_fixed'), 3)} without the ~{_num(c.get('fixed_seconds_estimate'))} s "
        f"of fixed costs); peak RSS {_num(c['peak_rss_mb'], 0)} MB ({_num(c['peak_delta_mb'], 0)} MB above the "
        f"process before conversion); stored {_num(c['stored_vs_png'], 3)}x the PNG bytes. {c['notes']}",
        "",
        *_section_sources(c.get("sources")),
    ]  # fmt: skip


def _section_sources(s: dict[str, Any] | None) -> list[str]:
    if not s:
        return []
    rows = [[kind, row["src"], row["sites_per_second"], row.get("png_mb_per_second"), _num(row["vs_directory"], 3)]
            for kind, row in s["rows"].items()]
    return [
        f"By source kind ({s['workers']} worker(s); the zip is {_num(s['archive_bytes'] / 1e6)} MB):",
        "",
        *_table(["source", "SRC", "sites/s", "PNG MB/s", "vs directory"], rows),
        s["notes"],
        "",
    ]  # fmt: skip


def _section_read_full(r: dict[str, Any]) -> list[str]:
    f = r["read_full"]
    lines = [
        f"{f['sites']} random sites, 6 x {f['site_shape'][1]} x {f['site_shape'][2]}; store path: {f['store_read_path']}.",
        "",
    ]
    lines += ["Latency, one thread (ms):", ""]
    lines += _table(
        ["side", "p50", "p95", "store speed-up (p50)"],
        _latency_rows(f["latency_1_thread"], ("store", "pillow", "imagecodecs")),
    )
    rows = [
        [f"{t} thread(s)", v["store_sites_per_second"], v["pillow_sites_per_second"], v["imagecodecs_sites_per_second"],
         f"{_num(v['speedup']['vs_pillow'])}x / {_num(v['speedup']['vs_imagecodecs'])}x"]
        for t, v in f["throughput"].items()
    ]  # fmt: skip
    lines += ["Throughput (sites/s):", ""]
    lines += _table(["threads", "store", "Pillow", "imagecodecs", "store vs Pillow / imagecodecs"], rows)
    d = f["store_library_default"]
    lines += [
        f"Library default `Dataset.site()` (read pool): p50 {_num(d['p50_ms'])} ms, p95 {_num(d['p95_ms'])} ms.",
        "",
    ]
    return lines + _profile_table("Other codec profiles, one thread (ms)", f.get("profiles_1_thread"))


def _profile_table(title: str, profiles: dict[str, Any] | None) -> list[str]:
    """One row per codec profile's store: p50, p95 and the speed-ups against the PNG sides."""
    if not profiles:
        return []
    rows = [
        [p, v["p50_ms"], v["p95_ms"], f"{_num(v['speedup_vs_pillow'])}x", f"{_num(v['speedup_vs_imagecodecs'])}x"]
        for p, v in profiles.items()
    ]
    return [f"{title}:", "", *_table(["profile", "p50", "p95", "vs Pillow", "vs imagecodecs"], rows)]


def _section_read_crop(r: dict[str, Any]) -> list[str]:
    c = r["read_crop"]
    lines = [
        f"{c['sites']} random sites; crop {c['crop']} at random positions; inner chunks {c['inner_chunks']}.",
        "",
    ]
    for title, key, sides in (
        (
            "Crop, all channels, one thread (ms)",
            "crop_all_channels_1_thread",
            ("store", "pillow", "imagecodecs"),
        ),
        ("One full channel, one thread (ms)", "single_channel_1_thread", ("store", "pillow", "imagecodecs")),
        ("Crop of one channel, one thread (ms)", "single_channel_crop_1_thread", ("store", "imagecodecs")),
    ):
        lines += [
            f"{title}:",
            "",
            *_table(["side", "p50", "p95", "store speed-up (p50)"], _latency_rows(c[key], sides)),
        ]
    lines += _profile_table("Crop, all channels, every codec profile, one thread (ms)", c.get("crop_profiles_1_thread"))
    return [*lines, c["notes"], ""]


def _section_scan(r: dict[str, Any]) -> list[str]:
    s = r["scan"]
    rows = [[side, _num(s[side]["seconds_median"], 3), s[side]["sites_per_second"], s[side]["raw_mb_per_second"],
             "1.00x" if side == "store" else f"{_num(s['speedup'][f'vs_{side}'])}x"] for side in ("store", "pillow", "imagecodecs")]  # fmt: skip
    return [
        f"Per-channel mean over {s['sites']} sites, {s['threads']} threads ({s['scheduler']}).",
        "",
        *_table(["side", "seconds", "sites/s", "raw MB/s", "store speed-up"], rows),
        s["notes"],
        "",
    ]


def _section_query(r: dict[str, Any]) -> list[str]:
    q = r["query"]
    rows = [
        [
            side,
            _num(q[side]["seconds_median"], 3),
            "1.00x" if side == "store" else f"{_num(q['speedup'][f'vs_{side}'])}x",
        ]
        for side in ("store", "pillow", "imagecodecs")
    ]
    lines = [
        f"Treatment `{q['treatment']}`: {q['sites']} sites, {q['threads']} threads.",
        "",
        *_table(["side", "seconds", "store speed-up"], rows),
    ]
    m = q.get("metadata_at_scale")
    if m:
        lines += [
            f"Metadata half at scale ({m['sites_in_store']:,} sites, treatment `{m['treatment']}`, {m['selected']} selected): "
            f"store open + select {_num(m['store_open_select_ms'])} ms vs pandas read_csv + filter {_num(m['pandas_read_csv_filter_ms'])} ms "
            f"({_num(m['speedup'])}x).",
            "",
        ]
    return [*lines, q["notes"], ""]


def _section_storage(r: dict[str, Any]) -> list[str]:
    s = r["storage"]
    png = s["png_tree"]
    rows = [
        ["PNG tree", png["bytes"] / 1e6, png["objects"], s["png_objects_per_site"], "1.000", "1.000", "-"]
    ]
    for name, p in s["profiles"].items():
        label = f"{name} (default)" if name == s["default_profile"] else name
        rows.append([label, p["store"]["bytes"] / 1e6, p["store"]["objects"], p["objects_per_site"], _num(p["bytes_vs_png_tree"], 3),
                     _num(p["shard_bytes_vs_png_images"], 3), p["convert_sites_per_second"]])  # fmt: skip
    return [
        f"{s['sites']} sites, inner chunks {s['inner_chunks']}.",
        "",
        *_table(
            [
                "",
                "MB",
                "objects",
                "objects/site",
                "bytes vs PNG tree",
                "shards vs PNG files",
                "convert sites/s",
            ],
            rows,
        ),
        s["notes"],
        "",
    ]


def _section_codecs(r: dict[str, Any]) -> list[str]:
    c = r["codecs"]
    b = c["baselines"]
    rows = [
        [
            "PNG (Pillow)",
            "-",
            "1.000",
            b["png_pillow"]["decode"]["p50_ms"],
            b["png_pillow"]["encode"]["p50_ms"],
            "-",
        ],
        ["PNG (imagecodecs)", "-", "1.000", b["png_imagecodecs"]["decode"]["p50_ms"], "-", "-"],
    ]
    rows += [[m["profile"], str(m["inner"]), _num(m["bytes_vs_png"], 3), m["decode"]["p50_ms"], m["encode"]["p50_ms"],
              f"{_num(m['decode_speedup_vs_pillow'])}x / {_num(m['decode_speedup_vs_imagecodecs'])}x"] for m in c["matrix"]]  # fmt: skip
    return [
        f"{c['sites']} sites of shape {c['site_shape']} ({_num(c['png_bytes_per_site'] / 1000.0, 0)} KB of PNG per site), one thread.",
        "",
        *_table(
            [
                "codec",
                "inner",
                "bytes vs PNG",
                "decode ms/site",
                "encode ms/site",
                "decode vs Pillow / imagecodecs",
            ],
            rows,
        ),
        c["notes"],
        "",
    ]


def _section_workers(r: dict[str, Any]) -> list[str]:
    w = r["worker_scaling"]
    rows = []
    for row in w["rows"]:
        t, d = row["threads"], row["distributed"]
        rows.append([row["workers"], t["convert_sites_per_second"], t["read_sites_per_second"], d["convert_sites_per_second"],
                     d["read_sites_per_second"], d["cluster_startup_s"]])  # fmt: skip
    return [
        f"{w['sites']} sites, profile `{w['profile']}`, {w['cores']} cores, median of {w['repeat']}.",
        "",
        *_table(
            [
                "workers",
                "convert sites/s (threads)",
                "read sites/s (threads)",
                "convert sites/s (distributed)",
                "read sites/s (distributed)",
                "cluster startup s",
            ],
            rows,
        ),
        w["notes"],
        "",
    ]


def _section_peers(r: dict[str, Any]) -> list[str]:
    p = r["peers"]
    w = p["write"]
    lines = [f"{p['plate']}: {p['sites']} sites written, {p['read_sites']} read.", ""]
    lines += _table(
        ["writer", "seconds", "sites/s", "MB", "objects", "layout"],
        [
            [
                name,
                w[name]["seconds"],
                w[name]["sites_per_second"],
                w[name]["bytes"] / 1e6,
                w[name]["objects"],
                w[name]["layout"],
            ]
            for name in ("rxrx2_zarr", "ome_zarr_py")
        ],
    )
    rd = p["read_1_thread"]
    lines += ["Full-site reads of the same sites (ms):", ""]
    lines += _table(
        ["reader", "p50", "p95"],
        [
            [n, rd[n]["p50_ms"], rd[n]["p95_ms"]]
            for n in ("rxrx2_zarr", "rxrx2_zarr_default", "ome_zarr_py")
            if n in rd
        ],
    )
    lines += [f"ome-zarr-py image node open: {_num(rd['ome_zarr_py_node_open_ms'])} ms per field; plate open: "
              + ", ".join(f"{k} {_num(v)} ms" for k, v in p["plate_open_ms"].items()) + ".", ""]  # fmt: skip
    rows = []
    for entry in p["zarr_python_and_zarrs"]:
        for name in ("rxrx2_zarr", "zarr_python", "zarrs"):
            if name not in entry:
                continue
            e = entry[name]
            ours = get(entry, "rxrx2_zarr_speedup", name)
            rows.append([entry["store"], name, e.get("status", "n/a"), get(e, "read", "p50_ms"), e.get("open_ms", "-"),
                         f"{_num(entry['zarrs_speedup'])}x" if name == "zarrs" and entry.get("zarrs_speedup") else "",
                         f"{_num(ours)}x" if ours else ""])  # fmt: skip
    lines += ["zarr-python vs zarrs vs this library's reader (pre-opened arrays, `arr[:]`, one thread):", ""]
    lines += _table(
        ["store", "reader", "status", "read p50 ms", "open ms", "zarrs vs zarr-python", "rxrx2_zarr vs this"],
        rows,
    )
    return [*lines, p["notes"], ""]


def _section_startup(r: dict[str, Any]) -> list[str]:
    s = r["startup"]
    steps = ("import", "open", "select", "import_dask", "images", "selection_images", "first_site", "first_block",
             "to_lazy_array", "to_first_pixels", "open_again")  # fmt: skip
    rows = [[p["sites"], p["store"], *(p[f"{step}_ms"] for step in steps), p["materialized_layers"],
             f"{_num(p.get('pickled_kb'))} ({_num(p.get('pickled_chunks_kb'))})"] for p in s["points"]]  # fmt: skip
    for row, p in zip(rows, s["points"], strict=True):
        row.append(", ".join(p.get("optional_imported", [])) or "none")
    lines = _table(
        ["sites", "store", "import ms", "open ms", "select ms", "import dask.array ms", "images ms",
         "selection.images ms", "site() ms",
         "images[0] ms", "to lazy array ms", "to first pixels ms", "open again ms", "materialized layers",
         "pickled KB (chunks)",
         "imported by dask.array"],
        rows,
    )  # fmt: skip
    cpu_steps = ("import", "open", "import_dask", "images", "first_site", "to_lazy_array", "to_first_pixels", "open_again")
    lines += ["CPU time of the same steps (ms, medians):", ""]
    lines += _table(
        ["sites", "store", *(f"{step.replace('_', ' ')}" for step in cpu_steps)],
        [[p["sites"], p["store"], *(p.get(f"{step}_cpu_ms") for step in cpu_steps)] for p in s["points"]],
    )
    shipped = [p for p in s["points"] if "shipped_images_kb" in p]
    if shipped:
        lines += ["What a distributed client serializes to compute (KB): `ds.images` / a scan of every site: "
                  + ", ".join(f"{_num(p['shipped_images_kb'])} / {_num(p['shipped_scan_kb'])} at {p['sites']:,} sites"
                              for p in shipped) + ".", ""]  # fmt: skip
    for p in s["points"]:
        if "requests_per_run" in p:
            counts = ", ".join(f"{n} {method}" for method, n in sorted(p["requests_per_run"].items()))
            lines += [f"Requests to S3 in one run ({p['store']}): {counts}, {p['objects_read']} distinct objects.", ""]
    loads = [p["load_average"] for p in s["points"] if p.get("load_average")]
    if loads:
        lines += [f"Load average (1 min) before/after each row: {', '.join(f'{a[0]}/{b[0]}' for a, b in loads if a and b)}.", ""]
    return [*lines, s["notes"], ""]


def _section_loader(r: dict[str, Any]) -> list[str]:
    lo = r["loader"]
    tv = lo["torchvision"]
    first = lo["modes"]["full"]["workers"]["0"]
    png = [s for s in ("pillow", "torchvision") if s in first]
    stores = ["store", *(s for s in lo.get("other_stores", {}) if s in first)]
    sides = [*stores, *png]
    ratios = [(f"{store} vs {s}", "speedup" if store == "store" else f"{store}_speedup", s) for store in stores for s in png]
    rows = []
    for mode, m in lo["modes"].items():
        blocks = [*m["workers"].items(), *([("direct", m["direct_1_thread"])] if "direct_1_thread" in m else [])]
        for workers, row in blocks:
            rss = " / ".join(",".join(_num(v, 0) for v in row[s].get("peak_rss_mb_per_worker", [])) or "-" for s in sides if s in row)
            rows.append([mode, workers, *(row[s]["samples_per_second"] if s in row else "-" for s in sides),
                         *(f"{_num(row.get(key, {}).get(f'vs_{s}'))}x" if key in row else "-" for _, key, s in ratios), rss])  # fmt: skip
    header = ["crop", "workers", *(f"{s} samples/s" for s in sides), *(label for label, _, _ in ratios)]
    header.append(f"peak RSS MB per worker ({' / '.join(sides)})")
    return [
        f"{lo['samples_per_pass']} samples per pass in batches of {lo['batch_size']}, {lo['sites']} sites; store: profile "
        f"`{lo['profile']}`, inner chunks {lo['inner_chunks']}"
        + "".join(f"; {k}: profile `{v['profile']}`, inner chunks {v['inner_chunks']}" for k, v in lo.get("other_stores", {}).items())
        + f"; crops {lo['crop']} x {lo['crop']}; workers start by "
        f"{lo['start_method']}; torch {lo['torch']}; torchvision.io.decode_png: "
        + ("measured." if tv["available"] else f"unavailable ({tv['reason']})."),
        "",
        *_table(header, rows),
        lo["notes"],
        "",
    ]


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "convert": ("1. Conversion", _section_convert),
    "read_full": ("2. Random full-site reads", _section_read_full),
    "read_crop": ("3. Random crops and single channels", _section_read_crop),
    "scan": ("4. Full scan with Dask", _section_scan),
    "query": ("5. Query then read", _section_query),
    "storage": ("6. Storage", _section_storage),
    "codecs": ("7. Codec matrix", _section_codecs),
    "startup": ("8. Startup and scaling with data: from import to a lazy array and the first pixels", _section_startup),
    "worker_scaling": ("9. Scaling with workers", _section_workers),
    "peers": ("10. Peers on the same data", _section_peers),
    "loader": ("11. Training loader: torch DataLoader over the store vs over the PNGs", _section_loader),
}


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        "# rxrx2-zarr benchmarks",
        "",
        f"- date: {machine['date']}; mode: **{meta['mode']}**; total {_num(meta.get('seconds'), 0)} s",
        f"- command: `{meta['command']}`",
        f"- machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores ({machine['usable_cores']} usable), "
        f"{machine['ram_gib']} GiB RAM, {machine['os']}, Python {machine['python']}",
        f"- load average at start / end: {machine['load_average_at_start']} / {meta.get('load_average_at_end')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- data: {meta['data']['sites']} generated RxRx2-shaped sites of 6 x {meta['config']['size']} x {meta['config']['size']} "
        f"({meta['data']['png_mb']:.1f} MB of PNG); every comparison runs both sides in this run, on the same sites, with the "
        "same threads; figures are medians of repeated runs; reads hit a warm OS page cache on both sides.",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "goal", "measured", "status"],
        [[t["target"], t["goal"], t["measured"], f"**{t['status']}**"] for t in results["targets"]],
    )
    errors = {
        k: results[k]["error"]
        for k in WORKLOADS
        if isinstance(results.get(k), dict) and "error" in results[k]
    }
    for key in WORKLOADS:
        title, section = SECTIONS[key]
        lines += [f"## {title}", ""]
        if isinstance(results.get(key), dict) and "skipped" in results[key]:
            lines += [f"Skipped ({results[key]['skipped']}).", ""]
            continue
        if key in errors:
            lines += [
                "Failed: `" + errors[key].strip().splitlines()[-1] + "` (traceback in results.json)",
                "",
            ]
            continue
        try:
            lines += section(results)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            lines += [f"(section could not be rendered: {type(exc).__name__}: {exc})", ""]
        lines += [
            f"_workload time: {_num(get(results, key, 'workload_seconds'), 1)} s, load average after: {get(results, key, 'load_average_after')}_",
            "",
        ]
    if meta.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in meta["plots"]] + [""]
    path.write_text("\n".join(lines))


# --- plots ---------------------------------------------------------------------------------------------------------


def _plot_codecs(results: dict[str, Any], plt: Any, out: Path) -> Path | None:
    c = results.get("codecs")
    if not isinstance(c, dict) or "matrix" not in c:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    palette = ("tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:red", "tab:brown")
    profiles = list(dict.fromkeys(m["profile"] for m in c["matrix"]))
    inners = sorted({m["inner"] for m in c["matrix"]})
    colors = {p: palette[k % len(palette)] for k, p in enumerate(profiles)}
    markers = {v: "os^Dv<>"[k % 7] for k, v in enumerate(inners)}
    for ax, kind in zip(axes, ("decode", "encode"), strict=True):
        for m in c["matrix"]:
            ax.scatter(
                m[kind]["p50_ms"],
                m["bytes_vs_png"],
                color=colors[m["profile"]],
                marker=markers[m["inner"]],
                s=60,
                label=f"{m['profile']}, inner {m['inner']}",
            )
        for k, (name, base) in enumerate(c["baselines"].items()):
            if kind in base:
                ax.scatter(base[kind]["p50_ms"], 1.0, color="black", marker="X", s=80)
                ax.annotate(
                    name.replace("_", " "),
                    (base[kind]["p50_ms"], 1.0),
                    fontsize=8,
                    xytext=(-30, 8 if k % 2 else -14),
                    textcoords="offset points",
                )
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel(f"{kind} ms per site (one thread, log scale)")
        ax.set_ylabel("bytes vs PNG")
        ax.set_title(
            f"bytes vs {kind} time, {c['sites']} site(s) 6x{c['site_shape'][1]}x{c['site_shape'][2]}"
        )
    axes[1].legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle("Codec matrix: colour = profile, marker = inner chunk edge; PNG baselines as black X")
    fig.tight_layout()
    path = out / "codecs.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_reads(results: dict[str, Any], plt: Any, out: Path) -> Path | None:
    groups = [
        ("full site", get(results, "read_full", "latency_1_thread")),
        ("crop", get(results, "read_crop", "crop_all_channels_1_thread")),
        ("one channel", get(results, "read_crop", "single_channel_1_thread")),
    ]
    groups = [(n, g) for n, g in groups if isinstance(g, dict)]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sides = ("store", "imagecodecs", "pillow")
    width = 0.27
    for k, side in enumerate(sides):
        values = [get(g, side, "p50_ms") or 0 for _, g in groups]
        bars = ax.bar([i + (k - 1) * width for i in range(len(groups))], values, width, label=side)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), [n for n, _ in groups])
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency, ms (one thread, log scale)")
    ax.set_title("Reads: store vs PNG (same sites, one thread)")
    ax.legend()
    fig.tight_layout()
    path = out / "reads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_startup(results: dict[str, Any], plt: Any, out: Path) -> Path | None:
    points = [p for p in get(results, "startup", "points") or [] if p.get("store") == "metadata-only"]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["sites"] for p in points]
    for label, step in (
        ("import to a lazy array", "to_lazy_array"),
        ("open (fresh process)", "open"),
        ("open again (same process)", "open_again"),
        ("import dask.array", "import_dask"),
        ("ds.images (graph)", "images"),
        ("selection.images", "selection_images"),
        ("select(treatment)", "select"),
        ("import rxrx2_zarr", "import"),
    ):
        ax.plot(x, [max(p[f"{step}_ms"], 0.01) for p in points], marker="o", label=label)
    ax.axhline(1000, color="red", ls="--", lw=0.8, label="1 s target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sites in store (metadata-only)")
    ax.set_ylabel("ms (median of fresh interpreters)")
    ax.set_title("Startup vs number of sites")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "startup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_workers(results: dict[str, Any], plt: Any, out: Path) -> Path | None:
    rows = get(results, "worker_scaling", "rows")
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in zip(
        axes,
        ("convert_sites_per_second", "read_sites_per_second"),
        ("conversion", "reads (images.mean)"),
        strict=True,
    ):
        workers = [r["workers"] for r in rows]
        for k, kind in enumerate(("threads", "distributed")):
            bars = ax.bar(
                [i + (k - 0.5) * 0.35 for i in range(len(workers))],
                [r[kind][metric] for r in rows],
                0.35,
                label=kind,
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(workers)), [str(w) for w in workers])
        ax.set_xlabel("workers")
        ax.set_ylabel("sites/s")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "worker_scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_storage(results: dict[str, Any], plt: Any, out: Path) -> Path | None:
    profiles = get(results, "storage", "profiles")
    if not profiles:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(profiles)
    bars = ax.bar(names, [profiles[n]["bytes_vs_png_tree"] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(1.0, color="black", ls="--", lw=0.8, label="PNG tree")
    ax.set_ylabel("store bytes / PNG tree bytes")
    ax.set_title("Storage per codec profile")
    ax.legend()
    fig.tight_layout()
    path = out / "storage.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> tuple[list[str], list[str]]:
    """Write every plot whose workload ran; returns (file names, errors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, errors = [], []
    for plot in (_plot_codecs, _plot_reads, _plot_storage, _plot_startup, _plot_workers):
        try:
            path = plot(results, plt, out)
        except Exception as exc:  # noqa: BLE001 - one broken plot must not lose the others or the tables
            errors.append(f"{plot.__name__}: {type(exc).__name__}: {exc}")
            plt.close("all")
            continue
        if path is not None:
            names.append(path.name)
    return names, errors
