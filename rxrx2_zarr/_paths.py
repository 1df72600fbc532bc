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

import functools
import re
from dataclasses import dataclass

from ._errors import PathGrammarError

__all__ = [
    "CHANNELS",
    "GRID_COLUMNS",
    "GRID_ROWS",
    "INT32_MAX",
    "RESERVED_NAMES",
    "RESERVED_PREFIXES",
    "RESERVED_SUFFIXES",
    "ImageKey",
    "SiteKey",
    "WellAddress",
    "check_experiment",
    "image_path",
    "is_reserved_name",
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

#: Plate, site and channel numbers are stored as int32 (index arrays, attributes): 1..INT32_MAX.
INT32_MAX = 2**31 - 1

# --- names the store layout uses at its root ---------------------------------------------------------------------
# Experiments are groups at the store root, next to the store's own objects: an experiment named like one of them
# would replace it (or be replaced by it). This is the one list of those names; ``check_experiment`` refuses them,
# compared case-insensitively (macOS and Windows filesystems are), so ``Index`` is refused too.
#: Exact names of root objects: the index group, the columnar index, the embeddings array, the root document and
#: the converter's lock.
RESERVED_NAMES: frozenset[str] = frozenset({"index", "index.parquet", "embeddings", "zarr.json", ".rxrx2-zarr.lock"})
#: Prefixes kept for Zarr (``zarr.json``, future ``zarr.*`` documents), hidden files and private objects.
RESERVED_PREFIXES: tuple[str, ...] = ("zarr", ".", "_")
#: Suffixes of temporary objects (torn writes, removed by ``--resume``).
RESERVED_SUFFIXES: tuple[str, ...] = (".partial",)


def is_reserved_name(name: str) -> bool:
    """True when ``name`` may not be an experiment (a root group): the store layout uses it or may use it."""
    folded = name.lower()
    return folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIXES) or folded.endswith(RESERVED_SUFFIXES)


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
    """Return ``name`` if it is a valid experiment name, else raise :class:`PathGrammarError`.

    Refused: anything but letters, digits, '.' and '-' (starting with a letter or digit), '..', and the names the
    store layout uses at its root (:func:`is_reserved_name`).
    """
    error = _experiment_error(name) if isinstance(name, str) else f"invalid experiment name {name!r}: not a string"
    if error is not None:
        raise PathGrammarError(error)
    return name


@functools.lru_cache(maxsize=4096)  # called for every site of a plan: a dataset has a handful of experiments
def _experiment_error(name: str) -> str | None:
    if not _EXPERIMENT_RE.match(name):
        return (
            f"invalid experiment name {name!r}: expected letters, digits, '.' or '-' (e.g. 'HUVEC-1'), "
            "no '_', '/' or '..'"
        )
    if ".." in name:
        return f"invalid experiment name {name!r}: '..' is not allowed"
    if is_reserved_name(name):
        return (
            f"invalid experiment name {name!r}: reserved, the store uses it at its root (reserved: "
            f"{', '.join(sorted(RESERVED_NAMES))}, and any name starting with 'zarr', '.' or '_' or ending in "
            "'.partial', in any letter case)"
        )
    return None


@dataclass(frozen=True, order=True, slots=True)
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
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT32_MAX:
        raise PathGrammarError(f"invalid {what} {value!r}: expected a positive integer (1..{INT32_MAX})")


@dataclass(frozen=True, order=True, slots=True)
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
        """The source paths of this site's PNGs, relative to the dataset root (as :func:`image_path` formats them;
        the key is valid already, so no :class:`ImageKey` is built: this runs for every site of a plan)."""
        if channels is not CHANNELS:
            for c in channels:
                _positive(c, "channel")
        stem = self.image_stem
        return [f"{stem}{c}.png" for c in channels]

    @property
    def image_stem(self) -> str:
        """This site's image paths up to the channel number: ``images/HUVEC-1/Plate1/AA02_s2_w``."""
        return f"images/{self.experiment}/Plate{self.plate}/{self.well}_s{self.site}_w"


@dataclass(frozen=True, order=True, slots=True)
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
