"""The sizes of a benchmark run: ``smoke`` (seconds, for the tests), ``quick`` (minutes on 2 cores), ``full``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MODES", "WORKLOADS", "Config"]

#: The fixed workload keys of the JSON output, in the order they are reported.
WORKLOADS: tuple[str, ...] = (
    "convert",
    "read_full",
    "read_crop",
    "scan",
    "query",
    "storage",
    "codecs",
    "startup",
    "worker_scaling",
    "peers",
    "loader",
)

#: RxRx2's size: 2 experiments x 12 plates x 1,380 wells, 131,953 sites (synth's full layout gives exactly this).
FULL_SCALE_SITES = 131_953


@dataclass(frozen=True)
class Config:
    """What one mode runs on. Pixel workloads use one generated dataset of ``experiments x plates x wells x
    sites`` sites of ``size x size`` pixels; sample counts and repeats bound the time each workload takes."""

    mode: str
    size: int
    experiments: int
    plates: int
    wells: int
    sites: int
    read_sites: int
    """Sites sampled (at random, seeded) for latency and throughput of reads."""
    repeat: int
    """Rounds of every latency/throughput/scan/query measurement (medians are reported)."""
    convert_repeat: int
    crop: int
    """Edge of the random square crops (256 in quick and full)."""
    codec_sites: int
    codec_inner: tuple[int, ...]
    startup_sizes: tuple[int, ...]
    """Sites of the metadata-only stores that ``startup`` opens (and ``query`` reads the largest of)."""
    open_repeat: int
    """Rounds of ``query``'s metadata half (open, select) against pandas."""
    startup_runs: int
    """Fresh interpreters per store in ``startup`` (medians are reported)."""
    scaling_sites: int
    threads: tuple[int, ...] = (1, 2)
    seed: int = 0

    @property
    def max_threads(self) -> int:
        return max(self.threads)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MODES: dict[str, Config] = {
    "smoke": Config(
        mode="smoke", size=256, experiments=1, plates=1, wells=3, sites=4, read_sites=6, repeat=2, convert_repeat=1,
        crop=64, codec_sites=1, codec_inner=(64, 128, 256), startup_sizes=(100, 1_000), open_repeat=3, startup_runs=3,
        scaling_sites=4,
    ),
    "quick": Config(
        mode="quick", size=1024, experiments=1, plates=1, wells=6, sites=4, read_sites=16, repeat=3, convert_repeat=1,
        crop=256, codec_sites=2, codec_inner=(256, 512, 1024), startup_sizes=(1_000, 10_000), open_repeat=5,
        startup_runs=5, scaling_sites=4,
    ),
    "full": Config(
        mode="full", size=1024, experiments=1, plates=2, wells=24, sites=4, read_sites=64, repeat=5, convert_repeat=3,
        crop=256, codec_sites=8, codec_inner=(256, 512, 1024), startup_sizes=(1_000, 10_000, FULL_SCALE_SITES),
        open_repeat=7, startup_runs=7, scaling_sites=96,
    ),
}  # fmt: skip
