"""``synth``: write a dataset shaped exactly like RxRx2 (``metadata.csv``, ``embeddings.csv``, the PNG tree).

The real release (185 GB) is not reachable from our machines, so every test, demo and benchmark runs on data made
here: the layout and metadata rows (:mod:`._plates`), the pixels (:mod:`._pixels`), the embeddings
(:mod:`._embeddings`), each from its own seeded stream (:mod:`._seeding`), so that the same arguments give
byte-identical files whatever the number of workers or the order in which sites are rendered.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt

from .._errors import StoreExistsError
from .._json import report_json
from .._paths import CHANNELS, image_path, parse_site_id
from .._progress import Progress
from .._text import count
from ._embeddings import site_embeddings, write_embeddings
from ._pixels import render_site
from ._plates import (
    MAX_SITES,
    MAX_SIZE,
    MAX_WELLS,
    MIN_SIZE,
    Site,
    check_range,
    metadata_from_csv,
    metadata_from_layout,
    plate_layout,
    write_metadata,
)

__all__ = ["PNG_LEVEL", "PNG_STRATEGY", "SynthReport", "synth"]

_log = logging.getLogger(__name__)

#: zlib settings of the PNG writer. Measured on these images (1024 x 1024, 12 sites, one core): level 6 (Pillow's
#: and libpng's default) 236 KB in 88 ms per file; level 4 with the Z_FILTERED strategy 241 KB in 32 ms (within
#: ~3% of Pillow's default writer, which gives ~230 KB); level 4 default strategy 253 KB in 27 ms; level 1 287 KB
#: in 19 ms. So level 4 + Z_FILTERED stands in for "a typical PNG writer" at a third of the cost of level 6.
#: libpng's adaptive per-row filter (the default) is kept.
PNG_LEVEL = 4
PNG_STRATEGY = 1  # Z_FILTERED
#: RxRx1's per-channel pixel statistics (rxrx1-utils), the reference the images are calibrated to.
RXRX1_MEANS = (6.75, 14.75, 10.51, 10.45, 5.50, 9.82)
RXRX1_STDS = (7.96, 12.17, 5.86, 7.83, 4.70, 5.43)
#: Mean PNG file of the real release (185 GB / 791,718 files).
RELEASE_MEAN_PNG_BYTES = 233_669

Histogram = npt.NDArray[np.int64]
_Task = tuple[str, str, float, int, int, str]  # site_id, treatment, conc, size, seed, root directory


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synth` wrote, with the realism figures of its images (NaN channel figures without images)."""

    out: str
    n_sites: int
    n_images: int
    png_bytes: int
    mean_png_bytes: float
    channel_means: tuple[float, ...]
    channel_stds: tuple[float, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The report's fields as a JSON-ready document (``rxrx2-zarr synth --json``)."""
        return report_json(self)

    def summary(self) -> str:
        """A few lines for the end of a run: sizes, time, and per-channel statistics against the references."""
        lines = [
            f"wrote {self.out}: {count(self.n_sites, 'site')}, {count(self.n_images, 'PNG file')} "
            f"({self.png_bytes / 1e6:,.1f} MB) in {self.seconds:.1f} s"
        ]
        if not self.n_images:
            lines.append("metadata only: metadata.csv and embeddings.csv, no images")
            return "\n".join(lines)
        lines.append(
            f"mean PNG file {self.mean_png_bytes / 1000:.0f} KB (the release, 1024 x 1024: "
            f"{RELEASE_MEAN_PNG_BYTES / 1000:.0f} KB); {self.seconds / max(self.n_sites, 1):.3f} s per site (wall clock)"
        )
        lines.append("channel  mean   std    (RxRx1 mean, std)")
        for c, (m, s, rm, rs) in enumerate(
            zip(self.channel_means, self.channel_stds, RXRX1_MEANS, RXRX1_STDS, strict=True), start=1
        ):
            lines.append(f"w{c}      {m:6.2f} {s:6.2f}   ({rm:5.2f}, {rs:5.2f})")
        return "\n".join(lines)


def _render_to_files(task: _Task) -> tuple[int, Histogram]:
    """Render one site, write its six PNGs; return the bytes written and a 256-bin histogram per channel."""
    site_id, treatment, conc, size, seed, root = task
    pixels = render_site(site_id, treatment, conc, size=size, seed=seed)
    key = parse_site_id(site_id)
    written = 0
    histogram = np.empty((len(CHANNELS), 256), np.int64)
    for k, channel in enumerate(CHANNELS):
        data = imagecodecs.png_encode(pixels[k], level=PNG_LEVEL, strategy=PNG_STRATEGY)
        with open(os.path.join(root, *image_path(key.image(channel)).split("/")), "wb") as handle:
            handle.write(data)
        written += len(data)
        histogram[k] = np.bincount(pixels[k].ravel(), minlength=256)
    return written, histogram


def _run(tasks: Sequence[_Task], workers: int) -> Iterator[tuple[int, Histogram]]:
    """Yield each task's result; with several workers, keep a bounded number of sites in flight."""
    if workers == 1:
        for task in tasks:
            yield _render_to_files(task)
        return
    # The platform's default start method (fork on Linux): workers start in milliseconds, where spawn would
    # re-import numpy, pandas and imagecodecs in each of them.
    pool = ProcessPoolExecutor(max_workers=workers)
    pending: deque[Future[tuple[int, Histogram]]] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(_render_to_files, task))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # On an error or an abandoned generator, do not wait for sites nobody will look at.
        pool.shutdown(wait=True, cancel_futures=True)


def _check_out(out: str) -> Path:
    if "://" in str(out):
        raise ValueError(f"synth writes to a local directory, not a URL: {out!r}")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreExistsError(f"{out}: exists and is not an empty directory; choose a new path or remove it")
    return path


def _write_images(
    root: Path, site_ids: Sequence[str], sites: Sequence[Site], size: int, seed: int, workers: int, progress: bool
) -> tuple[int, Histogram]:
    """Render and write every site's six PNGs; the bytes written and the per-channel histograms of all sites."""
    for folder in sorted({image_path(s.key.image(CHANNELS[0])).rsplit("/", 1)[0] for s in sites}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tasks: list[_Task] = [
        (sid, s.treatment, s.conc, size, seed, str(root)) for sid, s in zip(site_ids, sites, strict=True)
    ]
    png_bytes = 0
    histogram = np.zeros((len(CHANNELS), 256), np.int64)
    with Progress(len(tasks), 0, enabled=progress, desc="synth") as bar:
        for written, hist in _run(tasks, workers):
            png_bytes += written
            histogram += hist
            bar.advance(written)
    return png_bytes, histogram


def _channel_stats(histogram: Histogram) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation from 256-bin histograms (NaN for a channel of no pixels)."""
    levels = np.arange(256, dtype=np.float64)
    pixels = histogram.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = histogram @ levels / pixels
        stds = np.sqrt(np.maximum(histogram @ (levels**2) / pixels - means**2, 0.0))
    return tuple(float(v) for v in means), tuple(float(v) for v in stds)


def synth(
    out: str,
    *,
    experiments: int = 2,
    plates: int = 2,
    wells: int = 3,
    sites: int = 4,
    size: int = 1024,
    embedding_dim: int = 128,
    seed: int = 0,
    workers: int = 1,
    from_metadata: str | None = None,
    limit: int | None = None,
    metadata_only: bool = False,
    progress: bool = False,
) -> SynthReport:
    """Write an RxRx2-shaped dataset to the local directory ``out`` (created; refused if it exists non-empty).

    ``metadata.csv``, ``embeddings.csv`` (``site_id`` + ``embedding_dim`` features) and, unless ``metadata_only``,
    ``images/<experiment>/Plate<plate>/<well>_s<site>_w<channel>.png`` (six ``size`` x ``size`` 8-bit PNGs per
    site). The layout has ``experiments`` x ``plates`` plates of ``wells`` wells (1..1380) of up to ``sites``
    sites (1..4), a few wells short of sites as in the release. With ``from_metadata`` (a metadata CSV or dataset
    root, path or fsspec URL) its rows are used instead, written back unchanged; the layout arguments are then
    ignored. ``limit`` keeps the first N rows in file order. Same arguments, same bytes, whatever ``workers``.
    """
    started = time.perf_counter()
    for name, value, lo, hi in (
        ("experiments", experiments, 1, None),
        ("plates", plates, 1, None),
        ("wells", wells, 1, MAX_WELLS),
        ("sites", sites, 1, MAX_SITES),
        ("size", size, MIN_SIZE, MAX_SIZE),
        ("embedding_dim", embedding_dim, 1, None),
        ("seed", seed, 0, 2**64 - 1),
        ("workers", workers, 1, None),
    ):
        check_range(name, value, lo, hi)
    if limit is not None:
        check_range("limit", limit, 1)
    root = _check_out(out)

    if from_metadata is not None:
        text, site_list = metadata_from_csv(from_metadata, limit)
    else:
        rows = plate_layout(experiments, plates, wells, sites, seed)
        text, site_list = metadata_from_layout(rows[:limit] if limit is not None else rows)

    _log.info("%s: writing %s%s", out, count(len(site_list), "site"), " (metadata only)" if metadata_only else "")
    root.mkdir(parents=True, exist_ok=True)
    write_metadata(root / "metadata.csv", text)
    site_ids = [row[0] for row in text]
    keys, treatments, concs = ([s.key for s in site_list], [s.treatment for s in site_list], [s.conc for s in site_list])
    write_embeddings(root / "embeddings.csv", site_ids, site_embeddings(keys, treatments, concs, embedding_dim, seed))

    png_bytes, histogram = 0, np.zeros((len(CHANNELS), 256), np.int64)
    if not metadata_only:
        png_bytes, histogram = _write_images(root, site_ids, site_list, size, seed, workers, progress)
    n_images = 0 if metadata_only else len(CHANNELS) * len(site_ids)
    means, stds = _channel_stats(histogram)
    return SynthReport(
        out=str(out),
        n_sites=len(site_ids),
        n_images=n_images,
        png_bytes=png_bytes,
        mean_png_bytes=png_bytes / n_images if n_images else 0.0,
        channel_means=means,
        channel_stds=stds,
        seconds=time.perf_counter() - started,
    )
