"""Napari screenshots of a plate and of a site of an rxrx2-zarr store.

Usage (under an X server, see run.sh and README.md in this folder)::

    python docs/screenshots/make_screenshots.py STORE OUTDIR

Opens, with napari's ``viewer.open(path, plugin="napari-ome-zarr")``,

1. the first plate group of STORE (``<experiment>/Plate<p>``) and
2. one site image group of that plate (first well, first field),

waits until every layer is loaded and drawn, and saves ``viewer.screenshot(..., canvas_only=True)`` as
``OUTDIR/plate.png`` and ``OUTDIR/site.png``. Channel colours and contrast limits are whatever
napari-ome-zarr takes from the ``omero`` metadata. The plate view is zoomed onto the wells present,
at least ``--well-px`` screen pixels per well (``--fit wells``, the default: the bounding box of the wells,
or the window holding most of them), or shows the whole plate (``--fit all``). Prints the seconds each
``viewer.open`` and each wait took.

Needs napari, a Qt binding and napari-ome-zarr in the environment; none of them is a dependency of
rxrx2-zarr. The store must use a codec that plain zarr-python decodes (e.g. ``--profile zstd``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Images larger than this (bytes) are downscaled with Pillow after the screenshot.
MAX_PNG_BYTES = 500_000


@dataclass(frozen=True)
class Targets:
    """Where the plate and the site to show are, and where the plate's wells lie."""

    plate: Path
    site: Path
    well_cells: list[tuple[int, int]]  # (rowIndex, columnIndex) of every well present
    tile_shape: tuple[int, int]  # (y, x) of one field at full resolution
    coarsest_plate_bytes: int  # bytes of the stitched plate at the first field's coarsest level


def _attrs(group_dir: Path) -> dict[str, Any]:
    """The attributes of a Zarr v3 group, or {} if `group_dir` is not one."""
    meta = group_dir / "zarr.json"
    if not meta.is_file():
        return {}
    doc = json.loads(meta.read_text())
    if doc.get("node_type") != "group":
        return {}
    attributes: dict[str, Any] = doc.get("attributes", {})
    return attributes


def _ome(group_dir: Path) -> dict[str, Any]:
    attrs = _attrs(group_dir)
    ome: dict[str, Any] = attrs.get("ome", attrs)
    return ome


def _plates(store: Path) -> Iterator[Path]:
    """Plate groups of `store`, in sorted order (root/<experiment>/<plate>)."""
    for experiment in sorted(p for p in store.iterdir() if p.is_dir()):
        for plate in sorted(p for p in experiment.iterdir() if p.is_dir()):
            if "plate" in _ome(plate):
                yield plate


def find_targets(store: Path, plate: str | None = None, site: str | None = None) -> Targets:
    """The plate (the first one, or `plate` relative to the store) and a site inside it.

    The site is `site` (relative to the store) or the first field of the first well in sorted
    order, which is the field napari-ome-zarr shows for every well of a plate.
    """
    if plate is not None:
        plate_dir = store / plate
        if "plate" not in _ome(plate_dir):
            raise SystemExit(f"{plate_dir} is not an NGFF plate group")
    else:
        plate_dir = next(_plates(store), None)  # type: ignore[arg-type]
        if plate_dir is None:
            raise SystemExit(f"no NGFF plate group under {store}")
    plate_meta = _ome(plate_dir)["plate"]
    wells = plate_meta["wells"]
    if not wells:
        raise SystemExit(f"{plate_dir} has no wells")
    cells = [(int(w["rowIndex"]), int(w["columnIndex"])) for w in wells]
    first_well = plate_dir / sorted(w["path"] for w in wells)[0]
    first_field = first_well / _ome(first_well)["well"]["images"][0]["path"]
    site_dir = store / site if site is not None else first_field
    if "multiscales" not in _ome(site_dir):
        raise SystemExit(f"{site_dir} is not an NGFF image group")
    datasets = _ome(first_field)["multiscales"][0]["datasets"]
    shape = _array_meta(first_field / datasets[0]["path"])["shape"]
    coarsest = _array_meta(first_field / datasets[-1]["path"])
    n_rows, n_cols = _grid(plate_dir)
    plate_bytes = n_rows * n_cols * np.dtype(coarsest["data_type"]).itemsize * _prod(coarsest["shape"])
    return Targets(plate_dir, site_dir, cells, (int(shape[-2]), int(shape[-1])), plate_bytes)


def _array_meta(array_dir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((array_dir / "zarr.json").read_text())
    return meta


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _wait_loaded(viewer: Any, timeout: float) -> float:
    """Process Qt events until every layer reports loaded (and a few draws more); seconds taken."""
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    settled = 0
    while settled < 10:
        QApplication.processEvents()
        if all(layer.loaded for layer in viewer.layers):
            settled += 1
        else:
            settled = 0
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"layers not loaded after {timeout:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def well_window(
    cells: list[tuple[int, int]], grid: tuple[int, int], max_wells: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(row0, col0, n_rows, n_cols) of the plate region to show.

    The bounding box of the wells present if it spans at most `max_wells` (rows, columns); otherwise the
    `max_wells`-sized window (inside the plate's `grid`) that holds the most wells present.
    """
    rows = [r for r, _ in cells]
    cols = [c for _, c in cells]
    r0, c0 = min(rows), min(cols)
    n_r, n_c = max(rows) - r0 + 1, max(cols) - c0 + 1
    if n_r <= max_wells[0] and n_c <= max_wells[1]:
        return r0, c0, n_r, n_c
    win_r, win_c = min(max_wells[0], grid[0]), min(max_wells[1], grid[1])
    present = set(cells)
    best = (-1, 0, 0)
    for top in range(grid[0] - win_r + 1):
        for left in range(grid[1] - win_c + 1):
            n = sum((r, c) in present for r in range(top, top + win_r) for c in range(left, left + win_c))
            if n > best[0]:
                best = (n, top, left)
    return best[1], best[2], win_r, win_c


def _camera(viewer: Any) -> Any:
    # napari >= 0.9 moved the camera to viewer.scene.camera (viewer.camera is deprecated)
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _fit_to_wells(viewer: Any, targets: Targets, canvas: tuple[int, int], well_px: int) -> str:
    """Zoom onto the wells (see `well_window`) so a well is at least ~`well_px` screen pixels; a summary."""
    extent = viewer.layers[0].extent.world  # the whole stitched plate, in world coordinates
    full_h = float(extent[1][-2] - extent[0][-2])
    full_w = float(extent[1][-1] - extent[0][-1])
    grid = _grid(targets.plate)
    well_h, well_w = full_h / grid[0], full_w / grid[1]
    max_wells = (max(1, canvas[0] // well_px), max(1, canvas[1] // well_px))
    r0, c0, n_r, n_c = well_window(targets.well_cells, grid, max_wells)
    y0, x0 = float(extent[0][-2]) + r0 * well_h, float(extent[0][-1]) + c0 * well_w
    viewer.reset_view()
    camera = _camera(viewer)
    fit_zoom = camera.zoom  # zoom that shows the whole plate (with napari's margin)
    camera.center = (y0 + n_r * well_h / 2, x0 + n_c * well_w / 2)
    camera.zoom = fit_zoom * min(full_h / (n_r * well_h), full_w / (n_c * well_w))
    n_in = sum(r0 <= r < r0 + n_r and c0 <= c < c0 + n_c for r, c in targets.well_cells)
    return f"wells rows {r0}-{r0 + n_r - 1}, columns {c0}-{c0 + n_c - 1} ({n_in} of {len(targets.well_cells)} present)"


def _grid(plate_dir: Path) -> tuple[int, int]:
    meta = _ome(plate_dir)["plate"]
    return len(meta["rows"]), len(meta["columns"])


def _shrink(png: Path, max_bytes: int = MAX_PNG_BYTES) -> None:
    """Downscale `png` by steps of 3/4 until it is at most `max_bytes`."""
    from PIL import Image

    while png.stat().st_size > max_bytes:
        with Image.open(png) as img:
            size = (max(1, img.width * 3 // 4), max(1, img.height * 3 // 4))
            small = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        small.save(png, optimize=True)


def shoot(
    viewer: Any,
    path: Path,
    out: Path,
    timeout: float,
    size: tuple[int, int],
    targets: Targets | None,
    well_px: int = 100,
) -> tuple[float, float]:
    """Open `path` in `viewer`, wait, screenshot to `out`; (open seconds, wait seconds)."""
    viewer.layers.clear()
    start = time.perf_counter()
    viewer.open(str(path), plugin="napari-ome-zarr")
    opened = time.perf_counter() - start
    if not viewer.layers:
        raise SystemExit(f"napari-ome-zarr made no layers for {path}")
    viewer.reset_view()
    if targets is not None:
        print(f"  plate view: {_fit_to_wells(viewer, targets, size, well_px)}", flush=True)
    waited = _wait_loaded(viewer, timeout)
    viewer.screenshot(str(out), size=size, canvas_only=True)
    _shrink(out)
    return opened, waited


def _describe(viewer: Any) -> str:
    lines = []
    for layer in viewer.layers:
        shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
        levels = len(layer.data) if layer.multiscale else 1
        shown = f"level {layer.data_level} shown" if layer.multiscale else "single level"
        lim = [round(float(v)) for v in layer.contrast_limits]
        lines.append(
            f"  {layer.name!r}: shape {tuple(int(s) for s in shape)}, levels {levels} ({shown}), "
            f"colormap {layer.colormap.name}, contrast {lim}, blending {layer.blending}"
        )
    return "\n".join(lines)


def _hw(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.split(","))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="local rxrx2-zarr store (directory)")
    parser.add_argument("outdir", type=Path, help="where plate.png and site.png go")
    parser.add_argument("--plate", help="plate group relative to STORE (default: the first plate)")
    parser.add_argument(
        "--site", help="site image group relative to STORE (default: first field of first well)"
    )
    parser.add_argument(
        "--fit",
        choices=("wells", "all"),
        default="wells",
        help="plate view: zoom onto the wells present (default) or show the whole plate",
    )
    parser.add_argument(
        "--well-px", type=int, default=100, help="with --fit wells: at least this many pixels per well [100]"
    )
    parser.add_argument("--plate-size", default="800,1200", help="plate screenshot H,W in pixels [800,1200]")
    parser.add_argument("--site-size", default="800,800", help="site screenshot H,W in pixels [800,800]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait per view [900]")
    parser.add_argument(
        "--max-plate-gb",
        type=float,
        default=2.0,
        help="refuse plates whose coarsest stitched level is larger than this (napari holds it in memory) [2]",
    )
    parser.add_argument("--only", choices=("plate", "site"), help="make only one of the two screenshots")
    args = parser.parse_args(argv)

    import napari

    sizes = {name: _hw(value) for name, value in (("plate", args.plate_size), ("site", args.site_size))}
    height = max(h for h, _ in sizes.values())
    width = max(w for _, w in sizes.values())
    targets = find_targets(args.store, args.plate, args.site)
    if args.only != "site" and targets.coarsest_plate_bytes > args.max_plate_gb * 1e9:
        raise SystemExit(
            f"{targets.plate}: the coarsest multiscale level stitched over the plate's "
            f"{'x'.join(map(str, _grid(targets.plate)))} wells is {targets.coarsest_plate_bytes / 1e9:.1f} GB, "
            f"which napari computes and holds in memory (sites without a thumbnail level?); "
            f"raise --max-plate-gb to try anyway, or use --only site"
        )
    args.outdir.mkdir(parents=True, exist_ok=True)
    print(f"napari {napari.__version__}; plate {targets.plate}; site {targets.site}", flush=True)

    viewer = napari.Viewer(show=True, title="rxrx2-zarr screenshots")
    viewer.window.resize(width + 400, height + 200)
    try:
        jobs = [
            ("plate", targets.plate, targets if args.fit == "wells" else None),
            ("site", targets.site, None),
        ]
        for name, path, fit in jobs:
            if args.only and args.only != name:
                continue
            out = args.outdir / f"{name}.png"
            opened, waited = shoot(viewer, path, out, args.timeout, sizes[name], fit, args.well_px)
            print(
                f"{name}: viewer.open {opened:.1f} s, loading + drawing {waited:.1f} s, "
                f"total {opened + waited:.1f} s -> {out} ({out.stat().st_size // 1000} KB)",
                flush=True,
            )
            print(_describe(viewer), flush=True)
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
