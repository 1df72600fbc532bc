"""The plates of a generated dataset: the release's layout (wells, factors, doses, EMPTY controls, short wells)
and its ``metadata.csv`` rows, generated or read from an existing metadata file.

Wells come from the interior of a 1536-well plate (rows B..AE, columns 02..47: exactly 1,380 wells, the number
RxRx2 uses per plate). As in the real plates, every plate holds every factor it has room for in about three
wells, at one dose per pair of plates (plates 1-2 the highest dose, 11-12 the lowest), plus ``EMPTY`` controls
(about 5.7% of the wells, at least one per plate) with a blank concentration. A few wells lack some sites
(1,2,4 or 2,3,4 ...): ``round(wells * sites * 527 / 132480)`` missing sites, so the full layout (2 x 12 x 1380)
has exactly the release's 131,953 sites. Treatment names are the 37 real factors of our metadata sample then
generated ``SF-001``... up to the release's 433 factors; concentrations are copied as the *text* the release
publishes (``0.0009999999999999``, ``9.999999999999998e-05``), not re-formatted floats, because those artefacts
are what parsers must survive.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _fs
from .._paths import GRID_COLUMNS, GRID_ROWS, SiteKey, WellAddress, parse_site_id
from .._schema import METADATA_COLUMNS, METADATA_NAMES, find_source_file, load_metadata
from ._seeding import TAG_LAYOUT, TAG_SHORT, rng_for

__all__ = [
    "CELL_TYPE",
    "EMPTY",
    "FACTORS",
    "MAX_SITES",
    "MAX_SIZE",
    "MAX_WELLS",
    "MIN_SIZE",
    "GeneratedRow",
    "Site",
    "check_range",
    "dose_series",
    "metadata_from_csv",
    "metadata_from_layout",
    "plate_layout",
    "write_metadata",
]

CELL_TYPE = "HUVEC"
EMPTY = "EMPTY"


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


@dataclass(frozen=True)
class GeneratedRow:
    """A generated metadata row: the site, its treatment and the concentration as the text to write."""

    key: SiteKey
    treatment: str
    conc_text: str

    @property
    def conc(self) -> float:
        return float(self.conc_text) if self.conc_text else math.nan


@dataclass(frozen=True)
class Site:
    """What rendering needs of a site, whether generated or read from a metadata file."""

    key: SiteKey
    treatment: str
    conc: float  # NaN for EMPTY


def check_range(name: str, value: int, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def _interior_wells() -> list[WellAddress]:
    return [WellAddress(r, c) for r in INTERIOR_ROWS for c in INTERIOR_COLUMNS]


def plate_layout(experiments: int, plates: int, wells: int, sites: int, seed: int) -> list[GeneratedRow]:
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
            rng = rng_for(seed, TAG_LAYOUT, experiment, plate)
            chosen = np.sort(rng.choice(MAX_WELLS, size=wells, replace=False))
            # One dose per pair of plates, highest first (plates 1-2 at 0.1, 3-4 at 0.01, ... in the release).
            dose = 5 - ((plate - 1) // 2) % 6
            labels = [EMPTY] * n_empty + [FACTORS[j % n_factors] for j in range(n_treated)]
            assigned = [labels[j] for j in rng.permutation(wells).tolist()]  # scattered over the plate
            for index, treatment in zip(chosen.tolist(), assigned, strict=True):
                conc = "" if treatment == EMPTY else dose_series(treatment)[dose]
                plate_wells.append((experiment, plate, interior[index], treatment, conc))
    missing = _missing_sites(len(plate_wells), sites, seed)
    rows: list[GeneratedRow] = []
    for w, (experiment, plate, well, treatment, conc) in enumerate(plate_wells):
        gone = missing.get(w, ())
        for site in range(1, sites + 1):
            if site not in gone:
                rows.append(GeneratedRow(SiteKey(experiment, plate, well, site), treatment, conc))
    return rows


def _missing_sites(n_wells: int, sites: int, seed: int) -> dict[int, tuple[int, ...]]:
    """Which sites each short well lacks (well index -> site numbers); a well keeps at least one site."""
    if sites < 2:
        return {}
    total = round(n_wells * sites * MISSING_SITES / SITE_SLOTS)
    if n_wells >= 4:
        total = max(total, 1)
    total = min(total, n_wells * (sites - 1))
    rng = rng_for(seed, TAG_SHORT, "short-wells")
    out: dict[int, tuple[int, ...]] = {}
    for well in rng.permutation(n_wells).tolist():
        if total <= 0:
            break
        k = min(int(rng.choice(len(_SHORT_WEIGHTS), p=_SHORT_WEIGHTS)) + 1, sites - 1, total)
        out[well] = tuple(sorted(int(s) + 1 for s in rng.choice(sites, size=k, replace=False)))
        total -= k
    return out


def metadata_from_csv(url: str, limit: int | None) -> tuple[list[list[str]], list[Site]]:
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
        Site(parse_site_id(str(site_id)), str(treatment), float(conc))
        for site_id, treatment, conc in zip(
            typed["site_id"].iloc[:n],
            typed["treatment"].iloc[:n],
            typed["treatment_conc"].iloc[:n],
            strict=True,
        )
    ]
    return text, sites


def metadata_from_layout(rows: Sequence[GeneratedRow]) -> tuple[list[list[str]], list[Site]]:
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
    return text, [Site(r.key, r.treatment, r.conc) for r in rows]


def write_metadata(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(rows)

