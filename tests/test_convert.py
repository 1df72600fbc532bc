"""The converter's output: layout, attributes, index, embeddings, codec profiles, NGFF validity, options, CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import crc32c
import imagecodecs
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from rxrx2_zarr import StoreExistsError, synth
from rxrx2_zarr import open as open_store
from rxrx2_zarr._codec_table import ALLOWED_CODECS, CODECS, CORE_READERS, Codec
from rxrx2_zarr._convert import ConvertOptions, convert
from rxrx2_zarr._layout import PROFILES, CodecProfile
from rxrx2_zarr._paths import GRID_ROWS
from rxrx2_zarr._verify import verify
from rxrx2_zarr.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # zarr: numcodecs codecs are not core v3 codecs
    pytest.mark.filterwarnings("ignore::Warning:pydantic"),  # ome-zarr-models: plate 'version' defaulted
]

SIZE = 96
REPO = Path(__file__).resolve().parents[1]
INDEX_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "plate", "well", "site", "treatment", "treatment_conc", "path", "checksum")


def read_index(store: Path) -> pd.DataFrame:
    group = zarr.open_group(str(store), path="index", mode="r")
    return pd.DataFrame({name: np.asarray(group[name][:]) for name in INDEX_COLUMNS})


def attrs(store: Path, key: str) -> dict:
    return json.loads((store / key / "zarr.json").read_text())["attributes"]


def png_pixels(src: Path, site_id: str) -> np.ndarray:
    """A site's six channels decoded with Pillow (independent of the package's PNG path)."""
    experiment, plate, well, site = site_id.split("_")
    return np.stack(
        [np.asarray(Image.open(src / f"images/{experiment}/Plate{plate}/{well}_s{site}_w{c}.png")) for c in range(1, 7)]
    )


def expected_order(metadata: pd.DataFrame) -> pd.DataFrame:
    """The documented index order (experiment, plate, well row, well column, site), computed independently."""
    rows = {name: i for i, name in enumerate(GRID_ROWS)}
    keyed = metadata.assign(
        _row=[rows[w.rstrip("0123456789")] for w in metadata["well"]], _col=[int(w[-2:]) for w in metadata["well"]]
    )
    return keyed.sort_values(["experiment", "plate", "_row", "_col", "site"]).reset_index(drop=True)


def small_options(**kwargs: object) -> ConvertOptions:
    return ConvertOptions(inner_chunks=(32, 32), progress=False, **kwargs)  # type: ignore[arg-type]


# --- layout and attributes of the session store (source_tree converted with the default profile) -------------


def test_layout_one_shard_object_per_site(store: Path) -> None:
    index = read_index(store)
    assert len(index) > 0
    for path in index["path"]:
        array = zarr.open_array(str(store), path=path, mode="r")
        assert array.shape == (6, SIZE, SIZE)
        assert array.dtype == np.uint8
        assert array.metadata.dimension_names == ("c", "y", "x")
        assert array.shards == (6, SIZE, SIZE)
        assert array.chunks == (1, 32, 32)
        _experiment, plate, row, column, site, level = path.split("/")
        assert (plate.startswith("Plate"), level, row.isalpha(), column.isdigit(), site.isdigit()) == (True, "0", True, True, True)
        objects = sorted(str(p.relative_to(store / path)) for p in (store / path).rglob("*") if p.is_file())
        assert objects == ["c/0/0/0", "zarr.json"], path


def test_attributes_on_every_level(store: Path, source_tree: Path) -> None:
    index = read_index(store)
    root = attrs(store, ".")["rxrx2"]
    assert root["format"] == "rxrx2-zarr" and root["complete"] is True and root["pixels"] is True
    assert root["counts"]["sites"] == len(index)
    assert root["counts"]["plates"] == 4 and root["counts"]["experiments"] == 2
    assert root["skipped"] == [] and root["checksum"] == "crc32c"
    assert root["options"]["inner_chunks"] == [32, 32] and root["options"]["profile"] == "standard"
    for experiment, rows in index.groupby("experiment"):
        exp = attrs(store, experiment)["rxrx2"]
        assert exp["experiment"] == experiment and exp["cell_type"] == "HUVEC" and exp["counts"]["sites"] == len(rows)
        for plate, plate_rows in rows.groupby("plate"):
            plate_attrs = attrs(store, f"{experiment}/Plate{plate}")
            assert plate_attrs["rxrx2"]["plate"] == plate and plate_attrs["rxrx2"]["counts"]["sites"] == len(plate_rows)
            assert len(plate_attrs["ome"]["plate"]["wells"]) == plate_rows["well"].nunique()
    for (well_id, path), rows in index.groupby(["well_id", index["path"].str.rsplit("/", n=2).str[0]]):
        well = attrs(store, path)
        assert well["rxrx2"]["well_id"] == well_id and well["rxrx2"]["sites"] == len(rows)
        assert [i["path"] for i in well["ome"]["well"]["images"]] == [str(s) for s in sorted(rows["site"])]
    for site_id, path, checksum in zip(index["site_id"], index["path"], index["checksum"], strict=True):
        site = attrs(store, path.rsplit("/", 1)[0])
        pixels = np.asarray(zarr.open_array(str(store), path=path, mode="r")[:])
        np.testing.assert_array_equal(pixels, png_pixels(source_tree, site_id))
        assert site["rxrx2"]["site_id"] == site_id
        assert site["rxrx2"]["checksum"] == crc32c.crc32c(pixels.tobytes()) == int(checksum)
        assert site["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"


def test_index_equals_metadata_in_documented_order(store: Path, source_tree: Path) -> None:
    metadata = pd.read_csv(source_tree / "metadata.csv", keep_default_na=False, dtype=str)
    metadata["plate"] = metadata["plate"].astype(int)
    metadata["site"] = metadata["site"].astype(int)
    expected = expected_order(metadata)
    index = read_index(store)
    for column in ("site_id", "well_id", "cell_type", "experiment", "plate", "well", "site", "treatment"):
        assert list(index[column]) == list(expected[column]), column
    conc = [math.nan if v == "" else float(v) for v in expected["treatment_conc"]]
    np.testing.assert_array_equal(index["treatment_conc"].to_numpy(), np.array(conc))
    paths = [
        f"{e}/Plate{p}/{w.rstrip('0123456789')}/{w[-2:]}/{s}/0"
        for e, p, w, s in zip(expected["experiment"], expected["plate"], expected["well"], expected["site"], strict=True)
    ]
    assert list(index["path"]) == paths


def test_embeddings_equal_csv(store: Path, source_tree: Path) -> None:
    csv = pd.read_csv(source_tree / "embeddings.csv").set_index("site_id")
    index = read_index(store)
    stored = np.asarray(zarr.open_array(str(store), path="embeddings", mode="r")[:])
    np.testing.assert_array_equal(stored, csv.loc[index["site_id"]].to_numpy(dtype=np.float32))
    assert attrs(store, "embeddings")["rxrx2"]["features"] == list(csv.columns)


def test_missing_embeddings_are_nan_rows_and_counted(source_tree: Path, copy_tree: Callable[[Path], Path], tmp_path: Path) -> None:
    src = copy_tree(source_tree)
    lines = (src / "embeddings.csv").read_text().splitlines()
    gone = [line.split(",", 1)[0] for line in lines[1:4]]
    (src / "embeddings.csv").write_text("\n".join([lines[0], *lines[4:]]) + "\n")
    report = convert(str(src), str(tmp_path / "out.zarr"), small_options(limit=12))
    index = read_index(tmp_path / "out.zarr")
    stored = np.asarray(zarr.open_array(str(tmp_path / "out.zarr"), path="embeddings", mode="r")[:])
    missing = [s in gone for s in index["site_id"]]
    assert np.isnan(stored[missing]).all() and not np.isnan(stored[[not m for m in missing]]).any()
    assert report.embeddings_missing == sum(missing) > 0
    assert attrs(tmp_path / "out.zarr", ".")["rxrx2"]["counts"]["embeddings_missing"] == sum(missing)
    assert attrs(tmp_path / "out.zarr", "embeddings")["rxrx2"]["missing_rows"] == sum(missing)
    assert verify(str(src), str(tmp_path / "out.zarr")).ok


# --- profiles, readers, NGFF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_round_trips_through_plain_zarr(profile: str, source_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{profile}.zarr"
    convert(str(source_tree), str(out), ConvertOptions(profile=profile, inner_chunks=(40, 40), limit=5, progress=False))
    index = read_index(out)
    assert len(index) == 5
    for site_id, path in zip(index["site_id"], index["path"], strict=True):
        np.testing.assert_array_equal(zarr.open_array(str(out), path=path, mode="r")[:], png_pixels(source_tree, site_id))
    assert attrs(out, ".")["rxrx2"]["options"]["profile"] == profile
    report = verify(str(source_tree), str(out))
    assert report.ok, report.problems


class _Gzip(Codec):
    """A codec the package does not have: Zarr v3's core ``gzip``, as a test would add it to the table."""

    name = "gzip"
    zarr_names = ("bytes", "gzip")
    core = True
    readers = CORE_READERS
    levels = range(0, 10)

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[dict]:
        return [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "gzip", "configuration": {"level": profile.level}}]

    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        self.level = int(configs[1]["level"])

    def encode(self, chunk: np.ndarray) -> bytes:
        return gzip.compress(chunk.tobytes(), compresslevel=self.level, mtime=0)

    def decode_into(self, data: bytes | memoryview, out: np.ndarray, what: str) -> None:
        out[:] = np.frombuffer(gzip.decompress(bytes(data)), dtype=np.uint8)


def test_a_codec_added_to_the_table_is_a_working_profile(source_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One table entry (and a profile naming it) is all a new codec takes: the chain JSON, the reader's allowlist,
    chain parsing, encoding and decoding follow. zarr-python, which knows gzip on its own, reads what was written."""
    monkeypatch.setitem(CODECS, _Gzip.name, _Gzip)
    monkeypatch.setitem(PROFILES, "gz", CodecProfile("gz", "gzip level 6 (test)", "gzip", 6))  # type: ignore[index]
    assert "gzip" in ALLOWED_CODECS and PROFILES["gz"].standard
    out = tmp_path / "gz.zarr"
    convert(str(source_tree), str(out), ConvertOptions(profile="gz", inner_chunks=(40, 40), limit=3, progress=False))
    root = attrs(out, ".")["rxrx2"]  # the root records the profile and who reads it
    assert root["options"]["profile"] == "gz" and root["readers"] == CORE_READERS
    dataset = open_store(str(out))
    for site_id, path in zip(dataset.sites["site_id"], read_index(out)["path"], strict=True):
        chain = json.loads((out / path / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
        assert [c["name"] for c in chain] == ["bytes", "gzip", "crc32c"]
        expected = png_pixels(source_tree, site_id)
        np.testing.assert_array_equal(zarr.open_array(str(out), path=path, mode="r")[:], expected)
        np.testing.assert_array_equal(dataset.read(site_id)[0], expected)
        np.testing.assert_array_equal(dataset.read(site_id, region=(5, 50, 30, 90))[0], expected[:, 5:50, 30:90])
    report = verify(str(source_tree), str(out))
    assert report.ok, report.problems


def test_plates_validate_and_open_with_ome_zarr(store: Path) -> None:
    import ome_zarr.io
    import ome_zarr.reader
    from ome_zarr_models.v05.hcs import HCS

    index = read_index(store)
    for (experiment, plate), rows in index.groupby(["experiment", "plate"]):
        key = f"{experiment}/Plate{plate}"
        hcs = HCS.from_zarr(zarr.open_group(str(store), path=key, mode="r"))
        assert len(hcs.attributes.ome.plate.wells) == rows["well"].nunique()
    # ome-zarr-py lays a plate out as one (lazy) image of the whole 32 x 48 grid: open one, it is slow to build
    nodes = list(ome_zarr.reader.Reader(ome_zarr.io.parse_url(str(store / "HUVEC-1/Plate1")))())
    assert nodes and nodes[0].data[0].shape == (6, 32 * SIZE, 48 * SIZE)
    # one field through ome-zarr-py's image reader: its pixels are the stored ones
    path = index["path"].iloc[0]
    (node,) = list(ome_zarr.reader.Reader(ome_zarr.io.parse_url(str(store / path.rsplit("/", 1)[0])))())[:1]
    np.testing.assert_array_equal(np.asarray(node.data[0]), zarr.open_array(str(store), path=path, mode="r")[:])


def test_all_zero_site_writes_a_shard(source_tree: Path, copy_tree: Callable[[Path], Path], tmp_path: Path) -> None:
    src = copy_tree(source_tree)
    out = tmp_path / "zero.zarr"
    first = sorted((src / "images/HUVEC-1/Plate1").glob("*_w1.png"))[0].name.split("_w")[0]
    for channel in range(1, 7):
        (src / f"images/HUVEC-1/Plate1/{first}_w{channel}.png").write_bytes(imagecodecs.png_encode(np.zeros((SIZE, SIZE), np.uint8)))
    convert(str(src), str(out), small_options(limit=3))
    index = read_index(out)
    site_id = f"HUVEC-1_1_{first.split('_s')[0]}_{first.split('_s')[1]}"
    path = index.loc[index["site_id"] == site_id, "path"].item()
    assert (out / path / "c/0/0/0").is_file()
    assert not zarr.open_array(str(out), path=path, mode="r")[:].any()
    assert attrs(out, path.rsplit("/", 1)[0])["rxrx2"]["checksum"] == crc32c.crc32c(bytes(6 * SIZE * SIZE))


def test_no_pixels(source_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta.zarr"
    report = convert(str(source_tree), str(out), small_options(no_pixels=True))
    root = attrs(out, ".")["rxrx2"]
    assert root["pixels"] is False and root["complete"] is True
    index = read_index(out)
    assert all((out / path / "zarr.json").is_file() and not (out / path / "c").exists() for path in index["path"])
    assert report.converted == len(index) == root["counts"]["sites"]
    assert (index["checksum"] == 0).all()
    assert attrs(out, index["path"].iloc[0].rsplit("/", 1)[0])["rxrx2"]["checksum"] is None
    assert verify(str(source_tree), str(out)).ok


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({"experiments": ("HUVEC-2",)}, lambda i: set(i["experiment"]) == {"HUVEC-2"}),
        ({"plates": (2,)}, lambda i: set(i["plate"]) == {2} and set(i["experiment"]) == {"HUVEC-1", "HUVEC-2"}),
        ({"experiments": ("HUVEC-1",), "plates": (1,), "limit": 4}, lambda i: len(i) == 4 and set(i["well_id"].str[:9]) == {"HUVEC-1_1"}),
    ],
)
def test_subsets(options: dict, check: Callable[[pd.DataFrame], bool], source_tree: Path, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset.zarr"
    convert(str(source_tree), str(out), small_options(**options))
    index = read_index(out)
    assert check(index)
    full = read_index(store)
    # a subset is a slice of the full index, in the same order
    assert list(index["site_id"]) == [s for s in full["site_id"] if s in set(index["site_id"])]
    if "limit" in options:
        assert list(index["site_id"]) == list(full.loc[full["well_id"].str.startswith("HUVEC-1_1_"), "site_id"][:4])
    assert not (set(full["experiment"]) - set(index["experiment"])) or "experiments" in options
    assert verify(str(source_tree), str(out)).ok


def test_real_metadata_subset_converts_and_verifies(tmp_path: Path) -> None:
    src = tmp_path / "real"
    synth(str(src), from_metadata=str(REPO / "tests/data/rxrx2-metadata-subset.csv"), limit=40, size=64)
    out = tmp_path / "real.zarr"
    report = convert(str(src), str(out), ConvertOptions(inner_chunks=(32, 32), workers=2, progress=False))
    assert report.converted == 40 and not report.skipped
    index = read_index(out)
    metadata = pd.read_csv(src / "metadata.csv", keep_default_na=False, dtype=str)
    blank = set(metadata.loc[metadata["treatment_conc"] == "", "site_id"])
    conc = dict(zip(index["site_id"], index["treatment_conc"], strict=True))
    assert all(math.isnan(conc[s]) for s in blank)
    assert all(not math.isnan(v) for s, v in conc.items() if s not in blank)
    result = verify(str(src), str(out))
    assert result.ok, result.problems


# --- command line ---------------------------------------------------------------------------------------------------


def test_cli_exit_codes(source_tree: Path, copy_tree: Callable[[Path], Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "cli.zarr")
    base = ["convert", str(source_tree), out, "--limit", "3", "--inner-chunks", "32,32", "--quiet"]
    ok = runner.invoke(main, base)
    assert ok.exit_code == 0, ok.output
    assert "converted 3 of 3 sites" in ok.output
    exists = runner.invoke(main, base)
    assert exists.exit_code == 2 and "--overwrite" in exists.output
    both = runner.invoke(main, [*base, "--resume", "--overwrite"])
    assert both.exit_code == 2 and "mutually exclusive" in both.output
    resumed = runner.invoke(main, [*base, "--resume"])
    assert resumed.exit_code == 0 and "3 sites already complete" in resumed.output
    assert runner.invoke(main, ["verify", str(source_tree), out, "--quiet"]).exit_code == 0

    bad = copy_tree(source_tree)
    victim = sorted((bad / "images/HUVEC-1/Plate1").glob("*_w2.png"))[0]
    victim.write_bytes(b"not a png at all, just text long enough to pass the size check")
    failed = runner.invoke(main, ["convert", str(bad), str(tmp_path / "fail.zarr"), "--limit", "3", "--quiet"])
    assert failed.exit_code == 2 and victim.name in failed.output and "not a PNG" in failed.output
    skipped = runner.invoke(main, ["convert", str(bad), str(tmp_path / "skip.zarr"), "--limit", "3", "--quiet", "--on-error", "skip"])
    assert skipped.exit_code == 3 and "skipped 1 site:" in skipped.output and victim.name in skipped.output
    assert runner.invoke(main, ["verify", str(bad), str(tmp_path / "skip.zarr"), "--quiet"]).exit_code == 0

    # a tampered store fails verification with exit 1
    shard = next(Path(out).rglob("c/0/0/0"))
    shutil.copyfile(next(p for p in Path(out).rglob("c/0/0/0") if p != shard), shard)
    tampered = runner.invoke(main, ["verify", str(source_tree), out, "--quiet"])
    assert tampered.exit_code == 1


def test_existing_destination_is_refused_by_the_library_too(store: Path, source_tree: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    with pytest.raises(StoreExistsError, match="destination exists"):
        convert(str(source_tree), str(store), small_options())
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    assert not os.path.exists(store / ".rxrx2-zarr.lock")
