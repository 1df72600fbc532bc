"""The RxRx2 path and identifier grammar: pure functions, no I/O.

RxRx2 publishes one PNG per site and channel::

    images/<experiment>/Plate<plate>/<well>_s<site>_w<channel>.png     e.g. images/HUVEC-1/Plate1/AA02_s2_w3.png

with ``well_id = <experiment>_<plate>_<well>`` and ``site_id = <well_id>_<site>``.

Wells are addressed on the 1536-well grid, 32 rows ``A``..``Z``, ``AA``..``AF`` by 48 columns ``01``..``48``.
Recursion's READMEs call the letters the "column" and the digits the "row"; this package follows the
plate-reader and OME-NGFF convention instead: **letters are the row, digits the column**. The original well
string is kept unchanged in the metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import PathGrammarError

__all__ = [
    "CHANNELS",
    "GRID_COLUMNS",
    "GRID_ROWS",
    "ImageKey",
    "SiteKey",
    "WellAddress",
    "image_path",
    "parse_image_path",
    "parse_site_id",
    "parse_well_id",
]

#: The 32 row names of a 1536-well plate, top to bottom.
GRID_ROWS: tuple[str, ...] = tuple([chr(ord("A") + i) for i in range(26)] + [f"A{chr(ord('A') + i)}" for i in range(6)])
#: The 48 column names of a 1536-well plate, left to right (two digits, as RxRx2 spells them).
GRID_COLUMNS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 49))
#: Channel numbers of an RxRx2 site (``w1``..``w6``).
CHANNELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)

_ROW_INDEX = {name: i for i, name in enumerate(GRID_ROWS)}
# An experiment name becomes a Zarr group name and a component of ids joined by "_", so it may hold neither "_"
# nor anything that is not a plain key character.
_EXPERIMENT = r"[A-Za-z0-9][A-Za-z0-9.\-]*"
_EXPERIMENT_RE = re.compile(rf"^{_EXPERIMENT}$")
_WELL_RE = re.compile(r"^(?P<row>[A-Z]{1,2})(?P<column>[0-9]{2})$")
_IMAGE_RE = re.compile(
    rf"^images/(?P<experiment>{_EXPERIMENT})/Plate(?P<plate>[1-9][0-9]*)/"
    r"(?P<well>[A-Z]{1,2}[0-9]{2})_s(?P<site>[1-9][0-9]*)_w(?P<channel>[1-9][0-9]*)\.png$"
)
_SITE_ID_RE = re.compile(rf"^(?P<experiment>{_EXPERIMENT})_(?P<plate>[1-9][0-9]*)_(?P<well>[A-Z]{{1,2}}[0-9]{{2}})_(?P<site>[1-9][0-9]*)$")
_WELL_ID_RE = re.compile(rf"^(?P<experiment>{_EXPERIMENT})_(?P<plate>[1-9][0-9]*)_(?P<well>[A-Z]{{1,2}}[0-9]{{2}})$")


def check_experiment(name: str) -> str:
    """Return ``name`` if it is a valid experiment name, else raise :class:`PathGrammarError`."""
    if not isinstance(name, str) or not _EXPERIMENT_RE.match(name):
        raise PathGrammarError(
            f"invalid experiment name {name!r}: expected letters, digits, '.' or '-' (e.g. 'HUVEC-1'), "
            "no '_', '/' or '..'"
        )
    if ".." in name:
        raise PathGrammarError(f"invalid experiment name {name!r}: '..' is not allowed")
    return name


@dataclass(frozen=True, order=True)
class WellAddress:
    """A well on the 1536-well grid: ``row`` letters (``A``..``AF``) and 1-based ``column`` (1..48)."""

    row: str
    column: int

    def __post_init__(self) -> None:
        if self.row not in _ROW_INDEX:
            raise PathGrammarError(f"invalid well row {self.row!r}: expected A..Z or AA..AF")
        if not isinstance(self.column, int) or not 1 <= self.column <= len(GRID_COLUMNS):
            raise PathGrammarError(f"invalid well column {self.column!r}: expected 1..48")

    @classmethod
    def parse(cls, text: str) -> WellAddress:
        """Parse ``"AA02"`` into ``WellAddress("AA", 2)``."""
        match = _WELL_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise PathGrammarError(f"invalid well address {text!r}: expected row letters A..AF and two digits 01..48")
        try:
            return cls(match["row"], int(match["column"]))
        except PathGrammarError as exc:
            raise PathGrammarError(f"invalid well address {text!r}: {exc}") from None

    @property
    def row_index(self) -> int:
        return _ROW_INDEX[self.row]

    @property
    def column_index(self) -> int:
        return self.column - 1

    @property
    def column_name(self) -> str:
        return GRID_COLUMNS[self.column - 1]

    def __str__(self) -> str:
        return f"{self.row}{self.column_name}"


def _positive(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PathGrammarError(f"invalid {what} {value!r}: expected a positive integer")


@dataclass(frozen=True, order=True)
class SiteKey:
    """One site (field of view): experiment, plate, well and site number."""

    experiment: str
    plate: int
    well: WellAddress
    site: int

    def __post_init__(self) -> None:
        check_experiment(self.experiment)
        _positive(self.plate, "plate")
        _positive(self.site, "site")

    @property
    def well_id(self) -> str:
        return f"{self.experiment}_{self.plate}_{self.well}"

    @property
    def site_id(self) -> str:
        return f"{self.well_id}_{self.site}"

    def image(self, channel: int) -> ImageKey:
        return ImageKey(self.experiment, self.plate, self.well, self.site, channel)

    def image_paths(self, channels: tuple[int, ...] = CHANNELS) -> list[str]:
        """The source paths of this site's PNGs, relative to the dataset root."""
        return [image_path(self.image(c)) for c in channels]


@dataclass(frozen=True, order=True)
class ImageKey:
    """One PNG of the source tree: a site and a channel number."""

    experiment: str
    plate: int
    well: WellAddress
    site: int
    channel: int

    def __post_init__(self) -> None:
        check_experiment(self.experiment)
        _positive(self.plate, "plate")
        _positive(self.site, "site")
        _positive(self.channel, "channel")

    @property
    def site_key(self) -> SiteKey:
        return SiteKey(self.experiment, self.plate, self.well, self.site)


def image_path(key: ImageKey) -> str:
    """Format an image key as its path relative to the dataset root (``images/HUVEC-1/Plate1/AA02_s2_w3.png``)."""
    return f"images/{key.experiment}/Plate{key.plate}/{key.well}_s{key.site}_w{key.channel}.png"


def parse_image_path(path: str) -> ImageKey:
    """Parse a path relative to the dataset root (``/`` separators) into an :class:`ImageKey`."""
    match = _IMAGE_RE.match(path) if isinstance(path, str) else None
    if match is None:
        raise PathGrammarError(
            f"not an RxRx2 image path: {path!r} "
            "(expected images/<experiment>/Plate<plate>/<well>_s<site>_w<channel>.png)"
        )
    try:
        return ImageKey(
            match["experiment"],
            int(match["plate"]),
            WellAddress.parse(match["well"]),
            int(match["site"]),
            int(match["channel"]),
        )
    except PathGrammarError as exc:
        raise PathGrammarError(f"not an RxRx2 image path: {path!r}: {exc}") from None


def parse_site_id(site_id: str) -> SiteKey:
    """Parse ``"HUVEC-1_1_AA03_1"`` into a :class:`SiteKey`."""
    match = _SITE_ID_RE.match(site_id) if isinstance(site_id, str) else None
    if match is None:
        raise PathGrammarError(
            f"invalid site_id {site_id!r}: expected <experiment>_<plate>_<well>_<site>, e.g. 'HUVEC-1_1_AA03_1'"
        )
    try:
        return SiteKey(match["experiment"], int(match["plate"]), WellAddress.parse(match["well"]), int(match["site"]))
    except PathGrammarError as exc:
        raise PathGrammarError(f"invalid site_id {site_id!r}: {exc}") from None


def parse_well_id(well_id: str) -> tuple[str, int, WellAddress]:
    """Parse ``"HUVEC-1_1_AA03"`` into ``(experiment, plate, well)``."""
    match = _WELL_ID_RE.match(well_id) if isinstance(well_id, str) else None
    if match is None:
        raise PathGrammarError(f"invalid well_id {well_id!r}: expected <experiment>_<plate>_<well>, e.g. 'HUVEC-1_1_AA03'")
    try:
        return check_experiment(match["experiment"]), int(match["plate"]), WellAddress.parse(match["well"])
    except PathGrammarError as exc:
        raise PathGrammarError(f"invalid well_id {well_id!r}: {exc}") from None
