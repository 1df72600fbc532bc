"""Layout 2 as other tools see it (xarray, pandas on the columnar index) and `transcode` from older stores."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rxrx2_zarr import ConvertOptions, StoreFormatError, parse_site_id, verify
from rxrx2_zarr import open as open_store
from rxrx2_zarr._layout import (
    INDEX_COLUMNS,
    LAYOUT_VERSION,
    PROFILES,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    site_paths,
)
from rxrx2_zarr._transcode import transcode

LAYOUT1 = Path(__file__).parent / "data" / "layout1"


def test_columnar_index_opens_in_pandas(store: Path) -> None:
    """``index.parquet`` is plain Parquet: pandas reads the same table as ``open().sites`` (blank doses as NaN)."""
    frame = pd.read_parquet(store / "index.parquet")
    assert list(frame.columns) == list(INDEX_COLUMNS)
    sites = open_store(str(store)).sites
    assert frame["site_id"].tolist() == sites["site_id"].tolist()
    pd.testing.assert_series_equal(
        frame["treatment_conc"].astype("float64"), sites["treatment_conc"].reset_index(drop=True), check_names=False
    )
    assert frame.loc[frame["treatment"] == "EMPTY", "treatment_conc"].isna().all()
    assert (frame["checksum"] > 0).all() and (frame["shard_checksum"] > 0).all()


def test_xarray_opens_the_index_and_the_tree(store: Path) -> None:
    xr = pytest.importorskip("xarray")
    index = xr.open_zarr(str(store), group="index", consolidated=False)
    # the metadata column `site` (field number in the well) shares its name with the dimension: xarray makes it
    # the dimension's coordinate
    assert set(index.data_vars) | set(index.coords) == set(INDEX_COLUMNS)
    assert index.sizes == {"site": len(open_store(str(store)))}
    embeddings = xr.open_zarr(str(store), consolidated=False)["embeddings"]
    assert embeddings.dims == ("site", "feature")
    assert "embeddings" in xr.open_zarr(str(store), consolidated=False)
    tree = xr.open_datatree(str(store), group="index", engine="zarr", consolidated=False)
    assert set(tree.ds.data_vars) | set(tree.ds.coords) == set(INDEX_COLUMNS)
    # The whole tree opens with the thumbnail level dropped: NGFF 0.5 requires every multiscale level to carry the
    # axes' names (c, y, x), and xarray refuses two arrays of one group whose same-named dimensions differ in length
    # (levels 0 and 1). That holds for every OME-Zarr image with more than one level, so the README documents the
    # argument instead of bending the NGFF layout.
    with pytest.raises(ValueError, match="conflicting sizes for dimension"):
        xr.open_datatree(str(store), engine="zarr", consolidated=False)
    dataset = open_store(str(store))
    full = xr.open_datatree(str(store), engine="zarr", consolidated=False, drop_variables=[THUMBNAIL_LEVEL])
    thumbs = xr.open_datatree(str(store), engine="zarr", consolidated=False, drop_variables=["0"])
    assert full["embeddings"].dims == ("site", "feature")
    assert full["index"]["site_id"].size == len(dataset)
    for site_id in dataset.site_ids:
        node = "/" + site_paths(parse_site_id(site_id)).site
        np.testing.assert_array_equal(full[node]["0"].values, dataset.site(site_id))
        np.testing.assert_array_equal(thumbs[node][THUMBNAIL_LEVEL].values, dataset.thumbnails(site_id)[0])


def test_root_records_readers_and_levels(store: Path) -> None:
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]["rxrx2"]
    assert attrs["layout_version"] == LAYOUT_VERSION
    assert attrs["readers"] == PROFILES["standard"].readers and "any Zarr v3 reader" in attrs["readers"]
    assert attrs["levels"] == {"0": 1, "1": THUMBNAIL_FACTOR}
    first = open_store(str(store))._store.columns["path"][0].rsplit("/", 1)[0]
    multiscales = json.loads((store / first / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert [d["path"] for d in multiscales["datasets"]] == ["0", "1"]
    factor = float(THUMBNAIL_FACTOR)
    assert multiscales["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, factor, factor]
    assert multiscales["name"] == "HUVEC-1 plate 1"  # plate views in napari are named after the plate


def test_layout1_store_is_refused_with_transcode_named() -> None:
    with pytest.raises(StoreFormatError, match="rxrx2-zarr transcode"):
        open_store(str(LAYOUT1 / "balanced.zarr"))
    report = verify(str(LAYOUT1 / "src"), str(LAYOUT1 / "balanced.zarr"))
    assert not report.ok and "transcode" in report.problems[0]


def test_transcode_layout1_balanced_to_default(tmp_path: Path) -> None:
    """A pcodec store made by an earlier version becomes a default (core-codec) store that verifies against the
    source store and against the PNGs, without reading a PNG to make it."""
    source = tmp_path / "old.zarr"
    shutil.copytree(LAYOUT1 / "balanced.zarr", source)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    dst = tmp_path / "new.zarr"
    report = transcode(str(source), str(dst), ConvertOptions(progress=False, workers=2))
    assert report.converted == 4
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source is only read
    new = open_store(str(dst))
    assert new.spec.profile == "standard"
    for against in (str(source), str(LAYOUT1 / "src")):
        result = verify(against, str(dst))
        assert result.ok, result.summary()
        assert result.pixels_checked == 4
    assert new.embeddings is not None and new.embeddings.shape == (4, 4)
    assert new.embedding_features == tuple(f"feature_{i}" for i in range(4))


def test_transcode_between_profiles_and_back(store: Path, tmp_path: Path, source_tree: Path) -> None:
    compact = tmp_path / "compact.zarr"
    transcode(str(store), str(compact), ConvertOptions(profile="compact", progress=False, inner_chunks=(32, 32)))
    back = tmp_path / "back.zarr"
    transcode(str(compact), str(back), ConvertOptions(progress=False, inner_chunks=(32, 32), level=5))
    original, roundtrip = open_store(str(store)), open_store(str(back))
    ids = original.site_ids
    np.testing.assert_array_equal(original.read(ids), roundtrip.read(ids))
    assert roundtrip.attrs["options"]["level"] == 5
    assert verify(str(source_tree), str(back)).ok
    with pytest.raises(FileExistsError, match="destination exists"):
        transcode(str(compact), str(back), ConvertOptions(progress=False))


def test_transcode_resumes(store: Path, tmp_path: Path) -> None:
    """An interrupted transcode (here: two sites' markers removed, as a kill would leave them) resumes."""
    dst = tmp_path / "t.zarr"
    transcode(str(store), str(dst), ConvertOptions(progress=False, inner_chunks=(32, 32)))
    dataset = open_store(str(dst))
    groups = [dst / p.rsplit("/", 1)[0] / "zarr.json" for p in dataset._store.columns["path"][:2]]
    for group in groups:
        group.unlink()
    root = dst / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["rxrx2"]["complete"] = False
    root.write_text(json.dumps(doc))
    report = transcode(str(store), str(dst), ConvertOptions(progress=False, inner_chunks=(32, 32), resume=True))
    assert report.converted == 2 and report.resumed_skipped == len(dataset) - 2
    assert verify(str(store), str(dst)).ok


def test_verify_checks_thumbnails(store: Path, copy_tree: Callable[[Path], Path], source_tree: Path) -> None:
    """A thumbnail rewritten with valid codecs but wrong pixels is caught by verify (through zarr-python)."""
    import zarr

    copy = copy_tree(store)
    path = open_store(str(copy))._store.columns["path"][3].rsplit("/", 1)[0] + "/1"
    array = zarr.open_array(str(copy / path), mode="r+")
    array[0, 0, 0] = int(array[0, 0, 0]) ^ 1
    report = verify(str(source_tree), str(copy))
    assert not report.ok and any("thumbnail" in p for p in report.problems), report.summary()


def test_dry_run_estimates_and_writes_nothing(source_tree: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rxrx2_zarr.cli import main

    dst = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["convert", str(source_tree), str(dst), "--dry-run", "--profile", "zstd"])
    assert result.exit_code == 0, result.output
    assert "CPU-hours for the whole release (131,953 sites)" in result.output and "zstd, level 3" in result.output
    assert not dst.exists()


def test_transcode_and_verify_from_the_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rxrx2_zarr.cli import main

    dst = tmp_path / "cli.zarr"
    runner = CliRunner()
    result = runner.invoke(main, ["transcode", str(LAYOUT1 / "balanced.zarr"), str(dst), "--profile", "zstd", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "converted 4 of 4" in result.output
    checked = runner.invoke(main, ["verify", str(LAYOUT1 / "balanced.zarr"), str(dst), "--quiet"])
    assert checked.exit_code == 0 and "OK" in checked.output, checked.output
    info = runner.invoke(main, ["info", str(dst)])
    assert "any Zarr v3 reader" in info.output and "1 plate," in info.output


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _first_site(store: Path) -> Path:
    import pyarrow.parquet as pq

    return store / str(pq.read_table(store / "index.parquet").column("path")[0]).rsplit("/", 1)[0]


VERIFY_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "index array chunk flipped": (lambda s: _flip_middle(s / "index" / "plate" / "c" / "0"), "index arrays"),
    "index array document garbage": (lambda s: (s / "index" / "site_id" / "zarr.json").write_text("{"), "index arrays"),
    "columnar index missing": (lambda s: (s / "index.parquet").unlink(), "index.parquet: missing"),
    "embeddings chunk missing": (lambda s: (s / "embeddings" / "c" / "0" / "0").unlink(), "embeddings"),
    "shard data flipped": (lambda s: _flip_middle(_first_site(s) / "0" / "c" / "0" / "0" / "0"), "cannot read"),
    "shard index absurd": (
        lambda s: (_first_site(s) / "0" / "c" / "0" / "0" / "0").write_bytes(b"\xff" * 900), "cannot read"
    ),
    "thumbnail flipped": (lambda s: _flip_middle(_first_site(s) / "1" / "c" / "0" / "0" / "0"), "cannot read"),
    "site array codec unknown": (
        lambda s: (_first_site(s) / "0" / "zarr.json").write_text(
            (_first_site(s) / "0" / "zarr.json").read_text().replace('"zstd"', '"evil.codec"')
        ),
        "cannot read",
    ),
    "plate document garbage": (lambda s: (_first_site(s).parents[2] / "zarr.json").write_text("[]"), "plate"),
}


@pytest.mark.parametrize("kind", list(VERIFY_DAMAGE))
def test_verify_reports_damage_and_never_raises(
    store: Path, source_tree: Path, copy_tree: Callable[[Path], Path], kind: str
) -> None:
    """A tampered store ends verify with a report naming what is wrong, never with a traceback."""
    copy = copy_tree(store)
    damage, expected = VERIFY_DAMAGE[kind]
    damage(copy)
    report = verify(str(source_tree), str(copy))
    assert not report.ok
    assert expected in report.summary(), report.summary()


def test_verify_refuses_what_open_refuses(store: Path, source_tree: Path, copy_tree: Callable[[Path], Path]) -> None:
    """A chain zarr-python decodes but this library never writes (astype to uint16 before zstd): open() refuses it,
    and so does verify, naming open()."""
    copy = copy_tree(store)
    for doc_path in copy.rglob("0/zarr.json"):
        doc = json.loads(doc_path.read_text())
        if doc.get("node_type") == "array" and doc["codecs"][0]["name"] == "sharding_indexed":
            chain = doc["codecs"][0]["configuration"]["codecs"]
            doc["codecs"][0]["configuration"]["codecs"] = [
                {"name": "numcodecs.astype", "configuration": {"encode_dtype": "uint16", "decode_dtype": "uint8"}},
                *chain,
            ]
            doc_path.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError):
        open_store(str(copy))
    report = verify(str(source_tree), str(copy), sample=2)
    assert not report.ok and "rxrx2_zarr.open()" in report.summary(), report.summary()


@pytest.mark.parametrize("target", ["write_index_arrays", "write_embeddings"])
def test_full_disk_in_zarr_python_writes_names_what(
    source_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """The index and embeddings arrays are written through zarr-python; a full disk there is reported like our own
    writes: StoreWriteError naming the store and the array, and the store stays incomplete (resumable)."""
    import errno

    import rxrx2_zarr._convert as convert_module
    from rxrx2_zarr import StoreWriteError, convert

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_module, target, full)
    dst = tmp_path / "full.zarr"
    with pytest.raises(StoreWriteError, match=r"no space left to write the (index|embeddings)") as caught:
        convert(str(source_tree), str(dst), ConvertOptions(profile="zstd", inner_chunks=(32, 32), progress=False, limit=3))
    assert str(dst) in str(caught.value)
    with pytest.raises(StoreFormatError, match="incomplete"):
        open_store(str(dst))
