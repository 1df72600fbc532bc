"""Reliability: resume after kill -9, destination safety, the lock, and every kind of bad input.

Every test that feeds bad input also checks that nothing was lost: the source tree hashes the same afterwards, and
where a failure must happen before any write, the destination does not exist (or is byte-for-byte untouched).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import crc32c
import imagecodecs
import numpy as np
import pytest
import zarr

import rxrx2_zarr._convert as convert_module
from rxrx2_zarr import (
    ImageError,
    MetadataError,
    SourceError,
    StoreExistsError,
    StoreLockedError,
    _lock,
    synth,
)
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._plan import make_plan
from rxrx2_zarr._png import decode_png
from rxrx2_zarr._shard import ShardCodec
from rxrx2_zarr._storage import StoreIO
from rxrx2_zarr._verify import verify

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # zarr: numcodecs codecs are not core v3 codecs
    pytest.mark.filterwarnings("ignore::Warning:pydantic"),  # ome-zarr-models: plate 'version' defaulted
]

REPO = Path(__file__).resolve().parents[1]
SIZE = 96
LOCK = ".rxrx2-zarr.lock"
HOST = socket.gethostname()


# --- helpers --------------------------------------------------------------------------------------------------------


def options(**kwargs: Any) -> ConvertOptions:
    return ConvertOptions(**{"inner_chunks": (32, 32), "progress": False, **kwargs})


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path -> sha256 (the source must never change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(root: Path) -> dict[str, tuple[int, int, int] | None]:
    """Every entry under ``root`` -> (inode, mtime_ns, size) for files, None for directories ("untouched")."""
    if not root.exists():
        return {}
    out: dict[str, tuple[int, int, int] | None] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = None if p.is_dir() else (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def site_ids(src: Path) -> list[str]:
    return [item.site_id for item in make_plan(str(src)).items]


def image(src: Path, site_id: str, channel: int) -> Path:
    experiment, plate, well, site = site_id.split("_")
    return src / f"images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png"


def rel(path: Path, src: Path) -> str:
    return str(path.relative_to(src))


def site_group(site_id: str) -> str:
    experiment, plate, well, site = site_id.split("_")
    return f"{experiment}/Plate{plate}/{well.rstrip('0123456789')}/{well[-2:]}/{site}"


def markers(store: Path) -> list[Path]:
    """The completion markers present: site group documents (experiment/PlateN/row/column/site/zarr.json)."""
    return sorted(store.glob("*/Plate*/*/*/*/zarr.json"))


def root_attrs(store: Path) -> dict[str, Any]:
    return json.loads((store / "zarr.json").read_text())["attributes"]["rxrx2"]


def edit_csv(path: Path, edit: Callable[[list[list[str]]], None]) -> None:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_png(width: int, height: int) -> bytes:
    """A well-formed, tiny PNG whose header claims ``width`` x ``height`` (decoding it would allocate that)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def assert_same_store(got: Path, want: Path, *, same_source_path: bool = True) -> None:
    """``got`` equals ``want``: the same objects, the same documents (attributes), index arrays, pixels, bytes.

    Without ``same_source_path``, ``want`` was converted from a copy of the source elsewhere: the root attributes
    then differ in the recorded source URL only.
    """
    files = {p for p, v in snapshot(got).items() if v is not None}
    assert files == {p for p, v in snapshot(want).items() if v is not None}
    for name in sorted(f for f in files if f.endswith("zarr.json")):
        a, b = json.loads((got / name).read_text()), json.loads((want / name).read_text())
        if name == "zarr.json" and not same_source_path:
            assert a["attributes"]["rxrx2"]["source"].pop("url") != b["attributes"]["rxrx2"]["source"].pop("url")
        assert a == b, name
    a, b = zarr.open_group(str(got), path="index", mode="r"), zarr.open_group(str(want), path="index", mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for column in a.array_keys():
        np.testing.assert_array_equal(np.asarray(a[column][:]), np.asarray(b[column][:]), err_msg=column)
    for path in map(str, np.asarray(b["path"][:])):
        # decoded with the package's shard decoder, which is fast; verify() reads pixels through zarr-python
        pixels = [
            ShardCodec.from_array_metadata(json.loads((store / path / "zarr.json").read_text()), path).decode(
                (store / path / "c/0/0/0").read_bytes()
            )
            for store in (got, want)
        ]
        np.testing.assert_array_equal(pixels[0], pixels[1], err_msg=path)
    for name in sorted(files - ({"zarr.json"} if not same_source_path else set())):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 2 plates x 2 wells x 2 sites (8 sites) of 96 x 96 images."""
    out = tmp_path_factory.mktemp("faults") / "rxrx2"
    synth(str(out), experiments=1, plates=2, wells=2, sites=2, size=SIZE, embedding_dim=4, seed=11)
    return out


@pytest.fixture(scope="module")
def good_store(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("good") / "good.zarr"
    convert(str(tree), str(out), options())
    return out


@pytest.fixture
def src(tree: Path, copy_tree: Callable[[Path], Path]) -> Path:
    return copy_tree(tree)


@pytest.fixture
def existing(good_store: Path, tmp_path: Path) -> Path:
    """A private copy of a complete store (a destination that must not be touched)."""
    import shutil

    target = tmp_path / "existing.zarr"
    shutil.copytree(good_store, target)
    return target


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start a live helper process that takes a store's lock (through the library) and holds it."""
    started: list[subprocess.Popen[str]] = []

    def start(store: Path) -> subprocess.Popen[str]:
        code = (
            "import sys, time\n"
            "from rxrx2_zarr._lock import acquire\nfrom rxrx2_zarr._storage import StoreIO\n"
            "acquire(StoreIO(sys.argv[1]), take_over_dead=True, break_lock=False)\n"
            "print('locked', flush=True)\ntime.sleep(120)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE, text=True, env=_env())
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- bad input that the plan catches: nothing is written --------------------------------------------------------------

PlanFault = Callable[[Path], tuple[type[Exception], list[str]]]


def _metadata(edit: Callable[[list[list[str]]], list[str]]) -> PlanFault:
    def apply(src: Path) -> tuple[type[Exception], list[str]]:
        needles: list[str] = []
        edit_csv(src / "metadata.csv", lambda rows: needles.extend(edit(rows)))
        return MetadataError, ["metadata.csv", *needles]

    return apply


def _set(rows: list[list[str]], line: int, column: str, value: str) -> str:
    """Set a cell of data row ``line`` (1-based CSV line number) and return that row's site_id."""
    rows[line - 1][rows[0].index(column)] = value
    return rows[line - 1][0]


def _drop_column(rows: list[list[str]]) -> list[str]:
    i = rows[0].index("treatment")
    for row in rows:
        del row[i]
    return ["missing column(s) ['treatment']"]


def _extra_column(rows: list[list[str]]) -> list[str]:
    for n, row in enumerate(rows):
        row.append("notes" if n == 0 else "x")
    return ["unexpected column(s) ['notes']"]


def _duplicate(rows: list[list[str]]) -> list[str]:
    rows.append(list(rows[3]))
    return [f"line {len(rows)}", f"duplicate site_id {rows[3][0]!r}"]


def _inconsistent_id(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 3, "well_id", "HUVEC-1_2_B07")
    return ["line 3", repr(site), "'HUVEC-1_2_B07' does not match"]


def _bad_well(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 2, "well", "AZ99")
    return ["line 2", repr(site), "invalid well address 'AZ99'"]


def _plate_not_integer(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 4, "plate", "1.5")
    return ["line 4", repr(site), "column 'plate'", "not a positive integer: '1.5'"]


def _conc_not_numeric(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 5, "treatment_conc", "ten")
    return ["line 5", repr(site), "column 'treatment_conc'", "'ten'"]


def _separator_in_name(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 2, "treatment", "IL/6")
    return ["line 2", repr(site), "unsafe", "'IL/6'"]


def _dotdot_in_name(rows: list[list[str]]) -> list[str]:
    site = _set(rows, 3, "treatment", "../etc")
    return ["line 3", repr(site), "unsafe", "'../etc'"]


def _row_without_images(src: Path) -> tuple[type[Exception], list[str]]:
    def add(rows: list[list[str]]) -> None:
        template = dict(zip(rows[0], rows[1], strict=True))
        experiment, plate = template["experiment"], template["plate"]
        new = {**template, "well": "AE47", "site": "1", "well_id": f"{experiment}_{plate}_AE47"}
        new["site_id"] = f"{new['well_id']}_1"
        rows.append([new[c] for c in rows[0]])

    edit_csv(src / "metadata.csv", add)
    return SourceError, ["missing image images/HUVEC-1/Plate1/AE47_s1_w1.png", "HUVEC-1_1_AE47_1", "6 images missing"]


def _image_without_row(src: Path) -> tuple[type[Exception], list[str]]:
    removed: list[str] = []
    edit_csv(src / "metadata.csv", lambda rows: removed.append(rows.pop(2)[0]))
    return SourceError, ["with no row in metadata.csv", rel(image(src, removed[0], 1), src)]


def _missing_channel(src: Path) -> tuple[type[Exception], list[str]]:
    site = site_ids(src)[2]
    image(src, site, 4).unlink()
    return SourceError, [f"{site}: missing image {rel(image(src, site, 4), src)}"]


def _tiny_png(src: Path) -> tuple[type[Exception], list[str]]:
    site = site_ids(src)[1]
    image(src, site, 2).write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    return SourceError, [site, rel(image(src, site, 2), src), "truncated PNG (9 bytes)"]


def _huge_file(src: Path) -> tuple[type[Exception], list[str]]:
    site = site_ids(src)[5]
    path = image(src, site, 6)
    path.write_bytes(path.read_bytes() + b"\0" * (2 << 20))
    return SourceError, [site, rel(path, src), "more than any 96x96 8-bit PNG"]


def _embeddings(edit: Callable[[list[list[str]]], list[str]]) -> PlanFault:
    def apply(src: Path) -> tuple[type[Exception], list[str]]:
        needles: list[str] = []
        edit_csv(src / "embeddings.csv", lambda rows: needles.extend(edit(rows)))
        return MetadataError, ["embeddings.csv", *needles]

    return apply


def _embedding_width(rows: list[list[str]]) -> list[str]:
    rows[4].pop()
    return [f"line 5 (site_id {rows[4][0]!r}): 4 fields, expected 5"]


def _embedding_unknown(rows: list[list[str]]) -> list[str]:
    rows.append(["HUVEC-9_1_B02_1", "0", "0", "0", "0"])
    return ["not in the metadata", "HUVEC-9_1_B02_1"]


def _embedding_not_numeric(rows: list[list[str]]) -> list[str]:
    rows[3][2] = "abc"
    return [f"line 4 (site_id {rows[3][0]!r})", "column 'feature_1'", "'abc'"]


PLAN_FAULTS: dict[str, PlanFault] = {
    "metadata-missing-column": _metadata(_drop_column),
    "metadata-extra-column": _metadata(_extra_column),
    "metadata-duplicate-site_id": _metadata(_duplicate),
    "metadata-inconsistent-ids": _metadata(_inconsistent_id),
    "metadata-bad-well": _metadata(_bad_well),
    "metadata-plate-not-integer": _metadata(_plate_not_integer),
    "metadata-conc-not-numeric": _metadata(_conc_not_numeric),
    "metadata-path-separator": _metadata(_separator_in_name),
    "metadata-dotdot": _metadata(_dotdot_in_name),
    "row-without-images": _row_without_images,
    "image-without-row": _image_without_row,
    "missing-channel": _missing_channel,
    "png-shorter-than-header": _tiny_png,
    "png-file-too-large": _huge_file,
    "embeddings-wrong-width": _embeddings(_embedding_width),
    "embeddings-unknown-site": _embeddings(_embedding_unknown),
    "embeddings-not-numeric": _embeddings(_embedding_not_numeric),
}


@pytest.mark.parametrize("fault", sorted(PLAN_FAULTS))
def test_plan_time_fault_fails_before_writing(fault: str, src: Path, existing: Path, tmp_path: Path) -> None:
    error, needles = PLAN_FAULTS[fault](src)
    source = digest(src)
    before = snapshot(existing)
    for dst, extra in ((tmp_path / "new.zarr", {}), (existing, {"overwrite": True}), (existing, {"resume": True})):
        with pytest.raises(error) as info:
            convert(str(src), str(dst), options(**extra))
        message = str(info.value)
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        if fault.startswith("embeddings"):  # files are named relative to SRC, not by absolute path
            assert message.startswith("embeddings.csv:") and str(src) not in message, message
    assert not (tmp_path / "new.zarr").exists()
    assert snapshot(existing) == before
    assert digest(src) == source


# --- bad images found while converting a site -----------------------------------------------------------------------

SiteFault = Callable[[Path, bytes], tuple[bytes, str]]

SITE_FAULTS: dict[str, SiteFault] = {
    "corrupt": lambda p, good: (good[:60] + bytes(b ^ 0x5A for b in good[60:90]) + good[90:], "corrupt or truncated PNG"),
    "truncated": lambda p, good: (good[: len(good) // 2], "truncated PNG"),
    "not-a-png": lambda p, good: (b"GIF89a" + bytes(range(256)) * 2, "not a PNG file"),
    "wrong-size": lambda p, good: (imagecodecs.png_encode(np.full((48, 48), 9, np.uint8)), "image is 48x48, expected 96x96"),
    "16-bit": lambda p, good: (imagecodecs.png_encode(np.full((SIZE, SIZE), 300, np.uint16)), "expected an 8-bit grayscale PNG, got 96x96 16-bit grayscale"),
    "rgb": lambda p, good: (imagecodecs.png_encode(np.full((SIZE, SIZE, 3), 9, np.uint8)), "got 96x96 8-bit RGB"),
    "enormous-header": lambda p, good: (hostile_png(100_000, 100_000), "image is 100000x100000, expected 96x96"),
}


@pytest.mark.parametrize("fault", sorted(SITE_FAULTS))
def test_bad_image_fail_then_skip_then_fix_and_resume(
    fault: str, src: Path, good_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = site_ids(src)
    bad_site = sites[0] if fault in ("wrong-size", "enormous-header") else sites[4]  # first: size is a majority vote
    victim = image(src, bad_site, 3)
    good = victim.read_bytes()
    data, what = SITE_FAULTS[fault](victim, good)
    victim.write_bytes(data)
    source = digest(src)

    decoded: list[tuple[int, ...]] = []
    real_decode = imagecodecs.png_decode

    def spy(buffer: bytes, *args: Any, **kwargs: Any) -> Any:
        width, height = struct.unpack(">II", bytes(buffer[16:24]))
        assert width <= SIZE and height <= SIZE, "a PNG was decoded without checking its header first"
        decoded.append((width, height))
        return real_decode(buffer, *args, **kwargs)

    monkeypatch.setattr(imagecodecs, "png_decode", spy)

    # --on-error fail (the default): stops at the bad site, names the file, keeps what was done, resumable
    failed = tmp_path / "fail.zarr"
    with pytest.raises(ImageError) as info:
        convert(str(src), str(failed), options(workers=1))
    assert rel(victim, src) in str(info.value) and what in str(info.value)
    assert "--resume" in str(info.value)
    done = {m.parent.relative_to(failed).as_posix() for m in markers(failed)}
    assert done == {site_group(s) for s in sites[: sites.index(bad_site)]}  # the sites before it, no more
    assert root_attrs(failed)["complete"] is False
    assert not (failed / LOCK).exists()
    assert not (failed / site_group(bad_site) / "0/c/0/0/0").exists()

    # --on-error skip: the rest is converted; the skip is recorded in the report and the store; verify passes
    skipped = tmp_path / "skip.zarr"
    report = convert(str(src), str(skipped), options(on_error="skip", workers=2))
    assert [s.site_id for s in report.skipped] == [bad_site]
    assert rel(victim, src) in report.skipped[0].reason and what in report.skipped[0].reason
    assert root_attrs(skipped)["skipped"] == [{"site_id": bad_site, "reason": report.skipped[0].reason}]
    index = zarr.open_group(str(skipped), path="index", mode="r")
    assert bad_site not in list(np.asarray(index["site_id"][:])) and index["site_id"].shape == (len(sites) - 1,)
    well = json.loads((skipped / site_group(bad_site)).parent.joinpath("zarr.json").read_text())["attributes"]
    assert bad_site.rsplit("_", 1)[1] not in [i["path"] for i in well["ome"]["well"]["images"]]
    assert not (skipped / site_group(bad_site)).joinpath("0/zarr.json").exists()
    result = verify(str(src), str(skipped))
    assert result.ok, result.problems
    assert digest(src) == source

    # fix the source: --resume completes the failed store; it equals a clean conversion
    victim.write_bytes(good)
    resumed = convert(str(src), str(failed), options(resume=True, workers=2))
    assert resumed.resumed_skipped == len(done) and resumed.converted == len(sites) - len(done)
    assert_same_store(failed, good_store, same_source_path=False)  # a clean conversion of the same tree with the same options
    # and so does --resume of the store that skipped the site (its groups list the site again)
    convert(str(src), str(skipped), options(resume=True))
    assert_same_store(skipped, good_store, same_source_path=False)
    assert decoded and all(w <= SIZE and h <= SIZE for w, h in decoded)


def test_enormous_header_is_refused_before_allocation() -> None:
    with pytest.raises(ImageError, match="100000x100000"):
        decode_png(hostile_png(100_000, 100_000), "x.png", (SIZE, SIZE))
    # even when the size is not known yet, the header is bounded before anything is allocated from it
    with pytest.raises(ImageError, match="refusing anything outside"):
        decode_png(hostile_png(100_000, 100_000), "x.png", None)


def test_hostile_headers_cannot_set_the_size(src: Path) -> None:
    sites = site_ids(src)
    for site in sites[:3]:
        image(src, site, 1).write_bytes(hostile_png(16_000, 16_000))
    assert make_plan(str(src), on_error="skip").size == (SIZE, SIZE)  # outvoted by the other sites
    for site in sites:
        image(src, site, 1).write_bytes(hostile_png(100_000, 100_000))
    with pytest.raises(ImageError, match="refusing anything outside"):
        make_plan(str(src))


def test_extra_files_are_ignored_and_counted(src: Path, tmp_path: Path) -> None:
    plate = next((src / "images/HUVEC-1").iterdir())
    (plate / "notes.txt").write_text("scanner log")
    (plate / "B02_s1_w7.png").write_bytes(b"not a channel of RxRx2")
    (src / "images/.DS_Store").write_bytes(b"\0")
    (src / "images/HUVEC-1/thumbs").mkdir()
    (src / "images/HUVEC-1/thumbs/B02_s1_w1.png").write_bytes(b"thumbnail")
    source = digest(src)
    report = convert(str(src), str(tmp_path / "out.zarr"), options())
    assert report.extra_files == 4 and "ignored 4 files" in report.summary()
    assert not report.skipped
    assert verify(str(src), str(tmp_path / "out.zarr")).ok
    assert digest(src) == source


def test_skip_mode_lists_every_skip_and_drops_emptied_groups(src: Path, tmp_path: Path) -> None:
    sites = site_ids(src)
    # a whole well lost (both sites: one missing a file, one corrupt), and one more site elsewhere
    image(src, sites[0], 2).unlink()
    image(src, sites[1], 5).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    image(src, sites[6], 1).write_bytes(imagecodecs.png_encode(np.zeros((SIZE, SIZE, 3), np.uint8)))
    dst = tmp_path / "skip.zarr"
    report = convert(str(src), str(dst), options(on_error="skip"))
    assert sorted(s.site_id for s in report.skipped) == sorted([sites[0], sites[1], sites[6]])
    assert {s["site_id"] for s in root_attrs(dst)["skipped"]} == {sites[0], sites[1], sites[6]}
    assert root_attrs(dst)["counts"]["sites"] == len(sites) - 3
    well = Path(site_group(sites[0])).parent.as_posix()
    assert not (dst / well / "zarr.json").exists()  # a well without sites is gone
    plate = json.loads((dst / Path(well).parent.parent / "zarr.json").read_text())["attributes"]
    assert well.split("/", 2)[2] not in [w["path"] for w in plate["ome"]["plate"]["wells"]]
    result = verify(str(src), str(dst))
    assert result.ok, result.problems


# --- destination safety -------------------------------------------------------------------------------------------


def test_existing_destination_untouched_without_flags(src: Path, existing: Path) -> None:
    before = snapshot(existing)
    with pytest.raises(StoreExistsError, match=r"--overwrite .* or --resume"):
        convert(str(src), str(existing), options())
    assert snapshot(existing) == before and not (existing / LOCK).exists()


@pytest.mark.parametrize(
    "changed",
    [{"profile": "zstd"}, {"inner_chunks": (16, 16)}, {"limit": 3}, {"plates": (1,)}, {"experiments": ("HUVEC-1",)}, {"no_pixels": True}, {"pixel_size": 0.5}],
)
def test_resume_refuses_different_output_options(changed: dict[str, Any], src: Path, existing: Path) -> None:
    before = snapshot(existing)
    with pytest.raises(StoreExistsError, match="different source or with different options") as info:
        convert(str(src), str(existing), options(resume=True, **changed))
    (name,) = changed
    group = "subset" if name in ("limit", "plates", "experiments") else "options"
    assert f"{group}.{name}: store " in str(info.value)  # the message says what differs
    assert snapshot(existing) == before and not (existing / LOCK).exists()


def test_resume_refuses_a_different_source(src: Path, existing: Path) -> None:
    def rename_treatment(rows: list[list[str]]) -> None:
        for row in rows[1:]:
            if row[1] == rows[1][1]:  # every site of the first row's well: still consistent, but another source
                row[7] += "-renamed"

    edit_csv(src / "metadata.csv", rename_treatment)
    before = snapshot(existing)
    with pytest.raises(StoreExistsError, match=r"different source.*metadata_sha256"):
        convert(str(src), str(existing), options(resume=True))
    assert snapshot(existing) == before


def test_resume_ignores_run_settings_and_rewrites_nothing(src: Path, existing: Path) -> None:
    before = snapshot(existing)
    report = convert(str(src), str(existing), options(resume=True, workers=2, progress=True, on_error="skip"))
    assert report.resumed_skipped == len(site_ids(src)) and report.converted == 0
    assert "already complete, not rewritten" in report.summary()
    after = snapshot(existing)
    site_objects = [f"{site_group(s)}/{o}" for s in site_ids(src) for o in ("zarr.json", "0/zarr.json", "0/c/0/0/0")]
    for name in site_objects:  # markers, array documents, shards
        assert after[name] == before[name], name


def test_resume_of_a_missing_destination_simply_starts(src: Path, tmp_path: Path) -> None:
    report = convert(str(src), str(tmp_path / "new.zarr"), options(resume=True))
    assert report.resumed_skipped == 0 and report.converted == len(site_ids(src))
    assert verify(str(src), str(tmp_path / "new.zarr")).ok


def test_overwrite_replaces_the_store(src: Path, existing: Path, tmp_path: Path) -> None:
    (existing / "HUVEC-1/stray-object").write_bytes(b"left over")
    convert(str(src), str(existing), options(overwrite=True, profile="zstd"))
    clean = tmp_path / "clean.zarr"
    convert(str(src), str(clean), options(profile="zstd"))
    assert_same_store(existing, clean)


def test_refuses_foreign_directories_and_files(src: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    before = snapshot(foreign)
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(StoreExistsError):
            convert(str(src), str(foreign), options(**flags))
    assert snapshot(foreign) == before
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(StoreExistsError, match="is a file"):
            convert(str(src), str(a_file), options(**flags))
    assert a_file.read_text() == "x"


def test_destination_inside_or_around_the_source_is_refused(src: Path) -> None:
    source = digest(src)
    for dst, flags in ((src / "out.zarr", {}), (src, {"overwrite": True}), (src.parent, {"overwrite": True})):
        with pytest.raises(StoreExistsError, match="overlaps the source"):
            convert(str(src), str(dst), options(**flags))
    assert digest(src) == source and not (src / "out.zarr").exists()


# --- the lock -------------------------------------------------------------------------------------------------------


def write_lock(store: Path, host: str, pid: int) -> dict[str, Any]:
    lock = {"host": host, "pid": pid, "since": "2024-01-02T03:04:05+00:00", "token": "feedface"}
    store.mkdir(parents=True, exist_ok=True)
    (store / LOCK).write_text(json.dumps(lock))
    return lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_converter_holds_the_lock(src: Path, existing: Path, lock_holder: Callable[[Path], subprocess.Popen[str]]) -> None:
    holder = lock_holder(existing)
    held = json.loads((existing / LOCK).read_text())
    before = snapshot(existing)
    for flags in ({}, {"resume": True}, {"overwrite": True}, {"resume": True, "break_lock": True}):
        with pytest.raises(StoreLockedError) as info:
            convert(str(src), str(existing), options(**flags))
        message = str(info.value)
        assert f"process {holder.pid}" in message and repr(HOST) in message and held["since"] in message, message
    assert snapshot(existing) == before


def test_dead_process_lock_is_taken_over_by_resume_only(src: Path, existing: Path) -> None:
    (existing / "zarr.json").write_text(
        json.dumps({**json.loads((existing / "zarr.json").read_text())} | {"attributes": {"rxrx2": root_attrs(existing) | {"complete": False}}})
    )
    lock = write_lock(existing, HOST, dead_pid())
    before = snapshot(existing)
    with pytest.raises(StoreLockedError, match=rf"process {lock['pid']} on host .* no longer running; rerun with --resume"):
        convert(str(src), str(existing), options())
    assert snapshot(existing) == before
    report = convert(str(src), str(existing), options(resume=True))
    assert report.resumed_skipped == len(site_ids(src))
    assert not (existing / LOCK).exists() and root_attrs(existing)["complete"] is True
    assert verify(str(src), str(existing)).ok


def test_lock_from_another_host_needs_break_lock(src: Path, existing: Path) -> None:
    write_lock(existing, "elsewhere.example.org", os.getpid())
    before = snapshot(existing)
    for flags in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(StoreLockedError) as info:
            convert(str(src), str(existing), options(**flags))
        assert "'elsewhere.example.org'" in str(info.value) and f"process {os.getpid()}" in str(info.value)
        assert "2024-01-02T03:04:05+00:00" in str(info.value) and "--break-lock" in str(info.value)
    assert snapshot(existing) == before
    convert(str(src), str(existing), options(resume=True, break_lock=True))
    assert not (existing / LOCK).exists()
    assert verify(str(src), str(existing)).ok


def test_unreadable_lock_needs_break_lock(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "torn.zarr"
    dst.mkdir()
    (dst / LOCK).write_bytes(b"")
    with pytest.raises(StoreLockedError, match=r"unreadable.*--break-lock"):
        convert(str(src), str(dst), options(resume=True))
    convert(str(src), str(dst), options(resume=True, break_lock=True))
    assert verify(str(src), str(dst)).ok


def test_reused_pid_does_not_keep_a_lock_alive(src: Path, existing: Path) -> None:
    """After a reboot the lock's PID may belong to an unrelated process: it started after the lock was written."""
    write_lock(existing, HOST, os.getpid())  # this process is alive, but started long after 2024
    convert(str(src), str(existing), options(resume=True))
    assert not (existing / LOCK).exists()


def test_a_broken_lock_stops_the_converter_before_finalizing(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rxrx2_zarr._convert as convert_module

    dst = tmp_path / "broken.zarr"
    real_run = convert_module.run_tasks

    def run_then_lose_lock(*args: Any, **kwargs: Any) -> None:
        real_run(*args, **kwargs)
        write_lock(dst, "thief.example.org", 4242)  # someone ran --break-lock meanwhile

    monkeypatch.setattr(convert_module, "run_tasks", run_then_lose_lock)
    with pytest.raises(StoreLockedError, match=r"taken over while it ran.*thief\.example\.org"):
        convert(str(src), str(dst), options())
    assert root_attrs(dst)["complete"] is False
    assert json.loads((dst / LOCK).read_text())["host"] == "thief.example.org"  # not released: it is not ours


def test_takeover_backs_off_when_the_lock_changed(tmp_path: Path) -> None:
    store = StoreIO(str(tmp_path / "s"))
    write_lock(tmp_path / "s", HOST, dead_pid())
    stale = _lock.read_lock(store)
    assert stale is not None
    newer = write_lock(tmp_path / "s", HOST, os.getpid()) | {"token": "newer"}
    (tmp_path / "s" / LOCK).write_text(json.dumps(newer))  # another converter took over between read and rename
    mine = _lock.Lock(HOST, os.getpid(), datetime.now(UTC).isoformat(), "mine")
    assert _lock._take_over(store, stale, mine) is False
    assert json.loads((tmp_path / "s" / LOCK).read_text())["token"] == "newer"  # put back untouched
    assert [p.name for p in (tmp_path / "s").iterdir()] == [LOCK]


# --- resume -----------------------------------------------------------------------------------------------------------


def test_site_interrupted_mid_write_is_redone(src: Path, existing: Path, tmp_path: Path) -> None:
    sites = site_ids(src)
    group = existing / site_group(sites[3])
    (group / "zarr.json").unlink()  # killed between the shard and its marker...
    other = existing / site_group(sites[5]) / "0/c/0/0/0"
    (group / "0/c/0/0/0").write_bytes(other.read_bytes())  # ...with a shard that is not this site's
    (group / "0/c/0/0/0.0123abcd.partial").write_bytes(b"half a shard")  # and a temporary file of a torn write
    root = json.loads((existing / "zarr.json").read_text())
    root["attributes"]["rxrx2"]["complete"] = False
    (existing / "zarr.json").write_text(json.dumps(root))
    before = snapshot(existing)
    report = convert(str(src), str(existing), options(resume=True))
    assert report.resumed_skipped == len(sites) - 1 and report.converted == 1
    after = snapshot(existing)
    assert after[f"{site_group(sites[3])}/0/c/0/0/0"] != before[f"{site_group(sites[3])}/0/c/0/0/0"]
    for site in sites[:3] + sites[4:]:
        assert after[f"{site_group(site)}/0/c/0/0/0"] == before[f"{site_group(site)}/0/c/0/0/0"]
        assert after[f"{site_group(site)}/zarr.json"] == before[f"{site_group(site)}/zarr.json"]
    clean = tmp_path / "clean.zarr"
    convert(str(src), str(clean), options())
    assert_same_store(existing, clean)


def test_marker_with_a_wrong_checksum_type_or_site_is_redone(src: Path, existing: Path) -> None:
    sites = site_ids(src)
    doc_path = existing / site_group(sites[2]) / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["attributes"]["rxrx2"]["site_id"] = sites[1]
    doc_path.write_text(json.dumps(doc))
    report = convert(str(src), str(existing), options(resume=True))
    assert report.converted == 1
    assert verify(str(src), str(existing)).ok


class Crash(BaseException):
    """Stands in for kill -9 at a precise point (a BaseException: nothing in the package may swallow it)."""


def _crash_on_call(number: int, real: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == number:
            raise Crash
        return real(*args, **kwargs)

    return wrapper


def _crash_mid_write_many(store: StoreIO, items: Any) -> None:
    keys = list(items)
    for key in keys[: len(keys) // 2]:
        store.write(key, items[key])
    raise Crash


CRASH_POINTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "after the root document": lambda mp: mp.setattr(convert_module, "static_documents", _crash_on_call(1, convert_module.static_documents)),
    "halfway through the bulk documents": lambda mp: mp.setattr(StoreIO, "write_many", _crash_mid_write_many),
    "between a shard and its marker": lambda mp: mp.setattr(convert_module, "site_document", _crash_on_call(4, convert_module.site_document)),
    "after the index, before the embeddings": lambda mp: mp.setattr(zarr, "create_array", _crash_on_call(1, zarr.create_array)),
    "before the final root document": lambda mp: mp.setattr(convert_module, "_write_root", _crash_on_call(2, convert_module._write_root)),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_at_precise_points_then_resume(point: str, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "crashed.zarr"
    with monkeypatch.context() as patch:
        CRASH_POINTS[point](patch)
        with pytest.raises(Crash):
            convert(str(src), str(dst), options(workers=1))
    write_lock(dst, HOST, dead_pid())  # a killed converter leaves its lock behind (this one released it)
    assert root_attrs(dst)["complete"] is False
    convert(str(src), str(dst), options(resume=True))
    clean = tmp_path / "clean.zarr"
    convert(str(src), str(clean), options())
    assert_same_store(dst, clean)
    assert verify(str(src), str(dst)).ok


@pytest.fixture(scope="module")
def kill_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 2 plates x 4 wells x up to 4 sites: a few dozen sites."""
    out = tmp_path_factory.mktemp("kill") / "rxrx2"
    synth(str(out), experiments=1, plates=2, wells=4, sites=4, size=SIZE, embedding_dim=4, seed=5)
    return out


def test_kill_9_at_several_points_then_resume(kill_tree: Path, tmp_path: Path) -> None:
    """A real converter process is killed with SIGKILL at points chosen by its progress; --resume completes the
    store, which then verifies and equals a clean conversion, and no site finished before a kill is rewritten."""
    src, dst = kill_tree, tmp_path / "killed.zarr"
    source = digest(src)
    total = len(site_ids(src))
    assert total >= 24
    flags = ["--inner-chunks", "48,48", "--quiet"]
    finished: dict[str, tuple[int, int, int] | None] = {}  # objects of sites complete at some kill
    points: list[tuple[str, Callable[[], bool]]] = [
        ("lock taken", lambda: (dst / LOCK).exists()),
        ("3 sites", lambda: len(markers(dst)) >= 3),
        ("half the sites", lambda: len(markers(dst)) >= total // 2),
        ("all but 6 sites", lambda: len(markers(dst)) >= total - 6),
    ]
    for number, (label, reached) in enumerate(points):
        log = tmp_path / f"run{number}.log"
        command = [sys.executable, "-m", "rxrx2_zarr.cli", "convert", str(src), str(dst), "--workers", "2", *flags]
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [*command, *(["--resume"] if number else [])],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=_env(),
                preexec_fn=lambda: os.nice(10),  # on a busy machine, the poller must see each kill point in time
            )
        try:
            deadline = time.monotonic() + 60
            while not reached():
                assert proc.poll() is None, f"converter exited ({proc.returncode}) before '{label}': {log.read_text()}"
                assert time.monotonic() < deadline, f"'{label}' not reached in 60 s"
                time.sleep(0.005)
            if label == "3 sites":
                # Freeze the converter mid-run: a second converter is refused, naming it.
                proc.send_signal(signal.SIGSTOP)
                held = json.loads((dst / LOCK).read_text())
                assert held["pid"] == proc.pid and held["host"] == HOST
                for extra in ({"resume": True}, {}):
                    with pytest.raises(StoreLockedError) as info:
                        convert(str(src), str(dst), options(inner_chunks=(48, 48), **extra))
                    assert f"process {proc.pid} on host {HOST!r} since {held['since']}" in str(info.value)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, label
        state = snapshot(dst)
        for marker in markers(dst):
            group = marker.parent.relative_to(dst).as_posix()
            for name in (f"{group}/zarr.json", f"{group}/0/zarr.json", f"{group}/0/c/0/0/0"):
                finished.setdefault(name, state[name])
    assert verify(str(src), str(dst)).problems == ["store is incomplete (conversion did not finish): run convert --resume"]
    complete_before = len(markers(dst))
    assert 0 < complete_before < total

    report = convert(str(src), str(dst), options(inner_chunks=(48, 48), resume=True, workers=1))
    assert report.resumed_skipped == complete_before and report.converted == total - complete_before
    assert f"resume: {complete_before} site{'s' * (complete_before != 1)} already complete, not rewritten" in report.summary()
    after = snapshot(dst)
    rewritten = [name for name, stat in finished.items() if after.get(name) != stat]
    assert not rewritten, f"sites finished before a kill were rewritten: {rewritten[:5]}"
    result = verify(str(src), str(dst))
    assert result.ok, result.problems
    clean = tmp_path / "clean.zarr"
    convert(str(src), str(clean), options(inner_chunks=(48, 48), workers=2))
    assert_same_store(dst, clean)
    assert digest(src) == source
    checksums = np.asarray(zarr.open_group(str(dst), path="index", mode="r")["checksum"][:])
    for path, checksum in zip(np.asarray(zarr.open_group(str(dst), path="index", mode="r")["path"][:]), checksums, strict=True):
        assert crc32c.crc32c(np.ascontiguousarray(zarr.open_array(str(dst), path=str(path), mode="r")[:]).tobytes()) == checksum
