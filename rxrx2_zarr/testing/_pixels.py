"""The pixels of a generated site: 8-bit cell-painting-like images of six channels.

Sparse cells on a dark background, the same cells in all six channels (w1 compact bright nuclei; w2..w6
cytoplasm, actin-like fibres, RNA with nucleoli, mitochondria-like puncta, membrane rims), smooth illumination
fall-off, per-plate intensity drift and camera noise (read noise plus shot noise). Per-channel means and standard
deviations are calibrated to RxRx1's published figures and the noise level to the release's PNG size (~234 KB
per 1024 x 1024 file): noise is what decides PNG size, so these constants were measured, not guessed (figures
next to them).

The coarse structure is drawn at a quarter (cell bodies) and a half (nuclei, textures) of the resolution then
upsampled, which is both faster and closer to a microscope (optically blurred; the pixel-level variation is
mostly noise). :func:`render_site` runs the steps in a fixed order: each step draws from the site's one random
stream, so reordering them would change every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._paths import parse_site_id
from ._filters import blur, up2, window
from ._phenotype import Phenotype, phenotype
from ._plates import MAX_SIZE, MIN_SIZE, check_range
from ._seeding import TAG_PLATE, TAG_SITE, normals, rng_for

__all__ = ["render_site"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

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


@dataclass(frozen=True)
class _Cells:
    """The cells of a site, one entry per cell, in full-resolution pixels (all channels share them)."""

    cy: F64
    cx: F64
    r_nuc: F64
    e_nuc: F64
    t_nuc: F64
    b_nuc: F64
    r_body: F64
    e_body: F64
    t_body: F64
    off_y: F64
    off_x: F64
    gain: F32  # (cells, 6): cell-to-cell intensity variation

    def __len__(self) -> int:
        return len(self.cy)


def _draw_cells(rng: np.random.Generator, pheno: Phenotype, size: int) -> _Cells:
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
    gain = np.exp(0.3 * rng.standard_normal((count, 6))).astype(np.float32)
    return _Cells(cy, cx, r_nuc, e_nuc, t_nuc, b_nuc, r_body, e_body, t_body, off_y, off_x, gain)


@dataclass(frozen=True)
class _Layers:
    """What the cells paint: at a quarter of the resolution, cell bodies (per-channel weighted), membrane rims,
    perinuclear density, orientation and how many cells cover a pixel; at half, nuclei (intensity and mask)."""

    body: F32
    body_w: F32
    rim: F32
    peri: F32
    orient: F32
    occupancy: F32
    nuc: F32
    nuc_mask: F32

    @classmethod
    def empty(cls, half: int, quarter: int) -> _Layers:
        def q() -> F32:
            return np.zeros((quarter, quarter), np.float32)

        h = np.zeros((half, half), np.float32)
        return cls(q(), np.zeros((6, quarter, quarter), np.float32), q(), q(), q(), q(), h, h.copy())


def _paint_nucleus(layers: _Layers, cells: _Cells, i: int, half: int) -> None:
    a, b = cells.r_nuc[i] * math.sqrt(cells.e_nuc[i]) / 2, cells.r_nuc[i] / math.sqrt(cells.e_nuc[i]) / 2
    c, s = math.cos(cells.t_nuc[i]), math.sin(cells.t_nuc[i])
    win = window(cells.cy[i] / 2 - 0.5, cells.cx[i] / 2 - 0.5, int(a + 2), half)
    if win is None:
        return
    ys, xs, yy, xx = win
    u, v = (c * xx + s * yy) / a, (c * yy - s * xx) / b
    r2 = u * u + v * v
    m = np.clip((1.0 - r2) * 2.5, 0.0, 1.0)
    np.maximum(layers.nuc_mask[ys, xs], m, out=layers.nuc_mask[ys, xs])
    layers.nuc[ys, xs] += cells.b_nuc[i] * m * (1.0 - 0.35 * np.minimum(r2, 1.0))


def _paint_body(layers: _Layers, cells: _Cells, i: int, wobble: F32, quarter: int) -> None:
    a, b = cells.r_body[i] * math.sqrt(cells.e_body[i]) / 4, cells.r_body[i] / math.sqrt(cells.e_body[i]) / 4
    c, s = math.cos(cells.t_body[i]), math.sin(cells.t_body[i])
    cy, cx = (cells.cy[i] + cells.off_y[i]) / 4 - 0.5, (cells.cx[i] + cells.off_x[i]) / 4 - 0.5
    win = window(cy, cx, int(a * 1.4 + 2), quarter)
    if win is None:
        return
    ys, xs, yy, xx = win
    u, v = (c * xx + s * yy) / a, (c * yy - s * xx) / b
    r = np.sqrt(u * u + v * v) * (1.0 + 0.25 * wobble[ys, xs])
    # Smoothstep edge a few pixels wide: a hard edge drawn at a quarter of the resolution shows stairs.
    f = np.clip((1.1 - r) * np.float32(1 / 0.35), 0.0, 1.0)
    f = f * f * (3.0 - 2.0 * f)
    np.maximum(layers.body[ys, xs], f, out=layers.body[ys, xs])
    layers.occupancy[ys, xs] += f
    layers.body_w[:, ys, xs] += cells.gain[i][:, None, None] * f
    layers.rim[ys, xs] += np.exp(-(((r - 0.93) / 0.13) ** 2))
    layers.orient[ys, xs] += f * np.float32(c * c - s * s)
    dy, dx = yy + np.float32(cells.off_y[i] / 4), xx + np.float32(cells.off_x[i] / 4)
    layers.peri[ys, xs] += np.exp(-(dy * dy + dx * dx) / np.float32((1.7 * cells.r_nuc[i] / 4) ** 2)) * f


def _paint_cells(rng: np.random.Generator, cells: _Cells, half: int, quarter: int) -> _Layers:
    # Ragged cell edges: smooth noise (two box passes, near-Gaussian; one pass leaves square steps), sd ~0.4.
    wobble = blur(blur(normals(rng, (quarter, quarter)), 2), 2) * np.float32(3.0)
    layers = _Layers.empty(half, quarter)
    for i in range(len(cells)):
        _paint_nucleus(layers, cells, i, half)
        _paint_body(layers, cells, i, wobble, quarter)
    return layers


@dataclass(frozen=True)
class _Textures:
    """Half-resolution textures (a grain of ~4-8 pixels once upsampled) and the illumination field."""

    grain: F32
    grain2: F32
    grain3: F32
    fibre: F32
    illumination: F32


def _draw_textures(rng: np.random.Generator, orient: F32, half: int) -> _Textures:
    grain = blur(normals(rng, (half, half)), 1) * np.float32(1.7)  # sd ~1
    grain2 = blur(normals(rng, (half, half)), 1) * np.float32(1.7)
    grain3 = blur(normals(rng, (half, half)), 1) * np.float32(1.7)
    fibre_h = blur(normals(rng, (half, half)), 1, 5) * np.float32(3.0)  # actin-like streaks along x ...
    fibre_v = blur(normals(rng, (half, half)), 5, 1) * np.float32(3.0)  # ... and along y
    along = up2(np.clip(0.5 + 0.5 * orient, 0.0, 1.0))[:half, :half]  # each cell's fibres follow its long axis
    fibre = along * fibre_h + (1.0 - along) * fibre_v
    # Smooth illumination: a fixed vignette plus a small per-site variation.
    yv = (np.arange(half, dtype=np.float32) - half / 2) / np.float32(half / 2)
    vignette = 1.0 - 0.18 * (yv[:, None] ** 2 + yv[None, :] ** 2)
    drift = normals(rng, (-(-half // 64) + 1,) * 2) * np.float32(0.08)  # +-8% over ~100 pixels and more
    for _ in range(6):
        drift = up2(drift)
    illumination = (vignette * np.exp(drift[:half, :half])).astype(np.float32, copy=False)  # float32 already
    return _Textures(grain, grain2, grain3, fibre, illumination)


def _coarse_channels(layers: _Layers, half: int) -> F32:
    """The quarter-resolution signal of w2..w6 (and the actin rim), upsampled to half resolution."""
    # Cells share the space where they overlap (they tile rather than stack), so crowded fields do not
    # saturate: divide by the number of cells covering a pixel.
    crowd = np.float32(1.0) / np.maximum(layers.occupancy, np.float32(1.0))
    body_w, rim, peri = layers.body_w * crowd, layers.rim * crowd, layers.peri * crowd
    peri_c = np.minimum(peri, 1.5)
    stacked = np.stack(
        [
            body_w[1] * (0.3 + 0.7 * peri_c),  # w2: cytoplasm, denser around the nucleus
            body_w[2],  # w3: actin-like, whole cell ...
            rim,  # ... brighter at the cortex
            body_w[3] * peri_c,  # w4: RNA in the cytoplasm
            body_w[4] * peri_c,  # w5: mitochondria around the nucleus
            0.4 * body_w[5] + rim * layers.body + 0.8 * peri_c * peri_c,  # w6: membrane rims and Golgi-like spot
        ]
    )
    coarse: F32 = up2(stacked)[:, :half, :half]
    return coarse


def _plate_gains(seed: int, experiment: str, plate: int) -> F32:
    # Plate-to-plate intensity drift (staining batches): the batch effect real data has and normalisers remove.
    return np.exp(0.06 * rng_for(seed, TAG_PLATE, experiment, plate).standard_normal(6)).astype(np.float32)


def _signal(layers: _Layers, textures: _Textures, gains: F32, half: int) -> F32:
    """The noise-free expected intensity of each channel at half resolution, background included."""
    coarse = _coarse_channels(layers, half)
    t, nuc, nuc_mask = textures, layers.nuc, layers.nuc_mask
    sig = np.empty((6, half, half), np.float32)
    sig[0] = nuc * (1.0 + 0.2 * t.grain)
    sig[1] = coarse[0] * (1.0 + 0.3 * t.grain2) * (1.0 - 0.6 * nuc_mask)
    sig[2] = coarse[1] * (0.6 + 0.4 * np.clip(t.fibre, -1.0, 3.0)) + 0.8 * coarse[2]
    sig[3] = coarse[3] * (1.0 + 0.3 * t.grain2) + 0.5 * nuc_mask * (1.0 + 1.2 * np.clip(t.grain - 0.7, 0.0, None))
    sig[4] = coarse[4] * 1.6 * np.clip(t.grain3 - 0.3, 0.0, None)
    sig[5] = coarse[5]
    np.maximum(sig, 0.0, out=sig)
    sig *= gains[:, None, None]
    sig += np.asarray(_BG, np.float32)[:, None, None] * t.illumination
    return sig


def _expose(rng: np.random.Generator, sig: F32, size: int) -> U8:
    """The camera: full resolution, read and shot noise, rounding to 8 bits."""
    out = np.empty((6, size, size), np.uint8)
    for k in range(6):
        level = up2(sig[k])[:size, :size]
        sd = np.sqrt(np.float32(_READ[k] ** 2) + np.float32(_GAIN[k]) * level)
        level += sd * normals(rng, (size, size))
        level += np.float32(0.5)  # round half up by truncation below
        np.clip(level, 0.0, 255.0, out=level)
        out[k] = level.astype(np.uint8)
    return out


def render_site(site_id: str, treatment: str, conc: float, *, size: int = 1024, seed: int = 0) -> U8:
    """Render the six channels of one site as a ``(6, size, size)`` uint8 array.

    Deterministic in ``(site_id, treatment, conc, size, seed)``; ``conc`` is NaN for EMPTY controls. Cells keep
    their size whatever ``size``: a smaller site is a crop of a field, not a shrunken one.
    """
    check_range("size", size, MIN_SIZE, MAX_SIZE)
    key = parse_site_id(site_id)
    pheno = phenotype(seed, treatment, conc)
    rng = rng_for(seed, TAG_SITE, site_id)
    half = -(-size // 2)
    quarter = -(-half // 2)
    cells = _draw_cells(rng, pheno, size)
    layers = _paint_cells(rng, cells, half, quarter)
    textures = _draw_textures(rng, layers.orient, half)
    gains = np.asarray(pheno.gains, np.float32) * _plate_gains(seed, key.experiment, key.plate)
    gains *= np.asarray(_AMP, np.float32)
    return _expose(rng, _signal(layers, textures, gains, half), size)
