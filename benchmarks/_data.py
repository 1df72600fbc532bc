"""The data every workload runs on, generated with ``rxrx2_zarr.testing.synth`` and cached by parameters.

* the pixel dataset: an RxRx2-shaped PNG tree (``Config.experiments x plates x wells x sites``, ``size`` pixels);
* metadata-only trees and ``no_pixels`` stores of 1e3 / 1e4 / 131,953 sites for the open-scaling workload
  (``synth(experiments=2, plates=12, wells=1380, sites=4, metadata_only=True)`` has exactly RxRx2's 131,953 sites;
  smaller sizes keep its first N rows).

A cache entry is a directory named by a hash of its parameters and of the source of the modules that produce it
(so a change to the generator or the writer rebuilds it); it is built in a temporary directory and renamed into
place with a ``.complete`` marker, so an interrupted build is never mistaken for a cached one. The stores whose
conversion is being timed are never cached: they are written in the run's work directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import rxrx2_zarr
from rxrx2_zarr import synth
from rxrx2_zarr._convert import ConvertOptions, convert

from ._config import FULL_SCALE_SITES, Config
from ._measure import log

__all__ = ["PixelData", "TreeStats", "cached", "metadata_store", "pixel_data", "tree_stats"]

PACKAGE_DIR = Path(rxrx2_zarr.__file__).parent
SYNTH_MODULES = (
    *sorted(f"testing/{p.name}" for p in (PACKAGE_DIR / "testing").glob("*.py")),
    "_paths.py",
    "_schema.py",
    "_channels.py",
)
#: Modules that only read stores: a change to them does not change what is written, so it keeps the cache.
READ_ONLY_MODULES = frozenset(
    {"__init__.py", "_exports.py", "_dataset.py", "_store.py", "_index.py", "_arrays.py", "_site_reader.py",
     "_select.py", "_views.py", "_render.py", "_verify.py", "_info.py", "cli.py"}
    | {"torch.py", "_crops.py", "_targets.py"}
)
#: Everything that can change a written store (new modules are included automatically).
WRITER_MODULES = tuple(sorted(p.name for p in PACKAGE_DIR.glob("*.py") if p.name not in READ_ONLY_MODULES))
COMPLETE = ".complete"
#: The layout whose first N rows make the metadata-only datasets (all of it is RxRx2's 131,953 sites).
FULL_LAYOUT = {"experiments": 2, "plates": 12, "wells": 1380, "sites": 4}


def source_hash(modules: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = PACKAGE_DIR / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()


def cached(
    cache: Path, kind: str, params: dict[str, Any], modules: Iterable[str], build: Callable[[Path], None]
) -> tuple[Path, bool]:
    """The cache directory for ``(kind, params, sources)``, built by ``build(tmp_dir)`` if absent; and whether it
    was found in the cache."""
    key_doc = {"kind": kind, "params": params, "sources": source_hash(modules)}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    final = cache / f"{kind}-{key}"
    if (final / COMPLETE).exists():
        return final, True
    if final.exists():
        shutil.rmtree(final)
    tmp = cache / f".tmp-{kind}-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / "params.json").write_text(json.dumps(key_doc, indent=1, sort_keys=True))
    (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    os.replace(tmp, final)
    return final, False


@dataclass(frozen=True)
class TreeStats:
    objects: int
    bytes: int
    allocated_bytes: int

    def to_json(self) -> dict[str, int]:
        return {"objects": self.objects, "bytes": self.bytes, "allocated_bytes": self.allocated_bytes}


def tree_stats(root: Path, predicate: Callable[[str], bool] | None = None) -> TreeStats:
    """Files under ``root`` (paths relative to it, ``/``-separated, filtered by ``predicate``): count, apparent
    bytes and bytes allocated on disk. The cache marker files are not counted."""
    objects = nbytes = allocated = 0
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), rel + "/"))
                    continue
                if rel in (COMPLETE, "params.json") or (predicate is not None and not predicate(rel)):
                    continue
                stat = entry.stat(follow_symlinks=False)
                objects += 1
                nbytes += stat.st_size
                allocated += getattr(stat, "st_blocks", 0) * 512
    return TreeStats(objects, nbytes, allocated)


@dataclass(frozen=True)
class PixelData:
    """The generated PNG tree of a run and its ``metadata.csv`` (file order)."""

    root: Path
    metadata: pd.DataFrame
    cached: bool
    seconds: float

    @property
    def site_ids(self) -> list[str]:
        return [str(s) for s in self.metadata["site_id"]]


def pixel_data(config: Config, cache: Path) -> PixelData:
    params: dict[str, Any] = {
        "experiments": config.experiments,
        "plates": config.plates,
        "wells": config.wells,
        "sites": config.sites,
        "size": config.size,
        "seed": config.seed,
        "embedding_dim": 128,
    }

    def build(tmp: Path) -> None:
        log(f"generating the pixel dataset {params} (cached for later runs)")
        report = synth(str(tmp / "tree"), workers=config.max_threads, **params)
        log(report.summary().splitlines()[0])

    started = time.perf_counter()
    entry, hit = cached(cache, "pixels", params, SYNTH_MODULES, build)
    tree = entry / "tree"
    metadata = pd.read_csv(
        tree / "metadata.csv", dtype={"treatment": str, "well": str, "treatment_conc": str}
    )
    return PixelData(tree, metadata, hit, time.perf_counter() - started)


def metadata_store(n_sites: int, cache: Path) -> tuple[Path, Path, bool]:
    """(metadata-only tree, no-pixels store, cached?) with the first ``n_sites`` rows of the full RxRx2 layout."""
    limit = None if n_sites >= FULL_SCALE_SITES else n_sites
    params: dict[str, Any] = {**FULL_LAYOUT, "limit": limit, "seed": 0, "embedding_dim": 128}

    def build(tmp: Path) -> None:
        log(f"building a metadata-only store of {n_sites:,} sites (cached for later runs)")
        synth(str(tmp / "tree"), metadata_only=True, **params)
        convert(
            str(tmp / "tree"),
            str(tmp / "store.zarr"),
            ConvertOptions(no_pixels=True, overwrite=True, progress=False),
        )

    entry, hit = cached(cache, "metadata", params, WRITER_MODULES, build)
    return entry / "tree", entry / "store.zarr", hit
