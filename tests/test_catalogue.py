"""The adversarial catalogue of issue 11: each case of bad input or fault, and what must happen.

README, "Failure behaviour", lists every case (these and the older ones in test_reliability.py) with its expected
outcome and the test that pins it. Every refusal here must happen before anything is written (the destination
does not exist afterwards) and name the file, line, site or object; the source is never modified. To add a case:
write the test here, then add its row to the README table.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from benchmarks._metadata_scale import metadata_frame
from rxrx2_zarr import (
    ImageError,
    MetadataError,
    SourceError,
    SpecialFileError,
    StoreExistsError,
    StoreWriteError,
    _lock,
    synth,
)
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._layout import EMBEDDINGS_ARRAY, INDEX_GROUP, SiteArraySpec
from rxrx2_zarr._paths import RESERVED_NAMES, check_experiment, is_reserved_name, parse_site_id
from rxrx2_zarr._png import decode_png
from rxrx2_zarr._schema import load_embeddings, load_metadata, validate_metadata
from rxrx2_zarr._verify import verify
from rxrx2_zarr.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # zarr: numcodecs codecs are not core v3 codecs
    pytest.mark.filterwarnings("ignore::Warning:pydantic"),
]

SIZE = 64
EXPERIMENT = "HUVEC-1"


def options(**kwargs: Any) -> ConvertOptions:
    return ConvertOptions(**{"inner_chunks": (32, 32), "progress": False, "profile": "fast", **kwargs})


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def set_cell(src: Path, line: int, column: str, value: str, name: str = "metadata.csv") -> str:
    """Set a cell on CSV ``line`` (1-based, header = 1) and return that row's site_id."""
    rows = read_rows(src / name)
    rows[line - 1][rows[0].index(column)] = value
    write_rows(src / name, rows)
    return rows[line - 1][0]


def image(src: Path, site_id: str, channel: int) -> Path:
    key = parse_site_id(site_id)
    return src / key.image_paths()[channel - 1]


def first_site(src: Path) -> str:
    return read_rows(src / "metadata.csv")[1][0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 1 plate x 2 wells x 2 sites of 64 x 64 images, 4-dim embeddings."""
    out = tmp_path_factory.mktemp("catalogue") / "rxrx2"
    synth(str(out), experiments=1, plates=1, wells=2, sites=2, size=SIZE, embedding_dim=4, seed=3, progress=False)
    return out


@pytest.fixture
def src(tree: Path, tmp_path: Path) -> Path:
    target = tmp_path / "src"
    shutil.copytree(tree, target)
    return target


def refused(src: Path, dst: Path, error: type[Exception], *needles: str, **flags: Any) -> str:
    """Convert must raise ``error`` naming every needle, leave ``dst`` absent and the source unchanged."""
    before = digest(src)
    with pytest.raises(error) as info:
        convert(str(src), str(dst), options(**flags))
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not dst.exists(), "something was written before the refusal"
    assert digest(src) == before
    return message


def in_time(action: Callable[[], Any], seconds: float = 120) -> Any:
    """Run ``action`` in a thread; fail (instead of hanging the suite) if it blocks longer than ``seconds``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# --- 1. reserved experiment names ---------------------------------------------------------------------------------


def rename_experiment(src: Path, new: str) -> None:
    """Rename the tree's experiment everywhere (metadata ids, embeddings ids, the image directory)."""
    for name in ("metadata.csv", "embeddings.csv"):
        path = src / name
        path.write_text(path.read_text().replace(f"{EXPERIMENT}_", f"{new}_").replace(f",{EXPERIMENT},", f",{new},"))
    (src / "images" / EXPERIMENT).rename(src / "images" / new)


@pytest.mark.parametrize(
    "name", ["index", "embeddings", "index.parquet", "zarr.json", "zarr-1", "Embeddings", "INDEX", "HUVEC-1.partial"]
)
def test_reserved_experiment_names_are_refused_before_writing(name: str, src: Path, tmp_path: Path) -> None:
    rename_experiment(src, name)
    message = refused(src, tmp_path / "out.zarr", MetadataError, "metadata.csv", "line 2", repr(name), "reserved")
    assert "column 'experiment'" in message


@pytest.mark.parametrize("name", [".hidden", "_private", ".rxrx2-zarr.lock", "a_b"])
def test_names_outside_the_experiment_grammar_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid experiment name"):
        check_experiment(name)


def test_every_root_name_of_the_layout_is_reserved() -> None:
    for name in (INDEX_GROUP, EMBEDDINGS_ARRAY, "zarr.json", "index.parquet", _lock.LOCK_KEY, "x.partial", "zarr.v4"):
        assert is_reserved_name(name), name
    assert {INDEX_GROUP, EMBEDDINGS_ARRAY, "zarr.json", _lock.LOCK_KEY} <= RESERVED_NAMES
    for name in ("HUVEC-1", "HUVEC-2", "HEPG2-08", "RPE-05", "U2OS-01"):
        assert not is_reserved_name(name) and check_experiment(name) == name


# --- 2. numbers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("plate", "2147483648"),  # int32 + 1: was stored as -2147483648
        ("plate", str(2**63)),  # int64 + 1: was reported overflowed, without a line
        ("plate", "99999999999999999999999"),
        ("site", "2147483648"),
        ("plate", "0"),
        ("plate", "-1"),
    ],
)
def test_plate_and_site_within_int32_and_positive(column: str, value: str, src: Path, tmp_path: Path) -> None:
    site_id = set_cell(src, 3, column, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning may leak
        refused(src, tmp_path / "out.zarr", MetadataError, "line 3", site_id, f"'{column}'", repr(value), "2147483647")


@pytest.mark.parametrize("value", ["1e400", "-1e400", "nan", "inf", "-0.5", "ten"])
def test_concentration_finite_and_not_negative(value: str, src: Path, tmp_path: Path) -> None:
    line = next(i for i, row in enumerate(read_rows(src / "metadata.csv")[1:], start=2) if row[8])
    site_id = set_cell(src, line, "treatment_conc", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(src, tmp_path / "out.zarr", MetadataError, f"line {line}", site_id, "'treatment_conc'", repr(value))


def test_blank_concentration_stays_allowed(src: Path) -> None:
    frame = load_metadata(str(src))
    rows = read_rows(src / "metadata.csv")
    rows[1][8] = ""
    write_rows(src / "metadata.csv", rows)
    assert np.isnan(load_metadata(str(src))["treatment_conc"].iloc[0]) and len(frame) == len(rows) - 1


@pytest.mark.parametrize("value", ["1e39", "-3.5e38", "1e300"])
def test_embedding_beyond_float32_is_an_error(value: str, src: Path, tmp_path: Path) -> None:
    site_id = set_cell(src, 4, "feature_2", value, name="embeddings.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(
            src, tmp_path / "out.zarr", MetadataError,
            "embeddings.csv", "line 4", repr(site_id), "'feature_2'", "out of float32 range", repr(str(float(value))),
        )


def test_largest_float32_embedding_is_kept(src: Path) -> None:
    set_cell(src, 2, "feature_0", "3.4028234e38", name="embeddings.csv")
    assert np.isfinite(load_embeddings(str(src / "embeddings.csv")).matrix).all()


# --- 3. --overwrite deletes only what this package wrote ------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_directory_of_user_partial_files(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "downloads"
    dst.mkdir()
    (dst / "film.mkv.partial").write_bytes(b"half a film")
    (dst / "thesis.partial").write_bytes(b"draft")
    before = snapshot(dst)
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(StoreExistsError) as info:
            convert(str(src), str(dst), options(**flags))
        assert "'film.mkv.partial'" in str(info.value) and "not an rxrx2-zarr store" in str(info.value)
    assert snapshot(dst) == before


def test_overwrite_refuses_a_lock_next_to_foreign_files(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "mixed"
    dst.mkdir()
    (dst / _lock.LOCK_KEY).write_text("{}")  # looks like ours...
    (dst / "notes").mkdir()  # ...but a directory of someone else's is there
    with pytest.raises(StoreExistsError, match="'notes'"):
        convert(str(src), str(dst), options(overwrite=True, break_lock=True))
    assert (dst / "notes").is_dir()


def test_overwrite_takes_an_interrupted_store_with_only_our_lock_and_temporaries(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "interrupted.zarr"
    dst.mkdir()
    (dst / _lock.LOCK_KEY).write_text(json.dumps({"host": "gone.example.org", "pid": 1, "since": "2024-01-01T00:00:00+00:00", "token": "x"}))
    (dst / f"zarr.json.{'ab' * 16}.partial").write_bytes(b"{half a root")
    convert(str(src), str(dst), options(overwrite=True, break_lock=True))
    assert verify(str(src), str(dst)).ok
    assert not list(dst.glob("*.partial"))


# --- 4. linear-time checks: correctness at scale (the timing is a benchmark: benchmarks/_metadata_scale.py) ------


def test_duplicates_found_among_50k_rows() -> None:
    frame = metadata_frame(50_000, duplicates=2)
    with pytest.raises(MetadataError) as info:
        validate_metadata(frame, source="metadata.csv")
    message = str(info.value)
    assert "2 problems" in message, message
    for k, line in ((1, 50_001), (2, 50_000)):
        site_id = frame["site_id"].iloc[10 * k]
        assert f"line {line}: column 'site_id': duplicate site_id {site_id!r} (first on line {10 * k + 2})" in message


def test_many_identical_rows_are_counted_not_listed() -> None:
    frame = pd.concat([metadata_frame(1)] * 20_000, ignore_index=True)
    with pytest.raises(MetadataError) as info:
        validate_metadata(frame, source="metadata.csv")
    message = str(info.value)
    assert "19,999 problems" in message and "... and 19,979 more" in message
    assert "(first on line 2)" in message and len(message) < 5_000


def test_valid_50k_rows_pass() -> None:
    assert len(validate_metadata(metadata_frame(50_000))) == 50_000


# --- 5. non-regular files in place of source files --------------------------------------------------------------


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _dev_null_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/null")


def _fifo_link(path: Path) -> None:
    path.unlink()
    os.mkfifo(path.with_name(path.name + ".fifo"))
    path.symlink_to(path.with_name(path.name + ".fifo"))


def _socket(path: Path) -> None:
    path.unlink()
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(path.parent)  # a relative name: socket paths are limited to ~107 bytes
    try:
        server.bind(path.name)
    finally:
        os.chdir(cwd)
        server.close()


SPECIAL: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "a FIFO"),
    "symlink-to-device": (_dev_null_link, "a character device"),
    "symlink-to-fifo": (_fifo_link, "a FIFO"),
    "socket": (_socket, "a socket"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("channel", [1, 3])  # channel 1 is read for the image size, the others are not
def test_special_file_in_place_of_a_png(kind: str, channel: int, src: Path, tmp_path: Path) -> None:
    make, what = SPECIAL[kind]
    victim = image(src, first_site(src), channel)
    make(victim)
    name = str(victim.relative_to(src))
    in_time(lambda: refused(src, tmp_path / "out.zarr", SourceError, first_site(src), name, what, "not a regular file"))
    report = in_time(lambda: convert(str(src), str(tmp_path / "skip.zarr"), options(on_error="skip")))
    assert [s.site_id for s in report.skipped] == [first_site(src)] and what in report.skipped[0].reason


@pytest.mark.parametrize("name", ["metadata.csv", "embeddings.csv"])
def test_fifo_in_place_of_a_csv(name: str, src: Path, tmp_path: Path) -> None:
    _fifo(src / name)
    in_time(lambda: refused(src, tmp_path / "out.zarr", SpecialFileError, name, "a FIFO", "not a regular file"))
    with pytest.raises(SpecialFileError, match="FIFO"):
        in_time(lambda: (load_metadata if name == "metadata.csv" else load_embeddings)(str(src)))


def test_fifo_swapped_in_after_planning_is_refused_not_read(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rxrx2_zarr._convert as convert_module

    victim = image(src, first_site(src), 4)
    real = convert_module.run_tasks

    def swap_then_run(*args: Any, **kwargs: Any) -> None:
        _fifo(victim)
        real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "run_tasks", swap_then_run)
    with pytest.raises(ImageError, match="FIFO"):
        in_time(lambda: convert(str(src), str(tmp_path / "out.zarr"), options()))


# --- 6. inner chunks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(1, 1), (8, 256), (256, 15), (0, 0)])
def test_inner_chunks_below_16_are_refused(chunks: tuple[int, int], src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ConvertOptions(inner_chunks=chunks)
    with pytest.raises(ValueError, match="at least 16"):
        SiteArraySpec(1024, 1024, chunks)
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out.zarr"), "--inner-chunks", ",".join(map(str, chunks))])
    assert result.exit_code == 2 and "--inner-chunks" in result.output and "at least 16" in result.output, result.output
    assert not (tmp_path / "out.zarr").exists()


def test_inner_chunks_of_16_are_accepted() -> None:
    assert SiteArraySpec(64, 64, (16, 16)).chunk_shape == (1, 16, 16)


# --- 7. messages --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_metadata_names_the_file(content: bytes, src: Path, tmp_path: Path) -> None:
    (src / "metadata.csv").write_bytes(content)
    refused(src, tmp_path / "out.zarr", MetadataError, "metadata.csv", "empty")
    with pytest.raises(MetadataError, match=r"metadata\.csv: the file is empty"):
        load_metadata(str(src))


def _with_blank_lines(path: Path, quote: bool) -> None:
    """Blank lines after the header and after every other row; optionally every field quoted."""
    rows = read_rows(path)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL)
    for number, row in enumerate(rows):
        writer.writerow(row)
        if number % 2 == 0:
            out.write("\n")
    path.write_text(out.getvalue())


def physical_line(path: Path, site_id: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip('"').startswith(site_id))


@pytest.mark.parametrize("quote", [False, True])
def test_blank_lines_do_not_shift_reported_lines(quote: bool, src: Path, tmp_path: Path) -> None:
    site_id = set_cell(src, 5, "plate", "x")
    _with_blank_lines(src / "metadata.csv", quote)
    line = physical_line(src / "metadata.csv", site_id)
    assert line > 5
    refused(src, tmp_path / "out.zarr", MetadataError, f"line {line} (site_id {site_id!r})", "'plate'", "'x'")


def test_blank_lines_in_embeddings_do_not_shift_reported_lines(src: Path, tmp_path: Path) -> None:
    site_id = set_cell(src, 5, "feature_1", "abc", name="embeddings.csv")
    _with_blank_lines(src / "embeddings.csv", quote=False)
    line = physical_line(src / "embeddings.csv", site_id)
    refused(src, tmp_path / "out.zarr", MetadataError, f"line {line} (site_id {site_id!r})", "'feature_1'")


@pytest.mark.parametrize("variant", ["bom", "quoted-header", "quoted-everything", "bom-and-quotes", "crlf"])
def test_embeddings_bom_and_quotes_are_accepted(variant: str, src: Path) -> None:
    path = src / "embeddings.csv"
    want = load_embeddings(str(path))
    rows = read_rows(path)
    out = io.StringIO()
    terminator = "\r\n" if variant == "crlf" else "\n"
    quoting = csv.QUOTE_ALL if "quotes" in variant or variant == "quoted-everything" else csv.QUOTE_MINIMAL
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    if variant == "quoted-header":
        out.write(",".join(f'"{h}"' for h in rows[0]) + terminator)
        writer.writerows(rows[1:])
    else:
        writer.writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if "bom" in variant else b"") + out.getvalue().encode())
    got = load_embeddings(str(path))
    assert got.site_ids == want.site_ids and got.feature_names == want.feature_names
    np.testing.assert_array_equal(got.matrix, want.matrix)


def test_metadata_with_bom_is_accepted(src: Path) -> None:
    want = load_metadata(str(src))
    (src / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (src / "metadata.csv").read_bytes())
    pd.testing.assert_frame_equal(load_metadata(str(src)), want)


def test_png_with_bytes_after_iend_is_converted_with_a_warning(src: Path, tmp_path: Path) -> None:
    site_id = first_site(src)
    victim = image(src, site_id, 2)
    victim.write_bytes(victim.read_bytes() + b"trailing junk" * 10)
    report = convert(str(src), str(tmp_path / "out.zarr"), options())
    assert not report.skipped
    name = str(victim.relative_to(src))
    assert any(name in w and "130 trailing bytes after the IEND chunk" in w for w in report.warnings), report.warnings
    assert "trailing bytes" in report.summary()
    assert verify(str(src), str(tmp_path / "out.zarr")).ok


def test_png_cut_short_is_still_truncated(src: Path) -> None:
    data = image(src, first_site(src), 2).read_bytes()
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_png(data[:-20], "x.png", (SIZE, SIZE))
    notes: list[str] = []
    assert decode_png(data + b"\0", "x.png", (SIZE, SIZE), notes).shape == (SIZE, SIZE) and "x.png" in notes[0]


@pytest.mark.parametrize("value", ["1,a", "0", "1,-2", "x"])
def test_plates_option_names_the_bad_value(value: str, src: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out.zarr"), "--plates", value])
    assert result.exit_code == 2 and "Invalid value for --plates" in result.output, result.output
    bad = next(v for v in value.split(",") if not (v.isdigit() and int(v) > 0))
    assert repr(bad) in result.output and "invalid literal" not in result.output
    assert not (tmp_path / "out.zarr").exists()


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port


def test_unreachable_scheduler_fails_before_writing(src: Path, tmp_path: Path, closed_port: int) -> None:
    import dask
    import distributed  # noqa: F401  (loads its config defaults first: set() would drop them on exit otherwise)

    dst = tmp_path / "out.zarr"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = CliRunner().invoke(main, ["convert", str(src), str(dst), "--scheduler", f"tcp://127.0.0.1:{closed_port}", "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"tcp://127.0.0.1:{closed_port}" in result.output and "cannot reach" in result.output
    assert not dst.exists()


def test_disk_full_names_the_object_then_resume_completes(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "full.zarr"
    real_replace = os.replace
    state = {"full": True}

    def replace(a: Any, b: Any) -> None:
        if state["full"] and str(b).endswith("/0/c/0/0/0"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreWriteError) as info:
        convert(str(src), str(dst), options())
    message = str(info.value)
    shard = parse_site_id(first_site(src))
    key = f"{shard.experiment}/Plate{shard.plate}/{shard.well.row}/{shard.well.column_name}/{shard.site}/0/c/0/0/0"
    assert info.value.errno == errno.ENOSPC and key in message and str(dst) in message, message
    assert not list(dst.rglob("*.partial"))  # the temporary file of the failed write is gone
    flags = ["--resume", "--quiet", "--inner-chunks", "32,32", "--profile", "fast", "--workers", "1"]  # as above
    result = CliRunner().invoke(main, ["convert", str(src), str(dst), *flags])
    assert result.exit_code == 2 and key in result.output  # the CLI says the same, no traceback
    state["full"] = False  # space freed: resume completes the store
    convert(str(src), str(dst), options(resume=True))
    assert verify(str(src), str(dst)).ok
