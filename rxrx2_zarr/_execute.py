"""Running one task per site on Dask: local threads, a local process cluster, or an existing cluster.

Results are handed to ``on_result`` as tasks finish, in the calling thread, so the caller can drive a progress
bar and collect results without locks. Tasks must be idempotent: distributed retries a task whose worker died.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ExecutionConfig", "run_tasks"]

T = TypeVar("T")
R = TypeVar("R")

#: How often distributed retries a task whose worker was lost (or that raised an OSError-like failure).
RETRIES = 3


@dataclass(frozen=True)
class ExecutionConfig:
    """Where tasks run: ``scheduler`` (address of a running Dask scheduler), else a local cluster of ``workers``
    processes when ``processes``, else ``workers`` threads in this process (Dask's threaded scheduler)."""

    workers: int = 1
    processes: bool = False
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.processes

    def describe(self) -> str:
        if self.scheduler:
            return f"Dask cluster at {self.scheduler}"
        if self.processes:
            return f"local Dask cluster, {self.workers} worker process(es)"
        return f"{self.workers} thread(s)"


@contextlib.contextmanager
def _client(config: ExecutionConfig) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("--scheduler/--processes need the 'distributed' extra: pip install 'rxrx2-zarr[distributed]'") from exc
    if config.scheduler:
        with Client(config.scheduler) as client:
            yield client
    else:
        with (
            LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client


def run_tasks(
    function: Callable[[T], R], items: Sequence[T], config: ExecutionConfig, on_result: Callable[[R], None]
) -> None:
    """Run ``function(item)`` for every item; an exception from any task stops the run and propagates."""
    if not items:
        return
    if config.distributed:
        _run_distributed(function, items, config, on_result)
    elif config.workers == 1:
        for item in items:
            on_result(function(item))
    else:
        _run_threads(function, items, config, on_result)


def _run_threads(function: Callable[[T], R], items: Sequence[T], config: ExecutionConfig, on_result: Callable[[R], None]) -> None:
    from dask.callbacks import Callback
    from dask.threaded import get

    keys = {f"site-{i}" for i in range(len(items))}

    class _Results(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in keys:
                on_result(result)

    graph: dict[str, Any] = {f"site-{i}": (function, item) for i, item in enumerate(items)}
    with _Results():
        # Results are small (a checksum and byte counts), so holding them all until the end is fine; the
        # pixels of a site live only inside its task, which bounds memory by the number of threads.
        get(graph, list(graph), num_workers=config.workers)


def _run_distributed(function: Callable[[T], R], items: Sequence[T], config: ExecutionConfig, on_result: Callable[[R], None]) -> None:
    from distributed import as_completed

    with _client(config) as client:
        futures = client.map(function, list(items), pure=False, retries=RETRIES)
        try:
            for future in as_completed(futures):
                on_result(future.result())
        except BaseException:
            client.cancel(futures)
            raise
