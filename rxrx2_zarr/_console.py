"""What the command line shows and where: the default worker count, log messages, progress bars and reports.

The library itself configures nothing: each module logs to ``logging.getLogger(__name__)`` (under the
``rxrx2_zarr`` logger) and draws no progress bar unless asked. The CLI sends those messages to stderr at the
level its ``-v``/``-q`` flags choose, draws bars only when stderr is a terminal (unless ``--progress`` or
``--no-progress`` says otherwise), and writes the report on stdout: a summary for people or, with ``--json``, one
JSON document and nothing else, so that ``rxrx2-zarr verify --json SRC DST | jq .ok`` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Protocol

__all__ = ["LOGGER", "Report", "available_cpus", "configure_logging", "show_progress", "write_report"]

#: The package's logger: every module's logger is a child of it.
LOGGER = "rxrx2_zarr"
#: -q: errors only; default: warnings; -v: notes (what a run decided and found); -vv: debugging detail.
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class Report(Protocol):
    def summary(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (which taskset, cgroup cpusets and batch schedulers
    such as Slurm set), not the machine's count, so that the default never oversubscribes a share of a host."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's handler, told apart from any the application installed so a second run replaces only it."""


class _Formatter(logging.Formatter):
    """``warning: <message>``, as the CLI prints ``error: <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(verbose: int, quiet: bool) -> None:
    """Send the package's log records to the current stderr, at the level ``-v`` (repeatable) and ``-q`` choose."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(handler)  # the CLI may run several times in one process (tests, notebooks)
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[-1 if quiet else min(verbose, 2)])
    logger.propagate = False  # the application's root handlers would print every message twice


def show_progress(progress: bool | None, quiet: bool) -> bool:
    """Whether to draw progress bars: as ``--progress/--no-progress`` says, else only on a terminal and not ``-q``."""
    if progress is not None:
        return progress
    return not quiet and sys.stderr.isatty()


def write_report(report: Report, as_json: bool) -> None:
    """The report on stdout: its summary, or its JSON document (one, indented, with a final newline)."""
    text = json.dumps(report.to_json(), indent=2, allow_nan=False) if as_json else report.summary()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
