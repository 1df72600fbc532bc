"""What a treatment at a dose does to the cells: a Hill curve per factor sets the strength of its effects on
cell density, nucleus and cell size, elongation and per-channel intensity (and, in :mod:`._embeddings`, how far
it moves a site's embedding), so that models and viewers have something real to find."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._plates import EMPTY
from ._seeding import TAG_FACTOR, rng_for

__all__ = ["Phenotype", "phenotype", "strength"]


@dataclass(frozen=True)
class Phenotype:
    """How the cells of a site look: shared by all its cells, varied per cell around it when rendering."""

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
    rng = rng_for(seed, TAG_FACTOR, treatment)
    return _Factor(
        log_ec50=float(rng.uniform(-5.0, -1.5)),
        hill=float(rng.uniform(0.8, 1.6)),
        # Most factors act modestly, a few strongly (as in the release, where many cytokines barely show):
        # median 0.55, a fifth above 0.9.
        amplitude=float(np.clip(rng.lognormal(-0.6, 0.6), 0.1, 1.2)),
        effects=tuple(float(v) for v in rng.standard_normal(len(_EFFECT_SD)) * _EFFECT_SD),
    )


def strength(seed: int, treatment: str, conc: float) -> float:
    """Effect strength of ``treatment`` at ``conc``: a Hill curve per factor, 0 for EMPTY or a blank dose."""
    if treatment == EMPTY or not math.isfinite(conc) or conc <= 0.0:
        return 0.0
    factor = _factor(seed, treatment)
    return factor.amplitude / (1.0 + math.pow(10.0, factor.hill * (factor.log_ec50 - math.log10(conc))))


def phenotype(seed: int, treatment: str, conc: float) -> Phenotype:
    """The cells under ``treatment`` at ``conc``: the controls' phenotype moved by each effect times the strength."""
    s = strength(seed, treatment, conc)
    e = _factor(seed, treatment).effects if s > 0.0 else (0.0,) * len(_EFFECT_SD)
    return Phenotype(
        density=_BASE_DENSITY * float(np.clip(math.exp(s * e[0]), 0.5, 1.5)),
        nucleus_radius=_BASE_NUCLEUS_RADIUS * float(np.clip(math.exp(s * e[1]), 0.8, 1.25)),
        body_ratio=_BASE_BODY_RATIO * float(np.clip(math.exp(s * e[2]), 0.75, 1.35)),
        elongation=math.exp(s * e[3]),
        gains=tuple(float(np.clip(math.exp(s * v), 0.65, 1.5)) for v in e[4:]),
    )

