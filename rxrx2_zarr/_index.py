"""The columnar index: one row per site (its metadata, array path and checksums), as numpy columns.

Layout 2 keeps it in one Parquet object, ``index.parquet``, checked against the CRC32C the root attributes record
for it. Opening reads that object and checks its CRC only (the root attributes count the sites): pyarrow is imported,
the schema and row count checked, when a column is first used, and each column is decoded from Arrow's buffers then
(no pandas: pyarrow's ``to_numpy`` would import it, most of a cold open), so that opening the release's 131,953
sites costs what opening 1,000 does. Layout 1 kept one Zarr array per column under ``index/``, read with zarr-python
(for ``transcode`` and ``verify``).

A read never takes an array key from the index: the key is derived from the row's ``site_id`` by the one path rule
(:func:`site_array_key`), so no index, however crafted, can send a read outside the store or to another site's
pixels. The ``path`` column is there for other tools; ``verify`` checks that it agrees (:func:`check_index`).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._arrays import ArrayDocument, parse_json, read_array
from ._columns import METADATA_COLUMNS
from ._crc import crc32c
from ._errors import ChunkReadError, PathGrammarError, StoreFormatError
from ._layout import (
    INDEX_CHECKSUM_COLUMNS,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_PARQUET,
    INDEX_STRING_COLUMNS,
    site_paths,
)
from ._paths import SiteKey, WellAddress, check_experiment, parse_site_id
from ._storage import StoreIO, check_key

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "STRING_COLUMNS",
    "IndexColumns",
    "build_frame",
    "check_index",
    "find_in_order",
    "metadata_row",
    "read_index",
    "site_array_key",
    "site_lookup",
]

Columns = Mapping[str, npt.NDArray[Any]]

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


class IndexColumns(Mapping[str, npt.NDArray[Any]]):
    """The index columns by name, each decoded by ``decode`` on first use and kept (safe to share between threads).

    ``n`` is the number of rows, known without decoding any column; ``first`` reads a column's first value without
    decoding the column (for opening, which checks one site's array document).
    """

    def __init__(
        self,
        names: tuple[str, ...],
        n: int,
        decode: Callable[[str], npt.NDArray[Any]],
        first: Callable[[str], Any] | None = None,
        value: Callable[[str, int], Any] | None = None,
    ) -> None:
        self._names = names
        self.n = n
        self._decode = decode
        self._first = first
        self._value = value
        self._decoded: dict[str, npt.NDArray[Any]] = {}
        self._lock = threading.Lock()

    def first(self, name: str) -> Any:
        """The value of column ``name`` in row 0 (the index must have a row)."""
        if self._first is None or name in self._decoded:
            return self[name][0]
        return self._first(name)

    def value(self, name: str, row: int) -> Any:
        """The value of column ``name`` in ``row``, without decoding the whole column when it is not decoded yet
        (text columns cost one Python object per row: 15 ms for the release's site_ids)."""
        column = self._decoded.get(name)
        if column is not None or self._value is None:
            return (self[name] if column is None else column)[row]
        return self._value(name, row)

    @classmethod
    def of(cls, columns: Mapping[str, npt.NDArray[Any]]) -> IndexColumns:
        """Columns decoded already (layout 1), all of the same length."""
        index = cls(tuple(columns), len(next(iter(columns.values()))) if columns else 0, columns.__getitem__)
        index._decoded.update(columns)
        return index

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        column = self._decoded.get(name)
        if column is not None:
            return column
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            column = self._decoded.get(name)
            if column is None:
                column = self._decoded[name] = self._decode(name)
        return column

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def read_index(io: StoreIO, attrs: Mapping[str, Any], layout: int) -> IndexColumns:
    """The index columns of the store (every column of :data:`INDEX_COLUMNS` that its layout has): layout 2's are
    decoded on first use (the object's CRC32C is checked now, its schema when a column is first used), layout 1's
    are read now."""
    if layout >= 2:
        return _ParquetIndex.load(io, attrs).columns()
    columns = _read_arrays(io)
    for column in INDEX_CHECKSUM_COLUMNS:
        if column in columns:
            columns[column] = columns[column].astype(np.int64)
    return IndexColumns.of(columns)


def site_array_key(site_id: Any, row: int, where: str) -> str:
    """The key of the array of the site in ``row`` of the index, derived from its ``site_id`` by the path rule."""
    try:
        return site_paths(parse_site_id(site_id)).array
    except PathGrammarError as exc:
        raise StoreFormatError(f"{where}: row {row}: {exc}") from None


def find_in_order(columns: IndexColumns, site_id: str, where: str) -> int:
    """The row of ``site_id`` by binary search in the documented order of the index (experiment, plate, row,
    column, site), or -1 when it is not found that way: absent, or an index not in that order. Each step reads
    one row's values, so no column of text is decoded whole; the row found must hold exactly ``site_id``, so a
    disordered or crafted index can only make this miss (the caller then builds the full lookup), never return
    another site. Its neighbours must not hold the same site_id (repeats in a sorted index are neighbours; ``verify``
    checks the whole index)."""
    try:
        key = _order_key(parse_site_id(site_id))
    except PathGrammarError:
        return -1
    experiments, plates, wells, sites = (columns[c] for c in ("experiment", "plate", "well", "site"))
    lo, hi = 0, columns.n
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if (experiments[mid], int(plates[mid]), *_well_position(wells[mid]), int(sites[mid])) < key:
                lo = mid + 1
            else:
                hi = mid
    except (PathGrammarError, TypeError):  # a malformed well or a non-text experiment: not an ordered index
        return -1
    if lo >= columns.n or columns.value("site_id", lo) != site_id:
        return -1
    if any(0 <= k < columns.n and columns.value("site_id", k) == site_id for k in (lo - 1, lo + 1)):
        raise StoreFormatError(f"{where}: index/site_id has duplicate site_ids, e.g. {[site_id]}")
    return lo


def _order_key(key: SiteKey) -> tuple[str, int, int, int, int]:
    return (key.experiment, key.plate, key.well.row_index, key.well.column_index, key.site)


@functools.lru_cache(maxsize=4096)  # a plate has 1,536 well names at most
def _well_position(well: str) -> tuple[int, int]:
    address = WellAddress.parse(well)
    return address.row_index, address.column_index


def check_index(columns: Columns, where: str) -> None:
    """What opening leaves to first use, all at once (for ``verify``): every column decodes, the site_ids are
    distinct and valid, and every ``path`` is the key its site_id maps to."""
    for name in columns:
        columns[name]
    check_paths(columns["site_id"], columns["path"], where)
    site_lookup(columns, where)


def site_lookup(columns: Columns, where: str) -> dict[str, int]:
    """site_id -> position, the lookup of ``site()``/``read()``: a dict, not a pandas Index, so that opening a store
    does not import pandas (about 200 ms with pyarrow's pandas glue)."""
    ids = columns["site_id"].tolist()
    lookup = dict(zip(ids, range(len(ids)), strict=True))
    if len(lookup) != len(ids):
        duplicated = [site_id for site_id, k in Counter(ids).items() if k > 1][:5]
        raise StoreFormatError(f"{where}: index/site_id has duplicate site_ids, e.g. {duplicated}")
    return lookup


def metadata_row(columns: IndexColumns, position: int) -> dict[str, Any]:
    """One site's nine metadata values as Python scalars (``ds[i]``'s second item)."""
    row: dict[str, Any] = {}
    for column in METADATA_COLUMNS:
        value = columns.value(column, position)
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


def _type_ok(column: str, kind: Any) -> bool:
    """Whether an ``index.parquet`` column of Arrow type ``kind`` can be ``column`` (checked at open, from the
    schema alone; the values are checked when decoded)."""
    import pyarrow as pa

    if column in STRING_COLUMNS:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
    if column in FLOAT_COLUMNS:
        return bool(pa.types.is_floating(kind))
    return bool(pa.types.is_integer(kind))


class _ParquetIndex:
    """``index.parquet``, checked against the CRC32C that the root attributes record for it when the store is
    opened; parsed (pyarrow imported, schema and row count checked) when a column is first used, and its columns
    then read and decoded one at a time.

    Parsing waits because opening needs only the number of sites, which the root attributes record: importing
    pyarrow is about a third of a cold open, and a lazy array of every site needs no column at all.
    """

    def __init__(self, data: bytes, where: str, n: int | None) -> None:
        self._data = data
        self._where = where
        self._n = n
        self._lock = threading.Lock()
        self._file: Any = None
        self._arrays: dict[str, Any] = {}

    @classmethod
    def load(cls, io: StoreIO, attrs: Mapping[str, Any]) -> _ParquetIndex:
        """The object, read in one request and checked against its recorded CRC32C (no pyarrow yet)."""
        where = f"{io.url}: {INDEX_PARQUET}"
        try:
            data = io.read(INDEX_PARQUET)
        except FileNotFoundError:
            raise ChunkReadError(f"{where}: missing (the store's index; the store is damaged)") from None
        except OSError as exc:
            raise ChunkReadError(f"{where}: cannot be read: {exc}") from None
        recorded = attrs.get("index")
        expected = recorded.get("parquet_crc32c") if isinstance(recorded, Mapping) else None
        if not isinstance(expected, int) or crc32c(data) != expected:
            raise ChunkReadError(f"{where}: fails the crc32c recorded in the root attributes ({expected!r}): corrupt index")
        counts = attrs.get("counts")
        n = counts.get("sites") if isinstance(counts, Mapping) else None
        index = cls(data, where, n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None)
        if index._n is None:  # a store whose attributes do not count its sites: the Parquet footer does
            index._n = int(index._parsed().metadata.num_rows)
        return index

    def _parsed(self) -> Any:
        """The ``pyarrow.parquet.ParquetFile``, opened and checked on first use."""
        with self._lock:
            if self._file is None:
                self._file = self._parse()
            return self._file

    def _parse(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        where = self._where
        try:
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas (~150 ms);
            # the repeated text columns come back dictionary-encoded (a few distinct values per column).
            # pa.BufferReader, not io.BytesIO: through a Python file object, Arrow reads on its I/O threads, which
            # intermittently aborted the interpreter at exit ("terminate called without an active exception", ~5%
            # of fresh processes here); from an Arrow buffer it reads in this thread
            parquet = pq.ParquetFile(
                pa.BufferReader(self._data), page_checksum_verification=True, read_dictionary=_DICTIONARY_COLUMNS
            )
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StoreFormatError(f"{where}: not a readable Parquet file ({exc})") from None
        for column in INDEX_COLUMNS:
            if column not in schema.names:
                raise StoreFormatError(f"{where}: has no column {column!r}")
            kind = schema.field(column).type
            if not _type_ok(column, kind):
                raise StoreFormatError(f"{where}: column {column!r} has type {kind}")
        rows = int(parquet.metadata.num_rows)
        if self._n is not None and rows != self._n:
            raise StoreFormatError(f"{where}: {rows} rows, but the root attributes count {self._n} sites")
        return parquet

    def columns(self) -> IndexColumns:
        assert self._n is not None  # set by load()
        return IndexColumns(INDEX_COLUMNS, self._n, self._decode, self._first, self._value)

    def _arrow(self, column: str) -> Any:
        """The column as one Arrow array, read once."""
        import pyarrow as pa

        parquet = self._parsed()
        with self._lock:
            array = self._arrays.get(column)
            if array is None:
                try:
                    chunked = parquet.read(columns=[column], use_threads=False).column(0)
                except (pa.ArrowException, OSError, ValueError) as exc:
                    raise StoreFormatError(f"{self._where}: column {column!r} cannot be read ({exc})") from None
                array = self._arrays[column] = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
            return array

    def _value(self, column: str, row: int) -> Any:
        value = self._arrow(column)[row].as_py()
        if value is None:  # as decoding the column would: a blank concentration is NaN, other nulls are refused
            if column not in FLOAT_COLUMNS:
                raise StoreFormatError(f"{self._where}: column {column!r} has a null value in row {row}")
            return math.nan
        return value

    def _first(self, column: str) -> Any:
        """Row 0 of ``column``: its first page only (about 1 ms, against 12 ms to decode the release's site_ids)."""
        import pyarrow as pa

        try:
            batch = next(self._parsed().iter_batches(batch_size=1, columns=[column], use_threads=False))
        except (pa.ArrowException, OSError, ValueError, StopIteration) as exc:
            raise StoreFormatError(f"{self._where}: column {column!r} cannot be read ({exc!r})") from None
        return batch.column(0)[0].as_py()

    def _decode(self, column: str) -> npt.NDArray[Any]:
        values = _arrow_column(self._arrow(column), column, self._where)
        with self._lock:  # decoded: the IndexColumns keeps the numpy column, the Arrow one is no longer needed
            self._arrays.pop(column, None)
        return values.astype(np.int64) if column in INDEX_CHECKSUM_COLUMNS else values


def _arrow_column(array: Any, column: str, where: str) -> npt.NDArray[Any]:
    """One index column as numpy (object arrays of str for text), from Arrow's buffers.

    pyarrow's ``to_numpy`` imports pandas (~150 ms, most of a cold open), so numbers are viewed straight from their
    value buffers (nulls only where allowed: a blank concentration is NaN), and text is decoded per distinct value
    (dictionary columns) or once per row (site_id, path).
    """
    import pyarrow as pa

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


def _read_arrays(io: StoreIO) -> dict[str, npt.NDArray[Any]]:
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
