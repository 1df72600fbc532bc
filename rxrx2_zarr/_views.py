"""Lazy views of a Dataset: dask arrays of crops and channel subsets, and the xarray view.

A crops array is one Blockwise layer whatever the number of sites: its single callable maps a block index to a
site, so no task exists until the graph is executed or sliced (a dict of one task per site took about 2 s and tens
of MB to build for 131,953 sites, and was shipped whole to a cluster). Slicing culls the layer to the blocks asked
for; pickling carries the layer once (the chunks tuple and a Dataset: URL, options, selection). Each task reads its
site's shard object, or, for a crop or a channel subset, only the inner chunks it needs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._channels import CHANNEL_SPECS
from ._columns import METADATA_COLUMNS
from ._index import STRING_COLUMNS
from ._site_reader import box_of, crop_shape

if TYPE_CHECKING:
    import dask.array
    import xarray

    from ._dataset import Dataset

__all__ = ["crops_array", "xarray_view"]

Pixels = npt.NDArray[np.uint8]
Region = tuple[int, int, int, int]


class _SiteBlocks:
    """The one callable of a crops layer: dask passes it a block index, it returns that site's (1, c, h, w) block.

    It holds a Dataset without cached graphs (no reference cycle), which pickles as URL, options and selection: a
    worker process re-opens the store once and then reads any site of it. ``channels`` are 0-based.
    """

    __slots__ = ("channels", "dataset", "region")

    def __init__(self, dataset: Dataset, channels: tuple[int, ...] | None, region: Region | None) -> None:
        self.dataset = dataset
        self.channels = channels
        self.region = region

    def __call__(self, block_id: tuple[int, ...] | None = None) -> Pixels:
        if block_id is None:  # dask always passes it; a direct call without one has no site to read
            raise TypeError("_SiteBlocks needs the block_id of the site to read")
        return self.dataset._block(block_id[0], self.channels, self.region)

    def __reduce__(self) -> tuple[type[_SiteBlocks], tuple[Any, ...]]:
        return (_SiteBlocks, (self.dataset, self.channels, self.region))

    def __repr__(self) -> str:
        return f"_SiteBlocks({self.dataset!r}, channels={self.channels}, region={self.region})"


class _EmbeddingsBlock:
    """The one block of the embeddings variable of :func:`xarray_view`: the selection's (n, K) float32 matrix."""

    __slots__ = ("dataset",)

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, block_id: tuple[int, ...] | None = None) -> npt.NDArray[np.float32]:
        # block_id is always (0, 0): the one block of the layer, which passes every task its block index
        matrix = self.dataset.embeddings
        if matrix is None:  # the view only has this variable when the store has embeddings
            raise TypeError("the store has no embeddings")
        return np.array(matrix)  # a writeable copy: the whole-store matrix is shared and read-only

    def __reduce__(self) -> tuple[type[_EmbeddingsBlock], tuple[Any, ...]]:
        return (_EmbeddingsBlock, (self.dataset,))


def crops_array(dataset: Dataset, channels: tuple[int, ...] | None, region: Region | None) -> dask.array.Array:
    """(n, c, h, w) uint8, one chunk per site, of ``channels`` (0-based, None: all) and ``region`` (checked)."""
    import dask.array as da
    from dask.base import tokenize

    from ._blockwise import one_layer_array

    spec, store = dataset.spec, dataset._store
    shape = crop_shape(spec, channels, region)
    n = len(dataset)
    if not n:
        empty: dask.array.Array = da.zeros((0, *shape), dtype=np.uint8, chunks=(1, *shape))
        return empty
    # the index checksum (layout 2) tells stores with the same URL and site count apart, without hashing columns
    fingerprint = store.attrs.get("index")
    name = "rxrx2-crops-" + tokenize(
        dataset.url, store.storage_options, spec, store.pixels, store.n, fingerprint, dataset._positions, channels, region
    )
    return one_layer_array(
        _SiteBlocks(dataset._plain(), channels, region), name, ((1,) * n, *((s,) for s in shape)), np.uint8
    )


def _embeddings_array(dataset: Dataset, dim: int) -> dask.array.Array:
    from dask.base import tokenize

    from ._blockwise import one_layer_array

    store = dataset._store
    name = "rxrx2-embeddings-" + tokenize(dataset.url, store.storage_options, store.n, store.attrs.get("index"), dataset._positions)
    return one_layer_array(_EmbeddingsBlock(dataset._plain()), name, ((len(dataset),), (dim,)), np.float32)


def xarray_view(dataset: Dataset, channels: tuple[int, ...] | None, region: Region | None) -> xarray.Dataset:
    """See :meth:`Dataset.to_xarray`."""
    try:
        import xarray as xr
    except ImportError:
        raise ImportError("Dataset.to_xarray() needs xarray: pip install 'rxrx2-zarr[xarray]'") from None
    spec = dataset.spec
    y0, y1, x0, x1 = box_of(spec, region)
    chosen = [CHANNEL_SPECS[c] for c in (channels if channels is not None else range(spec.channels))]
    frame = dataset.sites
    coords: dict[str, Any] = {
        "site": frame["site_id"].to_numpy(dtype=object),
        "c": [s.label for s in chosen],
        "y": np.arange(y0, y1),
        "x": np.arange(x0, x1),
    }
    for column in METADATA_COLUMNS[1:]:
        values = frame[column].to_numpy(dtype=object) if column in STRING_COLUMNS else frame[column].to_numpy()
        coords["field" if column == "site" else column] = ("site", values)
    pixel_attrs = {
        "channel_rgb": json.dumps({s.label: list(s.rgb) for s in chosen}),
        "channel_window": json.dumps({s.label: list(s.window) for s in chosen}),
    }
    variables: dict[str, Any] = {
        "pixels": (("site", "c", "y", "x"), crops_array(dataset, channels, region), pixel_attrs),
    }
    dim = dataset._store.embedding_dim
    if dim is not None:
        variables["embeddings"] = (("site", "feature"), _embeddings_array(dataset, dim))
        coords["feature"] = list(dataset.embedding_features)
    return xr.Dataset(variables, coords=coords, attrs={"url": dataset.url})

