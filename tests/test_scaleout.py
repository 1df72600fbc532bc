"""Scale-out: object storage (an S3 endpoint: moto in server mode), ``memory://``, and Dask clusters (a real
scheduler with worker processes, and ``--workers N --processes``), including a worker killed mid-run.

Every service runs on 127.0.0.1, is started here and stopped by fixture finalizers (``tests/_services.py``).
Images are 64 x 64 and the trees small, so the module takes about a minute even on a loaded two-core machine.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _services import (
    KEY,
    SECRET,
    SITE_SECONDS_ENV,
    DaskCluster,
    MotoS3,
    dask_cluster,
    moto_s3,
    rxrx2_cli,
    wait_until,
)
from click.testing import CliRunner
from PIL import Image

from rxrx2_zarr import _lock, synth
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._errors import ImageError, StoreLockedError
from rxrx2_zarr._plan import ConversionPlan, make_plan
from rxrx2_zarr._storage import StoreIO
from rxrx2_zarr._verify import verify
from rxrx2_zarr.cli import main as cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SIZE = 64
INNER = (32, 32)
INNER_FLAG = "32,32"


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _aws_env() -> Iterator[None]:
    """Fake credentials in the environment too, so nothing in this process looks for real ones (nor asks an
    instance-metadata endpoint, which is not on loopback)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1",
        }.items():
            mp.setenv(name, value)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 2 plates x 2 wells x up to 2 sites of 64 x 64 images."""
    out = tmp_path_factory.mktemp("scaleout-src") / "rxrx2"
    synth(str(out), experiments=1, plates=2, wells=2, sites=2, size=SIZE, embedding_dim=4, seed=11)
    return out


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 1 plate x 6 wells x up to 4 sites: enough tasks to kill a worker in the middle of a run."""
    out = tmp_path_factory.mktemp("scaleout-big") / "rxrx2"
    synth(str(out), experiments=1, plates=1, wells=6, sites=4, size=SIZE, embedding_dim=4, seed=12)
    return out


@pytest.fixture(scope="module")
def plan(tree: Path) -> ConversionPlan:
    return make_plan(str(tree))


def _bucket(s3: MotoS3, stem: str) -> str:
    return s3.create_bucket(f"{stem}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def bucket_tree(s3: MotoS3, tree: Path) -> str:
    """``tree`` uploaded to a bucket: PNGs, metadata.csv and embeddings.csv read straight from S3."""
    bucket = _bucket(s3, "pngs")
    fs = s3.filesystem()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{bucket}/rxrx2/{path.relative_to(tree).as_posix()}")
    return f"s3://{bucket}/rxrx2"


@pytest.fixture(scope="module")
def s3_store(s3: MotoS3, tree: Path) -> str:
    """``tree`` converted from local PNGs to a bucket through the command line (``--dst-storage-option``)."""
    url = f"s3://{_bucket(s3, 'zarr')}/rxrx2.zarr"
    result = CliRunner().invoke(
        cli,
        ["convert", str(tree), url, "--inner-chunks", INNER_FLAG, "--workers", "2", "--quiet",
         *s3.cli_options("--dst-storage-option")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"converted {len(make_plan(str(tree)).items)} of" in result.output
    return url


# --- helpers -------------------------------------------------------------------------------------------------------


def _png_pixels(tree: Path, plan: ConversionPlan) -> dict[str, np.ndarray[Any, np.dtype[np.uint8]]]:
    """Every site's six PNGs decoded with Pillow (independently of the package's own decoder), by site_id."""
    return {
        item.site_id: np.stack([np.asarray(Image.open(tree / source)) for source in item.sources])
        for item in plan.items
    }


def _check_reader(url: str, options: dict[str, Any] | None, tree: Path, plan: ConversionPlan) -> None:
    """Open the store with the reader and compare every pixel of every site with the PNGs."""
    from rxrx2_zarr._dataset import open as open_store

    ds = open_store(url, storage_options=options)
    expected = _png_pixels(tree, plan)
    images = np.asarray(ds.images.compute(scheduler="threads"))
    assert images.shape == (len(plan.items), 6, SIZE, SIZE)
    for k, site_id in enumerate(ds.sites["site_id"]):
        np.testing.assert_array_equal(images[k], expected[site_id], err_msg=site_id)
    first = plan.items[0].site_id
    np.testing.assert_array_equal(np.asarray(ds.site(first)), expected[first])


def _assert_verified(src: str, dst: str, n: int, **options: Any) -> None:
    report = verify(src, dst, **options)
    assert report.ok, report.summary()
    assert report.pixels_checked == n


def _site_markers(plan: ConversionPlan, prefix: str) -> set[str]:
    """The keys of the site group documents (each written after its shard: a site's completion marker)."""
    return {f"{prefix}{item.group}/zarr.json" for item in plan.items}


# --- object storage ------------------------------------------------------------------------------------------------


def test_local_pngs_to_bucket(s3: MotoS3, s3_store: str, tree: Path, plan: ConversionPlan) -> None:
    bucket, _, key = s3_store.removeprefix("s3://").partition("/")
    keys = s3.keys(bucket, key + "/")
    assert _site_markers(plan, key + "/") <= keys
    assert f"{key}/{_lock.LOCK_KEY}" not in keys  # released
    assert not any(k.endswith(".partial") for k in keys)  # object stores get whole-object PUTs, no temp files
    _assert_verified(str(tree), s3_store, len(plan.items), storage_options=s3.storage_options, src_storage_options={})
    _check_reader(s3_store, s3.storage_options, tree, plan)

    # the command line's verify applies --storage-option to both URLs (harmless for the local source)
    result = CliRunner().invoke(cli, ["verify", str(tree), s3_store, "--quiet", *s3.cli_options()],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_bucket_pngs_to_bucket_and_to_local(
    s3: MotoS3, bucket_tree: str, tree: Path, plan: ConversionPlan, tmp_path: Path
) -> None:
    n = len(plan.items)
    # bucket -> bucket through the command line: one --storage-option set for both URLs, two threads
    to_bucket = f"s3://{_bucket(s3, 'copy')}/out.zarr"
    result = CliRunner().invoke(
        cli,
        ["convert", bucket_tree, to_bucket, "--inner-chunks", INNER_FLAG, "--workers", "2", "--quiet",
         *s3.cli_options()],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    _assert_verified(bucket_tree, to_bucket, n, storage_options=s3.storage_options)
    _assert_verified(str(tree), to_bucket, n, storage_options=s3.storage_options, src_storage_options={})

    # bucket -> local directory through the Python API
    local = tmp_path / "from-bucket.zarr"
    report = convert(bucket_tree, str(local), ConvertOptions(inner_chunks=INNER, workers=2, progress=False,
                                                             src_storage_options=s3.storage_options))
    assert report.converted == n and report.png_bytes > 0
    _assert_verified(bucket_tree, str(local), n, storage_options={}, src_storage_options=s3.storage_options)
    _check_reader(str(local), None, tree, plan)


def test_storage_never_answers_from_a_stale_listing(s3: MotoS3) -> None:
    """Other processes write the same store: after this process listed it, ``exists``/``find``/``size`` must
    still see objects created or deleted since (s3fs keeps a per-instance listings cache)."""
    bucket = _bucket(s3, "cache")
    store = StoreIO(f"s3://{bucket}/store", s3.storage_options)
    other = s3.client()  # another writer: no fsspec, no shared cache

    store.write("a/zarr.json", b"{}")
    assert store.find() == {"a/zarr.json": 0}  # lists, and fills s3fs's listings cache for store/ and store/a
    other.put_object(Bucket=bucket, Key="store/a/shard", Body=b"12345")
    other.put_object(Bucket=bucket, Key="store/b.json", Body=b"{}")
    assert store.exists("a/shard") and store.exists("b.json")
    assert store.size("a/shard") == 5
    assert store.find(detail=True) == {"a/zarr.json": 2, "a/shard": 5, "b.json": 2}
    other.delete_object(Bucket=bucket, Key="store/a/shard")
    assert not store.exists("a/shard")
    assert set(store.find()) == {"a/zarr.json", "b.json"}
    assert store.read_many(["a/zarr.json", "a/shard"]) == {"a/zarr.json": b"{}", "a/shard": None}

    for key in ("a/zarr.json", "b.json"):
        other.delete_object(Bucket=bucket, Key=f"store/{key}")
    assert store.is_empty_or_missing()
    other.put_object(Bucket=bucket, Key="store/c", Body=b"")
    assert not store.is_empty_or_missing()


def test_a_whole_object_read_is_one_request(s3: MotoS3) -> None:
    """Reading a PNG or a document is one GET, not a HEAD (for its size) then a GET: on a bucket the converter's
    and the verifier's reads are latency-bound, so a second round trip per object doubles their time."""
    assert s3.proc is not None
    bucket = _bucket(s3, "requests")
    s3.client().put_object(Bucket=bucket, Key="store/doc.json", Body=b"{}")
    store = StoreIO(f"s3://{bucket}/store", s3.storage_options)
    assert store.read("doc.json") == b"{}"
    assert store.read_many(["doc.json"]) == {"doc.json": b"{}"}
    path = f"/{bucket}/store/doc.json"

    def requests() -> list[str] | None:
        lines = [line for line in s3.proc.output().splitlines() if f" {path} " in line]
        return lines if sum('"GET ' in line for line in lines) >= 2 else None

    lines = wait_until(requests, 30, "the server's request log")
    assert not [line for line in lines if '"HEAD ' in line], lines


def test_exclusive_create_is_decided_by_the_object_store(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock's create-if-absent is a conditional PUT (If-None-Match: *): even when the existence check is
    fooled (two converters checking at the same instant), the store itself refuses the second create."""
    bucket = _bucket(s3, "lock")
    first = StoreIO(f"s3://{bucket}/store", s3.storage_options)
    assert first.write_exclusive(_lock.LOCK_KEY, b"first")
    assert not first.write_exclusive(_lock.LOCK_KEY, b"again")

    second = StoreIO(f"s3://{bucket}/store", s3.storage_options)
    monkeypatch.setattr(second.fs, "exists", lambda path, **kwargs: False)  # the losing side of a check-then-put race
    assert not second.write_exclusive(_lock.LOCK_KEY, b"second")
    assert s3.client().get_object(Bucket=bucket, Key=f"store/{_lock.LOCK_KEY}")["Body"].read() == b"first"


def test_lock_and_resume_on_a_bucket(s3: MotoS3, tree: Path, plan: ConversionPlan) -> None:
    """Resume after objects vanished behind this process's back, and refuse a store another host has locked:
    both depend on seeing the bucket as it is now, not as it was listed during the previous run."""
    bucket = _bucket(s3, "resume")
    url = f"s3://{bucket}/rxrx2.zarr"
    options = ConvertOptions(inner_chunks=INNER, workers=2, progress=False, dst_storage_options=s3.storage_options)
    assert convert(str(tree), url, options).converted == len(plan.items)

    assert len(StoreIO(url, s3.storage_options).find()) > 0  # this process has listed the store (s3fs may cache it)
    other = s3.client()
    lost_shard, lost_marker = plan.items[0], plan.items[-1]
    other.delete_object(Bucket=bucket, Key=f"rxrx2.zarr/{lost_shard.shard}")  # its marker stays
    other.delete_object(Bucket=bucket, Key=f"rxrx2.zarr/{lost_marker.group}/zarr.json")

    held = _lock.Lock("another-host", 4242, "2024-01-01T00:00:00+00:00", "someone-else")
    other.put_object(Bucket=bucket, Key=f"rxrx2.zarr/{_lock.LOCK_KEY}", Body=held.to_json())
    resume = ConvertOptions(inner_chunks=INNER, workers=2, progress=False, resume=True,
                            dst_storage_options=s3.storage_options)
    with pytest.raises(StoreLockedError, match="another-host"):
        convert(str(tree), url, resume)
    other.delete_object(Bucket=bucket, Key=f"rxrx2.zarr/{_lock.LOCK_KEY}")

    report = convert(str(tree), url, resume)
    assert report.converted == 2 and report.resumed_skipped == len(plan.items) - 2
    _assert_verified(str(tree), url, len(plan.items), storage_options=s3.storage_options, src_storage_options={})


def test_memory_round_trip(tree: Path, plan: ConversionPlan) -> None:
    """``memory://`` on both sides (one process, threads): PNGs put into memory, converted, verified, read."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/scaleout-{uuid.uuid4().hex[:8]}"
    try:
        fs.put(str(tree), f"{root}/src", recursive=True)
        src, dst = f"memory://{root}/src", f"memory://{root}/out.zarr"
        report = convert(src, dst, ConvertOptions(inner_chunks=INNER, workers=2, progress=False))
        assert report.converted == len(plan.items)
        _assert_verified(src, dst, len(plan.items))
        _check_reader(dst, None, tree, plan)
        local_to_memory = f"memory://{root}/from-local.zarr"
        convert(str(tree), local_to_memory, ConvertOptions(inner_chunks=INNER, workers=2, progress=False))
        _assert_verified(str(tree), local_to_memory, len(plan.items))
    finally:
        fs.rm(root, recursive=True)


# --- Dask clusters -------------------------------------------------------------------------------------------------


def test_cluster_survives_a_killed_worker(s3: MotoS3, big_tree: Path, tmp_path: Path) -> None:
    """``--scheduler tcp://...`` with two worker processes; one is SIGKILLed (with its nanny) after a few sites
    are written. Its tasks are re-run on the other worker, and the store completes and verifies. The progress
    bar and the report work as they do locally."""
    big_plan = make_plan(str(big_tree))
    n = len(big_plan.items)
    bucket = _bucket(s3, "cluster")
    url = f"s3://{bucket}/rxrx2.zarr"
    markers = _site_markers(big_plan, "rxrx2.zarr/")
    # every site task takes >= 0.4 s on the workers, so the run lasts seconds and the kill lands mid-run
    with dask_cluster(tmp_path / "cluster", 2, preload=True, env={SITE_SECONDS_ENV: "0.4"}) as cluster:
        run = rxrx2_cli(
            ["convert", str(big_tree), url, "--scheduler", cluster.address, "--inner-chunks", INNER_FLAG, "--progress",
             *s3.cli_options("--dst-storage-option")],
            tmp_path / "convert.log",
        )

        def sites_written() -> int | None:
            done = len(markers & s3.keys(bucket, "rxrx2.zarr/"))
            return done if done >= 3 else None

        def victim_busy(client: Any) -> bool:
            """w0 holds tasks (running or queued on it): they are the ones the kill takes away."""
            address = {info["name"]: a for a, info in client.scheduler_info(n_workers=-1)["workers"].items()}["w0"]
            return bool(client.processing([address]).get(address))

        try:
            done_at_kill = wait_until(sites_written, 240, "three sites written", interval=0.2, watch=[run])
            with cluster.client() as client:
                wait_until(lambda: victim_busy(client), 60, "tasks on worker w0", interval=0.2, watch=[run])
            cluster.workers[0].kill()
            assert run.wait(300) == 0, run.output() + cluster.logs()
        finally:
            run.stop()
        assert done_at_kill < n, "the run finished before the worker was killed: nothing was tested"
        assert cluster.workers[0].poll() is not None and cluster.workers[1].poll() is None
        with cluster.client() as client:  # the scheduler saw the loss: one worker left
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    output = run.output()
    assert f"converted {n} of {n} sites" in output, output
    assert f"Dask cluster at {cluster.address}" in output
    assert f"{n}/{n}" in output  # the progress bar reached the end
    assert markers <= s3.keys(bucket, "rxrx2.zarr/")
    _assert_verified(str(big_tree), url, n, storage_options=s3.storage_options, src_storage_options={})


def test_local_process_cluster_from_the_command_line(tree: Path, plan: ConversionPlan, tmp_path: Path) -> None:
    n = len(plan.items)
    out = tmp_path / "processes.zarr"
    run = rxrx2_cli(["convert", str(tree), str(out), "--workers", "2", "--processes", "--inner-chunks", INNER_FLAG,
                     "--progress"],  # the log is a file, not a terminal: ask for the bar
                    tmp_path / "convert.log")
    try:
        assert run.wait(300) == 0, run.output()
    finally:
        run.stop()
    output = run.output()
    assert f"converted {n} of {n} sites" in output and "local Dask cluster, 2 worker process(es)" in output, output
    assert f"{n}/{n}" in output
    _assert_verified(str(tree), str(out), n)
    root = json.loads((out / "zarr.json").read_text())["attributes"]["rxrx2"]
    assert root["complete"] is True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A plain scheduler with two single-threaded worker processes, shared by the tests that do not kill it."""
    with dask_cluster(tmp_path_factory.mktemp("cluster"), 2) as running:
        yield running


def test_reader_computes_on_a_distributed_client(s3: MotoS3, s3_store: str, cluster: DaskCluster) -> None:
    """``open(s3 store).images`` reductions give the same answer on a cluster (workers reading the bucket) as on
    local threads."""
    from rxrx2_zarr._dataset import open as open_store

    ds = open_store(s3_store, storage_options=s3.storage_options)
    local_mean = np.asarray(ds.images.mean(axis=(0, 2, 3)).compute(scheduler="threads"))
    local_sites = np.asarray(ds.images[:3].compute(scheduler="threads"))
    with cluster.client() as client:
        remote_mean = np.asarray(client.compute(ds.images.mean(axis=(0, 2, 3))).result(timeout=120))
        remote_sites = np.asarray(client.compute(ds.images[:3]).result(timeout=120))
    assert remote_mean.shape == (6,)
    np.testing.assert_allclose(remote_mean, local_mean, rtol=1e-12)
    np.testing.assert_array_equal(remote_sites, local_sites)


def test_task_errors_come_back_from_the_cluster(
    cluster: DaskCluster, tree: Path, plan: ConversionPlan, tmp_path: Path
) -> None:
    """A bad site fails the run with the package's own error (raised on a worker, re-raised here), or is skipped
    and reported with ``on_error="skip"``, exactly as with local threads."""
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    bad = plan.items[1]
    png = src / bad.sources[2]
    data = bytearray(png.read_bytes())
    data[-40:-12] = bytes(28)  # a valid header (planning passes) over a corrupt image stream: fails on a worker
    png.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=bad.sources[2].rsplit("/", 1)[-1]):
        convert(str(src), str(tmp_path / "fail.zarr"),
                ConvertOptions(inner_chunks=INNER, scheduler=cluster.address, progress=False))
    report = convert(str(src), str(tmp_path / "skip.zarr"),
                     ConvertOptions(inner_chunks=INNER, scheduler=cluster.address, progress=False, on_error="skip"))
    assert [s.site_id for s in report.skipped] == [bad.site_id]
    assert report.converted == len(plan.items) - 1
    _assert_verified(str(src), str(tmp_path / "skip.zarr"), len(plan.items) - 1)
