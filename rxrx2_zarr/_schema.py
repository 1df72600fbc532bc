"""The RxRx2 metadata schema: ``metadata.csv`` and ``embeddings.csv`` loaded, typed and validated.

I/O happens only in the ``load_*`` functions at the edge; validation works on in-memory frames and reports every
problem it finds (up to a limit), each naming the CSV line, the site_id, the column and the offending value.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from . import _fs
from ._columns import INTEGER_COLUMNS, METADATA_COLUMNS, STRING_COLUMNS
from ._errors import MetadataError, PathGrammarError, SourceError
from ._paths import INT32_MAX, WellAddress, check_experiment
from ._text import MAX_LISTED, count, problem_lines

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
    "read_metadata_csv",
    "validate_metadata",
]

#: Accepted file names, current name first.
METADATA_NAMES = ("metadata.csv", "rxrx2-metadata.csv")
EMBEDDINGS_NAMES = ("embeddings.csv", "rxrx2-embeddings.csv")
# Text values end up in JSON attributes and (experiment, well) in Zarr keys: refuse what could escape a path or
# confuse a reader. Treatments such as "LPS_EK" or "IL-1-beta" are fine.
_UNSAFE_TEXT = re.compile(r"[/\\\x00-\x1f\x7f]|^\.\.?$|\.\.")
_BOM = b"\xef\xbb\xbf"
#: Largest finite float32: an embedding beyond it would be stored as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def find_source_file(root: str, names: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> str:
    """Return the URL of the first of ``names`` that exists under ``root`` (current name before the older one)."""
    fs, base = _fs.resolve(root, storage_options)
    for name in names:
        if fs.exists(_fs.join(base, name)):  # a FIFO or directory of that name is refused when read, by name
            return _fs.join(root, name)
    raise SourceError(f"{root}: no {' or '.join(names)} found")


def _read_source(
    url: str, names: Sequence[str], storage_options: Mapping[str, Any] | None, what: str, name: str | None = None
) -> tuple[str, bytes]:
    """The bytes of a CSV named by ``url``, or of the first of ``names`` in ``url`` if it is a directory; ``name``
    is how errors name the file (default: its URL)."""
    fs, path = _fs.resolve(url, storage_options)
    if fs.isdir(path):
        url = find_source_file(url, names, storage_options)
        fs, path = _fs.resolve(url, storage_options)
    try:
        return url, _fs.read_regular(fs, path, name or url)
    except FileNotFoundError:
        raise SourceError(f"{url}: {what} file not found") from None


def _line(index: int, lines: npt.NDArray[np.int64] | None = None) -> int:
    """Physical CSV line of the data row at position ``index`` (line 1 is the header); without ``lines`` (a frame
    built in memory), position + 2."""
    return int(lines[index]) if lines is not None else index + 2


def _where(frame: pd.DataFrame, index: int, lines: npt.NDArray[np.int64] | None = None) -> str:
    site_id = frame["site_id"].iloc[index] if "site_id" in frame else None
    label = f" (site_id {site_id!r})" if isinstance(site_id, str) and site_id else ""
    return f"line {_line(index, lines)}{label}"


class _Problems:
    """Problems found in a file: the first :data:`MAX_LISTED` as text, the rest only counted (a million bad rows
    must not build a million messages)."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.total = 0

    def add(self, text: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(text)

    def add_rows(self, mask: npt.NDArray[np.bool_], describe: Any) -> None:
        """One problem per True of ``mask``; ``describe(position)`` is called for the listed ones only."""
        rows = np.flatnonzero(mask)
        room = max(0, MAX_LISTED - len(self.listed))
        self.listed.extend(describe(int(i)) for i in rows[:room])
        self.total += len(rows)

    def raise_if_any(self, source: str) -> None:
        if not self.total:
            return
        lines = problem_lines(self.listed, total=self.total)
        raise MetadataError(f"{source}: {count(self.total, 'problem')}:\n" + "\n".join(lines))


def _data_lines(raw: bytes) -> npt.NDArray[np.int64]:
    """The physical line number of every CSV record after the header, skipping blank lines as pandas does.

    Without quotes every non-blank line is one record (found with numpy, linear); with quotes a record may span
    lines, so the C csv module counts them.
    """
    if b'"' not in raw[raw.find(b"\n") + 1 :]:  # quotes in the header line alone do not change the line structure
        text = np.frombuffer(raw, dtype=np.uint8)
        ends = np.flatnonzero(text == ord("\n"))
        starts = np.concatenate(([0], ends + 1))
        stops = np.concatenate((ends, [len(raw)]))
        # a line is blank when it holds nothing but an optional carriage return
        length = stops - starts
        last = text[np.maximum(stops - 1, 0)] if len(raw) else np.zeros(len(starts), np.uint8)
        blank = (length == 0) | ((length == 1) & (last == ord("\r")))
        numbers = np.flatnonzero(~blank) + 1
        return np.asarray(numbers[1:], dtype=np.int64)  # the first non-blank line is the header
    import csv

    reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
    found: list[int] = []
    start = 1
    for row in reader:
        if row:
            found.append(start)
        start = reader.line_num + 1
    return np.asarray(found[1:], dtype=np.int64)


def read_metadata_csv(raw: bytes, source: str) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """Parse a metadata CSV (every column as text) and the physical line of each row, for messages.

    An empty file is refused by name; a UTF-8 byte order mark is ignored; blank lines are skipped and do not shift
    the line numbers that errors report.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw.strip():
        raise MetadataError(
            f"{source}: the file is empty (expected a header {','.join(METADATA_COLUMNS)} and one row per site)"
        )
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{source}: not a readable CSV: {exc}") from None
    lines = _data_lines(raw)
    if len(lines) != len(frame):  # a construct the line counter does not model: fall back to positions
        lines = np.arange(2, len(frame) + 2, dtype=np.int64)
    return frame, lines


def load_metadata(url: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Load and validate an RxRx2 ``metadata.csv`` from a path or fsspec URL.

    ``url`` may name the CSV itself or a dataset root holding ``metadata.csv`` (or ``rxrx2-metadata.csv``).
    """
    url, raw = _read_source(url, METADATA_NAMES, storage_options, "metadata")
    frame, lines = read_metadata_csv(raw, url)
    return validate_metadata(frame, source=url, lines=lines)


def _grammar_errors(values: pd.Series, check: Any) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]:
    """Run ``check`` once per distinct value: (bad mask per row, error text per row or None)."""
    codes, uniques = pd.factorize(values)
    errors: list[str | None] = []
    for value in uniques:
        try:
            check(str(value))
            errors.append(None)
        except PathGrammarError as exc:
            errors.append(str(exc))
    per_value = np.asarray([*errors, None], dtype=object)  # codes are never -1 here (no missing values)
    bad_value = np.asarray([e is not None for e in errors] + [False], dtype=bool)
    return bad_value[codes], per_value[codes]


def validate_metadata(
    raw: pd.DataFrame, source: str = "metadata.csv", lines: npt.NDArray[np.int64] | None = None
) -> pd.DataFrame:
    """Type and validate a metadata frame read with every column as text; return the typed frame.

    Columns must be exactly :data:`METADATA_COLUMNS` in order; plate and site become int64 (within int32, >= 1),
    treatment_conc float64 with blank as NaN (the ``EMPTY`` controls). ``lines`` are the physical CSV lines of the
    rows (:func:`read_metadata_csv`), for messages. Raises :class:`MetadataError` listing the problems found. Every
    check is vectorised or runs once per distinct value: linear in the number of rows.
    """
    _check_columns([str(c) for c in raw.columns], source)
    frame = raw.astype(str).reset_index(drop=True)
    if lines is not None and len(lines) != len(frame):
        raise ValueError(f"lines has {len(lines)} entries for {len(frame)} rows")
    rows = _Rows(frame, lines, _Problems())
    _check_text(rows)
    typed, number_ok = _integers(rows)
    typed["treatment_conc"] = _concentrations(rows)
    _check_ids(rows, typed, number_ok)
    _check_duplicates(rows)
    rows.problems.raise_if_any(source)
    out = pd.DataFrame({c: frame[c] for c in METADATA_COLUMNS})
    for column, values in typed.items():
        out[column] = values
    return out


def _check_columns(columns: Sequence[str], source: str) -> None:
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
        raise MetadataError(f"{source}: columns in the wrong order {list(columns)}; expected {list(METADATA_COLUMNS)}")


@dataclass(frozen=True)
class _Rows:
    """The text frame being validated, its CSV line numbers, and the problems found so far."""

    frame: pd.DataFrame
    lines: npt.NDArray[np.int64] | None
    problems: _Problems

    def where(self, i: int) -> str:
        return _where(self.frame, i, self.lines)

    def line(self, i: int) -> str:
        return f"line {_line(i, self.lines)}"


def _check_text(rows: _Rows) -> None:
    for column in STRING_COLUMNS:
        values = rows.frame[column]
        bad = (values.str.len().eq(0) | values.str.contains(_UNSAFE_TEXT, regex=True)).to_numpy()
        rows.problems.add_rows(
            bad, lambda i, c=column, v=values: f"{rows.where(i)}: column {c!r}: unsafe or empty value {v.iloc[i]!r}"
        )


def _integers(rows: _Rows) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.bool_]]]:
    """The integer columns, typed (0 where invalid), and where each is valid."""
    frame = rows.frame
    typed: dict[str, Any] = {}
    number_ok: dict[str, npt.NDArray[np.bool_]] = {}
    for column in INTEGER_COLUMNS:
        text = frame[column].str.strip()
        # digits only, and at most 10 significant ones: then the value fits int64 and the int32 bound is exact
        digits = text.str.fullmatch(r"[0-9]+") & text.str.lstrip("0").str.len().le(10)
        numbers = pd.to_numeric(text.where(digits, "0")).astype("int64")
        ok = (digits & numbers.between(1, INT32_MAX)).to_numpy()
        rows.problems.add_rows(
            ~ok,
            lambda i, c=column: f"{rows.where(i)}: column {c!r}: not a positive integer: {frame[c].iloc[i]!r} "
            f"(expected 1..{INT32_MAX})",
        )
        typed[column] = numbers.where(ok, 0).astype("int64")
        number_ok[column] = ok
    return typed, number_ok


def _concentrations(rows: _Rows) -> pd.Series:
    """treatment_conc as float64, blank as NaN (the EMPTY controls); anything else must be a number >= 0."""
    text = rows.frame["treatment_conc"].str.strip()
    conc = pd.to_numeric(text.where(text != "", None), errors="coerce").astype("float64")
    filled = conc.fillna(0.0).to_numpy()
    bad = (text != "").to_numpy() & (conc.isna().to_numpy() | ~np.isfinite(filled) | (filled < 0))
    rows.problems.add_rows(
        bad,
        lambda i: f"{rows.where(i)}: column 'treatment_conc': not a non-negative number: "
        f"{rows.frame['treatment_conc'].iloc[i]!r}",
    )
    return conc


def _check_ids(rows: _Rows, typed: Mapping[str, Any], number_ok: Mapping[str, npt.NDArray[np.bool_]]) -> None:
    """Per-row grammar: experiment and well become Zarr keys (checked once per distinct value); ids must agree with
    the columns they are built from (compared as whole columns)."""
    frame = rows.frame
    bad_experiment, experiment_errors = _grammar_errors(frame["experiment"], check_experiment)
    bad_well, well_errors = _grammar_errors(frame["well"], WellAddress.parse)
    rows.problems.add_rows(bad_experiment, lambda i: f"{rows.where(i)}: column 'experiment': {experiment_errors[i]}")
    rows.problems.add_rows(~bad_experiment & bad_well, lambda i: f"{rows.where(i)}: column 'well': {well_errors[i]}")
    comparable = ~bad_experiment & ~bad_well & number_ok["plate"] & number_ok["site"]
    expected_well_ids = frame["experiment"] + "_" + typed["plate"].astype(str) + "_" + frame["well"]
    expected_site_ids = expected_well_ids + "_" + typed["site"].astype(str)
    well_ids, site_ids = frame["well_id"], frame["site_id"]
    rows.problems.add_rows(
        comparable & (well_ids != expected_well_ids).to_numpy(),
        lambda i: f"{rows.where(i)}: column 'well_id': {well_ids.iloc[i]!r} does not match experiment, plate and well "
        f"(expected {expected_well_ids.iloc[i]!r})",
    )
    rows.problems.add_rows(
        comparable & (site_ids != expected_site_ids).to_numpy(),
        lambda i: f"{rows.line(i)}: column 'site_id': {site_ids.iloc[i]!r} does not match experiment, plate, "
        f"well and site (expected {expected_site_ids.iloc[i]!r})",
    )


def _check_duplicates(rows: _Rows) -> None:
    site_ids = rows.frame["site_id"]
    duplicated = site_ids.duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return
    codes, _ = pd.factorize(site_ids)
    # codes number the distinct ids in order of first appearance, so their first positions come out in order
    _, first_position = np.unique(codes, return_index=True)
    rows.problems.add_rows(
        duplicated,
        lambda i: f"{rows.line(i)}: column 'site_id': duplicate site_id {site_ids.iloc[i]!r} "
        f"(first on {rows.line(int(first_position[codes[i]]))})",
    )


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
    url, raw = _read_source(url, EMBEDDINGS_NAMES, storage_options, "embeddings", name)
    # errors name the file as the caller knows it (the converter: relative to SRC)
    return parse_embeddings(raw, name or url)


def parse_embeddings(raw: bytes, url: str) -> Embeddings:
    """Parse and check the bytes of an embeddings CSV (see :func:`load_embeddings`); ``url`` names it in errors."""
    if raw.startswith(_BOM):  # written by spreadsheet tools; not part of the first column's name
        raw = raw[len(_BOM) :]
    lines = raw.splitlines()
    if not lines or not raw.strip():
        raise MetadataError(f"{url}: the file is empty (expected a header 'site_id,feature_0,...')")
    import csv

    header = next(csv.reader([lines[0].decode("utf-8", errors="replace")]), [])  # quoted names are fine
    if not header or header[0].strip() != "site_id" or len(header) < 2:
        raise MetadataError(
            f"{url}: line 1: expected a header starting with 'site_id' and at least one feature column, got "
            f"{lines[0][:80].decode('utf-8', errors='replace')!r}"
        )
    width = len(header)
    problems = _Problems()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.count(b",") + 1
        if fields != width:
            site = line.split(b",", 1)[0].decode("utf-8", errors="replace")
            problems.add(f"line {number} (site_id {site!r}): {fields} fields, expected {width} (site_id + {width - 1} features)")
    problems.raise_if_any(url)
    features = [h.strip() for h in header[1:]]
    # Fast path: let the C parser read the features as numbers (a 131,953 x 128 file in ~2 s); a column that
    # holds anything else comes back as text and only those columns are re-parsed to locate the bad cells.
    frame = pd.read_csv(
        io.BytesIO(raw), dtype={header[0]: str}, keep_default_na=False, na_filter=False, skip_blank_lines=True
    )
    record_lines = _data_lines(raw)
    line_of: npt.NDArray[np.int64] | None = record_lines if len(record_lines) == len(frame) else None
    numeric = frame.iloc[:, 1:]
    text_columns = [c for c in numeric.columns if not pd.api.types.is_numeric_dtype(numeric[c])]
    if text_columns:
        numeric = numeric.copy()
        for column in text_columns:
            numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    values = numeric.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    # finite as float64 but beyond float32: would silently become +-inf in the stored float32 matrix
    too_large = np.zeros_like(finite)
    np.greater(np.abs(values, where=finite, out=np.zeros_like(values)), FLOAT32_MAX, out=too_large)
    bad_rows, bad_cols = np.nonzero(~finite | too_large)
    for r, c in zip(bad_rows[:MAX_LISTED], bad_cols[:MAX_LISTED], strict=True):
        what = f"out of float32 range (|x| > {FLOAT32_MAX:.8g})" if too_large[r, c] else "not a finite number"
        cell = frame.iloc[r, c + 1]
        shown = repr(cell) if isinstance(cell, str) else repr(str(float(cell)))  # a parsed number: as Python spells it
        problems.add(
            f"line {_line(int(r), line_of)} (site_id {frame.iloc[r, 0]!r}): column {features[c]!r}: {what}: {shown}"
        )
    problems.total += max(0, len(bad_rows) - MAX_LISTED)
    ids = frame.iloc[:, 0].astype(str)
    problems.add_rows(
        ids.duplicated().to_numpy(), lambda i: f"line {_line(i, line_of)}: duplicate site_id {ids.iloc[i]!r}"
    )
    problems.raise_if_any(url)
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
