"""Interoperability: which peer tools open a store of each codec profile, with pixels equal to the PNGs.

Parametrized over ``rxrx2_zarr.PROFILES`` x the tools of ``tests/_interop.py``; each check runs in a subprocess
where ``rxrx2_zarr`` and ``pcodec`` cannot be imported. The expected outcome comes from what the profile's codec
chain needs (``_interop.EXPECTED``): a profile of Zarr v3 core codecs must open in every tool, and any other
profile must fail where its codecs are missing, so an unexpected success fails the test as well.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import _interop
import numpy as np
import pytest
import tensorstore as ts
import zarr
from _interop import (
    CORE_CODECS,
    EXPECTED,
    TOOLS,
    HarnessError,
    Outcome,
    Site,
    codec_names,
    convert_profile,
    first_site,
    profile_kind,
    run_tool,
)
from zarr.codecs import Crc32cCodec, ZstdCodec

from rxrx2_zarr import PROFILES, synth


@pytest.fixture(scope="module")
def interop_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plate, 2 wells x 2 sites of 96 x 96: enough for a plate view, quick to convert with every profile."""
    out = tmp_path_factory.mktemp("interop-src") / "rxrx2"
    synth(str(out), experiments=1, plates=1, wells=2, sites=2, size=96, embedding_dim=4, seed=11)
    return out


@pytest.fixture(scope="module")
def sites(interop_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Site]:
    """Per profile: the store converted from ``interop_source`` (32 x 32 inner chunks) and its first site."""
    root = tmp_path_factory.mktemp("interop-stores")
    return {
        p: first_site(convert_profile(interop_source, root / f"{p}.zarr", p), interop_source) for p in PROFILES
    }


def test_profile_kinds_cover_every_profile() -> None:
    for profile in PROFILES:
        kind = profile_kind(profile)
        assert kind in EXPECTED
        assert (kind == "core") == (set(codec_names(profile)) <= CORE_CODECS)
    # the profiles documented as standard are standard
    for profile in ("fast", "zstd", "standard"):
        if profile in PROFILES:
            assert profile_kind(profile) == "core", codec_names(profile)
    assert profile_kind("balanced") == "numcodecs"
    assert profile_kind("compact") == "package"


@pytest.fixture(scope="module")
def outcomes(sites: dict[str, Site], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    """Every (profile, tool) outcome: one isolated subprocess per tool, reading one site of every profile."""
    work = tmp_path_factory.mktemp("interop-runs")
    return {(p, tool): o for tool in TOOLS for p, o in run_tool(tool, sites, work).items()}


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("profile", list(PROFILES))
def test_tool_opens_profile_as_expected(profile: str, tool: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    expected = EXPECTED[profile_kind(profile)][tool]
    outcome = outcomes[(profile, tool)]
    if expected:
        assert outcome.opened, f"{TOOLS[tool].label} should read {profile!r} stores: {outcome.error}"
    else:
        assert not outcome.opened, f"{TOOLS[tool].label} unexpectedly read a {profile!r} store (codecs {codec_names(profile)})"
        assert outcome.error is not None and not outcome.error.startswith(("wrong", "no output")), (
            f"{TOOLS[tool].label} returned wrong pixels for {profile!r} instead of an error: {outcome.error}"
        )


def test_isolation_hides_the_package_and_pcodec(outcomes: dict[tuple[str, str], Outcome]) -> None:
    """The subprocesses really lack rxrx2_zarr (its codec is unknown, not merely failing to import) and pcodec."""
    # zarr 3.1 says "Unknown codec: 'rxrx2.vpredict'", 3.4 "An implementation for codec 'rxrx2.vpredict' is not
    # available..."
    error = outcomes[("compact", "zarr-python")].error or ""
    assert error.startswith("zarr.errors.UnknownCodecError: ") and "'rxrx2.vpredict'" in error, error
    error = outcomes[("balanced", "zarr-python")].error or ""
    assert "UnknownCodecError: " in error and "pcodec" in error, error
    assert outcomes[("balanced", "zarr-python+pcodec")].opened


def test_harness_refuses_a_leaky_isolation(sites: dict[str, Site], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the blocked modules were importable, the harness errors out instead of reporting outcomes."""
    leaky = dataclasses.replace(TOOLS["zarr-python"], blocked=("json",))  # imported by the preamble itself
    monkeypatch.setitem(_interop.TOOLS, "leaky", leaky)
    with pytest.raises(HarnessError, match="json imported before the blocker"):
        run_tool("leaky", {"fast": sites["fast"]}, tmp_path)


def test_tensorstore_reads_the_numeric_index_but_not_the_string_index(sites: dict[str, Site]) -> None:
    """tensorstore has no vlen-utf8 codec (README: it cannot read the string index arrays)."""
    store = sites["fast"].store
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "index/plate")}}
    plates = ts.open(spec).result().read().result()
    np.testing.assert_array_equal(plates, zarr.open_array(str(store / "index/plate"), mode="r")[...])
    with pytest.raises(ValueError, match="string data type is not one of the supported data types"):
        ts.open({**spec, "kvstore": {"driver": "file", "path": str(store / "index/site_id")}}).result()


def test_crc32c_after_zstd_in_the_inner_chain_reads_in_tensorstore(tmp_path: Path) -> None:
    """The standard profile's inner chain (bytes, zstd, crc32c inside sharding_indexed) is accepted by both."""
    data = np.random.default_rng(0).integers(0, 40, (6, 64, 64), dtype=np.uint8)
    path = tmp_path / "crc.zarr"
    array = zarr.create_array(
        str(path),
        shape=data.shape,
        dtype="uint8",
        shards=(6, 64, 64),
        chunks=(1, 32, 32),
        compressors=[ZstdCodec(level=15), Crc32cCodec()],
        dimension_names=("c", "y", "x"),
    )
    array[...] = data
    codecs: Any = zarr.open_array(str(path), mode="r").metadata.to_dict()["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert [c["name"] for c in codecs[0]["configuration"]["codecs"]] == ["bytes", "zstd", "crc32c"]
    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[...], data)
    got = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result().read().result()
    np.testing.assert_array_equal(got, data)


def test_crc32c_in_the_inner_chain_catches_a_flipped_bit_in_tensorstore_and_zarr(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 40, (6, 64, 64), dtype=np.uint8)
    path = tmp_path / "flip.zarr"
    array = zarr.create_array(
        str(path), shape=data.shape, dtype="uint8", shards=(6, 64, 64), chunks=(1, 32, 32),
        compressors=[ZstdCodec(level=15), Crc32cCodec()],
    )
    array[...] = data
    shard = path / "c/0/0/0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 4] ^= 0x10  # inside the first inner chunks' zstd payload, before the shard index
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="Digest mismatch"):
        ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result().read().result()
    with pytest.raises(ValueError, match="Stored and computed checksum do not match"):
        zarr.open_array(str(path), mode="r")[...]


def _two_level_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An NGFF 0.5 image with a full level "0" and a 1/8 thumbnail level "1" (scale [1, 8, 8])."""
    full = np.random.default_rng(2).integers(0, 50, (6, 96, 96), dtype=np.uint8)
    thumb = np.round(full.reshape(6, 12, 8, 12, 8).mean(axis=(2, 4))).astype(np.uint8)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes: Any = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets: Any = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 8.0, 8.0]}]},
    ]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": "site", "axes": axes, "datasets": datasets}]}
    for level, pixels, chunks in (("0", full, (1, 32, 32)), ("1", thumb, thumb.shape)):
        group.create_array(level, shape=pixels.shape, dtype="uint8", chunks=chunks, dimension_names=("c", "y", "x"))[...] = pixels
    return full, thumb


def test_ngff_zarr_and_ome_zarr_read_a_thumbnail_level(tmp_path: Path) -> None:
    import ngff_zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    full, thumb = _two_level_image(tmp_path / "image.zarr")
    multiscales = ngff_zarr.from_ngff_zarr(str(tmp_path / "image.zarr"), validate=True)
    assert [im.scale for im in multiscales.images] == [{"c": 1.0, "y": 1.0, "x": 1.0}, {"c": 1.0, "y": 8.0, "x": 8.0}]
    for image, want in zip(multiscales.images, (full, thumb), strict=True):
        np.testing.assert_array_equal(np.asarray(image.data), want)
    (node,) = list(Reader(parse_url(str(tmp_path / "image.zarr")))())
    assert [d.shape for d in node.data] == [full.shape, thumb.shape]
    assert node.metadata["coordinateTransformations"][1] == [{"type": "scale", "scale": [1.0, 8.0, 8.0]}]
    np.testing.assert_array_equal(np.asarray(node.data[1]), thumb)


def test_ome_zarr_plate_pyramid_has_every_level_of_the_first_field(sites: dict[str, Site]) -> None:
    """ome-zarr-py stitches one plate image per level of the first field (a thumbnail level becomes the plate's
    low-resolution level); its node takes its metadata, name included, from that field's image."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    site = sites["fast"]
    attrs: Any = zarr.open_group(str(site.store / site.image), mode="r").attrs.asdict()
    multiscale = attrs["ome"]["multiscales"][0]
    levels = [zarr.open_array(str(site.store / site.image / d["path"]), mode="r").shape for d in multiscale["datasets"]]
    nodes = list(Reader(parse_url(str(site.store / site.plate)))())
    rows, columns = site.grid
    assert [d.shape for d in nodes[0].data] == [(c, y * rows, x * columns) for c, y, x in levels]
    assert nodes[0].metadata["name"] == multiscale.get("name")
