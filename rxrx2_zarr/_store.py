"""An opened store: everything :func:`rxrx2_zarr.open` reads, once per store and process.

Opening reads a fixed number of objects whatever the number of sites: the root ``zarr.json``, the columnar index
(checked whole against its CRC32C; its columns are decoded on first use), and in one batch the embeddings array's document (its chunks are read on first use of the embeddings) and one site
array's document, to cross-check the site array specification recorded in the root attributes. Nothing walks
plates, wells or sites, and nothing imports zarr-python, pandas or dask.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._arrays import ArrayDocument, check_codec_names, parse_json, read_array
from ._errors import ChunkReadError, StoreFormatError
from ._index import build_frame, check_index, find_in_order, read_index, site_array_key, site_lookup
from ._layout import EMBEDDINGS_ARRAY, LAYOUT_VERSION, TRANSCODABLE_LAYOUTS, SiteArraySpec
from ._root import check_complete, check_layout, rxrx2_root
from ._site_reader import SiteReader, SiteRef, codec_for
from ._storage import StoreIO, store_io

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OpenStore", "opened", "root_attributes"]

#: An embeddings matrix is read whole (and kept) when a selection asks for more than this share of its rows.
_WHOLE_EMBEDDINGS_SHARE = 4
#: Up to this many site_ids are looked up by binary search (tens of microseconds each) rather than by building the
#: site_id -> position dict (tens of milliseconds at full scale).
_SEARCHED_LOOKUPS = 64


def root_attributes(io: StoreIO, *, legacy: bool = False) -> dict[str, Any]:
    """The root group's ``rxrx2`` attributes, refused unless they describe a complete store of a layout this
    version reads (``legacy``: also the older layouts ``transcode`` reads). The gate of :mod:`._root`, shared with
    the typed model; the model itself is not parsed here (see :mod:`._root` for why)."""
    where = f"{io.url}: zarr.json"
    try:
        data = io.read("zarr.json")
    except FileNotFoundError:
        raise StoreFormatError(f"{io.url}: no zarr.json: not a Zarr v3 store (or the path does not exist)") from None
    attrs = rxrx2_root(parse_json(data, where), io.url)
    check_layout(attrs.get("layout_version"), io.url, TRANSCODABLE_LAYOUTS if legacy else (LAYOUT_VERSION,))
    check_complete(attrs.get("complete"), io.url)
    if not isinstance(attrs.get("pixels", True), bool):
        raise StoreFormatError(f"{io.url}: root attributes: 'pixels' must be true or false, got {attrs['pixels']!r}")
    return dict(attrs)


class OpenStore:
    """Root attributes, the site array spec, the index columns and the site reader; embeddings on demand."""

    def __init__(self, url: str, storage_options: Mapping[str, Any], *, legacy: bool = False) -> None:
        self.url = url
        self.storage_options = dict(storage_options)
        self.legacy = legacy
        self.io = store_io(url, self.storage_options)
        self.attrs = root_attributes(self.io, legacy=legacy)
        self.layout = int(self.attrs["layout_version"])
        try:
            self.spec = SiteArraySpec.from_options(self.attrs["options"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(f"{url}: root attributes: invalid site array options ({exc})") from None
        self.pixels: bool = self.attrs.get("pixels", True)
        self.columns = read_index(self.io, self.attrs, self.layout)
        self.n = self.columns.n
        self.embedding_features: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._embeddings_doc, array_document = self._documents()
        self.reader = SiteReader(url, self.storage_options, self.spec, array_document, self.pixels)
        self._embeddings: npt.NDArray[np.float32] | None = None
        self._frame: pd.DataFrame | None = None
        self._site_index: dict[str, int] | None = None

    @property
    def site_index(self) -> dict[str, int]:
        """site_id -> position, built on first use (the first ``site()`` or ``read()``, not at open: about 20 ms
        for the release's 131,953 sites); refuses an index with repeated site_ids."""
        with self._lock:
            if self._site_index is None:
                self._site_index = site_lookup(self.columns, f"{self.url}: index")
            return self._site_index

    def finder(self, count: int) -> Callable[[str], int]:
        """site_id -> position (-1: not in the store), for a look-up of ``count`` site_ids: a few are found by binary
        search in the index's order (a fresh process reads its first sites without building the whole lookup,
        about 30 ms for the release); many, or any that search misses, use :attr:`site_index`."""
        if self._site_index is not None or count > _SEARCHED_LOOKUPS:
            index = self.site_index
            return lambda site_id: index.get(site_id, -1)
        return self._find

    def _find(self, site_id: str) -> int:
        found = find_in_order(self.columns, site_id, self.url)
        return found if found >= 0 else self.site_index.get(site_id, -1)

    def check_index(self) -> None:
        """Decode and check the whole index now (what opening leaves to first use); for ``verify``."""
        check_index(self.columns, f"{self.url}: index")

    @property
    def frame(self) -> pd.DataFrame:
        """The nine metadata columns as a DataFrame indexed by site_id, built on first use."""
        with self._lock:
            if self._frame is None:
                self._frame = build_frame(self.columns)
            return self._frame

    @property
    def embedding_dim(self) -> int | None:
        """The embeddings' width (None: the store has none), known from the array document without reading it."""
        return None if self._embeddings_doc is None else self._embeddings_doc.shape[1]

    def _documents(self) -> tuple[ArrayDocument | None, str]:
        """The embeddings array's document (None if absent) and the site array document, in one batch."""
        key = f"{EMBEDDINGS_ARRAY}/zarr.json"
        site_key = f"{site_array_key(self._first_site_id(), 0, f'{self.url}: index')}/zarr.json" if self.n else None
        try:
            docs = self.io.read_many([key] + ([site_key] if site_key else []))
        except OSError as exc:
            raise ChunkReadError(f"{self.url}: cannot read {key}: {exc}") from None
        if site_key is not None:
            array_document = self._site_document(parse_json(docs[site_key], f"{self.url}: {site_key}"), site_key)
        else:
            array_document = json.dumps(self.spec.array_metadata())  # an empty store: nothing will be decoded
        if docs[key] is None:
            counts = self.attrs.get("counts")
            if isinstance(counts, Mapping) and counts.get("embedding_dim"):
                raise ChunkReadError(
                    f"{self.url}: {key} is missing, but the root attributes record {counts['embedding_dim']}-dim "
                    "embeddings: the store is damaged"
                )
            return None, array_document  # the source had no embeddings.csv
        where = f"{self.url}: {key}"
        document = parse_json(docs[key], where)
        doc = ArrayDocument.parse(document, EMBEDDINGS_ARRAY, frozenset({"float32", "float64"}), 2, where)
        features = ((document.get("attributes") or {}).get("rxrx2") or {}).get("features")
        if isinstance(features, list) and len(features) == doc.shape[1] and all(isinstance(f, str) for f in features):
            self.embedding_features = tuple(features)
        else:
            self.embedding_features = tuple(f"feature_{i}" for i in range(doc.shape[1]))
        if doc.shape[0] != self.n:
            raise StoreFormatError(f"{where}: {doc.shape[0]} rows for {self.n} sites in the index")
        return doc, array_document

    def _first_site_id(self) -> Any:
        """Row 0's site_id: as the root attributes record it (no need to parse the index), else from the index."""
        recorded = self.attrs.get("index")
        first = recorded.get("first_site_id") if isinstance(recorded, Mapping) else None
        return first if isinstance(first, str) else self.columns.first("site_id")

    def _site_document(self, doc: Any, key: str) -> str:
        """Check one site array's document against the root attributes; return it (JSON) to decode every site with.

        The codec chain is taken from the document rather than rebuilt from the profile name, so a store stays
        readable whatever the profile meant when it was written, as long as its chain is one ShardCodec decodes.
        """
        where = f"{self.url}: {key}"
        if not isinstance(doc, Mapping):
            raise StoreFormatError(f"{where}: not a JSON object")
        check_codec_names(doc.get("codecs"), where)
        expected = self.spec.array_metadata()
        for field in ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value"):
            if doc.get(field) != expected[field]:
                raise StoreFormatError(
                    f"{where}: {field} is {doc.get(field)!r}, but the root attributes describe {expected[field]!r}"
                )
        sharding = doc["codecs"][0].get("configuration") or {}
        want = expected["codecs"][0]["configuration"]["chunk_shape"]
        if doc["codecs"][0].get("name") != "sharding_indexed" or sharding.get("chunk_shape") != want:
            raise StoreFormatError(f"{where}: expected one shard of {want} inner chunks, as the root attributes describe")
        document = json.dumps({field: doc[field] for field in ("zarr_format", "shape", "data_type", "chunk_grid", "codecs")})
        try:
            codec_for(document)  # validates the inner and index codec chains before any site is read
        except StoreFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise StoreFormatError(f"{where}: malformed sharding configuration ({exc})") from None
        return document

    def embeddings(self, positions: npt.NDArray[np.int64] | None) -> npt.NDArray[np.float32] | None:
        """float32 rows of ``positions`` (None: all), or None without embeddings. A small selection reads only the
        chunks holding its rows; a larger one reads the whole matrix once and keeps it."""
        if self._embeddings_doc is None:
            return None
        if positions is not None and len(positions) < self.n // _WHOLE_EMBEDDINGS_SHARE:
            return read_array(self.io, self._embeddings_doc, positions).astype(np.float32, copy=False)
        with self._lock:
            if self._embeddings is None:
                matrix = read_array(self.io, self._embeddings_doc).astype(np.float32, copy=False)
                matrix.flags.writeable = False
                self._embeddings = matrix
        return self._embeddings if positions is None else self._embeddings[positions]

    def ref(self, position: int) -> SiteRef:
        """What reading the site at ``position`` needs; its array key derived from its site_id (see :mod:`._index`)."""
        columns = self.columns
        legacy = self.layout < 2
        site_id = columns.value("site_id", position)
        return SiteRef(
            str(site_id),
            site_array_key(site_id, position, f"{self.url}: index"),
            int(columns["checksum"][position]),
            None if legacy else int(columns["shard_checksum"][position]),
            None if legacy else int(columns["thumbnail_checksum"][position]),
        )


_OPENED_LOCK = threading.Lock()
_OPENED: dict[tuple[str, str, int, bool], OpenStore] = {}
#: A long-lived worker that saw many stores keeps only the latest few open.
_MAX_OPENED = 8


def opened(url: str, storage_options: Mapping[str, Any], *, legacy: bool = False) -> OpenStore:
    """The store as opened once per process (for Datasets unpickled in workers, and site tasks of ``transcode``):
    every unpickled Dataset of a store shares one index rather than reading it again."""
    key = (url, json.dumps(dict(storage_options), sort_keys=True, default=str), os.getpid(), legacy)
    with _OPENED_LOCK:
        store = _OPENED.get(key)
        if store is None:
            if len(_OPENED) >= _MAX_OPENED:
                del _OPENED[next(iter(_OPENED))]
            store = _OPENED[key] = OpenStore(url, storage_options, legacy=legacy)
        return store
