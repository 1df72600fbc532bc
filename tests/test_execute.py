"""run_tasks on local threads: every result reaches the caller's thread, and a failing task stops the run."""

from __future__ import annotations

import threading

import pytest

from rxrx2_zarr._execute import ExecutionConfig, run_tasks


@pytest.mark.parametrize("workers", [1, 3])
def test_every_result_is_handed_over_in_the_calling_thread(workers: int) -> None:
    caller = threading.current_thread()
    seen: list[int] = []
    ran_in: set[str] = set()

    def task(n: int) -> int:
        ran_in.add(threading.current_thread().name)
        return n * n

    def collect(result: int) -> None:
        assert threading.current_thread() is caller
        seen.append(result)

    run_tasks(task, list(range(40)), ExecutionConfig(workers=workers), collect)
    assert sorted(seen) == [n * n for n in range(40)]
    assert len(ran_in) <= workers


def test_a_failing_task_stops_the_run() -> None:
    """No task starts once the error has reached the caller: only those already queued (a few per thread) run."""
    started: list[int] = []
    lock = threading.Lock()
    workers = 2

    def task(n: int) -> int:
        with lock:
            started.append(n)
        if n == 10:
            raise ValueError("site 10 is corrupt")
        return n

    with pytest.raises(ValueError, match="site 10"):
        run_tasks(task, list(range(1000)), ExecutionConfig(workers=workers), lambda _: None)
    count = len(started)
    assert 10 < count <= 11 + 2 * workers
    run_tasks(lambda n: n, [1], ExecutionConfig(workers=workers), lambda _: None)  # the pool is gone, not leaking
    assert len(started) == count
