"""Workload ``loader``: a torch ``DataLoader`` over the store (:class:`rxrx2_zarr.torch.SiteDataset`) vs the same
loader over the PNGs (Pillow decode-then-crop; ``torchvision.io.decode_png`` when it imports), for full sites,
random crops and crops aligned to the inner chunks, with 0 and 2 worker processes (batch 32, persistent workers).

Both sides read the same samples: the same sampler (:class:`ShardedSampler`-style keys that carry an epoch) and
the same crop regions (the store's :class:`CropPlan` gives them to the PNG side too), checked pixel-equal before
anything is timed. Passes of every loader of one crop kind alternate round by round; samples/s is the median over
rounds. Peak RSS is sampled per worker process (psutil), and for the main process with 0 workers.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._crops import Crop, CropPlan
from rxrx2_zarr._layout import DEFAULT_PROFILE, PROFILES
from rxrx2_zarr._paths import parse_site_id

from ._access import PngSiteReader, StoreSiteReader, decode_png_bytes, open_store, same
from ._context import Context
from ._data import WRITER_MODULES, cached
from ._measure import log, median, ratio

__all__ = ["run"]

BATCH = 32
WORKERS = (0, 2)
MODES = ("full", "random", "aligned")
#: Goal of the crop targets (issue 12): the store loader at least this many times the PNG loader.
CROP_GOAL = 50.0


def _torchvision() -> tuple[Any, str | None]:
    """``torchvision.io`` or None, and why not. torchvision's PyPI wheels are built against one torch release;
    beside another (here the CPU wheel of the test extra) the import fails in its C extension."""
    try:
        import torchvision.io
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return torchvision.io, None


class PngDataset:
    """The PNG side: sample ``key`` is the same site and region as in the store's :class:`SiteDataset`; a site's
    six files are decoded whole (a PNG cannot be decoded in part), then cropped. Picklable (paths and the plan)."""

    def __init__(self, src: str, site_ids: list[str], plan: CropPlan, seed: int, decoder: str) -> None:
        self.src = src
        self.site_ids = site_ids
        self.plan = plan
        self.seed = seed
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.site_ids) * self.plan.tiles

    def __getitem__(self, key: int) -> Any:
        import torch

        site, tile = divmod(int(key), self.plan.tiles)
        region = self.plan.region(tile, self.seed, getattr(key, "epoch", 0), int(key))
        paths = [f"{self.src}/{p}" for p in parse_site_id(self.site_ids[site]).image_paths()]
        if self.decoder == "torchvision":
            io, _ = _torchvision()
            pixels = torch.cat([io.decode_png(io.read_file(p)) for p in paths])
        else:
            pixels = torch.from_numpy(np.stack([decode_png_bytes(Path(p).read_bytes(), self.decoder) for p in paths]))
        if region is None:
            return pixels
        y0, y1, x0, x1 = region
        return pixels[:, y0:y1, x0:x1].clone()  # a copy: a view would keep (and send) the whole site


class Samples:
    """``samples`` keys per pass over a dataset of ``n``: every index in turn, then again under the next draw
    (a repetition is another epoch of its random crops), shuffled. Both sides get the same keys."""

    def __init__(self, n: int, samples: int, seed: int) -> None:
        self.n, self.samples, self.seed = n, samples, seed

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[int]:
        from rxrx2_zarr.torch import Key

        order = np.random.default_rng(self.seed).permutation(self.samples)
        return iter([Key(int(k) % self.n, int(k) // self.n) for k in order])


class RssWatch:
    """Peak RSS of each worker process (registered with :meth:`add` under its loader's label) and of this process
    per loader while that loader runs (:attr:`current`), sampled every ``interval`` seconds in a thread. Forked
    workers count the parent's pages they touch."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.current: str | None = None
        self.workers: dict[int, tuple[str, psutil.Process]] = {}
        self.worker_peak: dict[int, int] = {}
        self.main_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loader-rss", daemon=True)
        self._me = psutil.Process()

    def add(self, label: str, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.workers[pid] = (label, psutil.Process(pid))

    def _sample(self) -> None:
        for pid, (_, process) in list(self.workers.items()):
            with contextlib.suppress(psutil.Error):
                self.worker_peak[pid] = max(self.worker_peak.get(pid, 0), process.memory_info().rss)
        current = self.current
        if current is not None:
            self.main_peak[current] = max(self.main_peak.get(current, 0), self._me.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, label: str) -> list[float]:
        """Peak RSS (MB) of each worker of ``label``, or of this process while ``label`` ran (0 workers)."""
        pids = sorted(pid for pid, (name, _) in self.workers.items() if name == label)
        if pids:
            return [round(self.worker_peak.get(pid, 0) / 1e6, 1) for pid in pids]
        return [round(self.main_peak[label] / 1e6, 1)] if label in self.main_peak else []


def _children() -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {p.pid for p in psutil.Process().children(recursive=True)}
    return set()


def loader_store(ctx: Context, profile: str = DEFAULT_PROFILE) -> Path:
    """The first ``read_sites`` sites in ``profile`` with inner chunks of the crop's size (a crop aligned to them
    decodes one chunk per channel, and every store's aligned crops are the same), converted once per pixel dataset
    and writer version (cached: this conversion is not timed)."""
    crop, limit = ctx.config.crop, ctx.config.read_sites
    inner = (crop, crop)
    params = {"pixels": ctx.src.parent.name, "profile": profile, "inner_chunks": list(inner), "limit": limit}

    def build(tmp: Path) -> None:
        log(f"converting {limit} sites of the pixel dataset, profile {profile}, {inner} inner chunks, for the loader (cached)")
        options = ConvertOptions(
            profile=profile, inner_chunks=inner, limit=limit, workers=ctx.config.max_threads, progress=False
        )
        convert(str(ctx.src), str(tmp / "store.zarr"), options)

    entry, _ = cached(ctx.cache, f"loader-store-{profile}" if profile != DEFAULT_PROFILE else "loader-store", params, WRITER_MODULES, build)
    return entry / "store.zarr"


#: Store sides besides the default profile's ("store"): the same loader passes over a store of each of these.
OTHER_PROFILES = ("turbo",)


def _crop(mode: str, size: int) -> Crop:
    return Crop.full() if mode == "full" else Crop.random(size) if mode == "random" else Crop.aligned(size)


def _datasets(ctx: Context, stores: dict[str, Path], mode: str, decoders: list[str]) -> dict[str, Any]:
    """Every side's dataset of one crop kind: the stores' (read in the calling thread: one thread per read on
    both sides, in the main process too; "store" is the default profile's) and the PNG decoders'."""
    from rxrx2_zarr.torch import SiteDataset

    crop = _crop(mode, ctx.config.crop)
    sides: dict[str, Any] = {
        name: SiteDataset(open_store(str(path)), crop=crop, threads=1, seed=ctx.config.seed) for name, path in stores.items()
    }
    data = sides["store"]
    for decoder in decoders:
        sides[decoder] = PngDataset(str(ctx.src), data.site_ids, data.plan, data.seed, decoder)
    return sides


def _verify(sides: dict[str, Any], keys: list[int], mode: str) -> None:
    store = sides["store"]
    for key in keys[:4]:
        for name, dataset in sides.items():
            if name != "store" and not same(dataset[key].numpy(), store[key].numpy()):
                raise AssertionError(f"loader {mode}: {name} and store samples differ for key {key!r}")


def _pass(loader: Any) -> int:
    count = 0
    for batch in loader:
        count += int(batch.shape[0])
    return count


def _label(mode: str, side: str, workers: int | str) -> str:
    return f"{mode}/{side}/{workers}"


def _direct(sides: dict[str, Any], keys: list[int], store: Path, src: Path) -> dict[str, Callable[[], int]]:
    """Full sites without a loader, one thread, on the same keys: the store's ``Dataset.read`` of one site at a
    time and Pillow's six decodes (the ratio the loader path must keep)."""
    site_ids = [sides["store"].site_ids[int(k)] for k in keys]
    reader = StoreSiteReader(str(store))
    pillow = PngSiteReader(str(src), "pillow")

    def run(read: Callable[[str], Any]) -> Callable[[], int]:
        return lambda: sum(1 for s in site_ids if read(s) is not None)

    return {"store": run(reader.site), "pillow": run(pillow.site)}


def _loaders(sides: dict[str, Any], sampler: Samples, mode: str, watch: RssWatch) -> dict[str, Any]:
    """A DataLoader per side and worker count, each warmed up by one pass (which starts its persistent workers,
    registered with ``watch``)."""
    from torch.utils.data import DataLoader

    loaders: dict[str, Any] = {}
    for side, dataset in sides.items():
        for workers in WORKERS:
            label = _label(mode, side, workers)
            before = _children()
            loader = DataLoader(
                dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
            )
            watch.current = label if workers == 0 else None
            _pass(loader)
            if workers:
                watch.add(label, _children() - before)
            loaders[label] = loader
    return loaders


def _rows(
    seconds: dict[str, list[float]], samples: int, mode: str, sides: list[str], decoders: list[str], columns: list[str],
    watch: RssWatch,
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for column in columns:
        row: dict[str, Any] = {}
        for side in sides:
            label = _label(mode, side, column)
            if label not in seconds:  # direct reads: the default store and Pillow only
                continue
            row[side] = {
                "samples_per_second": round(samples / median(seconds[label]), 2),
                "runs_s": [round(v, 4) for v in seconds[label]],
            }
            if column != "direct":
                row[side]["peak_rss_mb_per_worker"] = watch.peak_mb(label)
        rates = {side: row[side]["samples_per_second"] for side in sides if side in row}
        png = [d for d in decoders if d in rates]
        row["speedup"] = {f"vs_{d}": ratio(rates["store"], rates[d]) for d in png}
        for other in (s for s in rates if s != "store" and s not in decoders):
            row[f"{other}_speedup"] = {f"vs_{d}": ratio(rates[other], rates[d]) for d in png}
        rows[column] = row
    return rows


def _run_mode(
    ctx: Context, stores: dict[str, Path], mode: str, decoders: list[str], samples: int, watch: RssWatch
) -> dict[str, Any]:
    """Every side with 0 and 2 workers on the same keys (and for full sites the direct reads too): one warm-up
    pass each, then ``repeat - 1`` rounds in which each makes one pass in turn."""
    store = stores["store"]
    sides = _datasets(ctx, stores, mode, decoders)
    sampler = Samples(len(sides["store"]), samples, ctx.config.seed)
    keys = list(sampler)
    _verify(sides, keys, mode)
    loaders = _loaders(sides, sampler, mode, watch)
    passes: dict[str, Callable[[], int]] = {label: functools.partial(_pass, loader) for label, loader in loaders.items()}
    if mode == "full":
        for side, run in _direct(sides, keys, store, ctx.src).items():
            run()  # warm-up, as the loaders had
            passes[_label(mode, side, "direct")] = run
    seconds: dict[str, list[float]] = {label: [] for label in passes}
    # one round fewer than the read workloads, as codecs and worker_scaling (a round is every side, worker count
    # and mode: the suite's longest workload)
    for _ in range(max(1, ctx.config.repeat - 1)):
        for label, run in passes.items():
            watch.current = label if label.endswith("/0") else None
            start = time.perf_counter()
            got = run()
            seconds[label].append(time.perf_counter() - start)
            if got != samples:
                raise AssertionError(f"loader {label}: {got} samples in a pass, expected {samples}")
    watch.current = None
    passes.clear()
    loaders.clear()  # the persistent workers stop with their loaders, before the next crop kind starts its own
    gc.collect()
    columns = [str(w) for w in WORKERS] + (["direct"] if mode == "full" else [])
    rows = _rows(seconds, samples, mode, list(sides), decoders, columns, watch)
    direct = rows.pop("direct", None)
    result = {"sample_shape": list(sides["store"].sample_shape), "workers": rows}
    if direct is not None:
        result["direct_1_thread"] = direct
    return result


def run(ctx: Context) -> dict[str, Any]:
    import multiprocessing

    try:
        import torch
    except ImportError:  # an optional extra: the rest of the suite runs without it
        return {"skipped": "torch is not installed (pip install 'rxrx2-zarr[torch]')"}

    config = ctx.config
    store = loader_store(ctx)
    stores = {"store": store, **{name: loader_store(ctx, name) for name in OTHER_PROFILES if name in PROFILES}}
    io, reason = _torchvision()
    decoders = ["pillow"] + (["torchvision"] if io is not None else [])
    # a few batches per pass, so that two workers both have work (a pass repeats sites under new crop draws)
    samples = BATCH * max(2, config.read_sites // 8)
    modes: dict[str, Any] = {}
    # collation with 0 workers runs in this process: one torch thread, as in the workers (torch's OpenMP pool
    # spins for its other threads, which on a loaded 2-core machine made stacking a batch 5-25x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with RssWatch() as watch:
            for mode in MODES:
                log(f"loader: {mode} ({samples} samples per pass, sides {['store', *decoders]}, workers {list(WORKERS)})")
                modes[mode] = _run_mode(ctx, stores, mode, decoders, samples, watch)
    finally:
        torch.set_num_threads(threads)
    spec = open_store(str(store)).spec
    return {
        "sites": len(open_store(str(store))),
        "samples_per_pass": samples,
        "batch_size": BATCH,
        "workers": list(WORKERS),
        "crop": config.crop,
        "profile": spec.profile,
        "inner_chunks": list(spec.chunks),
        "other_stores": {name: {"profile": name, "inner_chunks": list(open_store(str(path)).spec.chunks)} for name, path in stores.items() if name != "store"},
        "start_method": multiprocessing.get_start_method(),
        "torch": torch.__version__,
        "torchvision": {"available": io is not None, "reason": reason},
        "modes": modes,
        "verified": True,
        "notes": (
            "DataLoader(batch_size=32, persistent_workers=True when workers > 0), one sampler for every side: the "
            "same keys and crop regions. Store: rxrx2_zarr.torch.SiteDataset(threads=1), whose __getitems__ reads "
            "each batch; PNG: a site's six files decoded (Pillow, or torchvision.io.decode_png), then cropped. "
            f"Random crops at any position; aligned crops on the {spec.chunks[0]}-pixel inner-chunk grid. A pass is "
            "timed from iter() to the last batch in the main process (collation and transfer from the workers "
            "included), with torch.set_num_threads(1) in the main process as in the workers. 'direct': the same "
            "full sites read one by one without a loader (Dataset.read(threads=1); Pillow), in the same "
            "rounds. Peak RSS: psutil, sampled every 20 ms, per worker process (0 workers: the main process)."
        ),
    }
