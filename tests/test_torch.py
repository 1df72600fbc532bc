"""The PyTorch datasets: real DataLoaders with worker processes (fork, spawn, forkserver) over a real store, every
crop's pixels checked against the source PNGs (decoded with Pillow), seeded crops reproducible and new each epoch,
rank x worker sharding without drops or repeats, targets and their codes, threading inside workers, and the README
example run as written."""

from __future__ import annotations

import functools
import math
import multiprocessing
import pickle
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from conftest import INNER, SMALL  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import rxrx2_zarr  # noqa: E402
from rxrx2_zarr import Dataset  # noqa: E402
from rxrx2_zarr._errors import MetadataError  # noqa: E402
from rxrx2_zarr._paths import parse_site_id  # noqa: E402
from rxrx2_zarr.torch import Crop, IterableSiteDataset, Key, ShardedSampler, SiteDataset, Target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def png_site(source: Path, site_id: str) -> np.ndarray:
    """The site's six PNGs decoded with Pillow (not the converter's decoder): (6, H, W) uint8."""
    planes = []
    for path in parse_site_id(site_id).image_paths():
        with Image.open(source / path) as image:
            planes.append(np.asarray(image))
    return np.stack(planes)


def expected(source: Path, site_id: str, region: tuple[int, int, int, int], channels: list[int] | None) -> np.ndarray:
    y0, y1, x0, x1 = region
    pixels = png_site(source, site_id)[:, y0:y1, x0:x1]
    return pixels if channels is None else pixels[[c - 1 for c in channels]]


def pool_threads(image: Any) -> tuple[Any, int]:
    """A transform that also reports how many of the reader's pool threads exist in the process reading."""
    return image, sum(t.name.startswith("rxrx2-read") for t in threading.enumerate())


def as_float(image: Any) -> Any:
    return image.float() / 255.0


def distributed_shard(rank: int, world_size: int, init_file: str, n: int, queue: Any) -> None:
    """One rank of a real torch.distributed group (gloo): its sampler takes rank and world size from the group."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sampler = ShardedSampler(n, seed=3)
        queue.put((rank, sampler.rank, sampler.world_size, [int(k) for k in sampler]))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ds(store: Path) -> Dataset:
    return rxrx2_zarr.open(str(store))


# --- a real DataLoader with worker processes ---------------------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_loader_workers_random_crops_are_the_png_pixels(ds: Dataset, source_tree: Path, context: str) -> None:
    channels = [5, 2, 6]
    data = SiteDataset(ds, crop=Crop.random(40), channels=channels, target="site_id", seed=3)
    sampler = ShardedSampler(data, seed=11)
    loader = DataLoader(
        data, batch_size=8, sampler=sampler, num_workers=2, multiprocessing_context=context, persistent_workers=True
    )
    codes = data.class_to_index["site_id"]
    epochs = []
    for epoch in range(2):  # persistent workers: the second epoch's crops must still be new
        order = ShardedSampler(data, seed=11)
        order.set_epoch(epoch)
        regions = [data.locate(k, epoch) for k in order]
        batches = list(loader)
        images = torch.cat([batch[0] for batch in batches])
        assert images.shape == (len(data), 3, 40, 40) and images.dtype == torch.uint8
        for image, (site_id, region) in zip(images, regions, strict=True):
            np.testing.assert_array_equal(image.numpy(), expected(source_tree, site_id, region, channels))
        assert torch.cat([batch[1] for batch in batches]).tolist() == [codes[s] for s, _ in regions]
        epochs.append((images, regions))
    assert sampler.epoch == 2
    changed = sum(a != b for (_, a), (_, b) in zip(epochs[0][1], epochs[1][1], strict=True))
    assert changed > len(data) // 2  # new crops every epoch
    # the same seed in a single process gives the same samples, in the same order, with the same targets
    again = SiteDataset(ds, crop=Crop.random(40), channels=channels, target="site_id", seed=3)
    inline = DataLoader(again, batch_size=8, sampler=ShardedSampler(again, seed=11), num_workers=0)
    batches = list(inline)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), epochs[0][0], rtol=0, atol=0)
    order = [codes[site_id] for site_id, _ in epochs[0][1]]
    assert torch.cat([b[1] for b in batches]).tolist() == order


def test_worker_reads_use_the_workers_thread_unless_told(ds: Dataset) -> None:
    for threads, pooled in ((None, False), (2, True)):
        data = SiteDataset(ds, crop=Crop.center(32), transform=pool_threads, threads=threads)
        loader = DataLoader(data, batch_size=6, num_workers=2, multiprocessing_context="fork")
        counts = torch.cat([batch[1] for batch in loader])
        assert len(counts) == len(data)
        assert bool((counts > 0).all()) == pooled and bool((counts > 0).any()) == pooled, (threads, counts)


# --- crops ---------------------------------------------------------------------------------------------------------


def test_every_crop_kind_is_the_png_pixels(ds: Dataset, source_tree: Path) -> None:
    site_ids = ds.site_ids
    full = SiteDataset(ds)
    assert len(full) == len(ds) and full.sample_shape == (6, SMALL, SMALL)
    np.testing.assert_array_equal(full[3].numpy(), png_site(source_tree, site_ids[3]))
    centre = SiteDataset(ds, crop=Crop.center((20, 30)), channels=[4])
    assert centre.locate(0)[1] == (38, 58, 33, 63)
    np.testing.assert_array_equal(centre[-1].numpy(), expected(source_tree, site_ids[-1], (38, 58, 33, 63), [4]))
    grid = SiteDataset(ds, crop=Crop.grid(INNER[0]), channels=[1, 6])
    tiles = (SMALL // INNER[0]) ** 2
    assert len(grid) == tiles * len(ds)
    seen = set()
    for index in range(2 * tiles):  # the tiles of the first two sites, in row-major order
        site_id, region = grid.locate(index)
        assert site_id == site_ids[index // tiles]
        seen.add(region)
        np.testing.assert_array_equal(grid[index].numpy(), expected(source_tree, site_id, region, [1, 6]))
    assert len(seen) == tiles
    strided = SiteDataset(ds, crop=Crop.grid(48, stride=24))
    assert len(strided) == 9 * len(ds) and strided.locate(4)[1] == (24, 72, 24, 72)


def test_aligned_crops_start_on_the_chunk_grid(ds: Dataset, source_tree: Path) -> None:
    data = SiteDataset(ds, crop=Crop.aligned(INNER[0]), channels=[2, 1], seed=5)
    corners = Counter()
    for epoch in range(4):
        for index in range(len(data)):
            site_id, (y0, y1, x0, x1) = data.locate(index, epoch)
            assert y0 % INNER[0] == 0 and x0 % INNER[1] == 0 and (y1 - y0, x1 - x0) == INNER
            corners[(y0, x0)] += 1
    assert len(corners) == (SMALL // INNER[0]) ** 2  # every chunk position is drawn
    data.set_epoch(2)
    batch = data.__getitems__(list(range(len(data))))
    for index, image in enumerate(batch):
        site_id, region = data.locate(index, 2)
        np.testing.assert_array_equal(image.numpy(), expected(source_tree, site_id, region, [2, 1]))
    # a crop larger than a chunk, aligned: its corner is still on the grid, and it still fits
    wide = SiteDataset(ds, crop=Crop.aligned((64, 40)))
    for index in range(len(wide)):
        _, (y0, y1, x0, x1) = wide.locate(index)
        assert y0 in (0, 32) and x0 in (0, 32) and y1 <= SMALL and x1 <= SMALL


def test_seeded_crops_are_reproducible_and_differ_by_seed_and_epoch(ds: Dataset) -> None:
    def regions(seed: int, epoch: int) -> list[tuple[int, int, int, int]]:
        data = SiteDataset(rxrx2_zarr.open(ds.url), crop=Crop.random(33), seed=seed)
        return [data.locate(i, epoch)[1] for i in range(len(data))]

    first = regions(1, 0)
    assert regions(1, 0) == first  # another dataset, another store handle: the same crops
    assert regions(2, 0) != first and regions(1, 1) != first
    for y0, y1, x0, x1 in first:
        assert y0 >= 0 and y1 == y0 + 33 <= SMALL and x0 >= 0 and x1 == x0 + 33 <= SMALL
    assert len(set(first)) > len(first) // 2
    # plain indices follow set_epoch; a Key carries its own epoch
    data = SiteDataset(ds, crop=Crop.random(33), seed=1)
    data.set_epoch(1)
    assert data.locate(0)[1] == regions(1, 1)[0]
    assert data.locate(Key(0, 0))[1] == first[0]
    assert pickle.loads(pickle.dumps(Key(5, 3))).epoch == 3


def test_crop_and_dataset_arguments_are_checked(ds: Dataset) -> None:
    with pytest.raises(ValueError, match="does not fit in the 96 x 96"):
        SiteDataset(ds, crop=Crop.random(97))
    for bad in (lambda: Crop("zoom", (4, 4)), lambda: Crop.random(0), lambda: Crop("full", (4, 4)),
                lambda: Crop("random"), lambda: Crop("random", (4, 4), (2, 2)), lambda: Crop.grid((4, 4, 4))):  # fmt: skip
        with pytest.raises(ValueError):
            bad()
    for kwargs in ({"channels": [1, 1]}, {"channels": [7]}, {"channels": []}, {"threads": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            SiteDataset(ds, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="out of range for 47"):
        SiteDataset(ds)[len(ds)]
    with pytest.raises(ValueError, match="both rank and world_size"):
        ShardedSampler(10, rank=1)
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedSampler(10, rank=2, world_size=2)


# --- targets ---------------------------------------------------------------------------------------------------------


def test_text_targets_are_codes_stable_across_selections(ds: Dataset) -> None:
    whole = SiteDataset(ds, target="treatment")
    treatments = sorted(set(ds.sites["treatment"]))
    assert whole.classes == {"treatment": tuple(treatments)}
    plate2 = ds.select(plate=2, experiment=ds.sites["experiment"].iloc[-1])
    part = SiteDataset(plate2, crop=Crop.center(16), target="treatment")
    assert part.classes == whole.classes  # codes from the whole store, not the selection
    for index in range(len(part)):
        _, code = part[index]
        assert code.dtype == torch.int64 and treatments[int(code)] == plate2.sites["treatment"].iloc[index]
    fixed = SiteDataset(ds, target=Target("treatment", classes=(*reversed(treatments), "IL-6")))
    assert fixed.class_to_index["treatment"][treatments[0]] == len(treatments) - 1
    with pytest.raises(MetadataError, match="not one of the 1 classes"):
        SiteDataset(ds, target=Target("treatment", classes=(treatments[-1],)))
    with pytest.raises(ValueError, match="not a metadata column"):
        SiteDataset(ds, target="dose")


def test_concentration_nan_and_embedding_targets(ds: Dataset) -> None:
    frame = ds.sites
    assert frame["treatment_conc"].isna().any()  # the EMPTY controls
    with pytest.raises(MetadataError, match=r"blank treatment_conc .*EMPTY.*fill="):
        SiteDataset(ds, target="treatment_conc")
    treated = ds.select(treatment=sorted(set(frame["treatment"]) - {"EMPTY"}))
    conc = SiteDataset(treated, target="treatment_conc")
    _, value = conc[0]
    assert value.dtype == torch.float32 and math.isclose(float(value), treated.sites["treatment_conc"].iloc[0], rel_tol=1e-6)
    filled = SiteDataset(ds, target=Target("treatment_conc", fill=-1.0))
    kept = SiteDataset(ds, target=Target("treatment_conc", fill=float("nan")))
    empty = int(np.flatnonzero(frame["treatment_conc"].isna().to_numpy())[0])
    assert float(filled[empty][1]) == -1.0 and math.isnan(float(kept[empty][1]))
    with pytest.raises(ValueError, match="fill is for"):
        Target("plate", fill=0.0)
    both = SiteDataset(ds, crop=Crop.center(8), target=["embedding", "plate", Target("treatment_conc", fill=0.0)])
    _, target = both[7]
    assert set(target) == {"embedding", "plate", "treatment_conc"}
    assert target["embedding"].dtype == torch.float32 and target["embedding"].shape == (len(ds.embedding_features),)
    np.testing.assert_array_equal(target["embedding"].numpy(), ds.embeddings[7])
    assert int(target["plate"]) == int(frame["plate"].iloc[7]) and target["plate"].dtype == torch.int64
    batch = next(iter(DataLoader(both, batch_size=5)))
    assert batch[0].shape == (5, 6, 8, 8) and batch[1]["embedding"].shape == (5, 8)


def test_transforms_and_batches_equal_single_samples(ds: Dataset) -> None:
    data = SiteDataset(ds, crop=Crop.random(24), channels=[3], target="well", transform=as_float,
                       target_transform=lambda code: code + 100, seed=9)  # fmt: skip
    indices = [5, 0, 5, 46, -1]
    batch = data.__getitems__(indices)
    for index, (image, target) in zip(indices, batch, strict=True):
        single_image, single_target = data[index]
        assert image.dtype == torch.float32 and float(image.max()) <= 1.0
        torch.testing.assert_close(image, single_image, rtol=0, atol=0)
        assert int(target) == int(single_target) >= 100


# --- sharding --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(10, 3), (7, 2), (1, 2), (0, 2)])
def test_sampler_shards_neither_drop_nor_repeat(n: int, world: int) -> None:
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = ShardedSampler(n, rank=rank, world_size=world, seed=4)
            sampler.set_epoch(epoch)
            shards.append([int(k) for k in sampler])
            assert len(shards[-1]) == len(sampler)
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sampler_takes_rank_and_world_size_from_torch_distributed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    ranks = [context.Process(target=distributed_shard, args=(r, 2, str(tmp_path / "init"), 11, queue)) for r in range(2)]
    for process in ranks:
        process.start()
    got = sorted(queue.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [(r, rank, world) for r, rank, world, _ in got] == [(0, 0, 2), (1, 1, 2)]
    assert sorted(got[0][3] + got[1][3]) == list(range(11)) and len(got[0][3]) == 6
    assert ShardedSampler(11).world_size == 1  # no group here: one rank


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(ds: Dataset, source_tree: Path) -> None:
    data = SiteDataset(ds, target="site_id")
    names = data.classes["site_id"]
    tiles = SiteDataset(ds, crop=Crop.grid(INNER[0]), channels=[3])
    tile_of = {tiles[i].numpy().tobytes(): i for i in range(len(tiles))}
    assert len(tile_of) == len(tiles)  # every tile's pixels tell it apart
    orders: dict[str, list[list[Any]]] = {"sampler": [], "iterable": []}
    loaders = {}
    for rank in range(2):
        sampler = ShardedSampler(data, rank=rank, world_size=2, seed=8)
        loaders[("sampler", rank)] = DataLoader(data, batch_size=5, sampler=sampler, num_workers=2, persistent_workers=True)
        stream = IterableSiteDataset(tiles, rank=rank, world_size=2, seed=8, read_size=7)
        loaders[("iterable", rank)] = DataLoader(stream, batch_size=4, num_workers=2, persistent_workers=True)
    for _epoch in range(2):
        seen: dict[str, list[Any]] = {"sampler": [], "iterable": []}
        for (kind, rank), loader in loaders.items():
            got = []
            for batch in loader:
                if kind == "sampler":
                    got += [names[int(code)] for code in batch[1]]
                else:
                    got += [tile_of[image.numpy().tobytes()] for image in batch]
            assert got, (kind, rank)
            seen[kind].append(got)
        for kind, wanted in (("sampler", sorted(names)), ("iterable", list(range(len(tiles))))):
            assert sorted(s for shard in seen[kind] for s in shard) == sorted(wanted), kind
            orders[kind].append(seen[kind][0])
    assert orders["sampler"][0] != orders["sampler"][1] and orders["iterable"][0] != orders["iterable"][1]
    assert sorted(names) == sorted(ds.site_ids)


def test_datasets_pickle_small_and_whole(ds: Dataset) -> None:
    data = SiteDataset(ds.select(plate=1), crop=Crop.aligned(32), channels=[6, 1], target=["treatment", "embedding"], seed=2)
    stream = IterableSiteDataset(data, rank=1, world_size=3)
    for obj in (data, stream, ShardedSampler(data, rank=0, world_size=2)):
        blob = pickle.dumps(obj)
        assert len(blob) < 20_000
        copy = pickle.loads(blob)
        assert len(copy) == len(obj)
    copy = pickle.loads(pickle.dumps(data))
    for index in (0, len(data) - 1):
        torch.testing.assert_close(copy[index][0], data[index][0], rtol=0, atol=0)
        assert copy.locate(index) == data.locate(index)


# --- the README example ------------------------------------------------------------------------------------------


def test_readme_training_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Training with PyTorch", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Training with PyTorch' section has no Python example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1:" in done.stdout, done.stdout
