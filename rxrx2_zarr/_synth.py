"""A generator of datasets shaped exactly like RxRx2: ``metadata.csv``, ``embeddings.csv`` and the PNG tree.

The real release (185 GB) is not reachable from our machines, so every test, demo and benchmark runs on data made
here. What is imitated, and why:

* **Layout.** Wells come from the interior of a 1536-well plate (rows B..AE, columns 02..47: exactly 1,380 wells,
  the number RxRx2 uses per plate). As in the real plates, every plate holds every factor it has room for in about
  three wells, at one dose per pair of plates (plates 1-2 the highest dose, 11-12 the lowest), plus ``EMPTY``
  controls (about 5.7% of the wells, at least one per plate) with a blank concentration. A few wells lack some
  sites (1,2,4 or 2,3,4 ...): ``round(wells * sites * 527 / 132480)`` missing sites, so the full layout (2 x 12 x
  1380) has exactly the release's 131,953 sites.
* **Values.** Treatment names are the 37 real factors of our metadata sample then generated ``SF-001``... up to the
  release's 433 factors; concentrations are copied as the *text* the release publishes (``0.0009999999999999``,
  ``9.999999999999998e-05``), not re-formatted floats, because those artefacts are what parsers must survive.
* **Pixels.** 8-bit cell-painting-like sites: sparse cells on a dark background, the same cells in all six
  channels (w1 compact bright nuclei; w2..w6 cytoplasm, actin-like fibres, RNA with nucleoli, mitochondria-like
  puncta, membrane rims), smooth illumination fall-off, per-plate intensity drift and camera noise (read noise plus
  shot noise). Per-channel means and standard deviations are calibrated to RxRx1's published figures and the noise
  level to the release's PNG size (~234 KB per 1024 x 1024 file): noise is what decides PNG size, so these
  constants were measured, not guessed (figures next to them).
* **Signal.** A treatment changes cell density, nucleus and cell size, elongation and per-channel intensity, by an
  amount that grows with its dose (a Hill curve per factor), and moves the embeddings along a per-factor direction
  by the same amount, so models and viewers have something real to find.
* **Determinism.** Every random draw comes from a generator seeded by ``(seed, a tag, a BLAKE2 hash of the
  site_id/treatment/...)``, never from a shared stream, so the same arguments give byte-identical files whatever the
  number of workers or the order in which sites are rendered.

Only numpy is used for the pixels (no scipy): blurs are box filters by cumulative sums, resampling is bilinear, and
the coarse structure is drawn at a half and a quarter of the resolution then upsampled, which is both faster and
closer to a microscope (optically blurred; the pixel-level variation is mostly noise).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import imagecodecs
import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm import tqdm

from . import _fs
from ._errors import StoreExistsError
from ._paths import CHANNELS, GRID_COLUMNS, GRID_ROWS, SiteKey, WellAddress, image_path, parse_site_id
from ._schema import METADATA_COLUMNS, METADATA_NAMES, find_source_file, load_metadata

__all__ = [
    "CELL_TYPE",
    "EMPTY",
    "FACTORS",
    "PNG_LEVEL",
    "PNG_STRATEGY",
    "SynthReport",
    "dose_series",
    "render_site",
    "site_embeddings",
    "synth",
]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

CELL_TYPE = "HUVEC"
EMPTY = "EMPTY"

#: zlib settings of the PNG writer. Measured on these images (1024 x 1024, 12 sites, one core): level 6 (Pillow's
#: and libpng's default) 236 KB in 88 ms per file; level 4 with the Z_FILTERED strategy 241 KB in 32 ms (within
#: ~3% of Pillow's default writer, which gives ~230 KB); level 4 default strategy 253 KB in 27 ms; level 1 287 KB
#: in 19 ms. So level 4 + Z_FILTERED stands in for "a typical PNG writer" at a third of the cost of level 6.
#: libpng's adaptive per-row filter (the default) is kept.
PNG_LEVEL = 4
PNG_STRATEGY = 1  # Z_FILTERED

# ---------------------------------------------------------------------------------------------------------------
# Layout constants of the real release.

#: Interior of the 1536-well plate: rows B..AE, columns 02..47 (30 x 46 = 1,380 wells, as used per RxRx2 plate).
INTERIOR_ROWS: tuple[str, ...] = GRID_ROWS[1:-1]
INTERIOR_COLUMNS: tuple[int, ...] = tuple(range(2, len(GRID_COLUMNS)))
MAX_WELLS = len(INTERIOR_ROWS) * len(INTERIOR_COLUMNS)
MAX_SITES = 4
MIN_SIZE = 16
#: A guard against typos (a 100000-pixel site would need 60 GB of memory), not a property of RxRx2.
MAX_SIZE = 8192
#: 1,896 of the release's 33,120 wells are EMPTY controls (79 per plate).
EMPTY_FRACTION = 1896 / 33120
#: The release has 132,480 site slots (2 x 12 x 1380 x 4) and 131,953 sites: 527 missing.
MISSING_SITES, SITE_SLOTS = 527, 132480
#: How many sites a short well lacks, with the proportions seen in the metadata sample (22, 4 and 1 wells).
_SHORT_WEIGHTS = (0.81, 0.15, 0.04)
#: Wells per factor and plate in the release (433 factors x 3 = 1,299 of the 1,301 treated wells).
WELLS_PER_FACTOR = 3
N_FACTORS = 433

# The dose series of the release, as the text it publishes (float artefacts included). They are not what Python
# prints for 0.1 * 10**-k ("0.0009999999999999" is a 16-digit truncation of a float near 0.001), so the text is
# copied rather than computed.
_D_1E6 = ("1e-06", "1e-05", "9.999999999999998e-05", "0.0009999999999999", "0.01", "0.1")
_D_5E6 = ("5e-06", "4.999999999999999e-05", "0.0004999999999999", "0.005", "0.05", "0.5")
_D_1E5 = ("1e-05", "9.999999999999998e-05", "0.0009999999999999", "0.01", "0.1", "1.0")
_D_1E4 = ("9.999999999999998e-05", "0.0009999999999999", "0.01", "0.1", "1.0", "9.999999999999998")
_D_25E7 = ("2.5e-06", "2.499999999999999e-05", "0.0002499999999999", "0.0025", "0.025", "0.25")

#: The 37 non-EMPTY factors of the real metadata sample with their dose series, in order of first appearance.
_REAL_FACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("STx1", _D_1E6), ("BMP-6", _D_1E6), ("BMP-9", _D_1E6), ("TCdiffA", _D_1E5), ("IFN-omega", _D_1E6),
    ("LTa1b2", _D_1E6), ("PaExtA", _D_1E4), ("VEGF-165", _D_1E6), ("LPS_EK", _D_1E6), ("CT-1", _D_1E6),
    ("Activin-B", _D_1E6), ("Activin-A", _D_1E6), ("IL-4", _D_1E6), ("DTx", _D_1E4), ("B-ECGF", _D_1E6),
    ("IL-1-alpha", _D_1E6), ("Lymphotoxin-a2", _D_1E6), ("OSM", _D_1E6), ("CsAT", _D_5E6), ("Nigericin", _D_1E6),
    ("TNF-alpha", _D_1E6), ("IL-1-beta", _D_1E6), ("PTx", _D_5E6), ("IL-6-R", _D_1E6), ("TGF-B2", _D_1E6),
    ("STx2", _D_1E6), ("LIF", _D_1E6), ("IFN-gamma", _D_1E6), ("IFNB-1", _D_1E6), ("IL-33", _D_1E5),
    ("BaPALF", _D_5E6), ("TNF-beta", _D_1E6), ("IFN-alpha-A", _D_1E6), ("VEGFC", _D_1E6), ("IL-13", _D_1E6),
    ("TCdiffB", _D_25E7), ("BMP-10", _D_1E6),
)  # fmt: skip


def _factor_table() -> tuple[tuple[str, tuple[str, ...]], ...]:
    # Generated factors borrow the series of the real ones in turn, which keeps the real mix of series.
    generated = tuple(
        (f"SF-{i + 1:03d}", _REAL_FACTORS[i % len(_REAL_FACTORS)][1])
        for i in range(N_FACTORS - len(_REAL_FACTORS))
    )
    return _REAL_FACTORS + generated


_FACTOR_TABLE = _factor_table()
#: The 433 factor names (the release's 434 treatments minus EMPTY): the 37 real ones first.
FACTORS: tuple[str, ...] = tuple(name for name, _ in _FACTOR_TABLE)
_SERIES = dict(_FACTOR_TABLE)


def dose_series(factor: str) -> tuple[str, ...]:
    """The six concentrations of ``factor``, lowest first, as the text the release writes them."""
    return _SERIES[factor]


# ---------------------------------------------------------------------------------------------------------------
# Seeding: one independent stream per (seed, purpose, key), so results never depend on evaluation order.

_TAG_LAYOUT, _TAG_SHORT, _TAG_SITE, _TAG_FACTOR, _TAG_PLATE, _TAG_EMBED = 1, 2, 3, 4, 5, 6


def _words(text: str) -> list[int]:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def _rng(seed: int, tag: int, *keys: str | int) -> np.random.Generator:
    entropy: list[int] = [seed, tag]
    for key in keys:
        entropy.extend(_words(key) if isinstance(key, str) else [key])
    return np.random.default_rng(entropy)


@lru_cache(maxsize=1)
def _normal_table() -> F32:
    """Quantiles of N(0, 1) at 65,536 levels: a table lookup is ~2.5x faster than ``standard_normal``."""
    nd = statistics.NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)


def _normals(rng: np.random.Generator, shape: tuple[int, ...]) -> F32:
    count = math.prod(shape)
    index = np.frombuffer(rng.bytes(2 * count), dtype="<u2")
    return np.take(_normal_table(), index).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Phenotypes: what a treatment at a dose does to the cells.


@dataclass(frozen=True)
class _Phenotype:
    density: float  # cells per 1024 x 1024 pixels
    nucleus_radius: float  # pixels
    body_ratio: float  # cell body radius / nucleus radius
    elongation: float  # scale of the cell body's aspect ratio beyond 1.4
    gains: tuple[float, ...]  # per-channel intensity multipliers


_BASE_DENSITY = 150.0
_BASE_NUCLEUS_RADIUS = 12.0
_BASE_BODY_RATIO = 3.4
# Spread of each effect at full strength (log scale): density, nucleus, body, elongation, six channel gains.
_EFFECT_SD = np.array([0.45, 0.15, 0.15, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25])


@dataclass(frozen=True)
class _Factor:
    log_ec50: float
    hill: float
    amplitude: float
    effects: tuple[float, ...]


@lru_cache(maxsize=1024)
def _factor(seed: int, treatment: str) -> _Factor:
    rng = _rng(seed, _TAG_FACTOR, treatment)
    return _Factor(
        log_ec50=float(rng.uniform(-5.0, -1.5)),
        hill=float(rng.uniform(0.8, 1.6)),
        # Most factors act modestly, a few strongly (as in the release, where many cytokines barely show):
        # median 0.55, a fifth above 0.9.
        amplitude=float(np.clip(rng.lognormal(-0.6, 0.6), 0.1, 1.2)),
        effects=tuple(float(v) for v in rng.standard_normal(len(_EFFECT_SD)) * _EFFECT_SD),
    )


def _strength(seed: int, treatment: str, conc: float) -> float:
    """Effect strength of ``treatment`` at ``conc``: a Hill curve per factor, 0 for EMPTY or a blank dose."""
    if treatment == EMPTY or not math.isfinite(conc) or conc <= 0.0:
        return 0.0
    factor = _factor(seed, treatment)
    return factor.amplitude / (1.0 + math.pow(10.0, factor.hill * (factor.log_ec50 - math.log10(conc))))


def _phenotype(seed: int, treatment: str, conc: float) -> _Phenotype:
    s = _strength(seed, treatment, conc)
    e = _factor(seed, treatment).effects if s > 0.0 else (0.0,) * len(_EFFECT_SD)
    return _Phenotype(
        density=_BASE_DENSITY * float(np.clip(math.exp(s * e[0]), 0.5, 1.5)),
        nucleus_radius=_BASE_NUCLEUS_RADIUS * float(np.clip(math.exp(s * e[1]), 0.8, 1.25)),
        body_ratio=_BASE_BODY_RATIO * float(np.clip(math.exp(s * e[2]), 0.75, 1.35)),
        elongation=math.exp(s * e[3]),
        gains=tuple(float(np.clip(math.exp(s * v), 0.65, 1.5)) for v in e[4:]),
    )


# ---------------------------------------------------------------------------------------------------------------
# Pixels.

# Per-channel calibration (w1..w6) for control wells. AMP scales each channel's signal, BG is the background
# level (photons and offset), READ the read noise and GAIN the shot noise (variance = READ^2 + GAIN * level),
# all in 8-bit units. AMP and BG were fitted on 16 control sites to RxRx1's means (6.75, 14.75, 10.51, 10.45,
# 5.50, 9.82) and standard deviations (7.96, 12.17, 5.86, 7.83, 4.70, 5.43); measured on 24 sites of mixed
# treatments: means 6.8, 15.6, 10.8, 10.6, 5.5, 10.0, stds 8.1, 12.7, 6.1, 8.1, 4.6, 5.5. READ and GAIN were
# then set for the release's PNG size (233,669 bytes per 1024 x 1024 file): ~239 KB with our writer, ~232 KB
# written by Pillow. Noise-free, these images would take ~150 KB per file (the texture); READ 0.25 gives ~290 KB.
_AMP = (37.7, 49.4, 11.8, 26.4, 53.8, 12.3)
_BG = (5.55, 3.87, 4.41, 7.58, 4.99, 4.71)
_READ = (0.14,) * 6
_GAIN = (0.002,) * 6
#: Cells are placed this far beyond the edges too, so cells are cut by the border as in real fields.
_MARGIN = 48


def _box(a: F32, r: int, axis: int) -> F32:
    """Mean over a window of 2r+1 along ``axis`` (edges clamped), by cumulative sums: O(n) whatever r."""
    if r <= 0:
        return a
    moved = np.moveaxis(a, axis, -1)
    n = moved.shape[-1]
    padded = np.concatenate(
        [np.repeat(moved[..., :1], r + 1, axis=-1), moved, np.repeat(moved[..., -1:], r, axis=-1)], axis=-1
    )
    c = np.cumsum(padded, axis=-1, dtype=np.float32)
    out = (c[..., 2 * r + 1 :] - c[..., :n]) * np.float32(1.0 / (2 * r + 1))
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def _blur(a: F32, ry: int, rx: int | None = None) -> F32:
    return _box(_box(a, ry if rx is None else rx, -1), ry, -2)


def _up2(a: F32) -> F32:
    """Bilinear upsampling by 2 over the last two axes (pixel centres aligned, edges clamped)."""
    h, w = a.shape[-2:]
    lead = a.shape[:-2]
    p = np.concatenate([a[..., :1, :], a, a[..., -1:, :]], axis=-2)
    rows = np.empty((*lead, h, 2, w), dtype=np.float32)
    np.multiply(p[..., 1:-1, :], np.float32(0.75), out=rows[..., 0, :])
    rows[..., 0, :] += np.float32(0.25) * p[..., :-2, :]
    np.multiply(p[..., 1:-1, :], np.float32(0.75), out=rows[..., 1, :])
    rows[..., 1, :] += np.float32(0.25) * p[..., 2:, :]
    tall = rows.reshape((*lead, 2 * h, w))
    p = np.concatenate([tall[..., :1], tall, tall[..., -1:]], axis=-1)
    out = np.empty((*lead, 2 * h, w, 2), dtype=np.float32)
    np.multiply(p[..., 1:-1], np.float32(0.75), out=out[..., 0])
    out[..., 0] += np.float32(0.25) * p[..., :-2]
    np.multiply(p[..., 1:-1], np.float32(0.75), out=out[..., 1])
    out[..., 1] += np.float32(0.25) * p[..., 2:]
    return out.reshape((*lead, 2 * h, 2 * w))


def _window(cy: float, cx: float, radius: int, n: int) -> tuple[slice, slice, F32, F32] | None:
    """Slices of an n x n canvas around (cy, cx) and the coordinates relative to the centre, or None if outside."""
    y0, x0 = math.floor(cy) - radius, math.floor(cx) - radius
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + 2 * radius + 2, n), min(x0 + 2 * radius + 2, n)
    if ya >= yb or xa >= xb:
        return None
    yy = (np.arange(ya, yb, dtype=np.float32) - np.float32(cy))[:, None]
    xx = (np.arange(xa, xb, dtype=np.float32) - np.float32(cx))[None, :]
    return slice(ya, yb), slice(xa, xb), yy, xx


def _plate_gains(seed: int, experiment: str, plate: int) -> F32:
    # Plate-to-plate intensity drift (staining batches): the batch effect real data has and normalisers remove.
    return np.exp(0.06 * _rng(seed, _TAG_PLATE, experiment, plate).standard_normal(6)).astype(np.float32)


def render_site(site_id: str, treatment: str, conc: float, *, size: int = 1024, seed: int = 0) -> U8:
    """Render the six channels of one site as a ``(6, size, size)`` uint8 array.

    Deterministic in ``(site_id, treatment, conc, size, seed)``; ``conc`` is NaN for EMPTY controls. Cells keep
    their size whatever ``size``: a smaller site is a crop of a field, not a shrunken one.
    """
    _check_range("size", size, MIN_SIZE, MAX_SIZE)
    key = parse_site_id(site_id)
    pheno = _phenotype(seed, treatment, conc)
    rng = _rng(seed, _TAG_SITE, site_id)
    half = -(-size // 2)
    quarter = -(-half // 2)

    # --- the cells: positions, nuclei and bodies (all channels share them) ---
    span = size + 2 * _MARGIN
    count = int(rng.poisson(pheno.density * span * span / 1024.0**2))
    cy = rng.uniform(-_MARGIN, size + _MARGIN, count)
    cx = rng.uniform(-_MARGIN, size + _MARGIN, count)
    r_nuc = pheno.nucleus_radius * np.exp(0.15 * rng.standard_normal(count))
    e_nuc = 1.05 + 0.3 * rng.random(count)
    t_nuc = rng.uniform(0.0, np.pi, count)
    # ~3% of cells are dividing: small, condensed, bright nuclei.
    mitotic = rng.random(count) < 0.03
    r_nuc[mitotic] *= 0.65
    b_nuc = np.exp(0.25 * rng.standard_normal(count))
    b_nuc[mitotic] *= 2.2
    r_body = r_nuc * pheno.body_ratio * np.exp(0.2 * rng.standard_normal(count))
    e_body = 1.4 + rng.gamma(2.0, 0.5, count) * pheno.elongation  # HUVEC are spindle-shaped
    t_body = t_nuc + 0.25 * rng.standard_normal(count)
    off_y = 0.5 * r_nuc * rng.standard_normal(count)
    off_x = 0.5 * r_nuc * rng.standard_normal(count)
    cell_gain = np.exp(0.3 * rng.standard_normal((count, 6))).astype(np.float32)  # cell-to-cell variation

    # Quarter resolution: cell bodies (per-channel weighted), membrane rims, perinuclear density, orientation.
    # Ragged cell edges: smooth noise (two box passes, near-Gaussian; one pass leaves square steps), sd ~0.4.
    wobble = _blur(_blur(_normals(rng, (quarter, quarter)), 2), 2) * np.float32(3.0)
    body = np.zeros((quarter, quarter), np.float32)
    body_w = np.zeros((6, quarter, quarter), np.float32)
    rim = np.zeros((quarter, quarter), np.float32)
    peri = np.zeros((quarter, quarter), np.float32)
    orient = np.zeros((quarter, quarter), np.float32)
    occupancy = np.zeros((quarter, quarter), np.float32)
    # Half resolution: nuclei (intensity and mask).
    nuc = np.zeros((half, half), np.float32)
    nuc_mask = np.zeros((half, half), np.float32)
    for i in range(count):
        a, b = r_nuc[i] * math.sqrt(e_nuc[i]) / 2, r_nuc[i] / math.sqrt(e_nuc[i]) / 2
        c, s = math.cos(t_nuc[i]), math.sin(t_nuc[i])
        win = _window(cy[i] / 2 - 0.5, cx[i] / 2 - 0.5, int(a + 2), half)
        if win is not None:
            ys, xs, yy, xx = win
            u, v = (c * xx + s * yy) / a, (c * yy - s * xx) / b
            r2 = u * u + v * v
            m = np.clip((1.0 - r2) * 2.5, 0.0, 1.0)
            np.maximum(nuc_mask[ys, xs], m, out=nuc_mask[ys, xs])
            nuc[ys, xs] += b_nuc[i] * m * (1.0 - 0.35 * np.minimum(r2, 1.0))
        a, b = r_body[i] * math.sqrt(e_body[i]) / 4, r_body[i] / math.sqrt(e_body[i]) / 4
        c, s = math.cos(t_body[i]), math.sin(t_body[i])
        win = _window((cy[i] + off_y[i]) / 4 - 0.5, (cx[i] + off_x[i]) / 4 - 0.5, int(a * 1.4 + 2), quarter)
        if win is not None:
            ys, xs, yy, xx = win
            u, v = (c * xx + s * yy) / a, (c * yy - s * xx) / b
            r = np.sqrt(u * u + v * v) * (1.0 + 0.25 * wobble[ys, xs])
            # Smoothstep edge a few pixels wide: a hard edge drawn at a quarter of the resolution shows stairs.
            f = np.clip((1.1 - r) * np.float32(1 / 0.35), 0.0, 1.0)
            f = f * f * (3.0 - 2.0 * f)
            np.maximum(body[ys, xs], f, out=body[ys, xs])
            occupancy[ys, xs] += f
            body_w[:, ys, xs] += cell_gain[i][:, None, None] * f
            rim[ys, xs] += np.exp(-(((r - 0.93) / 0.13) ** 2))
            orient[ys, xs] += f * np.float32(c * c - s * s)
            dy, dx = yy + np.float32(off_y[i] / 4), xx + np.float32(off_x[i] / 4)
            peri[ys, xs] += np.exp(-(dy * dy + dx * dx) / np.float32((1.7 * r_nuc[i] / 4) ** 2)) * f

    # --- textures at half resolution (a grain of ~4-8 pixels once upsampled) ---
    grain = _blur(_normals(rng, (half, half)), 1) * np.float32(1.7)  # sd ~1
    grain2 = _blur(_normals(rng, (half, half)), 1) * np.float32(1.7)
    grain3 = _blur(_normals(rng, (half, half)), 1) * np.float32(1.7)
    fibre_h = _blur(_normals(rng, (half, half)), 1, 5) * np.float32(3.0)  # actin-like streaks along x ...
    fibre_v = _blur(_normals(rng, (half, half)), 5, 1) * np.float32(3.0)  # ... and along y
    along = _up2(np.clip(0.5 + 0.5 * orient, 0.0, 1.0))[
        :half, :half
    ]  # each cell's fibres follow its long axis
    fibre = along * fibre_h + (1.0 - along) * fibre_v
    # Smooth illumination: a fixed vignette plus a small per-site variation.
    yv = (np.arange(half, dtype=np.float32) - half / 2) / np.float32(half / 2)
    vignette = 1.0 - 0.18 * (yv[:, None] ** 2 + yv[None, :] ** 2)
    drift = _normals(rng, (-(-half // 64) + 1,) * 2) * np.float32(0.08)  # +-8% over ~100 pixels and more
    for _ in range(6):
        drift = _up2(drift)
    illum = vignette * np.exp(drift[:half, :half])

    # Cells share the space where they overlap (they tile rather than stack), so crowded fields do not
    # saturate: divide by the number of cells covering a pixel.
    crowd = np.float32(1.0) / np.maximum(occupancy, np.float32(1.0))
    body_w *= crowd
    rim *= crowd
    peri *= crowd
    peri_c = np.minimum(peri, 1.5)
    coarse = _up2(
        np.stack(
            [
                body_w[1] * (0.3 + 0.7 * peri_c),  # w2: cytoplasm, denser around the nucleus
                body_w[2],  # w3: actin-like, whole cell ...
                rim,  # ... brighter at the cortex
                body_w[3] * peri_c,  # w4: RNA in the cytoplasm
                body_w[4] * peri_c,  # w5: mitochondria around the nucleus
                0.4 * body_w[5] + rim * body + 0.8 * peri_c * peri_c,  # w6: membrane rims and Golgi-like spot
            ]
        )
    )[:, :half, :half]
    gains = np.asarray(pheno.gains, np.float32) * _plate_gains(seed, key.experiment, key.plate)
    gains *= np.asarray(_AMP, np.float32)
    sig = np.empty((6, half, half), np.float32)
    sig[0] = nuc * (1.0 + 0.2 * grain)
    sig[1] = coarse[0] * (1.0 + 0.3 * grain2) * (1.0 - 0.6 * nuc_mask)
    sig[2] = coarse[1] * (0.6 + 0.4 * np.clip(fibre, -1.0, 3.0)) + 0.8 * coarse[2]
    sig[3] = coarse[3] * (1.0 + 0.3 * grain2) + 0.5 * nuc_mask * (1.0 + 1.2 * np.clip(grain - 0.7, 0.0, None))
    sig[4] = coarse[4] * 1.6 * np.clip(grain3 - 0.3, 0.0, None)
    sig[5] = coarse[5]
    np.maximum(sig, 0.0, out=sig)
    sig *= gains[:, None, None]
    sig += np.asarray(_BG, np.float32)[:, None, None] * illum

    # --- full resolution: camera noise, rounding ---
    out = np.empty((6, size, size), np.uint8)
    for k in range(6):
        level = _up2(sig[k])[:size, :size]
        sd = np.sqrt(np.float32(_READ[k] ** 2) + np.float32(_GAIN[k]) * level)
        level += sd * _normals(rng, (size, size))
        level += np.float32(0.5)  # round half up by truncation below
        np.clip(level, 0.0, 255.0, out=level)
        out[k] = level.astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Embeddings.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keyed_normals(keys: npt.NDArray[np.uint64], dim: int, salt: int) -> F32:
    """N(0, 1) of shape (len(keys), dim), a pure function of each key: a counter-based hash, vectorised."""
    counters = np.arange(dim, dtype=np.uint64) * _GOLDEN + np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
    bits = _splitmix64(keys[:, None] ^ counters[None, :])
    return np.take(_normal_table(), (bits >> np.uint64(48)).astype(np.intp))


def _hash_keys(texts: Sequence[str], seed: int) -> npt.NDArray[np.uint64]:
    salt = seed.to_bytes(8, "little", signed=False)
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8, salt=salt).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def site_embeddings(
    sites: Sequence[str | SiteKey], treatments: Sequence[str], concs: Sequence[float], dim: int, seed: int = 0
) -> F32:
    """Embeddings of shape (n, dim) for sites given as site_ids or :class:`SiteKey`: a common mean, plus a
    per-factor direction scaled by the factor's effect strength at the dose (the signal), a per-plate batch
    offset, a per-well offset and per-site noise. Each term is a pure function of its id, so a site's embedding
    does not depend on which other sites are generated with it."""
    keys = [s if isinstance(s, SiteKey) else parse_site_id(s) for s in sites]
    n = len(keys)
    # Integer codes per treatment and per plate, so each term is one gather instead of one pass per group.
    t_index: dict[str, int] = {}
    t_codes = np.fromiter((t_index.setdefault(t, len(t_index)) for t in treatments), dtype=np.intp, count=n)
    p_index: dict[tuple[str, int], int] = {}
    p_codes = np.fromiter(
        (p_index.setdefault((k.experiment, k.plate), len(p_index)) for k in keys), np.intp, n
    )
    strengths = np.fromiter(
        (_strength(seed, t, c) for t, c in zip(treatments, concs, strict=True)), np.float32, n
    )
    directions = np.stack(
        [_rng(seed, _TAG_EMBED, "factor", t).standard_normal(dim).astype(np.float32) for t in t_index]
        or [np.zeros(dim, np.float32)]
    )
    batches = np.stack(
        [_rng(seed, _TAG_EMBED, "plate", e, p).standard_normal(dim).astype(np.float32) for e, p in p_index]
        or [np.zeros(dim, np.float32)]
    )
    base = _rng(seed, _TAG_EMBED, "base").standard_normal(dim).astype(np.float32) * np.float32(0.5)
    well_keys = _hash_keys([k.well_id for k in keys], seed)
    site_keys = _hash_keys([k.site_id for k in keys], seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):  # in blocks, to bound the memory of the temporaries
        b = slice(start, min(start + 8192, n))
        block = out[b]
        block[:] = base
        block += strengths[b, None] * directions[t_codes[b]]
        block += np.float32(0.3) * batches[p_codes[b]]
        block += np.float32(0.3) * _keyed_normals(well_keys[b], dim, 1)
        block += np.float32(0.5) * _keyed_normals(site_keys[b], dim, 2)
    return out


def _format_fixed(values: F32, decimals: int = 4) -> list[bytes]:
    """Format each row as ``v0,v1,...\\n`` with ``decimals`` fixed decimals, vectorised (``%``-formatting 17 M
    numbers takes ~8 s; this ~1 s). Values must satisfy |v| < 1e6."""
    scale = 10**decimals
    q = np.rint(values.astype(np.float64) * scale).astype(np.int64)
    if q.size and np.abs(q).max() >= 10**6 * scale:
        raise ValueError("embedding value out of range for fixed formatting")
    negative = q < 0
    a = np.abs(q)
    whole, frac = a // scale, a % scale
    n, k = q.shape
    int_digits = 6
    width = 1 + int_digits + 1 + decimals + 1
    chars = np.zeros((n, k, width), np.uint8)
    keep = np.zeros((n, k, width), bool)
    chars[..., 0] = ord("-")
    keep[..., 0] = negative
    n_digits = 1 + sum((whole >= 10**p).astype(np.int64) for p in range(1, int_digits))
    for j in range(int_digits):
        power = int_digits - 1 - j
        chars[..., 1 + j] = ord("0") + (whole // 10**power) % 10
        keep[..., 1 + j] = power < n_digits
    chars[..., 1 + int_digits] = ord(".")
    keep[..., 1 + int_digits] = True
    for j in range(decimals):
        chars[..., 2 + int_digits + j] = ord("0") + (frac // 10 ** (decimals - 1 - j)) % 10
        keep[..., 2 + int_digits + j] = True
    chars[..., -1] = ord(",")
    chars[:, -1, -1] = ord("\n")
    keep[..., -1] = True
    flat = chars[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=(1, 2)))
    starts = np.concatenate([[0], ends[:-1]])
    return [flat[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def _write_embeddings(path: Path, site_ids: Sequence[str], matrix: F32) -> None:
    dim = matrix.shape[1]
    with path.open("wb") as handle:
        handle.write(("site_id," + ",".join(f"feature_{j}" for j in range(dim)) + "\n").encode())
        for start in range(0, len(site_ids), 4096):
            rows = _format_fixed(matrix[start : start + 4096])
            handle.write(
                b"".join(
                    s.encode() + b"," + r for s, r in zip(site_ids[start : start + 4096], rows, strict=True)
                )
            )


# ---------------------------------------------------------------------------------------------------------------
# Layout.


@dataclass(frozen=True)
class _Row:
    """A generated metadata row: the site, its treatment and the concentration as the text to write."""

    key: SiteKey
    treatment: str
    conc_text: str

    @property
    def conc(self) -> float:
        return float(self.conc_text) if self.conc_text else math.nan


@dataclass(frozen=True)
class _Site:
    """What rendering needs of a site, whether generated or read from a metadata file."""

    key: SiteKey
    treatment: str
    conc: float  # NaN for EMPTY


def _check_range(name: str, value: int, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def _interior_wells() -> list[WellAddress]:
    return [WellAddress(r, c) for r in INTERIOR_ROWS for c in INTERIOR_COLUMNS]


def _layout(experiments: int, plates: int, wells: int, sites: int, seed: int) -> list[_Row]:
    """The generated metadata rows in file order: experiment, plate, well (row-major on the grid), site.

    Per plate: ``wells`` interior wells chosen from the seed; ~5.7% (at least one) EMPTY, the rest shared by the
    first ``ceil(treated / 3)`` factors (all 433 on a full plate, three wells each) at the plate pair's dose.
    With ``sites >= 2``, a few wells lack some sites (at least one short well once there are 4 wells)."""
    interior = _interior_wells()
    n_empty = max(1, round(wells * EMPTY_FRACTION))
    n_treated = wells - n_empty
    n_factors = min(N_FACTORS, -(-n_treated // WELLS_PER_FACTOR))
    plate_wells: list[tuple[str, int, WellAddress, str, str]] = []
    for e in range(1, experiments + 1):
        experiment = f"HUVEC-{e}"
        for plate in range(1, plates + 1):
            rng = _rng(seed, _TAG_LAYOUT, experiment, plate)
            chosen = np.sort(rng.choice(MAX_WELLS, size=wells, replace=False))
            # One dose per pair of plates, highest first (plates 1-2 at 0.1, 3-4 at 0.01, ... in the release).
            dose = 5 - ((plate - 1) // 2) % 6
            labels = [EMPTY] * n_empty + [FACTORS[j % n_factors] for j in range(n_treated)]
            assigned = [labels[j] for j in rng.permutation(wells).tolist()]  # scattered over the plate
            for index, treatment in zip(chosen.tolist(), assigned, strict=True):
                conc = "" if treatment == EMPTY else dose_series(treatment)[dose]
                plate_wells.append((experiment, plate, interior[index], treatment, conc))
    missing = _missing_sites(len(plate_wells), sites, seed)
    rows: list[_Row] = []
    for w, (experiment, plate, well, treatment, conc) in enumerate(plate_wells):
        gone = missing.get(w, ())
        for site in range(1, sites + 1):
            if site not in gone:
                rows.append(_Row(SiteKey(experiment, plate, well, site), treatment, conc))
    return rows


def _missing_sites(n_wells: int, sites: int, seed: int) -> dict[int, tuple[int, ...]]:
    """Which sites each short well lacks (well index -> site numbers); a well keeps at least one site."""
    if sites < 2:
        return {}
    total = round(n_wells * sites * MISSING_SITES / SITE_SLOTS)
    if n_wells >= 4:
        total = max(total, 1)
    total = min(total, n_wells * (sites - 1))
    rng = _rng(seed, _TAG_SHORT, "short-wells")
    out: dict[int, tuple[int, ...]] = {}
    for well in rng.permutation(n_wells).tolist():
        if total <= 0:
            break
        k = min(int(rng.choice(len(_SHORT_WEIGHTS), p=_SHORT_WEIGHTS)) + 1, sites - 1, total)
        out[well] = tuple(sorted(int(s) + 1 for s in rng.choice(sites, size=k, replace=False)))
        total -= k
    return out


def _metadata_from_csv(url: str, limit: int | None) -> tuple[list[list[str]], list[_Site]]:
    """The first ``limit`` rows of an existing metadata file: their original text (to write back unchanged, float
    artefacts and blanks included) and their typed values (to render). The whole file is validated first."""
    typed = load_metadata(url)
    fs, path = _fs.resolve(url)
    if fs.isdir(path):
        url = find_source_file(url, METADATA_NAMES)
        fs, path = _fs.resolve(url)
    with fs.open(path, "rb") as handle:
        raw = pd.read_csv(io.BytesIO(handle.read()), dtype=str, keep_default_na=False, na_filter=False)
    n = len(typed) if limit is None else min(limit, len(typed))
    text = [[str(v) for v in row] for row in raw.iloc[:n].itertuples(index=False, name=None)]
    sites = [
        _Site(parse_site_id(str(site_id)), str(treatment), float(conc))
        for site_id, treatment, conc in zip(
            typed["site_id"].iloc[:n],
            typed["treatment"].iloc[:n],
            typed["treatment_conc"].iloc[:n],
            strict=True,
        )
    ]
    return text, sites


def _metadata_from_layout(rows: Sequence[_Row]) -> tuple[list[list[str]], list[_Site]]:
    text = [
        [
            r.key.site_id,
            r.key.well_id,
            CELL_TYPE,
            r.key.experiment,
            str(r.key.plate),
            str(r.key.well),
            str(r.key.site),
            r.treatment,
            r.conc_text,
        ]
        for r in rows
    ]
    return text, [_Site(r.key, r.treatment, r.conc) for r in rows]


def _write_metadata(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------------------
# Rendering sites to files, in parallel.

_Task = tuple[str, str, float, int, int, str]  # site_id, treatment, conc, size, seed, root directory


def _render_to_files(task: _Task) -> tuple[int, npt.NDArray[np.int64]]:
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


def _run(tasks: Sequence[_Task], workers: int) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    """Yield each task's result; with several workers, keep a bounded number of sites in flight."""
    if workers == 1:
        for task in tasks:
            yield _render_to_files(task)
        return
    # The platform's default start method (fork on Linux): workers start in milliseconds, where spawn would
    # re-import numpy, pandas and imagecodecs in each of them.
    pool = ProcessPoolExecutor(max_workers=workers)
    pending: deque[Future[tuple[int, npt.NDArray[np.int64]]]] = deque()
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


# ---------------------------------------------------------------------------------------------------------------
# The report and the entry point.

#: RxRx1's per-channel pixel statistics (rxrx1-utils), the reference the images are calibrated to.
RXRX1_MEANS = (6.75, 14.75, 10.51, 10.45, 5.50, 9.82)
RXRX1_STDS = (7.96, 12.17, 5.86, 7.83, 4.70, 5.43)
#: Mean PNG file of the real release (185 GB / 791,718 files).
RELEASE_MEAN_PNG_BYTES = 233_669


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

    def summary(self) -> str:
        """A few lines for the end of a run: sizes, time, and per-channel statistics against the references."""
        lines = [
            f"wrote {self.out}: {self.n_sites:,} sites, {self.n_images:,} PNG files "
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


def _check_out(out: str) -> Path:
    if "://" in str(out):
        raise ValueError(f"synth writes to a local directory, not a URL: {out!r}")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreExistsError(f"{out}: exists and is not an empty directory; choose a new path or remove it")
    return path


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
        _check_range(name, value, lo, hi)
    if limit is not None:
        _check_range("limit", limit, 1)
    root = _check_out(out)

    if from_metadata is not None:
        text, site_list = _metadata_from_csv(from_metadata, limit)
    else:
        rows = _layout(experiments, plates, wells, sites, seed)
        text, site_list = _metadata_from_layout(rows[:limit] if limit is not None else rows)

    root.mkdir(parents=True, exist_ok=True)
    _write_metadata(root / "metadata.csv", text)
    site_ids = [row[0] for row in text]
    matrix = site_embeddings(
        [s.key for s in site_list],
        [s.treatment for s in site_list],
        [s.conc for s in site_list],
        embedding_dim,
        seed,
    )
    _write_embeddings(root / "embeddings.csv", site_ids, matrix)
    del matrix

    n_images, png_bytes = 0, 0
    histogram = np.zeros((len(CHANNELS), 256), np.int64)
    if not metadata_only:
        folders = {image_path(s.key.image(CHANNELS[0])).rsplit("/", 1)[0] for s in site_list}
        for folder in sorted(folders):
            (root / folder).mkdir(parents=True, exist_ok=True)
        tasks: list[_Task] = [
            (sid, s.treatment, s.conc, size, seed, str(root))
            for sid, s in zip(site_ids, site_list, strict=True)
        ]
        bar = tqdm(total=len(tasks), unit="site", desc="synth", disable=not progress)
        try:
            for written, hist in _run(tasks, workers):
                png_bytes += written
                histogram += hist
                n_images += len(CHANNELS)
                bar.update(1)
        finally:
            bar.close()

    levels = np.arange(256, dtype=np.float64)
    pixels = histogram.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = histogram @ levels / pixels
        stds = np.sqrt(np.maximum(histogram @ (levels**2) / pixels - means**2, 0.0))
    return SynthReport(
        out=str(out),
        n_sites=len(site_ids),
        n_images=n_images,
        png_bytes=png_bytes,
        mean_png_bytes=png_bytes / n_images if n_images else 0.0,
        channel_means=tuple(float(v) for v in means),
        channel_stds=tuple(float(v) for v in stds),
        seconds=time.perf_counter() - started,
    )
