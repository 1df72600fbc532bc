"""``python -m benchmarks [--quick | --smoke] [--out DIR]``: run the benchmark suite (see ``benchmarks/__init__.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._config import MODES, WORKLOADS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="rxrx2-zarr benchmark suite")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="every workload on less data (a few minutes on 2 cores)"
    )
    size.add_argument(
        "--smoke", action="store_true", help="every workload on minimal data (under a minute; for tests)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="output directory (default: bench-out)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where generated datasets and metadata-only stores are cached (default: $RXRX2_BENCH_CACHE or OUT/cache)",
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the stores written during the run (OUT/work)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated workloads to run (others are marked skipped): {','.join(WORKLOADS)}",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = None
    if args.only:
        only = {w.strip() for w in args.only.split(",") if w.strip()}
        unknown = sorted(only - set(WORKLOADS))
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    cache = args.cache or (
        Path(os.environ["RXRX2_BENCH_CACHE"]) if os.environ.get("RXRX2_BENCH_CACHE") else args.out / "cache"
    )

    from ._suite import run  # imported late: --help stays instant

    _, failures = run(MODES[mode], args.out, cache, keep_work=args.keep_work, only=only)
    if failures:
        print(f"{failures} workload(s) failed; see results.json", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
