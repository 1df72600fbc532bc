"""The RxRx2 metadata schema: ``metadata.csv`` and ``embeddings.csv`` loaded, typed and validated.

I/O happens only in the ``load_*`` functions at the edge; validation works on in-memory frames and reports every
problem it finds (up to a limit), each naming the CSV line, the site_id, the column and the offending value.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from . import _fs
from ._errors import MetadataError, PathGrammarError, SourceError
from ._paths import WellAddress, check_experiment

__all__ = [
    "EMBEDDINGS_NAMES",
    "METADATA_COLUMNS",
    "METADATA_NAMES",
    "Embeddings",
    "align_embeddings",
    "find_source_file",
    "load_embeddings",
    "load_metadata",
    "parse_embeddings",
    "validate_metadata",
]

#: The nine columns of RxRx2's ``metadata.csv``, in the published order.
METADATA_COLUMNS: tuple[str, ...] = (
    "site_id",
    "well_id",
    "cell_type",
    "experiment",
    "plate",
    "well",
    "site",
    "treatment",
    "treatment_conc",
)
STRING_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "well", "treatment")
INTEGER_COLUMNS = ("plate", "site")
#: Accepted file names, current name first.
METADATA_NAMES = ("metadata.csv", "rxrx2-metadata.csv")
EMBEDDINGS_NAMES = ("embeddings.csv", "rxrx2-embeddings.csv")
#: How many problems one error message lists before summarising the rest.
MAX_LISTED = 20
# Text values end up in JSON attributes and (experiment, well) in Zarr keys: refuse what could escape a path or
# confuse a reader. Treatments such as "LPS_EK" or "IL-1-beta" are fine.
_UNSAFE_TEXT = re.compile(r"[/\\\x00-\x1f\x7f]|^\.\.?$|\.\.")


def find_source_file(root: str, names: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> str:
    """Return the URL of the first of ``names`` that exists under ``root`` (current name before the older one)."""
    fs, base = _fs.resolve(root, storage_options)
    for name in names:
        if fs.isfile(_fs.join(base, name)):
            return _fs.join(root, name)
    raise SourceError(f"{root}: no {' or '.join(names)} found")


def _read_source(
    url: str, names: Sequence[str], storage_options: Mapping[str, Any] | None, what: str
) -> tuple[str, bytes]:
    """The bytes of a CSV named by ``url``, or of the first of ``names`` in ``url`` if it is a directory."""
    fs, path = _fs.resolve(url, storage_options)
    if fs.isdir(path):
        url = find_source_file(url, names, storage_options)
        fs, path = _fs.resolve(url, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            return url, bytes(handle.read())
    except FileNotFoundError:
        raise SourceError(f"{url}: {what} file not found") from None


def _line(index: int) -> int:
    """CSV line number of the data row at position ``index`` (line 1 is the header)."""
    return index + 2


def _where(frame: pd.DataFrame, index: int) -> str:
    site_id = frame["site_id"].iloc[index] if "site_id" in frame else None
    label = f" (site_id {site_id!r})" if isinstance(site_id, str) and site_id else ""
    return f"line {_line(index)}{label}"


def _raise_problems(source: str, problems: list[str]) -> None:
    if not problems:
        return
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise MetadataError(f"{source}: {len(problems)} problem(s):\n  {listed}{more}")


def load_metadata(url: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Load and validate an RxRx2 ``metadata.csv`` from a path or fsspec URL.

    ``url`` may name the CSV itself or a dataset root holding ``metadata.csv`` (or ``rxrx2-metadata.csv``).
    """
    url, raw = _read_source(url, METADATA_NAMES, storage_options, "metadata")
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{url}: not a readable CSV: {exc}") from None
    return validate_metadata(frame, source=url)


def validate_metadata(raw: pd.DataFrame, source: str = "metadata.csv") -> pd.DataFrame:
    """Type and validate a metadata frame read with every column as text; return the typed frame.

    Columns must be exactly :data:`METADATA_COLUMNS` in order; plate and site become int64, treatment_conc float64
    with blank as NaN (the ``EMPTY`` controls). Raises :class:`MetadataError` listing every problem found.
    """
    columns = [str(c) for c in raw.columns]
    missing = [c for c in METADATA_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in METADATA_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        raise MetadataError(f"{source}: {'; '.join(parts)}; expected exactly {list(METADATA_COLUMNS)}")
    if tuple(columns) != METADATA_COLUMNS:
        raise MetadataError(f"{source}: columns in the wrong order {columns}; expected {list(METADATA_COLUMNS)}")
    frame = raw.astype(str).reset_index(drop=True)
    problems: list[str] = []

    for column in STRING_COLUMNS:
        values = frame[column]
        bad = values.str.len().eq(0) | values.str.contains(_UNSAFE_TEXT, regex=True)
        for i in np.flatnonzero(bad.to_numpy()).tolist():
            problems.append(f"{_where(frame, i)}: column {column!r}: unsafe or empty value {values.iloc[i]!r}")

    typed: dict[str, Any] = {}
    for column in INTEGER_COLUMNS:
        values = frame[column].str.strip()
        numbers = pd.to_numeric(values, errors="coerce")
        ok = numbers.notna() & values.str.fullmatch(r"[0-9]+") & (numbers >= 1)
        for i in np.flatnonzero(~ok.to_numpy()).tolist():
            problems.append(f"{_where(frame, i)}: column {column!r}: not a positive integer: {frame[column].iloc[i]!r}")
        typed[column] = numbers.where(ok, 0).astype("int64")

    conc_text = frame["treatment_conc"].str.strip()
    conc = pd.to_numeric(conc_text.where(conc_text != "", None), errors="coerce").astype("float64")
    bad_conc = (conc_text != "") & (conc.isna() | ~np.isfinite(conc.fillna(0.0)) | (conc.fillna(0.0) < 0))
    for i in np.flatnonzero(bad_conc.to_numpy()).tolist():
        problems.append(
            f"{_where(frame, i)}: column 'treatment_conc': not a non-negative number: {frame['treatment_conc'].iloc[i]!r}"
        )
    typed["treatment_conc"] = conc

    # Per-row grammar: experiment and well become Zarr keys; ids must agree with the columns they are built from.
    plates, sites = typed["plate"].to_numpy(), typed["site"].to_numpy()
    experiments, wells = frame["experiment"].to_numpy(), frame["well"].to_numpy()
    well_ids, site_ids = frame["well_id"].to_numpy(), frame["site_id"].to_numpy()
    checked_experiments: dict[str, str | None] = {}
    checked_wells: dict[str, str | None] = {}
    for i in range(len(frame)):
        experiment, well = str(experiments[i]), str(wells[i])
        if experiment not in checked_experiments:
            try:
                check_experiment(experiment)
                checked_experiments[experiment] = None
            except PathGrammarError as exc:
                checked_experiments[experiment] = str(exc)
        if well not in checked_wells:
            try:
                WellAddress.parse(well)
                checked_wells[well] = None
            except PathGrammarError as exc:
                checked_wells[well] = str(exc)
        if (err := checked_experiments[experiment]) is not None:
            problems.append(f"{_where(frame, i)}: column 'experiment': {err}")
            continue
        if (err := checked_wells[well]) is not None:
            problems.append(f"{_where(frame, i)}: column 'well': {err}")
            continue
        if plates[i] < 1 or sites[i] < 1:
            continue  # already reported above
        expected_well_id = f"{experiment}_{plates[i]}_{well}"
        if well_ids[i] != expected_well_id:
            problems.append(
                f"{_where(frame, i)}: column 'well_id': {well_ids[i]!r} does not match experiment, plate and well "
                f"(expected {expected_well_id!r})"
            )
        expected_site_id = f"{expected_well_id}_{sites[i]}"
        if site_ids[i] != expected_site_id:
            problems.append(
                f"line {_line(i)}: column 'site_id': {site_ids[i]!r} does not match experiment, plate, well and site "
                f"(expected {expected_site_id!r})"
            )

    duplicated = frame["site_id"].duplicated(keep="first").to_numpy()
    for i in np.flatnonzero(duplicated).tolist():
        first = int(np.flatnonzero(frame["site_id"].to_numpy() == site_ids[i])[0])
        problems.append(
            f"line {_line(i)}: column 'site_id': duplicate site_id {site_ids[i]!r} (first on line {_line(first)})"
        )
    _raise_problems(source, problems)

    out = pd.DataFrame({c: frame[c] for c in METADATA_COLUMNS})
    for column, values in typed.items():
        out[column] = values
    return out


@dataclass(frozen=True)
class Embeddings:
    """An embeddings table: ``site_ids`` (in file order) and a float32 ``matrix`` of shape (n, K)."""

    site_ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    matrix: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.site_ids), len(self.feature_names)):
            raise ValueError(f"embeddings matrix shape {self.matrix.shape} does not match ids and features")

    @property
    def dim(self) -> int:
        return len(self.feature_names)


def load_embeddings(
    url: str, storage_options: Mapping[str, Any] | None = None, *, name: str | None = None
) -> Embeddings:
    """Load ``embeddings.csv``: a ``site_id`` column then K feature columns (K inferred from the header).

    ``name``, if given, is how errors name the file (default: the URL). Every row must have exactly K + 1 fields, all features numeric and finite, every site_id present once.
    """
    url, raw = _read_source(url, EMBEDDINGS_NAMES, storage_options, "embeddings")
    # errors name the file as the caller knows it (the converter: relative to SRC)
    return parse_embeddings(raw, name or url)


def parse_embeddings(raw: bytes, url: str) -> Embeddings:
    """Parse and check the bytes of an embeddings CSV (see :func:`load_embeddings`); ``url`` names it in errors."""
    lines = raw.splitlines()
    if not lines:
        raise MetadataError(f"{url}: empty file (expected a header 'site_id,feature_0,...')")
    header = lines[0].decode("utf-8", errors="replace").split(",")
    if header[0].strip() != "site_id" or len(header) < 2:
        raise MetadataError(f"{url}: line 1: expected a header starting with 'site_id' and at least one feature column")
    width = len(header)
    problems: list[str] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.count(b",") + 1
        if fields != width:
            site = line.split(b",", 1)[0].decode("utf-8", errors="replace")
            problems.append(f"line {number} (site_id {site!r}): {fields} fields, expected {width} (site_id + {width - 1} features)")
    _raise_problems(url, problems)
    features = [h.strip() for h in header[1:]]
    # Fast path: let the C parser read the features as numbers (a 131,953 x 128 file in ~2 s); a column that
    # holds anything else comes back as text and only those columns are re-parsed to locate the bad cells.
    frame = pd.read_csv(
        io.BytesIO(raw), dtype={header[0]: str}, keep_default_na=False, na_filter=False, skip_blank_lines=True
    )
    numeric = frame.iloc[:, 1:]
    text_columns = [c for c in numeric.columns if not pd.api.types.is_numeric_dtype(numeric[c])]
    if text_columns:
        numeric = numeric.copy()
        for column in text_columns:
            numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    values = numeric.to_numpy(dtype=np.float64)
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    for r, c in zip(bad_rows[: MAX_LISTED + 1], bad_cols[: MAX_LISTED + 1], strict=True):
        problems.append(
            f"line {_line(int(r))} (site_id {frame.iloc[r, 0]!r}): column {features[c]!r}: not a finite number: "
            f"{frame.iloc[r, c + 1]!r}"
        )
    if len(bad_rows) > MAX_LISTED + 1:
        problems.extend(["..."] * (len(bad_rows) - MAX_LISTED - 1))
    ids = frame.iloc[:, 0].astype(str)
    for i in np.flatnonzero(ids.duplicated().to_numpy()):
        problems.append(f"line {_line(int(i))}: duplicate site_id {ids.iloc[i]!r}")
    _raise_problems(url, problems)
    return Embeddings(tuple(ids), tuple(features), values.astype(np.float32))


@dataclass(frozen=True)
class AlignedEmbeddings:
    """Embeddings reordered to a list of site_ids: NaN rows where a site has none."""

    matrix: npt.NDArray[np.float32]
    missing: tuple[str, ...]
    """site_ids of the metadata with no embedding row."""
    unknown: tuple[str, ...]
    """site_ids of the embeddings file that are not in the full metadata."""


def align_embeddings(
    embeddings: Embeddings, site_ids: Sequence[str], known_site_ids: Sequence[str] | None = None
) -> AlignedEmbeddings:
    """Reorder ``embeddings`` to ``site_ids``; ``known_site_ids`` (default: ``site_ids``) defines "unknown"."""
    position = {site_id: i for i, site_id in enumerate(embeddings.site_ids)}
    matrix = np.full((len(site_ids), embeddings.dim), np.nan, dtype=np.float32)
    rows = np.array([position.get(s, -1) for s in site_ids], dtype=np.int64)
    present = rows >= 0
    matrix[present] = embeddings.matrix[rows[present]]
    missing = tuple(s for s, ok in zip(site_ids, present, strict=True) if not ok)
    known = set(known_site_ids if known_site_ids is not None else site_ids)
    unknown = tuple(s for s in embeddings.site_ids if s not in known)
    return AlignedEmbeddings(matrix, missing, unknown)


def is_missing_conc(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
