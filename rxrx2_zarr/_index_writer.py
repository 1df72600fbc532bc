"""The store's tables: the index (one Parquet object and one Zarr array per column) and the embeddings array.

Written at the end of a conversion, for the sites that made it. The Parquet object is what ``open`` reads and what
pandas, polars and duckdb open directly; the ``index/<column>`` arrays (dimension ``site``) and the ``embeddings``
array (``site``, ``feature``) are for Zarr and xarray users. Every chunk carries a crc32c, and so do Parquet's pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._attrs import EmbeddingsAttributes, SiteChecksums
from ._layout import (
    EMBEDDINGS_ARRAY,
    INDEX_CHECKSUM_COLUMNS,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_STRING_COLUMNS,
)

__all__ = ["index_columns", "index_parquet", "write_embeddings", "write_index_arrays"]


def _checked_compressors() -> list[Any]:
    """zstd then crc32c: every chunk of the index and embeddings arrays carries its checksum."""
    import zarr.codecs

    return [zarr.codecs.ZstdCodec(level=9), zarr.codecs.Crc32cCodec()]


def index_columns(sites: Any, sums: Sequence[SiteChecksums | None]) -> dict[str, npt.NDArray[Any]]:
    """The index as typed column arrays, in store order (checksums 0 where a site has none: ``--no-pixels``)."""
    columns: dict[str, npt.NDArray[Any]] = {}
    for column in INDEX_STRING_COLUMNS:
        columns[column] = np.asarray(sites[column].astype(str).to_numpy(), dtype=object)
    for column in ("plate", "site"):
        columns[column] = sites[column].to_numpy(dtype="int32")
    columns["treatment_conc"] = sites["treatment_conc"].to_numpy(dtype="float64")
    for column, field_name in zip(INDEX_CHECKSUM_COLUMNS, ("pixels", "shard", "thumbnail"), strict=True):
        columns[column] = np.array([getattr(s, field_name) if s else 0 for s in sums], dtype=np.uint32)
    return {c: columns[c] for c in INDEX_COLUMNS}


def write_embeddings(zstore: Any, matrix: npt.NDArray[np.float32], features: Sequence[str], missing: int) -> None:
    """The embeddings as one float32 array (dimensions ``site``, ``feature``), aligned with the index."""
    import zarr

    n = matrix.shape[0]
    emb = zarr.create_array(
        zstore,
        name=EMBEDDINGS_ARRAY,
        shape=matrix.shape,
        chunks=(min(max(n, 1), 8192), max(matrix.shape[1], 1)),
        dtype="float32",
        fill_value=np.nan,
        compressors=_checked_compressors(),
        dimension_names=("site", "feature"),
        attributes={"rxrx2": EmbeddingsAttributes(features=list(features), missing_rows=missing).to_json()},
        overwrite=True,
        # every chunk written, all-NaN ones too: readers treat a missing chunk as damage, not as missing embeddings
        config={"write_empty_chunks": True},
    )
    if matrix.size:
        emb[:] = matrix


def write_index_arrays(zstore: Any, columns: Mapping[str, npt.NDArray[Any]]) -> None:
    """One 1-D array per index column (dimension ``site``), for Zarr and xarray users, in the ``index`` group
    (written with its attributes by the bulk documents)."""
    import zarr

    index = zarr.open_group(zstore, path=INDEX_GROUP, mode="r+")
    n = len(columns["site_id"])
    for column, values in columns.items():
        dtype: Any = str if column in INDEX_STRING_COLUMNS else values.dtype
        fill = np.nan if column == "treatment_conc" else None
        array = index.create_array(
            column, shape=(n,), chunks=(max(n, 1),), dtype=dtype, fill_value=fill,
            compressors=_checked_compressors(), dimension_names=("site",), overwrite=True,
        )
        if n:
            array[:] = values


def index_parquet(columns: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The index as one Parquet object (page checksums on): blank concentrations are nulls, as in the CSV."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for column, values in columns.items():
        if column in INDEX_STRING_COLUMNS:
            arrays[column] = pa.array(values.tolist(), type=pa.string())
        elif column == "treatment_conc":
            arrays[column] = pa.array(values, type=pa.float64(), from_pandas=True)  # NaN -> null
        else:
            arrays[column] = pa.array(values)
    table = pa.table(arrays)
    # an Arrow output stream, not io.BytesIO: Arrow's I/O threads on a Python file object can abort at exit
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True, write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())
