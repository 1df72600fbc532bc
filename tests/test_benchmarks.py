"""The benchmark suite runs end to end and writes its three outputs: in its smoke mode (minimal data, under a
minute) by default, in the README's quick mode (3-5 minutes on 2 cores) with ``pytest --benchmark``, which CI
passes; one of the two per run, never both.

Timings are not checked here (the suite's figures are for ``python -m benchmarks`` on a quiet machine); this
guards against the suite rotting as the library changes: every workload must run without error and every target
that the mode can measure must be measured.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The target only a full run measures (its 131,953-site store takes minutes to build).
#: The targets measured at full scale only (the 131,953-site store): NOT RUN in quick and smoke modes.
FULL_ONLY = (
    "Open at full scale (131,953 sites): import to a lazy array",
    "Startup at full scale: import rxrx2_zarr",
    "Startup at full scale: open()",
    "Startup at full scale: ds.images",
)


def _workloads() -> tuple[str, ...]:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._config import WORKLOADS
    finally:
        sys.path.remove(str(ROOT))
    return WORKLOADS


def _target_count() -> int:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._report import TARGETS
    finally:
        sys.path.remove(str(ROOT))
    return len(TARGETS)


def check_results(results: dict[str, Any], mode: str) -> None:
    """What a successful run's results.json holds: every workload, none failed or skipped, every target measured
    that ``mode`` can measure."""
    workloads = _workloads()
    assert set(results) == {"meta", "targets", *workloads}, sorted(results)
    for key in workloads:
        assert "error" not in results[key], f"workload {key} failed:\n{results[key]['error']}"
        if key == "loader" and importlib.util.find_spec("torch") is None:
            continue  # torch is an optional extra (the test extras install it)
        assert "skipped" not in results[key], f"workload {key} skipped: {results[key]['skipped']}"
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert len(statuses) == _target_count() and set(FULL_ONLY) <= set(statuses), statuses
    for target, status in statuses.items():
        not_run = (target in FULL_ONLY and mode != "full") or (
            target.startswith("Loader:") and importlib.util.find_spec("torch") is None
        )
        expected = {"NOT RUN"} if not_run else {"MET", "MISSED"}
        assert status in expected, f"{target}: {status}, expected one of {sorted(expected)}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "mode", [pytest.param("smoke", marks=pytest.mark.benchmark_smoke), pytest.param("quick", marks=pytest.mark.benchmark)]
)
def test_benchmark_suite_runs(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", f"--{mode}", "--out", str(out), "--cache", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-4000:]  # the suite exits non-zero when a workload fails
    results = json.loads((out / "results.json").read_text())
    check_results(results, mode)
    meta = results["meta"]
    assert meta["mode"] == mode
    assert meta["command"].startswith(f"python -m benchmarks --{mode}")
    assert meta["machine"]["cpu_model"] and meta["machine"]["logical_cores"] >= 1
    assert meta["versions"]["zarr"] != "not installed"
    table = (out / "results.md").read_text()
    assert "## Targets" in table and ("**MET**" in table or "**MISSED**" in table)
    for key in ("## 1. Conversion", "## 7. Codec matrix", "## 10. Peers on the same data"):
        assert key in table
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots and "codecs.png" in plots
    assert not (out / "work").exists()  # the run's stores are removed unless --keep-work


def test_a_failed_or_unmeasured_workload_fails_the_check() -> None:
    workloads = _workloads()
    targets = [{"target": f"t{i}", "status": "MET"} for i in range(_target_count() - len(FULL_ONLY))]
    targets += [{"target": name, "status": "NOT RUN"} for name in FULL_ONLY]
    good: dict[str, Any] = {"meta": {}, "targets": targets, **{k: {"workload_seconds": 1.0} for k in workloads}}
    check_results(good, "quick")
    broken = {**good, workloads[0]: {"error": "Traceback ...: boom"}}
    with pytest.raises(AssertionError, match=f"workload {workloads[0]} failed"):
        check_results(broken, "quick")
    unmeasured = {**good, "targets": [{**targets[0], "status": "NOT RUN"}, *targets[1:]]}
    with pytest.raises(AssertionError, match="t0: NOT RUN"):
        check_results(unmeasured, "smoke")
    missing = {k: v for k, v in good.items() if k != workloads[-1]}
    with pytest.raises(AssertionError):
        check_results(missing, "quick")


def test_targets_are_judged_from_the_results_only() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._report import evaluate_targets
    finally:
        sys.path.remove(str(ROOT))
    block = {"store": {"p50_ms": 2.0}, "pillow": {"p50_ms": 30.0}, "imagecodecs": {"p50_ms": 12.0}}
    results = {
        "read_full": {
            "latency_1_thread": {**block, "speedup_p50": {"vs_pillow": 15.0, "vs_imagecodecs": 6.0}}
        },
        "storage": {"default_profile": "balanced", "profiles": {"balanced": {"bytes_vs_png_tree": 0.9}}},
        "convert": {
            "efficiency": 0.5,
            "sites_per_second": 1.0,
            "decode_only_sites_per_second": 2.0,
            "workers": 2,
        },
        "startup": {"points": [{"sites": 10_000, "store": "metadata-only", "to_lazy_array_ms": 400.0, "images_ms": 3.0}]},
    }
    status = {t["target"]: t["status"] for t in evaluate_targets(results)}
    first = ["MET", "MISSED", "NOT RUN", "MET", "MISSED", *["NOT RUN"] * 3]
    assert list(status.values()) == [*first, "NOT RUN", "NOT RUN", "NOT RUN", "NOT RUN", "MET"]
    full = {"sites": 131_953, "store": "metadata-only", "to_lazy_array_ms": 1200.0, "import_ms": 4.0, "open_ms": 160.0,
            "images_ms": 90.0}  # fmt: skip
    results["startup"]["points"].append(full)

    def startup() -> dict[str, str]:
        return {t["target"]: t["status"] for t in evaluate_targets(results) if "tartup" in t["target"] or "Open" in t["target"]}

    assert list(startup().values()) == ["MISSED", "MET", "MISSED", "MET", "MET"]
    # the graph at every size is as slow as its slowest size
    full.update(to_lazy_array_ms=750.0, open_ms=140.0, images_ms=120.0)
    assert list(startup().values()) == ["MET", "MET", "MET", "MISSED", "MISSED"]
