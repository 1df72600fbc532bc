"""What the workloads of one run share: the configuration, the data, the stores converted so far."""

from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rxrx2_zarr._convert import ConvertOptions, ConvertReport, convert
from rxrx2_zarr._layout import DEFAULT_INNER_CHUNKS, DEFAULT_PROFILE

from ._config import Config
from ._data import PixelData
from ._measure import log

__all__ = ["Context"]


@dataclass
class Context:
    config: Config
    out: Path
    work: Path
    cache: Path
    data: PixelData
    #: profile -> store converted from the pixel dataset with the default inner chunks (in the work directory)
    stores: dict[str, Path] = field(default_factory=dict)
    #: profile -> the ConvertReport of that store
    reports: dict[str, ConvertReport] = field(default_factory=dict)
    #: sites -> (metadata-only tree, no-pixels store)
    metadata_stores: dict[int, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def src(self) -> Path:
        return self.data.root

    @property
    def inner_chunks(self) -> tuple[int, int]:
        return (
            min(DEFAULT_INNER_CHUNKS[0], self.config.size),
            min(DEFAULT_INNER_CHUNKS[1], self.config.size),
        )

    def rng(self, name: str) -> np.random.Generator:
        """A generator per purpose, so samples do not depend on which workloads ran before."""
        return np.random.default_rng([self.config.seed, zlib.crc32(name.encode())])

    def sample(self, name: str, n: int) -> list[str]:
        """``n`` distinct site_ids in random order (all of them, shuffled, if there are fewer)."""
        ids = self.data.site_ids
        picked = self.rng(name).permutation(len(ids))[: min(n, len(ids))]
        return [ids[i] for i in picked]

    def options(self, profile: str = DEFAULT_PROFILE, **kwargs: Any) -> ConvertOptions:
        return ConvertOptions(
            profile=profile, inner_chunks=self.inner_chunks, overwrite=True, progress=False, **kwargs
        )

    def adopt(self, profile: str, path: Path, report: ConvertReport) -> Path:
        """Keep ``path`` as the run's store of ``profile`` (moved to a stable name in the work directory)."""
        target = self.work / f"store-{profile}.zarr"
        if path != target:
            shutil.rmtree(target, ignore_errors=True)
            path.rename(target)
        self.stores[profile] = target
        self.reports[profile] = report
        return target

    def store(self, profile: str = DEFAULT_PROFILE) -> Path:
        """The store of ``profile``, converted now (``max_threads`` threads) if no workload made it yet."""
        if profile not in self.stores:
            path = self.work / f"store-{profile}.zarr"
            log(f"converting the pixel dataset with profile {profile!r}")
            report = convert(str(self.src), str(path), self.options(profile, workers=self.config.max_threads))
            self.adopt(profile, path, report)
        return self.stores[profile]
