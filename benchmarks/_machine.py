"""Machine facts and library versions recorded with every run (timings mean nothing without them)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform
import shlex
import sys
from typing import Any

import psutil

__all__ = ["command_line", "library_versions", "load_average", "machine_info"]

#: Every library whose version can change a figure of the suite.
LIBRARIES = (
    "rxrx2-zarr", "zarr", "numcodecs", "pcodec", "imagecodecs", "numpy", "pandas", "dask", "distributed",
    "fsspec", "crc32c", "pillow", "ome-zarr", "zarrs", "psutil", "matplotlib",
)  # fmt: skip


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": memory.total,
        "ram_gib": round(memory.total / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "load_average_at_start": load_average(),
    }


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command as typed from the repository root (``python -m benchmarks ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("benchmarks/__main__.py", "benchmarks")):
        argv = ["python", "-m", "benchmarks", *argv[1:]]
    return shlex.join(argv)
