"""The benchmark suite runs end to end, in its smoke mode (minimal data) and in the README's quick mode, and writes
its three outputs.

Timings are not checked here (the suite's figures are for ``python -m benchmarks`` on a quiet machine); this only
guards against the suite rotting as the library changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = (
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
)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("mode", ["smoke", "quick"])
def test_run_writes_json_table_and_plots(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            f"--{mode}",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,  # quick mode takes ~3-5 minutes on 2 cores
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    for key in WORKLOADS:
        assert key in results, key
        assert "error" not in results[key], results[key].get("error")
        assert "skipped" not in results[key]
    meta = results["meta"]
    assert meta["mode"] == mode
    assert meta["command"].startswith(f"python -m benchmarks --{mode}")
    assert meta["machine"]["cpu_model"] and meta["machine"]["logical_cores"] >= 1
    assert meta["versions"]["zarr"] != "not installed"
    statuses = {t["status"] for t in results["targets"]}
    assert len(results["targets"]) == 6 and statuses <= {"MET", "MISSED", "NOT RUN"}
    table = (out / "results.md").read_text()
    assert "## Targets" in table and ("**MET**" in table or "**MISSED**" in table)
    for key in ("## 1. Conversion", "## 7. Codec matrix", "## 10. Peers on the same data"):
        assert key in table
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots and "codecs.png" in plots
    assert not (out / "work").exists()  # the run's stores are removed unless --keep-work


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
        "startup": {"points": [{"sites": 10_000, "store": "metadata-only", "to_lazy_array_ms": 400.0}]},
    }
    status = {t["target"]: t["status"] for t in evaluate_targets(results)}
    assert list(status.values()) == ["MET", "MISSED", "NOT RUN", "MET", "MISSED", "NOT RUN"]
    results["startup"]["points"].append({"sites": 131_953, "store": "metadata-only", "to_lazy_array_ms": 1200.0})
    assert evaluate_targets(results)[-1]["status"] == "MISSED"
    results["startup"]["points"][-1]["to_lazy_array_ms"] = 750.0
    assert evaluate_targets(results)[-1]["status"] == "MET"
