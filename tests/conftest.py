"""Shared fixtures: small generated RxRx2 trees (real PNG files) and stores converted from them.

Session-scoped and treated as read-only by tests; a test that modifies a tree or store copies it first
(``copy_tree``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from rxrx2_zarr import synth
from rxrx2_zarr._convert import ConvertOptions, convert


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        help="run the benchmark suite's quick mode (3-5 minutes on 2 cores) instead of its smoke mode (CI does)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One run of the benchmark suite per test session: its smoke mode, or with --benchmark its quick mode."""
    quick = bool(config.getoption("--benchmark"))
    dropped = [item for item in items if item.get_closest_marker("benchmark_smoke" if quick else "benchmark")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


#: Small sites keep the suite fast; realism and speed are checked at 1024 by dedicated tests and the benchmarks.
SMALL = 96
INNER = (32, 32)


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 experiments x 2 plates x 3 wells x up to 4 sites, 96 x 96 images, 8-dim embeddings."""
    out = tmp_path_factory.mktemp("src") / "rxrx2"
    synth(str(out), experiments=2, plates=2, wells=3, sites=4, size=SMALL, embedding_dim=8, seed=7)
    return out


@pytest.fixture(scope="session")
def store(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``source_tree`` converted with the default profile and 32 x 32 inner chunks."""
    out = tmp_path_factory.mktemp("store") / "rxrx2.zarr"
    convert(str(source_tree), str(out), ConvertOptions(inner_chunks=INNER, workers=2, progress=False))
    return out


@pytest.fixture(scope="session")
def profile_stores(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``source_tree`` converted with any profile (32 x 32 inner chunks), each made once per session."""
    made: dict[str, Path] = {}

    def get(profile: str) -> Path:
        if profile not in made:
            out = tmp_path_factory.mktemp(f"store-{profile}") / "rxrx2.zarr"
            options = ConvertOptions(profile=profile, inner_chunks=INNER, workers=2, progress=False)
            convert(str(source_tree), str(out), options)
            made[profile] = out
        return made[profile]

    return get


@pytest.fixture
def copy_tree(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a session fixture's directory into this test's tmp_path, so the test may change it."""

    def _copy(path: Path) -> Path:
        target = tmp_path / path.name
        shutil.copytree(path, target)
        return target

    return _copy
