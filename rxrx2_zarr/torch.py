"""PyTorch datasets over an rxrx2-zarr store (``pip install 'rxrx2-zarr[torch]'``).

:class:`SiteDataset` is a map-style dataset over any selection of a store: sample ``i`` is a ``(C, h, w)`` uint8
tensor (a whole site, its centre, a random box, a random box aligned to the inner chunks, or one tile of a grid;
the channels asked for, in the order asked for) and, if asked for, a target (metadata columns as integer codes or
numbers, the embedding, or several as a dict). Its ``__getitems__`` reads a whole batch: the DataLoader calls it
with the batch's indices, and sites that share a region are read in one call. :class:`ShardedSampler` shards it by
rank and world size and reshuffles every epoch from a seed; :class:`IterableSiteDataset` is the iterable form,
sharded by rank and by DataLoader worker. Together the ranks see every sample once per epoch: none is dropped and
none is repeated (so the ranks' sample counts may differ by one).

Every piece pickles small (the store's URL, options and selection; the targets; the crop), so the datasets go to
DataLoader workers under fork, spawn and forkserver. Inside a worker a read decodes in the worker's own thread
(``threads=None``): the workers are the parallelism, and a read pool per worker would only oversubscribe the cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset, Sampler, get_worker_info

from ._crops import Crop, CropPlan, Region
from ._dataset import Dataset
from ._dataset import open as open_store
from ._site_reader import check_threads
from ._targets import EncodedTarget, Target, classes_of, encode_targets, parse_targets

__all__ = ["Crop", "IterableSiteDataset", "Key", "ShardedSampler", "SiteDataset", "Target"]

Pixels = npt.NDArray[np.uint8]


def _read(dataset: Dataset, site_ids: list[str], channels: list[int] | None, region: Region | None, threads: int | None) -> Pixels:
    """The one call into the reader: (n, c, h, w) uint8 of ``site_ids``. ``threads=None`` is the reader's default:
    the calling thread inside a DataLoader worker, the shared read pool elsewhere."""
    return dataset.read(site_ids, channels=channels, region=region, threads=threads)


def _non_negative(value: Any, what: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


class Key(int):
    """A sample index that carries the epoch it is drawn for (what :class:`ShardedSampler` yields).

    It is the index itself to any dataset; :class:`SiteDataset` also reads its ``epoch``, so that random crops
    change every epoch even in persistent DataLoader workers, whose copy of the dataset never sees
    :meth:`SiteDataset.set_epoch` called in the main process.
    """

    epoch: int

    def __new__(cls, index: int, epoch: int) -> Key:
        key = super().__new__(cls, index)
        key.epoch = epoch
        return key

    def __reduce__(self) -> tuple[type[Key], tuple[int, int]]:
        return (Key, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"Key({int(self)}, epoch={self.epoch})"


class _Epochs:
    """The epoch of the next pass: the one set last, plus one per pass made since. A persistent worker's copy of
    a dataset never hears of ``set_epoch`` in the main process, but it counts the passes it makes, and every
    worker makes every pass: counting keeps consecutive epochs right everywhere without any message."""

    def __init__(self) -> None:
        self.start = 0
        self.passes = 0

    def set(self, epoch: int) -> None:
        self.start = _non_negative(epoch, "epoch")
        self.passes = 0

    @property
    def current(self) -> int:
        return self.start + self.passes

    def next(self) -> int:
        epoch = self.current
        self.passes += 1
        return epoch


class SiteDataset(TorchDataset[Any]):
    """Samples of a store or a selection of it (``rxrx2_zarr.open(url).select(...)``, or a URL).

    ``crop``: :class:`Crop` (default the whole site; :meth:`Crop.grid` makes each tile one sample). ``channels``:
    channel numbers 1..6 in the order wanted (default all six). ``target``: None (a sample is the image alone), a
    metadata column or ``"embedding"`` (a sample is ``(image, target)``), a :class:`Target`, or a list of them (the
    target is then a dict by name). Text columns are integer codes, see :attr:`classes`. ``transform`` is applied to
    every image tensor, ``target_transform`` to every target. ``seed`` keys the random crops (with the epoch and the
    sample index). ``threads``: decoding threads per read; None is 1 inside DataLoader workers and the reader's
    default elsewhere.
    """

    def __init__(
        self,
        dataset: Dataset | str,
        *,
        crop: Crop | None = None,
        channels: Sequence[int] | None = None,
        target: str | Target | Sequence[str | Target] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
        threads: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(dataset, str):
            dataset = open_store(dataset, storage_options)
        elif storage_options is not None:
            raise ValueError("storage_options go with a URL; an opened Dataset already has its own")
        if not isinstance(dataset, Dataset):
            raise TypeError(f"SiteDataset needs an rxrx2_zarr Dataset or a store URL, got {type(dataset).__name__}")
        spec = dataset.spec
        self.dataset = dataset
        self.plan: CropPlan = (crop or Crop.full()).plan(spec.height, spec.width, spec.chunks[-2:])
        self.channels = self._check_channels(channels, spec.channels)
        targets, self._single = parse_targets(target)
        self.targets: tuple[EncodedTarget, ...] = encode_targets(targets, dataset)
        self.transform = transform
        self.target_transform = target_transform
        self.seed = _non_negative(seed, "seed")
        self.threads = check_threads(threads)
        self.site_ids: list[str] = dataset.site_ids
        self._epochs = _Epochs()

    @staticmethod
    def _check_channels(channels: Sequence[int] | None, count: int) -> list[int] | None:
        if channels is None:
            return None
        numbers = list(channels)
        bad = [c for c in numbers if not isinstance(c, int | np.integer) or isinstance(c, bool) or not 1 <= c <= count]
        if bad or not numbers or len(set(numbers)) != len(numbers):
            raise ValueError(f"channels must be distinct channel numbers 1..{count} (w1..w{count}), got {channels!r}")
        return [int(c) for c in numbers]

    # --- what the samples are ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.site_ids) * self.plan.tiles

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every image."""
        count = self.dataset.spec.channels if self.channels is None else len(self.channels)
        return (count, *self.plan.shape)

    @property
    def classes(self) -> dict[str, tuple[str, ...]]:
        """``{column: values}`` of the text targets: value ``classes[column][k]`` is code ``k``. The codes are the
        sorted distinct values of the whole store (unless given), the same for any selection and in any run."""
        return dict(classes_of(self.targets))

    @property
    def class_to_index(self) -> dict[str, dict[str, int]]:
        """``{column: {value: code}}`` of the text targets (the inverse of :attr:`classes`)."""
        return {name: {c: k for k, c in enumerate(values)} for name, values in self.classes.items()}

    @property
    def epoch(self) -> int:
        """The epoch of samples asked for by plain indices (a :class:`Key` carries its own)."""
        return self._epochs.current

    def set_epoch(self, epoch: int) -> None:
        """The epoch of random crops for plain indices. Persistent DataLoader workers keep their own copy: sample
        with :class:`ShardedSampler` (its indices carry the epoch) or :class:`IterableSiteDataset` instead."""
        self._epochs.set(epoch)

    def _locate(self, index: int) -> tuple[int, Region | None]:
        """(site position in the selection, region or None for the whole site) of sample ``index``."""
        if not isinstance(index, int | np.integer) or isinstance(index, bool):
            raise TypeError(f"sample indices are integers, got {type(index).__name__}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {index} out of range for {n} sample(s)")
        epoch = index.epoch if isinstance(index, Key) else self._epochs.current
        site, tile = divmod(i, self.plan.tiles)
        return site, self.plan.region(tile, self.seed, epoch, i)

    def locate(self, index: int, epoch: int | None = None) -> tuple[str, Region]:
        """Which site and region ``(y0, y1, x0, x1)`` sample ``index`` is in ``epoch`` (default: :attr:`epoch`)."""
        key = index if epoch is None else Key(int(index), _non_negative(epoch, "epoch"))
        site, region = self._locate(key)
        spec = self.dataset.spec
        return self.site_ids[site], region if region is not None else (0, spec.height, 0, spec.width)

    # --- reading ------------------------------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples of ``indices`` (a DataLoader batch): every group of samples that share a region (the whole
        site, the centre, a grid tile) is one read of all its sites."""
        located = [self._locate(i) for i in indices]
        groups: dict[Region | None, list[int]] = {}
        for k, (_, region) in enumerate(located):
            groups.setdefault(region, []).append(k)
        threads = self.threads  # None: the reader decodes in this thread inside a DataLoader worker
        images: list[torch.Tensor] = [torch.empty(0)] * len(located)
        for region, members in groups.items():
            ids = [self.site_ids[located[k][0]] for k in members]
            pixels = _read(self.dataset, ids, self.channels, region, threads)
            for j, k in enumerate(members):
                images[k] = torch.from_numpy(pixels[j])
        return [self._sample(image, site) for image, (site, _) in zip(images, located, strict=True)]

    def _sample(self, image: torch.Tensor, site: int) -> Any:
        out: Any = self.transform(image) if self.transform is not None else image
        if not self.targets:
            return out
        values = {t.name: self._value(t, site) for t in self.targets}
        target: Any = next(iter(values.values())) if self._single else values
        if self.target_transform is not None:
            target = self.target_transform(target)
        return out, target

    @staticmethod
    def _value(target: EncodedTarget, site: int) -> torch.Tensor:
        value = target.values[site]
        # a copy: a view would share the whole matrix's storage with the main process when sent unbatched
        return torch.from_numpy(np.array(value)) if target.values.ndim > 1 else torch.tensor(value)

    def __repr__(self) -> str:
        c, h, w = self.sample_shape
        names = [t.name for t in self.targets]
        return (
            f"<rxrx2_zarr.torch.SiteDataset {self.dataset.url!r}: {len(self)} samples of {c} x {h} x {w} "
            f"({self.plan.crop.kind} crop, {len(self.site_ids)} sites), targets {names}>"
        )


def _rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else torch.distributed's when it is initialized, else (0, 1)."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(f"give both rank and world_size or neither, got rank={rank!r}, world_size={world_size!r}")
    world = _non_negative(world_size, "world_size")
    if world < 1 or not 0 <= _non_negative(rank, "rank") < world:
        raise ValueError(f"rank must be in 0..world_size-1 and world_size >= 1, got rank={rank}, world_size={world_size}")
    return int(rank), world


def _shard(n: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int) -> npt.NDArray[np.int64]:
    """This rank's sample indices in ``epoch``: every ``world_size``-th of one permutation shared by all ranks
    (the same seed and epoch give every rank the same permutation, so the shards are disjoint and cover it)."""
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    return order[rank::world_size].astype(np.int64)


class _Sharded:
    """What the sampler and the iterable share: rank, world size, shuffling, seed, and the epoch of the next pass
    (one permutation per epoch, the same on every rank; see :func:`_shard`)."""

    rank: int
    world_size: int
    shuffle: bool
    seed: int
    _epochs: _Epochs

    def _init_shards(self, rank: int | None, world_size: int | None, shuffle: bool, seed: int) -> None:
        self.rank, self.world_size = _rank(rank, world_size)
        self.shuffle = bool(shuffle)
        self.seed = _non_negative(seed, "seed")
        self._epochs = _Epochs()

    @property
    def epoch(self) -> int:
        """The epoch of the next pass."""
        return self._epochs.current

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (then one more per pass)."""
        self._epochs.set(epoch)

    def _count(self, n: int) -> int:
        """This rank's share of ``n`` samples."""
        return len(range(self.rank, n, self.world_size))

    def _next_pass(self, n: int) -> tuple[int, list[int]]:
        """The next epoch and this rank's indices in it."""
        epoch = self._epochs.next()
        return epoch, _shard(n, self.seed, epoch, self.shuffle, self.rank, self.world_size).tolist()


class ShardedSampler(_Sharded, Sampler[int]):
    """This rank's share of a dataset's indices, reshuffled every epoch from ``seed``, as :class:`Key` objects that
    carry the epoch (give it to ``DataLoader(sampler=...)``).

    Unlike ``DistributedSampler`` it neither pads nor drops: over the ranks every sample comes exactly once per
    epoch, and the ranks' counts differ by at most one (with DistributedDataParallel, let the shorter ranks
    join with ``torch.distributed.algorithms.Join`` or stop every rank at the shortest count). Each pass over the
    sampler is the next epoch unless :meth:`set_epoch` says otherwise. ``rank``/``world_size`` default to
    torch.distributed's when it is initialized.
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.size = _non_negative(data_source if isinstance(data_source, int) else len(data_source), "dataset length")
        self._init_shards(rank, world_size, shuffle, seed)

    def __len__(self) -> int:
        return self._count(self.size)

    def __iter__(self) -> Iterator[int]:
        epoch, mine = self._next_pass(self.size)
        for i in mine:
            yield Key(i, epoch)


class IterableSiteDataset(_Sharded, IterableDataset[Any]):
    """The iterable form of a :class:`SiteDataset`: this rank's share of its samples, split again between the
    DataLoader's workers, reshuffled every epoch from ``seed``; read ``read_size`` samples at a time (one
    ``__getitems__`` call). Over all ranks and workers each sample comes exactly once per epoch. Each pass is the
    next epoch (counted in every worker, so persistent workers follow too) unless :meth:`set_epoch` says otherwise.
    """

    def __init__(
        self,
        dataset: SiteDataset,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        read_size: int = 32,
    ) -> None:
        if not isinstance(dataset, SiteDataset):
            raise TypeError(f"IterableSiteDataset wraps a SiteDataset, got {type(dataset).__name__}")
        if _non_negative(read_size, "read_size") < 1:
            raise ValueError(f"read_size must be >= 1, got {read_size}")
        self.dataset = dataset
        self.read_size = int(read_size)
        self._init_shards(rank, world_size, shuffle, seed)

    def __len__(self) -> int:
        """Samples of this rank per epoch (all its workers together)."""
        return self._count(len(self.dataset))

    def __iter__(self) -> Iterator[Any]:
        epoch, mine = self._next_pass(len(self.dataset))
        worker = get_worker_info()
        if worker is not None:
            mine = mine[worker.id :: worker.num_workers]
        for start in range(0, len(mine), self.read_size):
            yield from self.dataset.__getitems__([Key(i, epoch) for i in mine[start : start + self.read_size]])
