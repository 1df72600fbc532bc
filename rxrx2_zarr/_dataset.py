"""The public reader: ``open(url) -> Dataset``, a lazily read store or a selection of its sites.

Public conventions, the same on every method: channels are the numbers 1..6 (w1..w6, any order, repeats allowed);
a region is ``(y0, y1, x0, x1)`` in pixels, half-open; ``threads`` is an integer >= 1, or None for the default
(one thread inside a torch DataLoader worker or a Dask task, else the CPUs this process may use; see
:mod:`._site_reader`). Stores are treated as untrusted input: see :mod:`._store`, :mod:`._index` and
:mod:`._arrays` for what opening checks, and :mod:`._site_reader` for what every pixel read checks.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._errors import StoreFormatError
from ._index import metadata_row
from ._layout import SiteArraySpec
from ._paths import CHANNELS
from ._select import positions_of, select_positions
from ._site_reader import check_threads, crop_shape, resolve_threads, run_tasks
from ._store import OpenStore, opened

if TYPE_CHECKING:
    import dask.array
    import pandas as pd
    import xarray

__all__ = ["Dataset", "open", "open_any_layout"]

Pixels = npt.NDArray[np.uint8]
Region = tuple[int, int, int, int]


class Dataset:
    """A lazily read rxrx2-zarr store, or a selection of its sites (in store order).

    Also a map-style dataset (``len(ds)``, ``ds[i] -> (pixels, metadata)``) that pickles as its URL, storage
    options, selection and thread default, so PyTorch ``DataLoader`` workers and dask workers re-open it themselves.
    """

    def __init__(self, store: OpenStore, positions: npt.NDArray[np.int64] | None, threads: int | None = None) -> None:
        self._store = store
        self._positions = positions  # None: every site of the store
        self._threads = threads  # the default of reads that pass threads=None (None: see the module docstring)
        self._frame: pd.DataFrame | None = None
        self._images: dask.array.Array | None = None

    # --- identity, pickling ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self._store.storage_options)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's root ``rxrx2`` attributes (counts, options, source, versions...)."""
        return json.loads(json.dumps(self._store.attrs))  # type: ignore[no-any-return]

    @property
    def spec(self) -> SiteArraySpec:
        return self._store.spec

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(sites, channels, height, width) of :attr:`images`."""
        return (len(self), *self._store.spec.shape)

    @property
    def pixels(self) -> bool:
        """False for a ``--no-pixels`` store (every read returns zeros)."""
        return bool(self._store.pixels)

    @property
    def threads(self) -> int | None:
        """The thread count of reads that pass ``threads=None`` (None: the default policy); see :meth:`with_threads`."""
        return self._threads

    def with_threads(self, threads: int | None) -> Dataset:
        """This dataset (or selection) with another default thread count for ``ds[i]``, :meth:`site`,
        :meth:`read` and :meth:`thumbnails` (None: the default policy). ``with_threads(1)`` reads in the calling
        thread only, as inside a worker pool of one's own."""
        return Dataset(self._store, self._positions, check_threads(threads))

    def __reduce__(self) -> tuple[Callable[..., Dataset], tuple[Any, ...]]:
        positions = _compact_positions(self._positions, self._store.n)
        store = self._store
        return (_restore, (self.url, self.storage_options, positions, store.n, store.legacy, self._threads))

    def __repr__(self) -> str:
        spec = self._store.spec
        return (
            f"<rxrx2_zarr.Dataset {self.url!r}: {len(self)} of {self._store.n} sites, "
            f"{spec.channels} x {spec.height} x {spec.width} uint8, profile {spec.profile!r}"
            f"{'' if self.pixels else ', no pixels'}>"
        )

    def _plain(self) -> Dataset:
        """The same selection without cached frames or graphs (what a dask layer holds: no reference cycle)."""
        return Dataset(self._store, self._positions, self._threads)

    # --- metadata -------------------------------------------------------------------------------------------------

    @property
    def positions(self) -> npt.NDArray[np.int64]:
        """Positions of this selection's sites in the store's index (ascending)."""
        if self._positions is None:
            return np.arange(self._store.n, dtype=np.int64)
        return self._positions

    def __len__(self) -> int:
        return self._store.n if self._positions is None else len(self._positions)

    @property
    def sites(self) -> pd.DataFrame:
        """The metadata of the selected sites: the nine columns of ``metadata.csv`` with its dtypes, indexed by
        site_id, in store order (a copy: changing it does not change the dataset)."""
        if self._frame is None:
            full = self._store.frame
            self._frame = full if self._positions is None else full.iloc[self._positions]
        return self._frame.copy(deep=False)

    @property
    def site_ids(self) -> list[str]:
        return [str(s) for s in self._store.columns["site_id"][self.positions]]

    @property
    def embedding_features(self) -> tuple[str, ...]:
        """The names of the embedding columns (``feature_0`` ...), as in ``embeddings.csv``."""
        return self._store.embedding_features

    @property
    def embeddings(self) -> npt.NDArray[np.float32] | None:
        """float32 (sites, K) aligned with :attr:`sites` (NaN rows for sites without one), or None when the store
        has no embeddings. Read on first use, not at open."""
        return self._store.embeddings(self._positions)

    # --- selection ------------------------------------------------------------------------------------------------

    def select(self, **columns: Any) -> Dataset:
        """Sites matching every keyword (AND), one keyword per metadata column.

        A scalar selects equal values (``treatment="EMPTY"`` the controls; ``treatment_conc=None`` too), a list any
        of its values, a ``(lo, hi)`` tuple an inclusive range of a numeric column (plate, site, treatment_conc;
        ``None`` leaves a side open). Concentrations compare with a relative tolerance of 1e-9, so the nominal
        ``0.001`` finds the release's ``0.0009999999999999``.
        """
        return Dataset(self._store, select_positions(self._store.columns, self.positions, columns), self._threads)

    def _positions_of(self, site_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        return positions_of(self._store.finder(len(site_ids)), self._positions, site_ids, self.url)

    # --- pixels ---------------------------------------------------------------------------------------------------

    def _channel_indices(self, channels: Iterable[int] | int | None) -> tuple[int, ...] | None:
        """Public channel numbers (1..6) as 0-based indices, checked."""
        if channels is None:
            return None
        numbers = [channels] if isinstance(channels, int | np.integer) else list(channels)
        count = self.spec.channels
        bad = [c for c in numbers if not isinstance(c, int | np.integer) or isinstance(c, bool) or not 1 <= c <= count]
        if bad or not numbers:
            raise ValueError(f"channels must be channel numbers 1..{count} (w1..w{count}), got {channels!r}")
        return tuple(int(c) - 1 for c in numbers)

    def _region(self, region: Sequence[int] | None) -> Region | None:
        if region is None:
            return None
        height, width = self.spec.height, self.spec.width
        values = list(region)
        if len(values) != 4 or any(not isinstance(v, int | np.integer) or isinstance(v, bool) for v in values):
            raise ValueError(f"region must be (y0, y1, x0, x1) integers, got {region!r}")
        y0, y1, x0, x1 = (int(v) for v in values)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(
                f"region {(y0, y1, x0, x1)} is not a non-empty half-open box inside the {height} x {width} site"
            )
        return (y0, y1, x0, x1)

    def _thread_count(self, threads: int | None) -> int:
        return resolve_threads(self._threads if threads is None else check_threads(threads))

    def site(
        self,
        site_id: str,
        *,
        channels: Iterable[int] | None = None,
        region: Sequence[int] | None = None,
        threads: int | None = None,
    ) -> Pixels:
        """One site's pixels as (c, h, w) uint8: ``channels`` are numbers 1..6 (default all six, in order),
        ``region`` is ``(y0, y1, x0, x1)``, half-open (default the whole site). ``threads``: see :meth:`read`."""
        pixels: Pixels = self.read([site_id], channels=channels, region=region, threads=threads)[0]
        return pixels

    def read(
        self,
        sites: str | Sequence[str],
        *,
        channels: Iterable[int] | None = None,
        region: Sequence[int] | None = None,
        threads: int | None = None,
    ) -> Pixels:
        """Pixels of ``sites`` (site_ids; one site_id reads as n = 1) as (n, c, h, w) uint8: ``channels`` are
        numbers 1..6 (default all six, in order), ``region`` is ``(y0, y1, x0, x1)`` in pixels, half-open (default
        the whole site).

        A full site is one request for its shard; a crop or channel subset reads only the inner chunks it
        intersects. ``threads``: how many threads read (several sites at once, or one site's chunks); 1 reads in
        the calling thread only; None is the dataset's default (:meth:`with_threads`), else one thread inside a
        torch DataLoader worker or a Dask task and the CPUs this process may use elsewhere.
        """
        ids = [sites] if isinstance(sites, str) else list(sites)
        chans, box = self._channel_indices(channels), self._region(region)
        count = self._thread_count(threads)
        positions = self._positions_of(ids)
        out = np.empty((len(ids), *crop_shape(self.spec, chans, box)), dtype=np.uint8)
        reader, store = self._store.reader, self._store
        if len(ids) == 1:  # one site: its chunks are split over the threads
            reader.read(store.ref(int(positions[0])), chans, box, out[0], threads=count)
        else:  # several: one site per thread, each read in that thread
            tasks = [functools.partial(reader.read, store.ref(int(p)), chans, box, out[k]) for k, p in enumerate(positions)]
            run_tasks(tasks, count)
        return out

    def thumbnails(self, sites: str | Sequence[str], *, threads: int | None = None) -> Pixels:
        """The thumbnail level of ``sites``: (n, 6, ceil(H/16), ceil(W/16)) uint8, each pixel the rounded mean of a
        16 x 16 block; one small object per site (what viewers show for a plate). ``threads``: see :meth:`read`."""
        store = self._store
        if store.layout < 2:
            raise StoreFormatError(f"{self.url}: a layout-1 store has no thumbnails; rewrite it with `rxrx2-zarr transcode`")
        ids = [sites] if isinstance(sites, str) else list(sites)
        count = self._thread_count(threads)
        positions = self._positions_of(ids)
        out = np.empty((len(ids), *self.spec.thumbnail_shape), dtype=np.uint8)
        tasks = [functools.partial(store.reader.read_thumbnail, store.ref(int(p)), out[k]) for k, p in enumerate(positions)]
        run_tasks(tasks, count)
        return out

    def __getitem__(self, index: int) -> tuple[Pixels, dict[str, Any]]:
        """``(pixels (6, H, W), metadata row)`` of the i-th site of the selection (negative indices count back),
        read with the dataset's default threads (:meth:`with_threads`)."""
        if not isinstance(index, int | np.integer) or isinstance(index, bool):
            raise TypeError(f"Dataset indices must be integers, got {type(index).__name__}; use select() for subsets")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"site index {index} out of range for {n} site(s)")
        position = int(self.positions[i])
        pixels = self._store.reader.read(self._store.ref(position), threads=self._thread_count(None))
        return pixels, metadata_row(self._store.columns, position)

    def _block(self, k: int, channels: tuple[int, ...] | None, region: Region | None) -> Pixels:
        """The k-th selected site as a (1, c, h, w) block, read in the calling thread (a dask task's)."""
        position = k if self._positions is None else int(self._positions[k])
        out = np.empty((1, *crop_shape(self.spec, channels, region)), dtype=np.uint8)
        self._store.reader.read(self._store.ref(position), channels, region, out[0], threads=1)
        return out

    # --- lazy views -----------------------------------------------------------------------------------------------

    @property
    def images(self) -> dask.array.Array:
        """All selected sites as a lazy dask array (sites, 6, H, W) uint8: :meth:`crops` of whole sites."""
        if self._images is None:
            self._images = self.crops()
        return self._images

    def crops(self, region: Sequence[int] | None = None, channels: Iterable[int] | None = None) -> dask.array.Array:
        """The selected sites' ``region`` and ``channels`` as a lazy dask array (n, c, h, w) uint8, one chunk per
        site, row k = ``sites.iloc[k]``; ``region`` and ``channels`` as in :meth:`read` (default whole sites, all
        six channels).

        One Blockwise layer, built from the index alone in the same time whatever the number of sites; each task
        reads only its site's inner chunks that the crop needs (a whole site: one request for its shard), in the
        task's own thread. Runs on dask's threaded scheduler (the codecs release the GIL) or on a cluster.
        """
        from ._views import crops_array

        return crops_array(self, self._channel_indices(channels), self._region(region))

    def to_xarray(self, region: Sequence[int] | None = None, channels: Iterable[int] | None = None) -> xarray.Dataset:
        """A lazily backed ``xarray.Dataset`` with two variables:

        * ``pixels`` (site, c, y, x) uint8, read through :meth:`crops` (only the inner chunks of ``region`` and
          ``channels``); ``c`` is labelled w1..w6 of the chosen channels, ``y`` and ``x`` are the region's pixel
          coordinates in the site;
        * ``embeddings`` (site, feature) float32, read on compute (absent when the store has no embeddings).

        ``site`` holds the site_ids; the other metadata columns are coordinates along ``site`` (the site-in-well
        number as ``field``).
        """
        from ._views import xarray_view

        return xarray_view(self, self._channel_indices(channels), self._region(region))

    def to_rgb(self, sites: str | Sequence[str], channels: Sequence[int] = CHANNELS, vmax: float = 255.0) -> Pixels:
        """Recursion's RGB rendering of one site (H, W, 3) or several (n, H, W, 3); only ``channels`` are read."""
        from ._render import render_planes

        channels = tuple(channels)
        planes = self.read(sites, channels=channels)
        rgb = render_planes(planes, channels, vmax=vmax)
        return rgb[0] if isinstance(sites, str) else rgb


def open(url: str, storage_options: Mapping[str, Any] | None = None, *, threads: int | None = None) -> Dataset:
    """Open an rxrx2-zarr store (a path or fsspec URL) for reading.

    Reads the root attributes and the root index only (a fixed number of objects, whatever the number of sites),
    refusing stores that are not complete rxrx2-zarr stores of a known layout or whose metadata is unsafe.
    ``threads``: the default thread count of the dataset's reads (see :meth:`Dataset.read`).
    """
    default = check_threads(threads)
    return Dataset(OpenStore(str(url), dict(storage_options or {})), None, default)


def open_any_layout(url: str, storage_options: Mapping[str, Any] | None = None, *, cached: bool = False) -> Dataset:
    """Open a store of any layout that ``transcode`` reads (older ones too), for ``transcode`` and ``verify``;
    ``cached``: the store as opened once per process (site tasks of ``transcode``)."""
    options = dict(storage_options or {})
    store = opened(str(url), options, legacy=True) if cached else OpenStore(str(url), options, legacy=True)
    return Dataset(store, None)


def _restore(
    url: str,
    storage_options: Mapping[str, Any],
    positions: npt.NDArray[np.integer[Any]] | None,
    n_sites: int,
    legacy: bool = False,
    threads: int | None = None,
) -> Dataset:
    store = opened(url, storage_options, legacy=legacy)
    if store.n != n_sites:
        raise StoreFormatError(
            f"{url}: the store changed since this Dataset was pickled ({store.n} sites now, {n_sites} then)"
        )
    selected: npt.NDArray[np.int64] | None = None
    if positions is not None:
        selected = np.asarray(positions, dtype=np.int64)
        if len(selected) and (selected[0] < 0 or selected[-1] >= store.n):
            raise StoreFormatError(f"{url}: a pickled selection refers to sites beyond the store's {store.n}")
    return Dataset(store, selected, threads)


def _compact_positions(positions: npt.NDArray[np.int64] | None, n_sites: int) -> npt.NDArray[np.integer[Any]] | None:
    """A selection as pickled: uint32 when the store is small enough (always, for RxRx2), half the bytes of int64,
    so a selection of the whole release's 131,953 sites pickles in 0.5 MB."""
    if positions is None or n_sites >= 2**32:
        return positions
    return positions.astype(np.uint32)
