"""Running one task per site: threads in this process, or on Dask: a local process cluster or an existing cluster.

Results are handed to ``on_result`` as tasks finish, in the calling thread, so the caller can drive a progress
bar and collect results without locks, the same way whatever runs the tasks. Tasks must be idempotent:
distributed re-runs a task whose worker died (up to ``distributed.scheduler.allowed-failures`` times, default 3)
and retries a task that raised (``RETRIES`` times), so a task can run more than once, even concurrently with a
copy of itself on a worker that is gone but still writing.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._errors import RxRx2ZarrError

__all__ = ["ExecutionConfig", "check_scheduler", "run_tasks"]

T = TypeVar("T")
R = TypeVar("R")

#: How often distributed retries a task that raised a transient error (a store's OSError, say). The package's own
#: errors (a corrupt PNG...) are deterministic and never retried. A task whose worker died is re-run by the
#: scheduler itself, whatever this says.
RETRIES = 3

#: At most this many tasks (or four per worker thread, if more) are submitted to a cluster at once; more are
#: submitted as these finish. Enough to keep every thread busy and let the scheduler balance and steal, while
#: 131,953 sites never sit in the scheduler (and their results on the workers) at the same time.
WINDOW = 1024


@dataclass(frozen=True)
class ExecutionConfig:
    """Where tasks run: ``scheduler`` (address of a running Dask scheduler), else a local cluster of ``workers``
    processes when ``processes``, else ``workers`` threads in this process."""

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
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "--scheduler/--processes need the 'distributed' extra: pip install 'rxrx2-zarr[distributed]'"
        ) from exc
    dist: Any = (
        distributed  # its constructors are unannotated: typed as Any rather than silenced call by call
    )
    # set_as_default=False: our client must not become the process-wide default for the caller's own dask work
    if config.scheduler:
        try:
            client = dist.Client(config.scheduler, set_as_default=False)
        except OSError as exc:  # distributed's connect timeout: say which address, not only "Timed out"
            raise OSError(f"cannot reach the Dask scheduler at {config.scheduler}: {exc}") from exc
        with client:
            yield client
    else:
        with (
            dist.LocalCluster(
                n_workers=config.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # the scheduler serves HTTP routes even without a dashboard, by default on :8787: take any free
                # port instead of warning (or clashing) when another cluster runs on this machine
                scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
            ) as cluster,
            dist.Client(cluster, set_as_default=False) as client,
        ):
            yield client


def check_scheduler(address: str) -> None:
    """Connect to the Dask scheduler at ``address`` and disconnect: raise :class:`OSError` naming the address if
    it cannot be reached (within distributed's connect timeout, ``distributed.comm.timeouts.connect``). The
    converter calls this before it writes anything, so an unreachable cluster leaves the destination untouched."""
    with _client(ExecutionConfig(scheduler=address)):
        pass


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


def _run_threads(
    function: Callable[[T], R], items: Sequence[T], config: ExecutionConfig, on_result: Callable[[R], None]
) -> None:
    """``config.workers`` threads in this process. A few tasks per thread are queued at a time, so that a failing
    task stops the run after the tasks already running (no write starts after the caller has seen the error), and
    the pixels of a site live only inside its task, which bounds memory by the number of threads."""
    queue = iter(items)
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rxrx2-task") as pool:
        pending = {pool.submit(function, item) for item in itertools.islice(queue, 2 * config.workers)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(future.result())
                    pending.update(pool.submit(function, item) for item in itertools.islice(queue, 1))
        except BaseException:
            for future in pending:
                future.cancel()
            raise


@dataclass(frozen=True)
class _Raised:
    """A task's deliberate failure, carried back as a value so that distributed does not retry it."""

    error: RxRx2ZarrError


@dataclass(frozen=True)
class _NoRetryOnOwnErrors(Generic[T, R]):
    """Runs a task on a worker; the package's own errors come back as :class:`_Raised` (picklable, top level)."""

    function: Callable[[T], R]

    def __call__(self, item: T) -> R | _Raised:
        try:
            return self.function(item)
        except RxRx2ZarrError as exc:
            return _Raised(exc)


def _run_distributed(
    function: Callable[[T], R], items: Sequence[T], config: ExecutionConfig, on_result: Callable[[R], None]
) -> None:
    import distributed

    as_completed: Any = distributed.as_completed  # unannotated, see _client
    with _client(config) as client:
        # Named keys (unique per run: a shared cluster may run several conversions) read well on the dashboard.
        run = uuid.uuid4().hex[:8]
        queue = iter(enumerate(items))
        window = max(WINDOW, 4 * sum(client.nthreads().values()))
        task = _NoRetryOnOwnErrors(function)

        def submit(n: int) -> list[Any]:
            batch = list(itertools.islice(queue, n))
            if not batch:
                return []
            return list(
                client.map(
                    task,
                    [item for _, item in batch],
                    key=[f"rxrx2-{run}-{i}" for i, _ in batch],
                    pure=False,
                    retries=RETRIES,
                )
            )

        pending = as_completed(
            submit(window), loop=client.loop
        )  # not default_client(): ours is not the default
        try:
            for future in pending:
                result = future.result()
                if isinstance(result, _Raised):
                    raise result.error
                # Drop the finished future now, so its worker frees the result and a later loss of that worker
                # does not make the scheduler recompute a site that is already written.
                future.release()
                del future
                pending.update(submit(1))
                on_result(result)
        except BaseException:
            client.cancel(list(pending.futures))
            raise
