"""``python -m benchmarks._metadata_scale --rows 1000000``: how long the pre-flight checks of a huge metadata file take.

Generates ``--rows`` valid RxRx2 metadata rows (full 1536-well plates, 4 sites per well, 12 plates per experiment,
as many experiments as needed) and an embeddings file of ``--embedding-dim`` columns, without images, then plans
a conversion of them (``make_plan(..., need_pixels=False)``: read and validate ``metadata.csv``, the per-well
consistency checks, the store order, the per-site work items, read, validate and align ``embeddings.csv``) in a
fresh child process, and reports its wall time and peak resident memory. The goal (issue 11): 1M rows in under
30 s and 2 GB on the 2-core reference machine.

Not a unit test (nothing here is timed in the test suite); :func:`metadata_frame` is also used by the tests to
build large frames quickly.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from rxrx2_zarr._paths import GRID_COLUMNS, GRID_ROWS

SITES_PER_WELL = 4
WELLS_PER_PLATE = len(GRID_ROWS) * len(GRID_COLUMNS)  # 1536
PLATES_PER_EXPERIMENT = 12


def metadata_frame(rows: int, duplicates: int = 0) -> pd.DataFrame:
    """``rows`` valid metadata rows as text (vectorised: 1M rows in a few seconds). With ``duplicates``, the last
    that many rows are copies of earlier rows (rows 10, 20, ...: same site_id, consistent otherwise)."""
    i = np.arange(rows)
    site = i % SITES_PER_WELL + 1
    well_number = i // SITES_PER_WELL  # global well counter: one treatment per well
    well_index = well_number % WELLS_PER_PLATE
    plate = (i // (SITES_PER_WELL * WELLS_PER_PLATE)) % PLATES_PER_EXPERIMENT + 1
    experiment = i // (SITES_PER_WELL * WELLS_PER_PLATE * PLATES_PER_EXPERIMENT) + 1
    text = lambda values: pd.Series(values).astype(str)  # noqa: E731
    experiments = "HUVEC-" + text(experiment)
    wells = pd.Series(np.asarray(GRID_ROWS, dtype=object)[well_index // len(GRID_COLUMNS)]) + pd.Series(
        np.asarray(GRID_COLUMNS, dtype=object)[well_index % len(GRID_COLUMNS)]
    )
    well_ids = experiments + "_" + text(plate) + "_" + wells
    empty = well_number % 17 == 0
    treatment = pd.Series(np.where(empty, "EMPTY", "T" + (well_number % 433).astype(str).astype(object)))
    conc = pd.Series(np.where(empty, "", (10.0 ** -(well_number % 6 + 1)).astype(str).astype(object)))
    frame = pd.DataFrame(
        {
            "site_id": well_ids + "_" + text(site),
            "well_id": well_ids,
            "cell_type": "HUVEC",
            "experiment": experiments,
            "plate": text(plate),
            "well": wells,
            "site": text(site),
            "treatment": treatment,
            "treatment_conc": conc,
        }
    )
    for k in range(duplicates):
        frame.iloc[rows - 1 - k] = frame.iloc[10 * (k + 1)]
    return frame


def write_source(root: Path, rows: int, embedding_dim: int) -> None:
    """A source tree without images: ``metadata.csv`` and ``embeddings.csv`` of ``rows`` sites."""
    root.mkdir(parents=True, exist_ok=True)
    frame = metadata_frame(rows)
    frame.to_csv(root / "metadata.csv", index=False)
    rng = np.random.default_rng(0)
    features = pd.DataFrame(
        rng.standard_normal((rows, embedding_dim)).astype(np.float32), columns=[f"feature_{j}" for j in range(embedding_dim)]
    )
    features.insert(0, "site_id", frame["site_id"])
    features.to_csv(root / "embeddings.csv", index=False, float_format="%.6g")


def check(root: Path) -> dict[str, float]:
    """Plan a conversion of ``root`` without pixels; the wall and CPU time (they differ on a busy machine) and this
    process's peak RSS."""
    from rxrx2_zarr._plan import make_plan

    started, cpu = time.perf_counter(), time.process_time()
    plan = make_plan(str(root), need_pixels=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"sites": len(plan.items), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._metadata_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the source files (default: a temp dir)")
    parser.add_argument("--check-only", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.check_only is not None:
        print(json.dumps(check(args.check_only)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "src"
        started = time.perf_counter()
        write_source(root, args.rows, args.embedding_dim)
        generated = time.perf_counter() - started
        sizes = {p.name: p.stat().st_size for p in root.iterdir()}
        # a fresh process, so that the generator's memory does not count in the peak
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks._metadata_scale", "--check-only", str(root)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "rows": args.rows,
                "embedding_dim": args.embedding_dim,
                "files_bytes": sizes,
                "generate_seconds": round(generated, 1),
                "plan_seconds": result["seconds"],
                "plan_cpu_seconds": result["cpu_seconds"],
                "plan_peak_rss_mib": round(result["peak_rss_bytes"] / 2**20),
                "sites": result["sites"],
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}, "
                f"Python {platform.python_version()}",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
