"""Converting the release as published: from zip archives (on disk, over HTTP with Range, in a bucket), from HTTP
directory listings, with the metadata and embeddings given separately.

Every source kind is converted from the same generated tree and must give a store whose pixels and index equal the
directory conversion (the session's ``store`` fixture). The HTTP server is a thread of this process on 127.0.0.1
(an ephemeral port): directory listings like ``python -m http.server``, Range requests, a count of the body bytes
it sends, and injected faults (error statuses, a transfer cut short).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import pickle
import re
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _services import HOST, moto_s3
from click.testing import CliRunner
from conftest import INNER

import rxrx2_zarr
from rxrx2_zarr import _fs
from rxrx2_zarr._convert import ConvertOptions, PngSource, SiteJob, convert
from rxrx2_zarr._errors import ImageError, SourceError, TransferError
from rxrx2_zarr._layout import site_paths
from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr._plan import make_plan
from rxrx2_zarr._source import resolve_source
from rxrx2_zarr._storage import StoreIO
from rxrx2_zarr._verify import verify
from rxrx2_zarr.cli import main

# --- archives of the session's tree ---------------------------------------------------------------------------


def _zip(out: Path, files: dict[str, Path], compression: int = zipfile.ZIP_DEFLATED, dirs: bool = True) -> Path:
    """``files`` (archive name -> file) into ``out``, with directory entries as ``zip -r`` writes them."""
    with zipfile.ZipFile(out, "w", compression) as archive:
        seen: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = "/".join(parts[:i]) + "/"
                if dirs and folder not in seen:
                    seen.add(folder)
                    archive.writestr(folder, b"")
            archive.write(files[name], name)
    return out


def _tree_files(root: Path, prefix: str = "", only: str | None = None) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and (only is None or rel.startswith(only)):
            found[prefix + rel] = path
    return found


@pytest.fixture(scope="module")
def archives(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tree as zips: at the root (deflated), under ``rxrx2/`` (stored), images only, metadata+embeddings only,
    and the experiment folders directly (no ``images/``)."""
    out = tmp_path_factory.mktemp("zips")
    return {
        "root": _zip(out / "root.zip", _tree_files(source_tree)),
        "top": _zip(out / "top.zip", _tree_files(source_tree, "rxrx2/"), zipfile.ZIP_STORED),
        "images": _zip(out / "rxrx2-images.zip", _tree_files(source_tree, "rxrx2/", only="images/")),
        "tables": _zip(
            out / "rxrx2-tables.zip",
            {"rxrx2/metadata.csv": source_tree / "metadata.csv", "rxrx2/embeddings.csv": source_tree / "embeddings.csv"},
        ),
        "experiments": _zip(out / "experiments.zip", _tree_files(source_tree / "images"), dirs=False),
    }


# --- a loopback HTTP server -----------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_head(self) -> Any:
        server = self.server
        name = self.path.split("?", 1)[0]
        with server.lock:
            server.requests.append((self.command, name, self.headers.get("Range")))
            statuses = server.fail.get(name)
            status = statuses.pop(0) if statuses else None
            if statuses is not None and not statuses:
                server.fail.pop(name, None)
            if status is None and server.fail_after is not None and name in server.fail_after[0]:
                paths, ok, code = server.fail_after
                if ok > 0:
                    server.fail_after = (paths, ok - 1, code)
                else:
                    status = code
        if status is not None:
            self.send_error(status)
            return None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        data = Path(path).read_bytes()
        wanted = None if server.ignore_range else self.headers.get("Range")
        code, body = 200, data
        if wanted:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            assert match, wanted
            first, last = match.groups()
            if first:
                start, end = int(first), (int(last) + 1 if last else len(data))
            else:
                start, end = max(0, len(data) - int(last)), len(data)
            body = data[start:min(end, len(data))]
            code = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with server.lock:
            cut = code in (200, 206) and self.command == "GET" and server.truncate.pop(name, 0)
        if cut:
            body = body[: len(body) // 2]  # Content-Length promised more: the connection closes short
        return io.BytesIO(body)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        with self.server.lock:
            self.server.sent += len(data)
        outputfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.sent = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail: dict[str, list[int]] = {}
        """path -> statuses for its next requests."""
        self.fail_after: tuple[set[str], int, int] | None = None
        """(paths, n, status): after n more requests of those paths, every one fails with status, until cleared."""
        self.ignore_range = False
        """Answer every request with the whole file (a server without Range support)."""
        self.truncate: dict[str, int] = {}
        """path -> 1: the next GET of it sends half its body."""
        super().__init__((HOST, 0), lambda *a: _Handler(*a, directory=str(root)))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.sent = 0
            self.requests.clear()


@contextlib.contextmanager
def _serve(root: Path) -> Iterator[_Server]:
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def web(source_tree: Path, archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    """Serves ``/tree/`` (the directory), the archives by file name, and ``/tables/metadata.csv``."""
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(source_tree, root / "tree")
    for path in archives.values():
        shutil.copy(path, root / path.name)
    (root / "tables").mkdir()
    shutil.copy(source_tree / "metadata.csv", root / "tables" / "metadata.csv")
    with _serve(root) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", HOST)


# --- helpers --------------------------------------------------------------------------------------------------


def _first_png(tree: Path, channel: int) -> tuple[str, str]:
    """``(images/... path, site_id)`` of the first site of HUVEC-1 plate 1, its image of ``channel``."""
    first = sorted(tree.glob("images/HUVEC-1/Plate1/*_w1.png"))[0].name
    well, site = first.split("_")[:2]
    return f"images/HUVEC-1/Plate1/{well}_{site}_w{channel}.png", f"HUVEC-1_1_{well}_{site[1:]}"


def _options(**kwargs: Any) -> ConvertOptions:
    return ConvertOptions(**{"inner_chunks": INNER, "workers": 2, "progress": False, **kwargs})


def _assert_same(store: Path | str, reference: Path, **open_kwargs: Any) -> None:
    """Same index and the same pixels as the directory conversion."""
    ds, ref = rxrx2_zarr.open(str(store), **open_kwargs), rxrx2_zarr.open(str(reference))
    assert ds.sites.equals(ref.sites)
    ids = list(ref.sites.index)
    assert np.array_equal(ds.read(ids), ref.read(ids))
    if ref.embeddings is not None:
        assert ds.embeddings is not None and np.array_equal(ds.embeddings, ref.embeddings, equal_nan=True)


def _convert_and_verify(src: str, dst: Path, reference: Path, **kwargs: Any) -> Any:
    report = convert(src, str(dst), _options(**kwargs))
    checked = verify(
        src, str(dst), src_storage_options=kwargs.get("src_storage_options"),
        metadata=kwargs.get("metadata"), embeddings=kwargs.get("embeddings"),
    )
    assert checked.ok, checked.summary()
    _assert_same(dst, reference)
    return report


# --- every source kind gives the directory's store ---------------------------------------------------------


def test_directory_is_the_reference(source_tree: Path, store: Path) -> None:
    report = verify(str(source_tree), str(store))
    assert report.ok, report.summary()
    source = resolve_source(str(source_tree))
    assert source.archive is None and source.images == str(source_tree / "images")


def test_local_zip_at_its_root(archives: dict[str, Path], store: Path, tmp_path: Path) -> None:
    report = _convert_and_verify(str(archives["root"]), tmp_path / "a.zarr", store)
    assert f"images under images/ of the zip archive {archives['root']}" in report.summary()
    # the explicit spelling plans the same, and StoreIO lists the top of an archive without eating a character
    keys = StoreIO(f"zip://::{archives['root']}").find("images")
    assert keys and all(k.startswith("images/") for k in keys)
    explicit = make_plan(f"zip://::{archives['root']}")
    assert explicit.items == make_plan(str(archives["root"])).items and explicit.embeddings is not None


def test_local_zip_with_a_top_folder(archives: dict[str, Path], store: Path, tmp_path: Path) -> None:
    report = _convert_and_verify(f"zip://rxrx2::{archives['top']}", tmp_path / "a.zarr", store)
    assert "images under rxrx2/images/ of the zip archive" in report.summary()
    assert "embeddings rxrx2/embeddings.csv in the zip archive" in report.summary()
    # detected without saying where
    assert resolve_source(str(archives["top"])).images == "rxrx2/images"


def test_experiment_folders_at_the_top_and_tables_given_separately(
    archives: dict[str, Path], source_tree: Path, store: Path, tmp_path: Path
) -> None:
    report = _convert_and_verify(
        str(archives["experiments"]), tmp_path / "a.zarr", store,
        metadata=str(source_tree / "metadata.csv"), embeddings=f"zip://rxrx2/embeddings.csv::{archives['tables']}",
    )
    assert "images under the top of the zip archive" in report.summary()
    # a plain path to the tables' archive finds the files in it
    source = resolve_source(str(archives["images"]), metadata=str(archives["tables"]), embeddings=str(archives["tables"]))
    assert source.metadata is not None and source.metadata.member == "rxrx2/metadata.csv"
    assert source.embeddings is not None and source.embeddings.member == "rxrx2/embeddings.csv"


def test_zip_over_http_with_range_cli(web: _Server, store: Path, tmp_path: Path) -> None:
    """Images zip and tables published apart, as RxRx2 is: through the command line, convert and verify."""
    src = f"zip::{web.url}/rxrx2-images.zip"
    flags = ["--metadata", f"{web.url}/tables/metadata.csv",
             "--embeddings", f"zip://rxrx2/embeddings.csv::{web.url}/rxrx2-tables.zip"]
    web.reset()
    runner = CliRunner()
    out = runner.invoke(main, ["convert", src, str(tmp_path / "a.zarr"), "--quiet", "--workers", "2",
                               "--inner-chunks", "32,32", *flags])
    assert out.exit_code == 0, out.output
    assert "images under rxrx2/images/ of the zip archive" in out.output
    # only ranges of the archives, never the whole of one
    gets = [(p, r) for c, p, r in web.requests if c == "GET" and p.endswith(".zip")]
    assert gets and all(r is not None for _, r in gets)
    out = runner.invoke(main, ["verify", src, str(tmp_path / "a.zarr"), "--quiet", *flags])
    assert out.exit_code == 0, out.output
    _assert_same(tmp_path / "a.zarr", store)


def test_http_directory_listing(web: _Server, store: Path, tmp_path: Path) -> None:
    dst = tmp_path / "a.zarr"
    report = _convert_and_verify(f"{web.url}/tree/", dst, store)
    assert f"images under {web.url}/tree/images" in report.summary()
    # no sizes in an HTTP listing: the store records the bytes read
    source_attrs = rxrx2_zarr.open(str(dst)).attrs["source"]
    assert source_attrs["png_bytes"] == report.png_bytes > 0


def test_s3_bucket_holding_a_zip(archives: dict[str, Path], store: Path, tmp_path: Path) -> None:
    with moto_s3(tmp_path) as s3:
        bucket = s3.create_bucket("release")
        s3.client().upload_file(str(archives["top"]), bucket, "rxrx2/rxrx2.zip")
        _convert_and_verify(
            f"zip::s3://{bucket}/rxrx2/rxrx2.zip", tmp_path / "a.zarr", store, src_storage_options=s3.storage_options,
        )


# --- range requests, retries, faults -------------------------------------------------------------------------


def test_one_plate_of_a_remote_zip_reads_about_its_bytes(
    web: _Server, source_tree: Path, tmp_path: Path
) -> None:
    plate_bytes = sum(p.stat().st_size for p in source_tree.glob("images/*/Plate1/*.png"))
    web.reset()
    report = convert(f"{web.url}/top.zip", str(tmp_path / "a.zarr"), _options(plates=(1,)))
    served = web.sent
    assert report.png_bytes == plate_bytes
    assert served < 2 * plate_bytes, (served, plate_bytes)


def test_short_transfer_is_retried(web: _Server, source_tree: Path, store: Path, tmp_path: Path) -> None:
    web.truncate["/tree/" + _first_png(source_tree, 1)[0]] = 1
    dst = tmp_path / "a.zarr"
    convert(f"{web.url}/tree/", str(dst), _options(experiments=("HUVEC-1",), plates=(1,)))
    assert not web.truncate  # the cut transfer happened, and the retry read the file whole
    ref = rxrx2_zarr.open(str(store))
    ds = rxrx2_zarr.open(str(dst))
    ids = list(ds.sites.index)
    assert np.array_equal(ds.read(ids), ref.read(ids))


def test_http_500_partway_then_resume_with_processes(web: _Server, store: Path, tmp_path: Path) -> None:
    """The archive's server fails after planning: a clear error naming URL and status, a store that is incomplete
    but right, and ``--resume`` on a process cluster (each worker opens the archive itself) finishes it."""
    src = f"zip::{web.url}/root.zip"
    dst = tmp_path / "a.zarr"
    plan = make_plan(src)
    assert plan.source is not None
    io_ = pickle.loads(pickle.dumps(plan.source.open()))  # what a worker gets
    assert io_.read(plan.items[0].sources[0])[:4] == b"\x89PNG"
    pickle.loads(pickle.dumps(SiteJob(PngSource(plan.source), str(dst), {}, None, "fail")))  # type: ignore[arg-type]

    web.fail_after = ({"/root.zip"}, 40, 500)  # planning reads ~11 ranges (the central directory is cached)
    try:
        with pytest.raises(TransferError, match=r"root\.zip.*HTTP 500") as caught:
            convert(src, str(dst), _options(workers=1))
        assert "member images/" in str(caught.value)
    finally:
        web.fail_after = None
    root = json.loads((dst / "zarr.json").read_text())["attributes"]["rxrx2"]
    assert root["complete"] is False  # never finalized: verify and the reader refuse it until resumed
    assert not verify(src, str(dst)).ok
    report = convert(src, str(dst), _options(resume=True, processes=True, workers=2))
    assert report.resumed_skipped > 0 and report.converted + report.resumed_skipped == report.sites_total
    _assert_same(dst, store)


def test_http_404_partway_names_the_url(web: _Server, source_tree: Path, tmp_path: Path) -> None:
    missing = "/tree/" + _first_png(source_tree, 3)[0]
    web.fail[missing] = [404] * 20
    try:
        with pytest.raises(TransferError, match=re.escape(f"{web.url}{missing}: HTTP 404")):
            convert(f"{web.url}/tree/", str(tmp_path / "a.zarr"), _options(plates=(1,), workers=1))
    finally:
        web.fail.pop(missing, None)


# --- bad archives ----------------------------------------------------------------------------------------------


def test_zip_without_central_directory(archives: dict[str, Path], tmp_path: Path) -> None:
    data = archives["root"].read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) * 2 // 3])
    dst = tmp_path / "a.zarr"
    with pytest.raises(SourceError, match=re.escape(str(cut)) + ".*central directory"):
        convert(str(cut), str(dst), _options())
    assert not dst.exists()


def test_corrupt_member_is_named_and_never_written(
    archives: dict[str, Path], source_tree: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.zip"
    shutil.copy(archives["top"], bad)  # stored: a member's data bytes are the PNG's
    image, site_id = _first_png(source_tree, 2)
    name = f"rxrx2/{image}"
    with zipfile.ZipFile(bad) as archive:
        info = archive.getinfo(name)
    with open(bad, "r+b") as handle:
        handle.seek(info.header_offset + 30 + len(name.encode()) + len(info.extra) + 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    dst = tmp_path / "a.zarr"
    with pytest.raises(ImageError, match=re.escape(name) + ".*CRC"):
        convert(str(bad), str(dst), _options(workers=1))
    assert not (dst / site_paths(parse_site_id(site_id)).shard).exists()
    report = convert(str(bad), str(tmp_path / "b.zarr"), _options(on_error="skip"))
    assert [s.site_id for s in report.skipped] == [site_id]


def test_member_that_is_a_directory(source_tree: Path, tmp_path: Path) -> None:
    files = _tree_files(source_tree)
    name = _first_png(source_tree, 1)[0]
    del files[name]
    bad = _zip(tmp_path / "dir.zip", files)
    with zipfile.ZipFile(bad, "a") as archive:
        archive.writestr(name + "/", b"")
    dst = tmp_path / "a.zarr"
    with pytest.raises(SourceError, match=re.escape(name) + "/: a directory in the zip archive"):
        convert(str(bad), str(dst), _options())
    assert not dst.exists()


def test_plain_zip_path_without_metadata_says_so(archives: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--metadata"):
        convert(str(archives["images"]), str(tmp_path / "a.zarr"), _options())


def test_server_without_range_support_is_refused_at_once(web: _Server, tmp_path: Path) -> None:
    web.ignore_range = True
    web.reset()
    try:
        with pytest.raises(TransferError, match="ignores Range requests"):
            convert(f"zip::{web.url}/experiments.zip", str(tmp_path / "a.zarr"), _options())
    finally:
        web.ignore_range = False
    assert len([r for r in web.requests if r[0] == "GET"]) == 1  # not retried: it would fetch it all again
    assert not (tmp_path / "a.zarr").exists()


def test_fetch_retries_are_bounded_and_name_what_failed() -> None:
    pauses: list[float] = []
    outcomes: list[Any] = [OSError("reset"), b"sh", b"whole"]

    def flaky() -> bytes:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return bytes(outcome)

    assert _fs.fetch("u", flaky, expected=5, sleep=pauses.append) == b"whole"
    assert pauses == [0.25, 0.5]

    def broken() -> bytes:
        raise OSError("connection reset by peer")

    with pytest.raises(TransferError, match=r"http://h/x\.zip: OSError: connection reset by peer \(after 4 attempts\)"):
        _fs.fetch("http://h/x.zip", broken, sleep=pauses.append)

    def gone() -> bytes:
        raise FileNotFoundError("x")

    with pytest.raises(FileNotFoundError):
        _fs.fetch("u", gone, sleep=pauses.append)
