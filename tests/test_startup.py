"""Startup on object storage: what a fresh process asks an S3 endpoint (moto in server mode, on loopback) for, to
open a store and to read its first sites.

The requests are counted where they arrive, in moto's request recorder (every HTTP request the server answered,
with its method, path and Range header), not by wrapping the client. The store is opened in a new interpreter, as a
new user would: nothing is cached from another test's filesystem instance, and the counts include the client's
first connection.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from random import Random

import numpy as np
import pytest
from _services import PYTHON, MotoS3, Request, moto_s3, service_env
from hypothesis import given, settings
from hypothesis import strategies as st

from rxrx2_zarr import open as open_store
from rxrx2_zarr import synth
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._errors import SiteNotFoundError, StoreFormatError
from rxrx2_zarr._index import _SITE_ID_RE
from rxrx2_zarr._index import check_paths as _check_paths
from rxrx2_zarr._layout import EMBEDDINGS_ARRAY, INDEX_PARQUET, SHARD_KEY, THUMBNAIL_LEVEL
from rxrx2_zarr._paths import GRID_COLUMNS, GRID_ROWS

#: A new user's first steps, one at a time: the child prints a step's name once it is done, then waits for a line
#: on stdin, so the test reads the server's log of that step alone before the next one starts.
_STEPS_SCRIPT = """
import json, sys
import rxrx2_zarr
url, options = sys.argv[1], json.loads(sys.argv[2])
def done(step, value=None):
    print(json.dumps([step, value]), flush=True)
    sys.stdin.readline()
done("import")
ds = rxrx2_zarr.open(url, storage_options=options)
done("open", ds.site_ids)
done("site 0", int(ds.site(ds.site_ids[0]).astype("uint64").sum()))
done("site 1", int(ds.site(ds.site_ids[1]).astype("uint64").sum()))
done("images[2]", int(ds.images[2].compute(scheduler="sync").astype("uint64").sum()))
done("thumbnail 3", int(ds.thumbnails(ds.site_ids[3]).astype("uint64").sum()))
"""


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("startup")
    src, dst = base / "src", base / "store.zarr"
    synth(str(src), experiments=1, plates=1, wells=2, sites=2, size=64, embedding_dim=4, seed=3)
    convert(str(src), str(dst), ConvertOptions(inner_chunks=(32, 32), progress=False))
    return dst


@pytest.fixture(autouse=True)
def _loopback_unproxied(monkeypatch: pytest.MonkeyPatch) -> None:
    # this process's own S3 client (making the bucket, uploading) must reach the loopback server directly
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def _steps(s3: MotoS3, url: str) -> dict[str, tuple[object, list[Request]]]:
    """Run :data:`_STEPS_SCRIPT` on ``url``; each step's result and the requests the server received during it."""
    child = subprocess.Popen(
        [PYTHON, "-c", _STEPS_SCRIPT, url, json.dumps(s3.storage_options)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=service_env(),
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    steps: dict[str, tuple[object, list[Request]]] = {}
    try:
        s3.record()
        for line in child.stdout:
            step, value = json.loads(line)
            steps[step] = (value, s3.recorded())
            child.stdin.write("\n")
            child.stdin.flush()
        child.stdin.close()
        assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    finally:
        child.kill()
        child.wait(30)
    return steps


def _one_get(requests: list[Request], key: str) -> None:
    assert [(r.method, r.path, r.range) for r in requests] == [("GET", key, None)], requests


@pytest.mark.timeout(300)
def test_first_open_and_each_site_cost_a_fixed_number_of_requests(s3: MotoS3, local_store: Path) -> None:
    """Opening costs four whole-object GETs, whatever the number of sites (the root document, the Parquet index,
    the embeddings document and one site array's document); after that each site read is exactly one GET of its
    shard object (no HEAD before it, no listing, no ranged reads), through ``site()`` and through a dask task alike,
    and a thumbnail is one GET of its own object."""
    bucket = s3.create_bucket("startup")
    s3.filesystem().put(str(local_store), f"{bucket}/store.zarr", recursive=True)
    prefix = f"/{bucket}/store.zarr"
    local = open_store(str(local_store))
    steps = _steps(s3, f"s3://{bucket}/store.zarr")
    assert list(steps) == ["import", "open", "site 0", "site 1", "images[2]", "thumbnail 3"]
    assert steps["import"][1] == []  # importing the package talks to nobody
    site_ids, opened = steps["open"]
    assert site_ids == local.site_ids
    paths = local._store.columns["path"]
    # the last two documents are fetched concurrently: their order varies
    assert sorted((r.method, r.path, r.range) for r in opened) == sorted(
        ("GET", f"{prefix}/{key}", None)
        for key in ("zarr.json", INDEX_PARQUET, f"{EMBEDDINGS_ARRAY}/zarr.json", f"{paths[0]}/zarr.json")
    ), opened
    for step, k in (("site 0", 0), ("site 1", 1), ("images[2]", 2)):
        value, requests = steps[step]
        _one_get(requests, f"{prefix}/{paths[k]}/{SHARD_KEY}")
        # the pixels themselves
        assert value == int(local.site(local.site_ids[k]).astype(np.uint64).sum()), step
    value, requests = steps["thumbnail 3"]
    _one_get(requests, f"{prefix}/{paths[3].rsplit('/', 1)[0]}/{THUMBNAIL_LEVEL}/{SHARD_KEY}")
    assert value == int(local.thumbnails(local.site_ids[3]).astype(np.uint64).sum())


# --- the index check at open: the grid's rows and columns as character classes ----------------------------------


def test_site_id_pattern_accepts_exactly_the_plate_grid() -> None:
    """The compact row and column classes of the index check accept the 1536-well grid's names and nothing else of
    their shape (one or two capitals; two digits)."""
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    rows = [*letters, *(a + b for a in letters for b in letters)]
    columns = [f"{i:02d}" for i in range(100)]
    accepted = {(r, c) for r in rows for c in columns if _SITE_ID_RE.match(f"HUVEC-1_1_{r}{c}_1")}
    assert accepted == {(r, c) for r in GRID_ROWS for c in GRID_COLUMNS}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("HUVEC-1_1_A01_1", "HUVEC-1/Plate1/A/01/1/0\tHUVEC-1_1_A01_2"), "unsafe store key"),
        (("HUVEC-1_1_A01_1\tHUVEC-1/Plate1/A/01/1/0", "HUVEC-1_1_A01_2"), "invalid site_id"),
        (("HUVEC-1_1_AG01_1", "HUVEC-1/Plate1/AG/01/1/0"), "invalid site_id"),
        (("HUVEC-1_1_A49_1", "HUVEC-1/Plate1/A/49/1/0"), "invalid site_id"),
        (("HUVEC-1_1_A01_1", "HUVEC-1/Plate1/A/01/1/1"), "not where that site lives"),
        (("HUVEC-1_1_A01_1", 7), "is not a string"),
    ],
)
def test_index_check_names_the_bad_row(row: tuple[object, object], message: str) -> None:
    """Rows that a pair-counting check could be fooled by (a tab inside a value, a value straddling two rows) or that
    only the grid classes refuse: each fails the whole-index check, and the row-by-row pass says what is wrong."""
    good = [f"HUVEC-1_1_B{c:02d}_2" for c in range(1, 4)]
    site_ids = np.array([*good[:2], row[0], good[2]], dtype=object)
    paths = np.array([f"HUVEC-1/Plate1/B/{c:02d}/2/0" for c in range(1, 3)] + [row[1], "HUVEC-1/Plate1/B/03/2/0"],
                     dtype=object)  # fmt: skip
    with pytest.raises(StoreFormatError, match=re.escape(message)):
        _check_paths(site_ids, paths, "index")
    _check_paths(np.array(good, dtype=object), np.array([f"HUVEC-1/Plate1/B/{c:02d}/2/0" for c in range(1, 4)], dtype=object), "index")


# --- the checksum function opening uses ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7, 4096, 1 << 20])
def test_crc32c_is_the_packages_function(size: int) -> None:
    """rxrx2_zarr._crc loads crc32c's extension module by itself (without the package's slow __init__); the same
    values as ``crc32c.crc32c`` on bytes, memoryviews and numpy buffers."""
    import crc32c as package

    from rxrx2_zarr._crc import crc32c

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    for buffer in (data.tobytes(), memoryview(data.tobytes()), data.data):
        assert crc32c(buffer) == package.crc32c(buffer)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_crc32c_falls_back_to_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import crc32c as package

    from rxrx2_zarr import _crc

    monkeypatch.setattr(_crc, "_extension", lambda: None)
    assert _crc._load() is package.crc32c

    def unloadable() -> None:
        raise ImportError("not the extension")

    monkeypatch.setattr(_crc, "_extension", unloadable)
    assert _crc._load() is package.crc32c


# --- looking sites up without building the whole site_id -> position dict ------------------------------------------


def _ordered_index() -> dict[str, np.ndarray]:
    """An index in the documented order (experiment, plate, row, column, site), experiments compared as text."""
    rows = [
        (experiment, plate, well, site)
        for experiment in sorted(["HUVEC-1", "HUVEC-10", "HUVEC-2", "RPE-1"])
        for plate in (1, 2, 11)
        for well in ("B02", "B10", "Z47", "AA02", "AF48")
        for site in (1, 2, 4)
    ]
    columns: dict[str, list[object]] = {"site_id": [], "experiment": [], "plate": [], "well": [], "site": []}
    for experiment, plate, well, site in rows:
        for name, value in zip(columns, (f"{experiment}_{plate}_{well}_{site}", experiment, plate, well, site), strict=True):
            columns[name].append(value)
    return {
        name: np.array(values, dtype=object if name in ("site_id", "experiment", "well") else np.int64)
        for name, values in columns.items()
    }


def test_binary_search_finds_every_site_of_an_ordered_index() -> None:
    from rxrx2_zarr._index import IndexColumns, find_in_order

    raw = _ordered_index()
    columns = IndexColumns.of(raw)
    for position, site_id in enumerate(raw["site_id"]):
        assert find_in_order(columns, site_id, "index") == position
    for absent in ("HUVEC-1_1_B02_3", "HUVEC-3_1_B02_1", "HUVEC-1_3_B02_1", "A_1_A01_1", "ZZ_99_AF48_9", "not an id"):
        assert find_in_order(columns, absent, "index") == -1


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False))
def test_binary_search_on_a_disordered_index_misses_but_never_returns_another_site(random: Random) -> None:
    """A crafted index out of order: the search may miss (the reader then builds the full lookup), but whatever
    row it returns holds exactly the site_id asked for."""
    from rxrx2_zarr._index import IndexColumns, find_in_order

    raw = _ordered_index()
    order = list(range(len(raw["site_id"])))
    random.shuffle(order)
    columns = IndexColumns.of({name: values[order] for name, values in raw.items()})
    for site_id in raw["site_id"]:
        found = find_in_order(columns, site_id, "index")
        assert found == -1 or columns["site_id"][found] == site_id


def test_site_reads_without_building_the_lookup(local_store: Path) -> None:
    """A few site() calls in a fresh open use the search; many ids at once, or a miss, build the dict once."""
    dataset = open_store(str(local_store))
    ids = dataset.site_ids
    np.testing.assert_array_equal(dataset.read(ids[::-1])[::-1], dataset.read(ids))
    assert dataset._store._site_index is None
    with pytest.raises(SiteNotFoundError, match="HUVEC-1_1_A01_9"):
        dataset.site("HUVEC-1_1_A01_9")
    assert dataset._store._site_index is not None
