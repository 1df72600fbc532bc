"""Dask arrays of one Blockwise layer, whose tasks are generated from a block index when the graph is run or sliced.

Imported when a lazy array is first built (it imports dask, which ``open()`` does not need).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import dask.array
import numpy as np
from dask.array.core import Array
from dask.base import normalize_token
from dask.blockwise import blockwise
from dask.highlevelgraph import HighLevelGraph
from dask.layers import ArrayBlockIdDep

__all__ = ["one_layer_array"]


class _BlockIds(ArrayBlockIdDep):
    """Passes each task its block index, like dask's ``ArrayBlockIdDep``, with a token named after its array.

    dask's own token hashes the chunks tuple (one entry per site: ~10 ms for the whole dataset); the array's name
    already identifies its chunks, since it is a token of everything the array is built from.
    """

    def __init__(self, chunks: tuple[tuple[int, ...], ...], name: str) -> None:
        super().__init__(chunks)
        self.name = name

    def __reduce__(self) -> tuple[type[_BlockIds], tuple[Any, ...]]:
        return (_BlockIds, (self.chunks, self.name))


#: Marks the tasks as reading data (as ``da.from_array`` does), on dask versions whose ``blockwise`` takes the flag:
#: on older ones any other keyword would be passed on to every task's call.
_PRODUCER: dict[str, bool] = (
    {"_data_producer": True} if "_data_producer" in inspect.signature(blockwise).parameters else {}
)


@normalize_token.register(_BlockIds)  # type: ignore[untyped-decorator, no-untyped-call]
def _normalize_block_ids(dep: _BlockIds) -> tuple[str, str]:
    return ("rxrx2-block-ids", dep.name)


def one_layer_array(
    function: Callable[..., Any], name: str, chunks: tuple[tuple[int, ...], ...], dtype: type[np.generic]
) -> dask.array.Array:
    """A dask array named ``name`` of one Blockwise layer whose tasks call ``function(block_id)``.

    Built as ``da.from_array`` builds its layer, not with ``da.map_blocks``, which builds the array twice (once to
    find the chunks, once to inject ``block_id``) and so walks the chunks tuple twice more. What is left that grows
    with the number of blocks is dask's ``Array`` summing the chunks to find its shape (one Python addition per
    site: ~12 ms for 131,953 sites here).
    """
    indices = tuple(range(len(chunks)))
    layer = blockwise(  # type: ignore[no-untyped-call]
        function, name, indices, _BlockIds(chunks, name), indices, numblocks={}, **_PRODUCER
    )
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    array: dask.array.Array = Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype=dtype))  # type: ignore[no-untyped-call]
    return array
