"""The lazy reader: pixels equal to the source PNGs through every path, selection, O(1) open, byte-exact crops,
pickling, and refusal of malformed or corrupt stores."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import multiprocessing
import operator
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import dask.base
import fsspec
import imagecodecs
import numpy as np
import pandas as pd
import pytest
from dask.blockwise import Blockwise
from fsspec.implementations.local import LocalFileSystem

import rxrx2_zarr
from rxrx2_zarr import (
    PROFILES,
    ChunkReadError,
    ConvertOptions,
    Dataset,
    SiteNotFoundError,
    StoreFormatError,
    convert,
    load_embeddings,
    load_metadata,
    parse_site_id,
    synth,
)
from rxrx2_zarr import open as open_store
from rxrx2_zarr._layout import site_paths
from rxrx2_zarr._schema import METADATA_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SUBSET = Path(__file__).parent / "data" / "rxrx2-metadata-subset.csv"


# --- helpers ---------------------------------------------------------------------------------------------------------


class CountingFileSystem(LocalFileSystem):
    """The local filesystem under the ``counting://`` protocol, counting every object opened, byte read and
    listing made (class-level counters: fsspec caches instances)."""

    protocol = ("counting",)
    calls: ClassVar[Counter[str]] = Counter()
    bytes_read: ClassVar[int] = 0

    @classmethod
    def reset(cls) -> None:
        cls.calls = Counter()
        cls.bytes_read = 0

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        type(self).calls["open"] += 1
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        data = super().cat_file(path, start=start, end=end, **kwargs)
        type(self).calls["ranged" if start is not None else "whole"] += 1
        type(self).bytes_read += len(data)
        return data  # type: ignore[no-any-return]

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        type(self).calls["ls"] += 1
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        type(self).calls["info"] += 1
        return super().info(path, **kwargs)


@pytest.fixture(scope="module")
def counting() -> Iterator[type[CountingFileSystem]]:
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    CountingFileSystem.reset()
    yield CountingFileSystem


def png_pixels(source: Path, site_id: str) -> np.ndarray:
    """The site's six PNGs decoded with imagecodecs: the ground truth every read is compared with."""
    experiment, plate, well, site = site_id.split("_")
    planes = [
        imagecodecs.png_decode((source / "images" / experiment / f"Plate{plate}" / f"{well}_s{site}_w{c}.png").read_bytes())
        for c in range(1, 7)
    ]
    return np.stack(planes)


def array_dir(store: Path, site_id: str) -> Path:
    """The site's full-resolution array, where the layout puts it (independently of the reader)."""
    return store / site_paths(parse_site_id(site_id)).array


def shard_file(store: Path, site_id: str) -> Path:
    return array_dir(store, site_id) / "c" / "0" / "0" / "0"


def rewrite_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds(store: Path) -> Dataset:
    return open_store(str(store))


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """100 x 100 sites with 32 x 32 inner chunks: edge chunks are padded (100 = 3 * 32 + 4)."""
    base = tmp_path_factory.mktemp("odd")
    src, dst = base / "src", base / "odd.zarr"
    synth(str(src), experiments=1, plates=1, wells=1, sites=2, size=100, embedding_dim=4, seed=11)
    convert(str(src), str(dst), ConvertOptions(inner_chunks=(32, 32), progress=False))
    return src, dst


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One realistic 1024 x 1024 site, default profile, 256 x 256 inner chunks."""
    base = tmp_path_factory.mktemp("big")
    src, dst = base / "src", base / "big.zarr"
    synth(str(src), experiments=1, plates=1, wells=1, sites=1, size=1024, embedding_dim=4, seed=5)
    convert(str(src), str(dst), ConvertOptions(progress=False, inner_chunks=(256, 256)))
    return src, dst


@pytest.fixture(scope="module")
def metadata_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two --no-pixels stores of very different sizes (about 100 and 10,000 sites)."""
    base = tmp_path_factory.mktemp("meta")
    stores = {}
    for name, plates, wells in (("small", 1, 25), ("large", 2, 1250)):
        src, dst = base / f"{name}-src", base / f"{name}.zarr"
        synth(str(src), experiments=1, plates=plates, wells=wells, sites=4, metadata_only=True, embedding_dim=4)
        convert(str(src), str(dst), ConvertOptions(no_pixels=True, progress=False))
        stores[name] = dst
    return stores


@pytest.fixture(scope="module")
def real_metadata_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Dataset]:
    """A --no-pixels store of real RxRx2 metadata rows: every concentration value (with the release's float
    artefacts), EMPTY controls and wells with fewer than four sites."""
    base = tmp_path_factory.mktemp("real")
    subset = pd.read_csv(SUBSET, dtype=str, keep_default_na=False)
    wells = subset.groupby("treatment_conc", sort=True)["well_id"].first().tolist()
    short = subset.groupby("well_id").filter(lambda g: len(g) < 4)["well_id"].unique()[:2].tolist()
    empty = subset.loc[subset["treatment"] == "EMPTY", "well_id"].unique()[:3].tolist()
    picked = subset[subset["well_id"].isin(set(wells + short + empty))]
    csv = base / "metadata.csv"
    picked.to_csv(csv, index=False)
    src, dst = base / "src", base / "real.zarr"
    synth(str(src), from_metadata=str(csv), metadata_only=True, embedding_dim=4)
    convert(str(src), str(dst), ConvertOptions(no_pixels=True, progress=False))
    return load_metadata(str(src)), open_store(str(dst))


# --- metadata ----------------------------------------------------------------------------------------------------


def test_sites_match_metadata_csv(ds: Dataset, source_tree: Path) -> None:
    expected = load_metadata(str(source_tree))
    frame = ds.sites
    assert list(frame.columns) == list(METADATA_COLUMNS)
    assert dict(frame.dtypes) == dict(expected.dtypes)
    assert list(frame.index) == list(frame["site_id"])
    by_id = expected.set_index("site_id", drop=False).loc[frame["site_id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), by_id)
    assert len(ds) == len(expected) == ds.attrs["counts"]["sites"]
    # store order: experiment, plate, well row, well column, site
    keys = [(r.experiment, r.plate, len(r.well[:-2]), r.well[:-2], r.well[-2:], r.site) for r in frame.itertuples()]
    assert keys == sorted(keys)


def test_embeddings_aligned(ds: Dataset, source_tree: Path) -> None:
    table = load_embeddings(str(source_tree))
    rows = {s: i for i, s in enumerate(table.site_ids)}
    matrix = ds.embeddings
    assert matrix is not None and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, table.matrix[[rows[s] for s in ds.site_ids]])
    sub = ds.select(site=2)
    np.testing.assert_array_equal(sub.embeddings, table.matrix[[rows[s] for s in sub.site_ids]])


def test_sites_frame_is_a_copy(ds: Dataset) -> None:
    frame = ds.sites
    frame["treatment"] = "changed"
    assert (ds.sites["treatment"] != "changed").all()


# --- pixels equal to the PNGs ---------------------------------------------------------------------------------


def test_images_equal_pngs(ds: Dataset, source_tree: Path) -> None:
    images = ds.images
    assert images.shape == (len(ds), 6, 96, 96) and images.dtype == np.uint8
    assert images.chunks[0] == (1,) * len(ds)
    pixels = images.compute(scheduler="threads")
    for k, site_id in enumerate(ds.site_ids):
        np.testing.assert_array_equal(pixels[k], png_pixels(source_tree, site_id), err_msg=site_id)


def test_site_and_getitem_equal_pngs(ds: Dataset, source_tree: Path) -> None:
    first, last = ds.site_ids[0], ds.site_ids[-1]
    np.testing.assert_array_equal(ds.site(first), png_pixels(source_tree, first))
    pixels, row = ds[-1]
    np.testing.assert_array_equal(pixels, png_pixels(source_tree, last))
    pd.testing.assert_series_equal(pd.Series(row, dtype=object), ds.sites.loc[last].astype(object), check_names=False)
    assert ds[len(ds) - 1][1]["site_id"] == last
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]
    with pytest.raises(TypeError):
        ds["x"]  # type: ignore[index]


REGIONS = [None, (0, 96, 0, 96), (5, 37, 3, 40), (32, 64, 32, 64), (31, 33, 63, 65), (90, 96, 0, 96), (95, 96, 95, 96)]
CHANNELS = [None, [1], [6, 1, 3], [2, 2]]


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("channels", CHANNELS)
def test_read_channels_region(ds: Dataset, source_tree: Path, channels: list[int] | None, region: Any) -> None:
    ids = [ds.site_ids[1], ds.site_ids[-2]]
    got = ds.read(ids, channels=channels, region=region)
    y0, y1, x0, x1 = region or (0, 96, 0, 96)
    chans = [c - 1 for c in (channels or range(1, 7))]
    expected = np.stack([png_pixels(source_tree, s)[chans, y0:y1, x0:x1] for s in ids])
    np.testing.assert_array_equal(got, expected)
    # the one-thread path (no read pool) returns the same pixels
    np.testing.assert_array_equal(ds.read(ids, channels=channels, region=region, threads=1), expected)
    if channels is None and region is None:
        np.testing.assert_array_equal(ds.site(ids[0], threads=1), expected[0])


@pytest.mark.parametrize(
    "region", [None, (96, 100, 96, 100), (0, 100, 64, 100), (30, 70, 95, 100), (99, 100, 0, 1), (1, 99, 1, 99)]
)
def test_padded_edge_chunks(odd_store: tuple[Path, Path], region: Any) -> None:
    src, dst = odd_store
    odd = open_store(str(dst))
    assert odd.shape[1:] == (6, 100, 100)
    y0, y1, x0, x1 = region or (0, 100, 0, 100)
    for site_id in odd.site_ids:
        expected = png_pixels(src, site_id)
        np.testing.assert_array_equal(odd.read(site_id, channels=[3, 5], region=region)[0], expected[[2, 4], y0:y1, x0:x1])
    np.testing.assert_array_equal(odd.images.compute(), np.stack([png_pixels(src, s) for s in odd.site_ids]))


def test_read_validates_arguments(ds: Dataset) -> None:
    site_id = ds.site_ids[0]
    for channels in ([0], [7], [], [1.0], [True]):
        with pytest.raises(ValueError, match="channel"):
            ds.read(site_id, channels=channels)
    for region in ((0, 0, 0, 5), (-1, 5, 0, 5), (0, 97, 0, 5), (10, 5, 0, 5), (0, 5, 0), (0.0, 5, 0, 5)):
        with pytest.raises(ValueError, match="region"):
            ds.read(site_id, region=region)
    with pytest.raises(SiteNotFoundError, match="HUVEC-9_1_B02_1"):
        ds.read(["HUVEC-9_1_B02_1"])
    with pytest.raises(SiteNotFoundError):
        ds.site("not-a-site")
    assert ds.read([]).shape == (0, 6, 96, 96)


def test_site_and_read_take_the_same_arguments(ds: Dataset, source_tree: Path) -> None:
    """``site(id, ...)`` is (c, h, w) and ``read([id], ...)`` (1, c, h, w) of the same pixels, for every argument."""
    site_id = ds.site_ids[5]
    expected = png_pixels(source_tree, site_id)
    for channels, region in ((None, None), ([3], None), (None, (10, 20, 30, 50)), ([6, 1, 6], (0, 96, 95, 96))):
        one = ds.site(site_id, channels=channels, region=region)
        batch = ds.read([site_id], channels=channels, region=region)
        y0, y1, x0, x1 = region or (0, 96, 0, 96)
        chans = [c - 1 for c in channels or range(1, 7)]
        assert one.shape == (len(chans), y1 - y0, x1 - x0) and batch.shape == (1, *one.shape)
        np.testing.assert_array_equal(one, expected[chans, y0:y1, x0:x1])
        np.testing.assert_array_equal(batch[0], one)
    with pytest.raises(TypeError):
        ds.read([site_id], [1])  # type: ignore[misc]  # channels, region and threads are keywords
    with pytest.raises(ValueError, match="channel"):
        ds.site(site_id, channels=[0])


@pytest.mark.parametrize("threads", [1, 2, 3, None])
def test_reads_are_the_same_whatever_the_threads(ds: Dataset, threads: int | None) -> None:
    ids = ds.site_ids[:5]
    expected = ds.read(ids, threads=1)
    np.testing.assert_array_equal(ds.read(ids, threads=threads), expected)
    np.testing.assert_array_equal(ds.site(ids[2], threads=threads), expected[2])
    np.testing.assert_array_equal(ds.read(ids, region=(3, 70, 5, 60), threads=threads), expected[:, :, 3:70, 5:60])
    np.testing.assert_array_equal(ds.with_threads(threads)[1][0], expected[1])
    np.testing.assert_array_equal(ds.thumbnails(ids, threads=threads), ds.thumbnails(ids, threads=1))


def test_threads_argument_and_dataset_default(store: Path, ds: Dataset) -> None:
    for bad in (0, -1, 1.5, True, "2", 10_000):
        with pytest.raises(ValueError, match="threads"):
            ds.read(ds.site_ids[:2], threads=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="threads"):
            ds.with_threads(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads"):
        open_store(str(store), threads=0)
    assert ds.threads is None and open_store(str(store), threads=2).threads == 2
    one = ds.select(site=1).with_threads(1)
    assert one.threads == 1 and one.site_ids == ds.select(site=1).site_ids and ds.threads is None
    assert one.select(plate=1).threads == 1  # selections keep the default
    clone = pickle.loads(pickle.dumps(one))  # as a DataLoader worker receives it
    assert clone.threads == 1 and clone.site_ids == one.site_ids


_THREADS_SCRIPT = """
import json, os, sys, threading
import dask
import rxrx2_zarr

if sys.argv[2] == "one-cpu":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
ds = rxrx2_zarr.open(sys.argv[1])
ids = ds.site_ids[:8]


def pool_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("rxrx2-read"))


def in_task():
    ds.read(ids)
    ds.site(ids[0])
    ds[0]
    ds.thumbnails(ids)
    return pool_threads()


inside = dask.delayed(in_task)().compute(scheduler="threads")
ds.read(ids)
print(json.dumps({"inside": inside, "outside": pool_threads(), "cpus": len(os.sched_getaffinity(0))}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
@pytest.mark.parametrize("cpus", ["all", "one-cpu"])
def test_default_threads(store: Path, cpus: str) -> None:
    """By default a read inside a Dask task uses the task's thread only, and elsewhere a pool bounded by the CPUs
    this process may use (one CPU: no pool at all), not by the machine's. Fresh processes: the pool is per process."""
    package_root = Path(rxrx2_zarr.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, str(store), cpus],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(package_root)},
        cwd=package_root,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["inside"] == [], seen
    assert len(seen["outside"]) == (seen["cpus"] if seen["cpus"] > 1 else 0), seen
    if cpus == "one-cpu":
        assert seen["cpus"] == 1


class _ReadPoolInWorker:
    """A map-style dataset for a torch DataLoader: item i reads sites and reports the read-pool threads that exist
    in the worker process (at module level, so that worker processes can unpickle it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> list[str]:
        self.dataset.read(self.dataset.site_ids[:6])
        self.dataset[i]
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("rxrx2-read"))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_default_threads_in_dataloader_workers(ds: Dataset, context: str) -> None:
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        _ReadPoolInWorker(ds), batch_size=None, num_workers=2, multiprocessing_context=context
    )
    assert list(loader) == [[]] * 4  # every read in the worker's own thread: no pool in any worker


def test_reductions_parallel_threads(ds: Dataset) -> None:
    pixels = ds.images.compute(scheduler="sync")
    mean = ds.images.mean(axis=(0, 2, 3)).compute(scheduler="threads", num_workers=2)
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)))


# --- selection -------------------------------------------------------------------------------------------------

QUERIES: list[tuple[dict[str, Any], Callable[[pd.DataFrame], pd.Series]]] = [
    ({}, lambda m: m["site"] > 0),
    ({"treatment": "EMPTY"}, lambda m: m["treatment"] == "EMPTY"),
    ({"treatment_conc": None}, lambda m: m["treatment_conc"].isna()),
    ({"plate": 2}, lambda m: m["plate"] == 2),
    ({"plate": [1, 2], "site": (2, 3)}, lambda m: m["plate"].isin([1, 2]) & m["site"].between(2, 3)),
    ({"site": (None, 1)}, lambda m: m["site"] <= 1),
    ({"experiment": ["HUVEC-2"], "site": [1, 4]}, lambda m: (m["experiment"] == "HUVEC-2") & m["site"].isin([1, 4])),
    ({"treatment_conc": (1e-4, 1e-2)}, lambda m: m["treatment_conc"].between(1e-4, 1e-2)),
    ({"treatment_conc": 0.001}, lambda m: m["treatment_conc"] == 0.0009999999999999),
    ({"treatment_conc": [1e-6, 0.1]}, lambda m: m["treatment_conc"].isin([1e-06, 0.1])),
    ({"treatment": "no-such-treatment"}, lambda m: m["site"] < 0),
    ({"treatment": []}, lambda m: m["site"] < 0),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=[json.dumps(q) for q, _ in QUERIES])
def test_select_equals_pandas_real_metadata(
    real_metadata_store: tuple[pd.DataFrame, Dataset], query: dict[str, Any], expected: Callable[[pd.DataFrame], pd.Series]
) -> None:
    metadata, dataset = real_metadata_store
    selected = dataset.select(**query)
    want = metadata[expected(metadata)]
    assert sorted(selected.site_ids) == sorted(want["site_id"])
    assert isinstance(selected, Dataset) and len(selected) == len(want)
    assert selected.sites["site_id"].tolist() == [s for s in dataset.site_ids if s in set(want["site_id"])]


def test_real_metadata_has_the_quirks(real_metadata_store: tuple[pd.DataFrame, Dataset]) -> None:
    metadata, dataset = real_metadata_store
    assert (metadata["treatment"] == "EMPTY").any() and metadata["treatment_conc"].isna().any()
    assert (metadata["treatment_conc"] == 0.0009999999999999).any()
    assert dataset.select(treatment="EMPTY").sites["treatment_conc"].isna().all()
    zeros = dataset.read(dataset.site_ids[:2], channels=[2], region=(0, 8, 0, 8))
    assert zeros.shape == (2, 1, 8, 8) and not zeros.any()  # --no-pixels store: zeros


def test_select_on_fixture_store_and_chaining(ds: Dataset, source_tree: Path) -> None:
    metadata = load_metadata(str(source_tree))
    treatments = sorted(metadata["treatment"].unique())[:2]
    chained = ds.select(treatment=treatments).select(plate=(2, 2)).select(site=[1, 3])
    mask = metadata["treatment"].isin(treatments) & (metadata["plate"] == 2) & metadata["site"].isin([1, 3])
    assert sorted(chained.site_ids) == sorted(metadata.loc[mask, "site_id"])
    assert chained.site_ids == [s for s in ds.site_ids if s in set(chained.site_ids)]  # store order
    controls = ds.select(treatment="EMPTY")
    assert len(controls) == int((metadata["treatment"] == "EMPTY").sum()) > 0
    # selections read their own sites only
    outside = next(s for s in ds.site_ids if s not in set(chained.site_ids))
    with pytest.raises(SiteNotFoundError, match="selection"):
        chained.site(outside)
    np.testing.assert_array_equal(chained.images.compute(), ds.read(chained.site_ids))


def test_select_rejects_bad_queries(ds: Dataset) -> None:
    with pytest.raises(ValueError, match="colour"):
        ds.select(colour="red")
    with pytest.raises(ValueError, match="range"):
        ds.select(treatment=("a", "b"))
    with pytest.raises(ValueError, match="plate"):
        ds.select(plate="1")
    with pytest.raises(ValueError, match="range"):
        ds.select(plate=(1, 2, 3))
    with pytest.raises(ValueError, match="treatment"):
        ds.select(treatment=1)


# --- open is O(1) in the number of sites ---------------------------------------------------------------------------


def test_open_reads_a_constant_number_of_objects(
    metadata_stores: dict[str, Path], counting: type[CountingFileSystem]
) -> None:
    calls = {}
    sizes = {}
    for name, path in metadata_stores.items():
        counting.reset()
        dataset = open_store(f"counting://{path}")
        calls[name] = dict(counting.calls)
        sizes[name] = len(dataset)
    assert sizes["small"] <= 100 and sizes["large"] >= 9000, sizes
    assert calls["small"] == calls["large"], calls
    assert "ls" not in calls["large"] and "info" not in calls["large"], calls  # no listing, no per-node metadata walk
    # the dask graph and selections come from the index alone
    counting.reset()
    images = dataset.select(site=(2, 3)).images
    assert images.shape[0] > 0 and not counting.calls


def test_no_pixels_store_reads_zeros_without_shards(
    metadata_stores: dict[str, Path], counting: type[CountingFileSystem]
) -> None:
    dataset = open_store(f"counting://{metadata_stores['large']}")
    assert not dataset.pixels
    counting.reset()
    assert not dataset.images[:3].compute().any()
    assert not dataset.site(dataset.site_ids[-1]).any()
    assert counting.calls["open"] == 0
    # a small selection's embeddings: only the chunks holding its rows (this store has two chunks of 8192 rows)
    few = dataset.select(site_id=dataset.site_ids[-50:])
    assert 0 < len(few) < len(dataset) // 4 and few.positions[0] >= 8192
    part = few.embeddings
    assert counting.calls["open"] == 1
    # embeddings are read on first use (a store this size has more than one embeddings chunk)
    matrix = dataset.embeddings
    assert matrix is not None and matrix.shape == (len(dataset), 4) and not np.isnan(matrix).any()
    assert counting.calls["open"] == 3
    np.testing.assert_array_equal(part, matrix[few.positions])


# --- Dataset.images is one Blockwise layer: O(1) to build, culled when sliced -------------------------------------


def _graph_tasks(array: Any) -> int:
    """How many tasks computing ``array`` materialises (after dask's optimisation, which culls)."""
    return len(dask.base.collections_to_expr([array]).__dask_graph__())


def test_images_graph_has_no_task_per_site(metadata_stores: dict[str, Path]) -> None:
    dataset = open_store(str(metadata_stores["large"]))
    assert len(dataset) >= 9000
    for images in (dataset.images, dataset.select(site=(2, 3)).images):
        layers = images.__dask_graph__().layers
        blockwise = [layer for layer in layers.values() if isinstance(layer, Blockwise)]
        # one generator layer; nothing materialised until the graph runs (a dict layer would hold one task per site)
        assert blockwise and all(not layer.is_materialized() for layer in layers.values()), layers
        assert images.numblocks[0] == images.shape[0]
    # slicing touches only the sites asked for
    assert _graph_tasks(dataset.images[17]) <= 2
    assert _graph_tasks(dataset.images[100:103]) <= 6
    assert _graph_tasks(dataset.select(site=1).images[-2:]) <= 4


def test_crops_graph_size_is_independent_of_the_site_count(metadata_stores: dict[str, Path]) -> None:
    """A whole-store array pickles (to a cluster) as one layer whose size does not grow with the number of sites:
    only dask's chunks tuple (a few bytes a site) does, so the 131,953-site release stays well under 1 MB."""
    small, large = (open_store(str(metadata_stores[name])) for name in ("small", "large"))
    assert len(large) > 50 * len(small)
    for make in (lambda d: d.images, lambda d: d.crops(region=(8, 40, 0, 16), channels=[6, 2])):
        sizes = [len(pickle.dumps(make(d))) - len(pickle.dumps(make(d).chunks)) for d in (small, large)]
        assert abs(sizes[0] - sizes[1]) < 100, sizes
        assert sizes[1] < 5000
        sliced = [_graph_tasks(make(d)[len(d) // 2]) for d in (small, large)]
        assert sliced[0] == sliced[1] <= 2, sliced
    # a selection adds its positions, 4 bytes a site
    selection = large.select(site=(2, 3))
    assert len(pickle.dumps(selection.images)) < len(pickle.dumps(selection.images.chunks)) + 4 * len(selection) + 5000


def test_images_slice_reads_only_its_shards(store: Path, counting: type[CountingFileSystem]) -> None:
    dataset = open_store(f"counting://{store}")
    expected = open_store(str(store)).read(dataset.site_ids[2:5])
    site_id = dataset.site_ids[4]
    shard = shard_file(store, site_id)
    counting.reset()
    block = dataset.images[4].compute(scheduler="sync")
    np.testing.assert_array_equal(block, expected[2])
    assert counting.calls["open"] == 1 and counting.bytes_read == shard.stat().st_size, (counting.calls, counting.bytes_read)
    counting.reset()
    np.testing.assert_array_equal(dataset.images[2:5].compute(scheduler="threads"), expected)
    assert counting.calls["open"] == 3
    # a pickled slice (as shipped to a worker) reads the same pixels
    clone = pickle.loads(pickle.dumps(dataset.images[2:5]))
    np.testing.assert_array_equal(clone.compute(scheduler="sync"), expected)


def test_lazy_arrays_of_different_selections_compute_together(store: Path) -> None:
    """Two site layers in one graph keep their own block-to-site maps, also when dask fuses them into one task."""
    dataset = open_store(str(store))
    ids = dataset.site_ids
    head, tail = dataset.select(site_id=ids[:3]), dataset.select(site_id=ids[-3:])
    region = (8, 40, 0, 16)
    difference = head.crops(region=region).astype(np.int16) - tail.crops(region=region, channels=[6, 5, 4, 3, 2, 1])
    expected = dataset.read(ids[:3], region=region).astype(np.int16) - dataset.read(ids[-3:], region=region)[:, ::-1]
    np.testing.assert_array_equal(difference.compute(scheduler="sync"), expected)
    first, last = dask.compute(head.images, tail.images, scheduler="threads")
    np.testing.assert_array_equal(first, dataset.read(ids[:3]))
    np.testing.assert_array_equal(last, dataset.read(ids[-3:]))


_IMPORTS_SCRIPT = """
import json, sys
import rxrx2_zarr
after_import = sorted(sys.modules)
ds = rxrx2_zarr.open(sys.argv[1])
after_open = sorted(sys.modules)
ds.images
decoded = sorted(ds._store.columns._decoded)
print(json.dumps({"import": after_import, "open": after_open, "images": sorted(sys.modules), "decoded": decoded}))
"""


def test_import_and_open_stay_light(store: Path) -> None:
    """``import rxrx2_zarr`` imports none of the heavy modules, and ``open()`` not dask, pandas, zarr-python, the
    codecs or the converter and generator (each costs tens to hundreds of milliseconds at startup)."""
    package_root = Path(rxrx2_zarr.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_SCRIPT, str(store)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(package_root)},
        cwd=package_root,
    )
    loaded = {k: set(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    heavy = {"dask", "pandas", "pyarrow", "zarr", "imagecodecs", "numcodecs", "fsspec"}
    ours = {f"rxrx2_zarr.{m}" for m in ("_convert", "testing", "_verify", "_transcode", "_hierarchy", "_codec")}
    reader = {f"rxrx2_zarr.{m}" for m in ("_dataset", "_store", "_index", "_arrays", "_site_reader", "_select", "_views")}
    assert not loaded["import"] & (heavy | ours | reader), loaded["import"] & (heavy | ours | reader)
    # pandas too: pyarrow's to_numpy imports it (~150 ms of a cold open); the index is decoded from Arrow buffers.
    # A local store is read through the OS (no fsspec, ~30 ms), its checksums with crc32c's extension module alone
    # (the package's __init__ imports importlib.metadata, ~20 ms)
    # pyarrow (a third of a cold open) only when a column is first used: the root attributes give the number of
    # sites and the first site_id, so a lazy array of every site needs no column
    light_open = {"dask", "zarr", "imagecodecs", "numcodecs", "pandas", "fsspec", "crc32c", "importlib.metadata", "pyarrow"}
    assert not loaded["open"] & (light_open | ours | {"rxrx2_zarr._views"}), loaded["open"] & (light_open | ours)
    assert "dask" in loaded["images"]
    assert not loaded["decoded"], loaded["decoded"]  # dask.array may import pyarrow (through pandas), we do not


# --- crops read only the inner chunks they touch ----------------------------------------------------------------


def test_crop_reads_only_intersecting_chunks(big_store: tuple[Path, Path], counting: type[CountingFileSystem]) -> None:
    src, dst = big_store
    dataset = open_store(f"counting://{dst}")
    (site_id,) = dataset.site_ids
    shard = shard_file(dst, site_id)
    stored = shard.stat().st_size
    # the shard index, parsed independently of the reader: n (offset, nbytes) uint64 pairs then a CRC32C
    n_chunks = 6 * 4 * 4
    raw = shard.read_bytes()
    index = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(6, 4, 4, 2)
    expected = png_pixels(src, site_id)

    counting.reset()
    crop = dataset.read(site_id, region=(256, 512, 256, 512))
    np.testing.assert_array_equal(crop[0], expected[:, 256:512, 256:512])
    assert counting.bytes_read <= stored / 4, (counting.bytes_read, stored)
    assert counting.bytes_read == 16 * n_chunks + 4 + int(index[:, 1, 1, 1].sum())

    # unaligned: 2 x 2 chunks per channel, for two channels
    counting.reset()
    crop = dataset.read(site_id, channels=[2, 5], region=(200, 456, 700, 956))
    np.testing.assert_array_equal(crop[0], expected[[1, 4], 200:456, 700:956])
    assert counting.bytes_read == 16 * n_chunks + 4 + int(index[[1, 4], 0:2, 2:4, 1].sum())
    assert counting.bytes_read <= stored / 4

    # a full site is exactly one request for the shard object
    counting.reset()
    np.testing.assert_array_equal(dataset.site(site_id), expected)
    assert counting.calls["open"] == 1 and counting.bytes_read == stored


@pytest.mark.parametrize(
    ("region", "channels"), [(None, None), ((5, 37, 3, 40), None), (None, [6, 1]), ((32, 64, 32, 64), [2, 2, 5])]
)
def test_crops_equal_pngs(ds: Dataset, source_tree: Path, region: Any, channels: list[int] | None) -> None:
    selection = ds.select(site=[2, 4])
    crops = selection.crops(region=region, channels=channels)
    y0, y1, x0, x1 = region or (0, 96, 0, 96)
    chans = [c - 1 for c in channels or range(1, 7)]
    assert crops.shape == (len(selection), len(chans), y1 - y0, x1 - x0) and crops.dtype == np.uint8
    assert crops.chunks[0] == (1,) * len(selection)
    expected = np.stack([png_pixels(source_tree, s)[chans, y0:y1, x0:x1] for s in selection.site_ids])
    np.testing.assert_array_equal(crops.compute(scheduler="threads"), expected)
    np.testing.assert_array_equal(crops[-1].compute(scheduler="sync"), expected[-1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(crops[:2])).compute(scheduler="sync"), expected[:2])
    with pytest.raises(ValueError, match="region"):
        ds.crops(region=(0, 97, 0, 5))
    with pytest.raises(ValueError, match="channel"):
        ds.crops(channels=[7])


def test_images_are_the_whole_sites_crops(ds: Dataset) -> None:
    assert ds.images.name == ds.crops().name == ds.crops(region=None, channels=None).name
    assert ds.crops(region=(0, 8, 0, 8)).name != ds.crops(region=(0, 8, 0, 16)).name != ds.crops(channels=[1]).name
    assert ds.select(site=1).crops().name != ds.crops().name


def test_crop_task_reads_only_its_chunks(big_store: tuple[Path, Path], counting: type[CountingFileSystem]) -> None:
    """A crops task fetches the shard index and the byte ranges of the inner chunks its crop intersects, nothing
    else (counted at the filesystem the store's IO goes through)."""
    src, dst = big_store
    dataset = open_store(f"counting://{dst}")
    (site_id,) = dataset.site_ids
    raw = shard_file(dst, site_id).read_bytes()
    n_chunks = 6 * 4 * 4
    index = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(6, 4, 4, 2)
    crops = dataset.crops(region=(200, 456, 700, 956), channels=[5, 2])
    counting.reset()
    got = crops[0].compute(scheduler="sync")
    np.testing.assert_array_equal(got, png_pixels(src, site_id)[[4, 1], 200:456, 700:956])
    needed = index[[4, 1], 0:2, 2:4]  # 2 channels x 2 x 2 inner chunks of 256 x 256
    assert counting.bytes_read == 16 * n_chunks + 4 + int(needed[..., 1].sum()), counting.bytes_read
    assert counting.calls["whole"] == 0 and 2 <= counting.calls["ranged"] <= 1 + needed[..., 0].size, counting.calls
    # an aligned 256 x 256 crop of one channel: the index and one inner chunk
    counting.reset()
    dataset.crops(region=(256, 512, 512, 768), channels=[3])[0].compute(scheduler="sync")
    assert counting.calls["ranged"] == 2 and counting.bytes_read == 16 * n_chunks + 4 + int(index[2, 1, 2, 1])


# --- pickling, processes, distributed ------------------------------------------------------------------------------


def test_pickle_round_trip(ds: Dataset) -> None:
    selection = ds.select(site=[1, 2])
    payload = pickle.dumps(selection)
    assert len(payload) < 2000  # url + options + selection, not the index
    clone = pickle.loads(payload)
    assert isinstance(clone, Dataset) and clone.site_ids == selection.site_ids
    np.testing.assert_array_equal(clone[0][0], selection[0][0])
    pd.testing.assert_frame_equal(clone.sites, selection.sites)


def test_map_style_dataset_in_worker_processes(ds: Dataset) -> None:
    # spawn, as a PyTorch DataLoader with a spawn context does: the Dataset must rebuild itself from its pickle
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        got = list(pool.map(operator.getitem, [ds] * 3, [0, 5, -1]))
    for (pixels, row), i in zip(got, (0, 5, -1), strict=True):
        expected_pixels, expected_row = ds[i]
        np.testing.assert_array_equal(pixels, expected_pixels)
        assert row["site_id"] == expected_row["site_id"]


def test_distributed_reduction(ds: Dataset) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        mean = client.compute(ds.images.mean(axis=(0, 2, 3))).result()
        crops = client.compute(ds.crops(region=(10, 50, 20, 60), channels=[4])).result()
        # a read inside a distributed task uses the task's thread: no read pool in the worker process
        pool = client.submit(_read_and_list_pool_threads, ds, ds.site_ids[:6]).result()
    np.testing.assert_allclose(mean, ds.images.compute().mean(axis=(0, 2, 3)))
    np.testing.assert_array_equal(crops, ds.read(ds.site_ids, channels=[4], region=(10, 50, 20, 60)))
    assert pool == []


def _read_and_list_pool_threads(dataset: Dataset, site_ids: list[str]) -> list[str]:
    dataset.read(site_ids)
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("rxrx2-read"))


def test_to_xarray(ds: Dataset, source_tree: Path) -> None:
    pytest.importorskip("xarray")
    view = ds.to_xarray()
    pixels = view["pixels"]
    assert pixels.dims == ("site", "c", "y", "x") and pixels.shape == ds.shape
    assert list(view["c"].values) == ["w1", "w2", "w3", "w4", "w5", "w6"]
    assert list(view["y"].values) == list(range(96)) and list(view["x"].values) == list(range(96))
    assert list(view["site"].values) == ds.site_ids
    assert list(view["treatment"].values) == ds.sites["treatment"].tolist()
    assert list(view["field"].values) == ds.sites["site"].tolist()
    site_id = ds.site_ids[3]
    np.testing.assert_array_equal(pixels.sel(site=site_id, c="w4").values, png_pixels(source_tree, site_id)[3])
    controls = view.where(view["treatment"] == "EMPTY", drop=True)
    assert controls.sizes["site"] == len(ds.select(treatment="EMPTY"))
    # the embeddings, aligned with the sites, as a (site, feature) variable
    embeddings = view["embeddings"]
    assert embeddings.dims == ("site", "feature") and list(view["feature"].values) == list(ds.embedding_features)
    np.testing.assert_array_equal(embeddings.values, ds.embeddings)
    np.testing.assert_array_equal(embeddings.sel(site=site_id).values, ds.embeddings[3])


def test_to_xarray_of_a_crop(ds: Dataset, source_tree: Path) -> None:
    pytest.importorskip("xarray")
    selection = ds.select(site=[1, 3])
    view = selection.to_xarray(region=(20, 52, 40, 90), channels=[5, 2])
    assert view["pixels"].shape == (len(selection), 2, 32, 50)
    assert list(view["c"].values) == ["w5", "w2"]
    assert list(view["y"].values) == list(range(20, 52)) and list(view["x"].values) == list(range(40, 90))
    expected = np.stack([png_pixels(source_tree, s)[[4, 1], 20:52, 40:90] for s in selection.site_ids])
    np.testing.assert_array_equal(view["pixels"].values, expected)
    # pixel coordinates are the site's: selecting by them picks the same pixels as numpy indexing of the site
    site_id = selection.site_ids[0]
    corner = view["pixels"].sel(site=site_id, c="w2", y=slice(30, 33), x=slice(60, 61)).values
    np.testing.assert_array_equal(corner, png_pixels(source_tree, site_id)[1, 30:34, 60:62])
    np.testing.assert_array_equal(view["embeddings"].values, selection.embeddings)


# --- malformed stores are refused at open ------------------------------------------------------------------------


def _inject_site_codec(store: Path) -> None:
    # the reader cross-checks the first site's array document of the index
    first = array_dir(store, open_store(str(store)).site_ids[0]) / "zarr.json"

    def change(doc: dict[str, Any]) -> None:
        doc["codecs"][0]["configuration"]["codecs"][-1]["name"] = "numcodecs.pickle"

    rewrite_json(first, change)


def _change_first_site_document(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        rewrite_json(array_dir(store, open_store(str(store)).site_ids[0]) / "zarr.json", change)

    return damage


def _site_shape(doc: dict[str, Any]) -> None:
    doc["shape"] = [6, 96, 95]


def _site_chain(doc: dict[str, Any]) -> None:
    doc["codecs"][0]["configuration"]["codecs"] = [{"name": "bytes"}, {"name": "crc32c"}]


def _rewrite_parquet(store: Path, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """A crafted store: the columnar index changed (in place, or the frame ``change`` returns) AND its recorded
    checksum updated to match, so that only the reader's own checks of the values stand between it and a wrong
    read."""
    import crc32c
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store / "index.parquet"
    frame = pq.read_table(path).to_pandas()
    changed = change(frame)
    frame = frame if changed is None else changed
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    checksum = crc32c.crc32c(path.read_bytes())
    rewrite_json(store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"]["index"].update(parquet_crc32c=checksum))


def _inject_embeddings_codec(store: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["codecs"].append({"name": "numcodecs.pickle"})

    rewrite_json(store / "embeddings" / "zarr.json", change)


def _set_index_value(store: Path, row: int, column: str, value: str | None) -> None:
    """Row ``row`` of ``column`` set to ``value`` (None: the next row's value), its checksum updated to match."""

    def change(frame: pd.DataFrame) -> None:
        frame.loc[row, column] = value if value is not None else frame.loc[row + 1, column]

    _rewrite_parquet(store, change)


def _incomplete(store: Path) -> None:
    rewrite_json(store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"].update(complete=False))


def _future_layout(store: Path) -> None:
    rewrite_json(store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"].update(layout_version=99))


def _not_rxrx2(store: Path) -> None:
    rewrite_json(store / "zarr.json", lambda doc: doc.update(attributes={"something": "else"}))


def _pixels_not_bool(store: Path) -> None:
    rewrite_json(store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"].update(pixels="yes"))


MALFORMED: list[tuple[str, Callable[[Path], None], str]] = [
    ("unknown codec in a site array", _inject_site_codec, "numcodecs.pickle"),
    ("unknown codec in the embeddings", _inject_embeddings_codec, "numcodecs.pickle"),
    ("site array disagrees with the root", _change_first_site_document(_site_shape), "root attributes describe"),
    ("site array chain not decodable", _change_first_site_document(_site_chain), "unsupported inner codec chain"),
    ("recorded first site_id outside the grammar", lambda s: _set_first_site_id(s, "HUVEC-1_1_A49_1"), "row 0"),
    (
        "first site_id outside the grammar, not recorded (an older store)",
        lambda s: _unrecorded_first_site_id(s, "HUVEC-1_1_A49_1"),
        "row 0",
    ),
    ("incomplete store", _incomplete, "--resume"),
    ("unknown layout version", _future_layout, "layout version 99"),
    ("zarr group of another kind", _not_rxrx2, "not an rxrx2-zarr store"),
    ("pixels flag not a boolean", _pixels_not_bool, "pixels"),
    ("root document missing", lambda s: (s / "zarr.json").unlink(), "zarr.json"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in MALFORMED], ids=[n for n, _, _ in MALFORMED])
def test_open_refuses_malformed_stores(
    store: Path, copy_tree: Callable[[Path], Path], damage: Callable[[Path], None], message: str
) -> None:
    copy = copy_tree(store)
    damage(copy)
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        open_store(str(copy))


def _set_first_site_id(store: Path, value: str | None) -> None:
    rewrite_json(store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"]["index"].update(first_site_id=value))


def _unrecorded_first_site_id(store: Path, value: str) -> None:
    """An older store (no first site_id in the root attributes) whose index's row 0 holds ``value``."""
    _set_first_site_id(store, None)
    _set_index_value(store, 0, "site_id", value)


def _drop_last_row(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:-1]


def _first_block(dataset: Any) -> Any:
    return dataset.images[0].compute(scheduler="sync")


#: Damage inside an ``index.parquet`` whose recorded checksum matches (a crafted store): open() does not parse the
#: index (the root attributes give the number of sites and the first site_id), so it is refused when first used.
MALFORMED_INDEX: list[tuple[str, Callable[[Path], None], Callable[[Any], Any], str]] = [
    ("first site_id outside the grammar", lambda s: _set_index_value(s, 0, "site_id", "HUVEC-1_1_A49_1"), _first_block, "row 0"),
    (
        "index column of the wrong type",
        lambda s: _rewrite_parquet(s, lambda f: f.__setitem__("plate", f["plate"].astype(str))),
        lambda d: d.sites,
        "column 'plate' has type",
    ),
    ("fewer rows than the root counts", lambda s: _rewrite_parquet(s, _drop_last_row), lambda d: d.site_ids, "root attributes count"),
    ("not Parquet", lambda s: _replace_index_bytes(s, b"PAR1 not really"), lambda d: d.site_ids, "not a readable Parquet file"),
]


def _replace_index_bytes(store: Path, data: bytes) -> None:
    import crc32c

    (store / "index.parquet").write_bytes(data)
    rewrite_json(
        store / "zarr.json", lambda doc: doc["attributes"]["rxrx2"]["index"].update(parquet_crc32c=crc32c.crc32c(data))
    )


@pytest.mark.parametrize(
    ("damage", "use", "message"), [(d, u, m) for _, d, u, m in MALFORMED_INDEX], ids=[n for n, *_ in MALFORMED_INDEX]
)
def test_first_use_refuses_a_malformed_index(
    store: Path, copy_tree: Callable[[Path], Path], damage: Callable[[Path], None], use: Callable[[Any], Any], message: str
) -> None:
    copy = copy_tree(store)
    damage(copy)
    dataset = open_store(str(copy))  # the object's checksum matches: open reads it, and parses it on first use
    with pytest.raises(StoreFormatError, match=re.escape(message)) as caught:
        use(dataset)
    assert "index" in str(caught.value)


def test_an_index_without_recorded_first_site_opens(store: Path, copy_tree: Callable[[Path], Path]) -> None:
    """Stores written before the root attributes recorded the first site_id: it is read from the index."""
    copy = copy_tree(store)
    _set_first_site_id(copy, None)
    dataset, original = open_store(str(copy)), open_store(str(store))
    assert dataset.site_ids == original.site_ids
    first = original.site_ids[0]
    np.testing.assert_array_equal(dataset.site(first), original.site(first))


#: Crafted ``path`` values (checksum updated): the reader never uses them as keys, verify names them.
TAMPERED_PATHS: list[tuple[str, int, str | None, str]] = [
    ("path leaving the store", 0, "../../../etc/passwd", "etc/passwd"),
    ("path of another site", 0, None, "not where that site lives"),
    ("absolute path", 1, "/tmp/x/0", "/tmp/x/0"),
]


@pytest.mark.parametrize(
    ("row", "value", "message"), [t[1:] for t in TAMPERED_PATHS], ids=[t[0] for t in TAMPERED_PATHS]
)
def test_index_path_cannot_redirect_a_read(
    store: Path, copy_tree: Callable[[Path], Path], row: int, value: str | None, message: str
) -> None:
    """Each site's key is derived from its site_id: a crafted ``path`` (with the index checksum updated to match)
    still reads that site's own pixels, through site(), ds[i] and the dask array; checking the index names it."""
    reference = open_store(str(store))
    copy = copy_tree(store)
    _set_index_value(copy, row, "path", value)
    dataset = open_store(str(copy))
    site_id = dataset.site_ids[row]
    want = reference.site(site_id)
    np.testing.assert_array_equal(dataset.site(site_id), want)
    np.testing.assert_array_equal(dataset[row][0], want)
    np.testing.assert_array_equal(dataset.images[row].compute(), want)
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        dataset._store.check_index()


@pytest.mark.parametrize(
    ("value", "message"),
    [("HUVEC-1_1_A49_1", "row 1: invalid site_id 'HUVEC-1_1_A49_1'"), ("a..b_1_A01_1", "'..' is not allowed")],
)
def test_invalid_site_id_in_the_index_is_refused_at_its_read(
    store: Path, copy_tree: Callable[[Path], Path], value: str, message: str
) -> None:
    """A site_id outside the path grammar cannot be read (no key is made from it); the other sites still can."""
    copy = copy_tree(store)
    _set_index_value(copy, 1, "site_id", value)
    dataset = open_store(str(copy))
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        dataset.images[1].compute()
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        dataset[1]
    assert dataset[0][0].shape == dataset.shape[1:]
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        dataset._store.check_index()


def test_repeated_site_id_in_the_index_is_refused_at_lookup(store: Path, copy_tree: Callable[[Path], Path]) -> None:
    def repeat_row_1(frame: pd.DataFrame) -> None:
        frame.loc[0, ["site_id", "path"]] = frame.loc[1, ["site_id", "path"]]

    copy = copy_tree(store)
    _rewrite_parquet(copy, repeat_row_1)
    dataset = open_store(str(copy))
    repeated = dataset.site_ids[1]
    with pytest.raises(StoreFormatError, match=re.escape(f"duplicate site_ids, e.g. {[repeated]}")):
        dataset.site(repeated)
    with pytest.raises(StoreFormatError, match="duplicate site_ids"):
        dataset._store.check_index()


DAMAGED: list[tuple[str, Callable[[Path], None], str]] = [
    ("columnar index missing", lambda s: (s / "index.parquet").unlink(), "index.parquet: missing"),
    ("columnar index bit flip", lambda s: _flip(None)(s / "index.parquet"), "index.parquet: fails the crc32c"),
    ("embeddings chunk missing", lambda s: (s / "embeddings" / "c" / "0" / "0").unlink(), "embeddings/c/0/0 is missing"),
    ("embeddings bit flip", lambda s: _flip(30)(s / "embeddings" / "c" / "0" / "0"), "crc32c"),
    ("embeddings array missing", lambda s: shutil.rmtree(s / "embeddings"), "8-dim embeddings"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in DAMAGED], ids=[n for n, _, _ in DAMAGED])
def test_damaged_index_or_embeddings_is_an_error(
    store: Path, copy_tree: Callable[[Path], Path], damage: Callable[[Path], None], message: str
) -> None:
    """Missing or corrupt index and embeddings data raise ChunkReadError: never blank treatments, NaN
    concentrations or a different number."""
    copy = copy_tree(store)
    damage(copy)
    with pytest.raises(ChunkReadError, match=re.escape(message)):
        dataset = open_store(str(copy))
        dataset.embeddings  # noqa: B018  (read on first use)


def test_open_refuses_plain_zarr_group(tmp_path: Path) -> None:
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreFormatError, match="not an rxrx2-zarr store"):
        open_store(str(tmp_path / "plain.zarr"))


# --- missing and corrupt shards --------------------------------------------------------------------------------


def _flip(offset_from_end: int | None) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        position = len(data) // 2 if offset_from_end is None else len(data) - offset_from_end
        data[position] ^= 0xFF
        data[position + 1] ^= 0x5A
        path.write_bytes(bytes(data))

    return damage


def _swap_with_neighbour(path: Path) -> None:
    """Put another site's (valid) shard in place of this one."""
    site = path.parents[4]
    other = site.parent / ("2" if site.name == "1" else "1") / "0" / "c" / "0" / "0" / "0"
    path.write_bytes(other.read_bytes())


def _rewrite_index(path: Path) -> None:
    """Swap two entries of the shard index and give it a valid CRC32C of its own: a crafted, self-consistent
    shard whose chunks land in the wrong places."""
    import crc32c

    data = bytearray(path.read_bytes())
    n = 6 * 3 * 3
    start = len(data) - (16 * n + 4)
    index = np.frombuffer(bytes(data[start:-4]), dtype="<u8").reshape(n, 2).copy()
    index[[0, 1]] = index[[1, 0]]
    body = index.tobytes()
    data[start:] = body + crc32c.crc32c(body).to_bytes(4, "little")
    path.write_bytes(bytes(data))


SHARD_DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "tiny": lambda p: p.write_bytes(b"\x00" * 7),
    "index flipped": _flip(40),
    "data flipped": _flip(None),
    "first byte flipped": lambda p: _flip(p.stat().st_size)(p),
    "replaced by a directory": lambda p: (p.unlink(), p.mkdir()),
    "swapped with another site's": _swap_with_neighbour,
    "index rewritten consistently": _rewrite_index,
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("kind", list(SHARD_DAMAGE))
def test_damaged_shard_raises_chunk_read_error(
    profile_stores: Callable[[str], Path], copy_tree: Callable[[Path], Path], kind: str, profile: str
) -> None:
    """Every read path (full, channels, region, dask, batch, dataset item, RGB) raises ChunkReadError naming the
    site and the object, for every profile: never wrong pixels."""
    copy = copy_tree(profile_stores(profile))
    dataset = open_store(str(copy))
    site_id = dataset.site_ids[4]
    assert site_id.endswith("_1")  # its neighbour, site 2 of the same well, is what the swap copies
    shard = shard_file(copy, site_id)
    key = shard.relative_to(copy).as_posix()
    SHARD_DAMAGE[kind](shard)
    readers: list[Callable[[], object]] = [
        lambda: dataset.site(site_id),
        lambda: dataset.site(site_id, threads=1),
        lambda: dataset.images[4].compute(),
        lambda: dataset.read([dataset.site_ids[0], site_id]),
        lambda: dataset[4],
        lambda: dataset.read(site_id, channels=[1, 2, 3, 4, 5, 6]),
        lambda: dataset.read(site_id, region=(0, 96, 0, 96)),
        lambda: dataset.read(site_id, channels=[6, 5, 4, 3, 2, 1], region=(0, 96, 0, 96)),
        lambda: dataset.to_rgb(site_id),
    ]
    if kind != "data flipped":  # a crop of other chunks than the damaged one reads right pixels, rightly
        readers.append(lambda: dataset.read(site_id, channels=[1], region=(0, 40, 0, 40)))
    for read in readers:
        with pytest.raises(ChunkReadError) as info:
            read()
        assert site_id in str(info.value) and key in str(info.value)
    # other sites are unaffected
    other = dataset.site_ids[0]
    assert dataset.site(other).shape == (6, 96, 96)


THUMBNAIL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: p.unlink(),
    "bit flip": _flip(None),
    "swapped with another site's": lambda p: p.write_bytes((p.parents[5] / "2" / "1" / "c" / "0" / "0" / "0").read_bytes()),
}


@pytest.mark.parametrize("kind", list(THUMBNAIL_DAMAGE))
def test_damaged_thumbnail_raises(store: Path, copy_tree: Callable[[Path], Path], kind: str) -> None:
    copy = copy_tree(store)
    dataset = open_store(str(copy))
    site_id = dataset.site_ids[4]
    thumb = shard_file(copy, site_id).parents[4] / "1" / "c" / "0" / "0" / "0"
    THUMBNAIL_DAMAGE[kind](thumb)
    with pytest.raises(ChunkReadError, match=re.escape(site_id)):
        dataset.thumbnails(site_id)


def test_thumbnails_are_block_means(ds: Dataset, source_tree: Path) -> None:
    from rxrx2_zarr._shard import thumbnail

    ids = ds.site_ids[:3]
    thumbs = ds.thumbnails(ids)
    assert thumbs.shape == (3, 6, 6, 6)  # 96 x 96 sites at 1/16
    for k, site_id in enumerate(ids):
        np.testing.assert_array_equal(thumbs[k], thumbnail(png_pixels(source_tree, site_id), 16))


def test_to_rgb_on_dataset_reads_channels(ds: Dataset) -> None:
    from rxrx2_zarr import render_rgb

    site_id = ds.site_ids[2]
    np.testing.assert_array_equal(ds.to_rgb(site_id), render_rgb(ds.site(site_id)))
    np.testing.assert_array_equal(ds.to_rgb([site_id], channels=(2, 5))[0], render_rgb(ds.site(site_id), channels=(2, 5)))


def test_repr_and_shape(ds: Dataset) -> None:
    assert str(len(ds)) in repr(ds) and ds.shape == (len(ds), 6, 96, 96)
    assert math.isnan(ds.select(treatment="EMPTY")[0][1]["treatment_conc"])


def test_open_missing_path(tmp_path: Path) -> None:
    with pytest.raises(StoreFormatError, match=r"zarr\.json"):
        open_store(str(tmp_path / "nowhere.zarr"))


def test_no_embeddings(store: Path, copy_tree: Callable[[Path], Path]) -> None:
    """A store made from a source without embeddings.csv has no embeddings array (and records 0 dimensions)."""
    copy = copy_tree(store)
    shutil.rmtree(copy / "embeddings")
    rewrite_json(copy / "zarr.json", lambda doc: doc["attributes"]["rxrx2"]["counts"].update(embedding_dim=0))
    assert open_store(str(copy)).embeddings is None


def test_sites_without_embeddings_read_as_nan(tmp_path: Path) -> None:
    """A source whose embeddings.csv has none of the converted sites: a chunk of NaN rows is still a chunk (the
    reader refuses a missing one), so the embeddings read as NaN."""
    src, dst = tmp_path / "src", tmp_path / "store.zarr"
    synth(str(src), experiments=1, plates=1, wells=1, sites=2, size=32, embedding_dim=4, seed=1)
    header = (src / "embeddings.csv").read_text().splitlines()[0]
    (src / "embeddings.csv").write_text(header + "\n")
    convert(str(src), str(dst), ConvertOptions(inner_chunks=(16, 16), progress=False))
    matrix = open_store(str(dst)).embeddings
    assert matrix is not None and matrix.shape == (2, 4) and np.isnan(matrix).all()


_ALL_DAMAGE: list[tuple[str, Callable[[Path], None]]] = [
    *((f"malformed: {n}", d) for n, d, _ in MALFORMED),
    *((f"tampered: {n}", functools.partial(_set_index_value, row=r, column="path", value=v)) for n, r, v, _ in TAMPERED_PATHS),
    ("tampered: repeated site_id", functools.partial(_set_index_value, row=0, column="site_id", value=None)),
    ("tampered: invalid site_id", functools.partial(_set_index_value, row=1, column="site_id", value="a..b_1_A01_1")),
    *((f"damaged: {n}", d) for n, d, _ in DAMAGED),
]


@pytest.mark.parametrize("damage", [d for _, d in _ALL_DAMAGE], ids=[n for n, _ in _ALL_DAMAGE])
def test_verify_ends_with_a_report_on_every_tampered_store(
    store: Path, source_tree: Path, copy_tree: Callable[[Path], Path], damage: Callable[[Path], None]
) -> None:
    """Every store these tests tamper with: verify reports problems (exit 1), or says it cannot run (StoreFormatError,
    exit 2, for a store that is not a complete rxrx2-zarr store at all); never another exception, never OK."""
    from rxrx2_zarr import verify

    copy = copy_tree(store)
    damage(copy)
    try:
        report = verify(str(source_tree), str(copy), sample=3)
    except StoreFormatError as exc:
        assert str(copy) in str(exc) or "zarr.json" in str(exc)
        return
    assert not report.ok, report.summary()
