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

import numpy as np
import pytest
from _services import PYTHON, MotoS3, Request, moto_s3, service_env

from rxrx2_zarr import open as open_store
from rxrx2_zarr import synth
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._errors import StoreFormatError
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
