"""Measurement helpers on top of ``rxrx2_zarr.testing``: interleaved rounds, medians, ratios, peak memory.

Both sides of a comparison are measured round by round in turn (A, B, A, B, ...) rather than all of A then all of B,
so that a burst of load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import psutil

from rxrx2_zarr.testing import Timing, time_calls, time_throughput

__all__ = [
    "PeakRSS",
    "interleaved_latency",
    "interleaved_runs",
    "interleaved_throughput",
    "log",
    "median",
    "quiet_warnings",
    "ratio",
    "timing_json",
    "wall",
]

T = TypeVar("T")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded for reports, or None when either side is missing or zero."""
    if (
        numerator is None
        or denominator is None
        or denominator == 0
        or numerator != numerator
        or denominator != denominator
    ):
        return None
    return round(numerator / denominator, 3)


def timing_json(timing: Timing) -> dict[str, Any]:
    return {
        "p50_ms": round(timing.median_ms, 3),
        "p95_ms": round(timing.p95_ms, 3),
        "mean_ms": round(statistics.fmean(timing.samples) * 1e3, 3),
        "calls": len(timing.samples),
    }


def wall(function: Callable[[], T]) -> tuple[float, T]:
    """Seconds taken by ``function()`` and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def interleaved_latency(
    functions: Mapping[str, Callable[[Any], Any]], items: Sequence[Any], repeat: int, warmup: bool = True
) -> dict[str, Timing]:
    """Per-call latency of every function on every item, one thread, ``repeat`` rounds taken in turn."""
    if warmup and items:
        for function in functions.values():
            function(items[0])
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            samples[name].extend(time_calls(function, items, 1).samples)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def interleaved_throughput(
    functions: Mapping[str, Callable[[Any], Any]], items: Sequence[Any], threads: int, repeat: int
) -> dict[str, float]:
    """Median items/s of every function with ``threads`` threads, ``repeat`` rounds taken in turn."""
    rates: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            rates[name].append(time_throughput(function, items, threads, repeat=1))
    return {name: median(values) for name, values in rates.items()}


def interleaved_runs(functions: Mapping[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Seconds of whole runs of every function, ``repeat`` rounds taken in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            seconds[name].append(wall(function)[0])
    return seconds


class PeakRSS:
    """Peak resident memory of this process plus its children (worker processes), sampled in a thread.

    ``with PeakRSS() as mem: ...`` then ``mem.peak_bytes`` (the highest sampled sum), ``mem.baseline_bytes`` (at
    entry) and ``mem.peak_delta_bytes``. Sampling every ``interval`` seconds can miss a peak shorter than that.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def _rss(self) -> int:
        total = self._process.memory_info().rss
        with contextlib.suppress(psutil.Error):
            for child in self._process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline_bytes = self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())

    @property
    def peak_delta_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": round(self.peak_bytes / 1e6, 1),
            "baseline_rss_mb": round(self.baseline_bytes / 1e6, 1),
            "peak_delta_mb": round(self.peak_delta_bytes / 1e6, 1),
            "samples": self.samples,
            "method": f"psutil RSS of this process and its children, sampled every {self.interval * 1e3:.0f} ms",
        }


@contextlib.contextmanager
def quiet_warnings() -> Iterator[list[str]]:
    """Collect warning messages instead of printing them (recorded in the JSON where they matter)."""
    import warnings

    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(sorted({f"{w.category.__name__}: {w.message}" for w in caught}))


_START = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, with the seconds since the suite started."""
    import sys

    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)
