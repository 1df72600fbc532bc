"""The columnar index: one row per site (its metadata, array path and checksums), as numpy columns.

Layout 2 keeps it in one Parquet object, ``index.parquet``, checked against the CRC32C the root attributes record
for it and decoded from Arrow's buffers (no pandas: pyarrow's ``to_numpy`` would import it, most of a cold open).
Layout 1 kept one Zarr array per column under ``index/``, read with zarr-python (for ``transcode`` and ``verify``).
Every ``path`` must be exactly the array key its ``site_id`` maps to, so an index cannot send a read outside the
store or to another site's pixels.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np
import numpy.typing as npt

from ._arrays import ArrayDocument, parse_json, read_array
from ._columns import METADATA_COLUMNS
from ._errors import ChunkReadError, StoreFormatError
from ._layout import INDEX_CHECKSUM_COLUMNS, INDEX_COLUMNS, INDEX_GROUP, INDEX_PARQUET, INDEX_STRING_COLUMNS
from ._paths import check_experiment
from ._storage import StoreIO, check_key

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FLOAT_COLUMNS", "INT_COLUMNS", "STRING_COLUMNS", "build_frame", "metadata_row", "read_index", "site_lookup"]

Columns = dict[str, npt.NDArray[Any]]

STRING_COLUMNS = INDEX_STRING_COLUMNS
INT_COLUMNS = ("plate", "site")
FLOAT_COLUMNS = ("treatment_conc",)
_INTEGER_TYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"})
#: The data types a layout-1 index array of each column may have.
_COLUMN_TYPES: Mapping[str, frozenset[str]] = {
    **{c: frozenset({"string"}) for c in STRING_COLUMNS},
    **{c: _INTEGER_TYPES for c in INT_COLUMNS},
    "treatment_conc": frozenset({"float32", "float64"}),
    **{c: frozenset({"uint32", "uint64", "int64"}) for c in INDEX_CHECKSUM_COLUMNS},
}
#: The index columns of layout 1 (before the shard and thumbnail checksums).
_LEGACY_INDEX_COLUMNS: tuple[str, ...] = (*METADATA_COLUMNS, "path", "checksum")
#: Text columns with few distinct values: read dictionary-encoded, decoded once per distinct value.
_DICTIONARY_COLUMNS = ["well_id", "cell_type", "experiment", "well", "treatment"]


def read_index(io: StoreIO, attrs: Mapping[str, Any], layout: int) -> Columns:
    """The index columns of the store (every column of :data:`INDEX_COLUMNS` that its layout has), checked."""
    columns = _read_parquet(io, attrs) if layout >= 2 else _read_arrays(io)
    check_paths(columns["site_id"], columns["path"], f"{io.url}: index")
    for column in INDEX_CHECKSUM_COLUMNS:
        if column in columns:
            columns[column] = columns[column].astype(np.int64)
    return columns


def site_lookup(columns: Columns, where: str) -> dict[str, int]:
    """site_id -> position, the lookup of ``site()``/``read()``: a dict, not a pandas Index, so that opening a store
    does not import pandas (about 200 ms with pyarrow's pandas glue)."""
    ids = columns["site_id"].tolist()
    lookup = dict(zip(ids, range(len(ids)), strict=True))
    if len(lookup) != len(ids):
        duplicated = [site_id for site_id, k in Counter(ids).items() if k > 1][:5]
        raise StoreFormatError(f"{where}: index/site_id has duplicate site_ids, e.g. {duplicated}")
    return lookup


def metadata_row(columns: Columns, position: int) -> dict[str, Any]:
    """One site's nine metadata values as Python scalars (``ds[i]``'s second item)."""
    row: dict[str, Any] = {}
    for column in METADATA_COLUMNS:
        value = columns[column][position]
        row[column] = str(value) if column in STRING_COLUMNS else int(value) if column in INT_COLUMNS else float(value)
    return row


def build_frame(columns: Columns) -> pd.DataFrame:
    """The nine metadata columns as a DataFrame with ``metadata.csv``'s dtypes, indexed by site_id."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            c: (
                pd.Series(columns[c]).astype(str)
                if c in STRING_COLUMNS
                else pd.Series(columns[c].astype(np.int64 if c in INT_COLUMNS else np.float64))
            )
            for c in METADATA_COLUMNS
        }
    )
    # Index: the site_ids, unnamed. Naming it "site_id" as well as keeping the column would make
    # sort_values/groupby/merge on "site_id" fail as ambiguous.
    frame.index = pd.Index(frame["site_id"].to_numpy(), dtype=frame["site_id"].dtype)
    return frame


# --- layout 2: index.parquet ---------------------------------------------------------------------------------------


def _read_parquet(io: StoreIO, attrs: Mapping[str, Any]) -> Columns:
    """The columnar index: one object, checked against the CRC32C that the root attributes record for it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"{io.url}: {INDEX_PARQUET}"
    try:
        data = io.read(INDEX_PARQUET)
    except FileNotFoundError:
        raise ChunkReadError(f"{where}: missing (the store's index; the store is damaged)") from None
    except OSError as exc:
        raise ChunkReadError(f"{where}: cannot be read: {exc}") from None
    recorded = attrs.get("index")
    expected = recorded.get("parquet_crc32c") if isinstance(recorded, Mapping) else None
    if not isinstance(expected, int) or crc32c.crc32c(data) != expected:
        raise ChunkReadError(f"{where}: fails the crc32c recorded in the root attributes ({expected!r}): corrupt index")
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas (~150 ms);
        # the repeated text columns come back dictionary-encoded (a few distinct values per column).
        # pa.BufferReader, not io.BytesIO: through a Python file object, Arrow reads on its I/O threads, which
        # intermittently aborted the interpreter at exit ("terminate called without an active exception", ~5%
        # of fresh processes here); from an Arrow buffer it reads in this thread
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True, read_dictionary=_DICTIONARY_COLUMNS)
        table = parquet.read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreFormatError(f"{where}: not a readable Parquet file ({exc})") from None
    columns: Columns = {}
    for column in INDEX_COLUMNS:
        if column not in table.column_names:
            raise StoreFormatError(f"{where}: has no column {column!r}")
        columns[column] = _arrow_column(table.column(column), column, where)
    return columns


def _arrow_column(chunked: Any, column: str, where: str) -> npt.NDArray[Any]:
    """One index column as numpy (object arrays of str for text), from Arrow's buffers.

    pyarrow's ``to_numpy`` imports pandas (~150 ms, most of a cold open), so numbers are viewed straight from their
    value buffers (nulls only where allowed: a blank concentration is NaN), and text is decoded per distinct value
    (dictionary columns) or once per row (site_id, path).
    """
    import pyarrow as pa

    array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    kind = array.type
    if column in STRING_COLUMNS:
        return _arrow_text(array, column, where)
    if column in FLOAT_COLUMNS:
        if not pa.types.is_floating(kind):
            raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
        values = _buffer_values(array, where, column).astype(np.float64)
        if array.null_count:
            valid = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
            values[~valid[array.offset : array.offset + len(array)].astype(bool)] = np.nan
        return values
    if not pa.types.is_integer(kind):
        raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
    _no_nulls(array, column, where)
    return _buffer_values(array, where, column)


def _arrow_text(array: Any, column: str, where: str) -> npt.NDArray[Any]:
    import pyarrow as pa

    kind = array.type
    _no_nulls(array, column, where)
    if pa.types.is_dictionary(kind) and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)):
        values = np.array(array.dictionary.to_pylist(), dtype=object)
        indices = _buffer_values(array.indices, where, column)
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= len(values)):
            raise StoreFormatError(f"{where}: column {column!r} has a malformed dictionary")
        return np.asarray(values[indices], dtype=object)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
    return np.array(array.to_pylist(), dtype=object)


def _no_nulls(array: Any, column: str, where: str) -> None:
    if array.null_count:
        raise StoreFormatError(f"{where}: column {column!r} has {array.null_count} null value(s)")


def _buffer_values(array: Any, where: str, column: str) -> npt.NDArray[Any]:
    """A primitive Arrow array's values as a (copied) numpy array of its own dtype."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    buffer = array.buffers()[1]
    if buffer is None or buffer.size < (array.offset + len(array)) * dtype.itemsize:
        raise StoreFormatError(f"{where}: column {column!r} has a malformed value buffer")
    return np.frombuffer(buffer, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize).copy()


# --- layout 1: one Zarr array per column ---------------------------------------------------------------------------


def _read_arrays(io: StoreIO) -> Columns:
    """Layout 1: one Zarr array per index column (read for ``transcode`` and ``verify`` only)."""
    keys = [f"{INDEX_GROUP}/{c}/zarr.json" for c in _LEGACY_INDEX_COLUMNS]
    try:
        docs = io.read_many(keys)
    except OSError as exc:
        raise ChunkReadError(f"{io.url}: cannot read the index arrays' documents: {exc}") from None
    arrays: dict[str, ArrayDocument] = {}
    for column, key in zip(_LEGACY_INDEX_COLUMNS, keys, strict=True):
        where = f"{io.url}: {key}"
        doc = parse_json(docs[key], where)
        arrays[column] = ArrayDocument.parse(doc, f"{INDEX_GROUP}/{column}", _COLUMN_TYPES[column], 1, where)
    lengths = {c: a.shape[0] for c, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise StoreFormatError(f"{io.url}: index arrays differ in length: {lengths}")
    return {column: read_array(io, array) for column, array in arrays.items()}


# --- site paths: one vectorised check for the whole index ---------------------------------------------------------

#: The plate grid's rows (A..Z, AA..AF) and columns (01..48) as character classes rather than alternations of 32
#: and 48 literals: the index check below runs about 1.5x faster (tests check that they accept exactly the grid).
_ROW = "(?:A[A-F]|[A-Z])"
_COLUMN = "(?:0[1-9]|[1-3][0-9]|4[0-8])"
_SITE_ID = (
    rf"(?P<experiment>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?P<plate>[1-9][0-9]*)_(?P<row>{_ROW})(?P<column>{_COLUMN})_(?P<site>[1-9][0-9]*)"
)
#: site_id -> the key of its array (``site_paths(parse_site_id(site_id)).array``).
_SITE_ID_RE = re.compile(rf"^{_SITE_ID}$")
_SITE_PATH = r"\g<experiment>/Plate\g<plate>/\g<row>/\g<column>/\g<site>/0"
#: One "<site_id>\t<path>" pair whose path is exactly the one its site_id maps to, then the next pair's tab or the
#: end (back-references, no Python callback per row: the whole index is checked inside the regular expression
#: engine). No value may hold a tab: the pairs are told apart by counting them.
_ROW_PAIR = re.compile(
    rf"{_SITE_ID}\t(?P=experiment)/Plate(?P=plate)/(?P=row)/(?P=column)/(?P=site)/0(?:\t|\Z)"
)


def check_paths(site_ids: npt.NDArray[Any], paths: npt.NDArray[Any], where: str) -> None:
    """Every ``path`` must be the array key its ``site_id`` maps to, and a safe key.

    Parsing 131,953 ids one by one costs over a second; one regular expression over all "<site_id>\t<path>"
    pairs, deleting each pair that is right, costs tens of milliseconds. Only on a mismatch is the first bad row
    located, row by row.
    """
    n = len(site_ids)
    if n == 0:
        return
    # site_id, path, site_id, path, ... joined by tabs in one join (a join per row costs twice the time)
    values = np.empty(2 * n, dtype=object)
    values[0::2], values[1::2] = site_ids, paths
    try:
        joined = "\t".join(values.tolist())
    except TypeError:  # a value that is not a string: found and named row by row below
        joined = ""
    # every pair must match (and be removed), leaving nothing: n matches of two tab-free values each account for
    # all 2n values and their 2n - 1 tabs, so a value holding a tab cannot pass, and each match is one row. ".." can
    # only come from an experiment name, which the pattern allows but check_experiment does not.
    left, matched = _ROW_PAIR.subn("", joined)
    if matched == n and not left and ".." not in joined:
        return
    for i, (site_id, path) in enumerate(zip(site_ids, paths, strict=True)):
        _check_row(i, site_id, path, where)
    raise StoreFormatError(f"{where}: index paths do not match their site_ids")


def _check_row(i: int, site_id: Any, path: Any, where: str) -> None:
    if not isinstance(path, str):
        raise StoreFormatError(f"{where}: row {i}: path {path!r} is not a string")
    check_key(path)
    match = _SITE_ID_RE.match(site_id) if isinstance(site_id, str) else None
    if match is None:
        raise StoreFormatError(f"{where}: row {i}: invalid site_id {site_id!r}")
    try:
        check_experiment(site_id.split("_", 1)[0])
    except ValueError as exc:
        raise StoreFormatError(f"{where}: row {i}: invalid site_id {site_id!r}: {exc}") from None
    want = match.expand(_SITE_PATH)
    if path != want:
        raise StoreFormatError(f"{where}: row {i}: path {path!r} of site {site_id!r} is not where that site lives ({want!r})")
