"""``rxrx2-zarr demo``: generate a small RxRx2-shaped dataset, convert, verify, compare read speed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from .._convert import ConvertOptions, convert
from .._verify import verify
from ._synth import synth
from ._timing import PngSiteReader, time_calls

__all__ = ["demo"]


def demo(
    workdir: str | None,
    *,
    size: int = 1024,
    wells: int = 4,
    workers: int = 2,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> None:
    """Run the whole pipeline on a small generated dataset in ``workdir`` (a new temporary directory if None),
    telling ``echo`` what it does and measures; ``progress`` draws the bars of generating, converting, verifying."""
    root = workdir or tempfile.mkdtemp(prefix="rxrx2-zarr-demo-")
    os.makedirs(root, exist_ok=True)
    src, dst = os.path.join(root, "rxrx2"), os.path.join(root, "rxrx2.zarr")
    echo(f"[1/4] generating an RxRx2-shaped dataset in {src} (1 experiment x 2 plates x {wells} wells x 4 sites, {size}x{size})")
    generated = synth(src, experiments=1, plates=2, wells=wells, sites=4, size=size, seed=0, workers=workers, progress=progress)
    echo(generated.summary())
    echo(f"[2/4] converting to {dst}")
    report = convert(src, dst, ConvertOptions(workers=workers, overwrite=True, progress=progress))
    echo(report.summary())
    echo("[3/4] verifying every pixel, checksum, NGFF document, the index and the embeddings")
    checked = verify(src, dst, workers=workers, progress=progress)
    echo(checked.summary())
    if not checked.ok:
        raise SystemExit(1)
    echo("[4/4] reading sites: store vs PNG (same sites, one thread, median of 3 rounds)")
    from .._dataset import open as open_store

    dataset = open_store(dst)
    site_ids = list(dataset.sites.index[: min(12, len(dataset))])
    png = {name: PngSiteReader(src, name) for name in ("pillow", "imagecodecs")}
    crop = (0, min(256, size), 0, min(256, size))
    rows = [
        ("full site, Pillow PNG (6 files)", time_calls(png["pillow"].site, site_ids, 3)),
        ("full site, imagecodecs PNG (6 files)", time_calls(png["imagecodecs"].site, site_ids, 3)),
        ("full site, Zarr store", time_calls(lambda s: dataset.site(s, threads=1), site_ids, 3)),
        (f"{crop[1]}x{crop[3]} crop, imagecodecs PNG", time_calls(lambda s: png["imagecodecs"].crop(s, crop), site_ids, 3)),
        (f"{crop[1]}x{crop[3]} crop, Zarr store", time_calls(lambda s: dataset.read([s], region=crop, threads=1), site_ids, 3)),
    ]
    store_full = rows[2][1].median_ms
    for label, timing in rows:
        echo(f"  {label:40s} {timing.median_ms:8.2f} ms/site")
    echo(
        f"  full-site reads: {rows[0][1].median_ms / store_full:.1f}x faster than Pillow, "
        f"{rows[1][1].median_ms / store_full:.1f}x faster than imagecodecs; "
        f"crops: {rows[3][1].median_ms / rows[4][1].median_ms:.1f}x faster than decoding the PNGs"
    )
    echo(f"  store bytes: {report.ratio:.3f}x the PNG bytes (profile {ConvertOptions().profile})")
    echo(f"done: try  rxrx2-zarr info {dst}   and   rxrx2-zarr show {dst} --treatment EMPTY -o montage.png")
