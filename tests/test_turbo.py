"""The ``rxrx2.turbo`` codec: round trips, compiled against numpy, regions, corrupt input, zarr-python and
numcodecs integration, import cost. Real arrays and real encoded bytes throughout; no mocks."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxrx2_zarr import _turbo
from rxrx2_zarr._errors import CodecError
from rxrx2_zarr._turbo import ChunkHeader, TurboConfig
from rxrx2_zarr._turbo_format import HEADER, HEADER_BYTES
from rxrx2_zarr.testing import render_site

ROOT = Path(__file__).resolve().parent.parent
Pixels = np.ndarray[Any, np.dtype[np.uint8]]


def _numba() -> Any:
    from rxrx2_zarr import _turbo_encoder, _turbo_kernels

    return _turbo_encoder, _turbo_kernels


def _numpy() -> Any:
    from rxrx2_zarr import _turbo_numpy

    return _turbo_numpy, _turbo_numpy


def _encode_with(impl: Callable[[], Any], pixels: Pixels, config: TurboConfig) -> bytes:
    from rxrx2_zarr._turbo_format import PREDICTORS

    encoder, _ = impl()
    images = np.ascontiguousarray(pixels.reshape(-1, *pixels.shape[-2:]) if pixels.ndim > 1 else pixels.reshape(1, 1, -1))
    th, tw = config.tile
    return bytes(encoder.encode_chunk(images, th, tw, PREDICTORS[config.predictor], config.table_log))


def _decode_with(impl: Callable[[], Any], data: bytes) -> tuple[int, Pixels]:
    _, decoder = impl()
    header = ChunkHeader.parse(data)
    out = np.zeros(header.shape, dtype=np.uint8)
    info = np.zeros(2, dtype=np.int64)
    tiles = header.tiles_for((0, header.height, 0, header.width))
    code = int(decoder.decode_chunk(np.frombuffer(data, dtype=np.uint8), out, *tiles, info))
    return code, out


# --- data -----------------------------------------------------------------------------------------------------------

configs = st.builds(
    TurboConfig,
    tile=st.tuples(st.integers(1, 80), st.integers(1, 300)),
    predictor=st.sampled_from(["up3", "up", "none"]),
    table_log=st.integers(9, 12),
)


@st.composite
def images(draw: st.DrawFn, max_side: int = 160) -> Pixels:
    """uint8 arrays of 1..4 dimensions: noise, constants, sparse dark images with bright spots, smooth ramps."""
    ndim = draw(st.integers(1, 4))
    lead = [draw(st.integers(1, 3)) for _ in range(max(0, ndim - 2))]
    shape = (*lead, *[draw(st.integers(1, max_side)) for _ in range(min(ndim, 2))])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "constant", "sparse", "ramp", "dark-noise"]))
    if kind == "noise":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "constant":
        return np.full(shape, draw(st.integers(0, 255)), dtype=np.uint8)
    if kind == "sparse":
        a = np.zeros(shape, dtype=np.uint8)
        a[rng.random(shape) < 0.01] = 255
        return a
    if kind == "ramp":
        return (np.indices(shape).sum(axis=0) % 256).astype(np.uint8)
    return np.clip(rng.normal(6, 4, shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def site() -> Pixels:
    """A realistic generated site (6 x 256 x 256), as the RxRx2 generator renders it."""
    return render_site("HUVEC-1_1_B02_1", "EMPTY", float("nan"), size=256, seed=3)


# --- round trips ----------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixels=images(), config=configs)
def test_round_trip(pixels: Pixels, config: TurboConfig) -> None:
    data = _turbo.encode(pixels, config)
    out = _turbo.decode(data)
    assert out.shape == ChunkHeader.parse(data).shape
    assert np.array_equal(out.reshape(pixels.shape), pixels)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixels=images(max_side=90), config=configs)
def test_compiled_and_numpy_are_bit_identical(pixels: Pixels, config: TurboConfig) -> None:
    compiled = _encode_with(_numba, pixels, config)
    assert _encode_with(_numpy, pixels, config) == compiled
    for impl in (_numba, _numpy):
        code, out = _decode_with(impl, compiled)
        assert code == 0
        assert np.array_equal(out.reshape(pixels.shape), pixels)


def test_realistic_site(site: Pixels) -> None:
    data = _turbo.encode(site)
    assert np.array_equal(_turbo.decode(data), site)
    assert _encode_with(_numpy, site, TurboConfig()) == data
    assert np.array_equal(_decode_with(_numpy, data)[1], site)
    # these dark, sparse images: well below raw, whatever the PNG size (the benchmark compares with PNG)
    assert len(data) < site.nbytes / 3


@settings(max_examples=40, deadline=None)
@given(data=st.data(), config=configs)
def test_decode_region_is_the_slice(data: st.DataObject, config: TurboConfig) -> None:
    pixels = data.draw(images(max_side=120).filter(lambda a: a.ndim >= 2))
    height, width = pixels.shape[-2:]
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    encoded = _turbo.encode(pixels, config)
    region = _turbo.decode_region(encoded, (y0, y1, x0, x1))
    assert np.array_equal(region, pixels.reshape(-1, height, width)[:, y0:y1, x0:x1])
    out = np.zeros((region.shape[0], y1 - y0, x1 - x0), dtype=np.uint8)
    assert _turbo.decode_region(encoded, (y0, y1, x0, x1), out=out) is out
    assert np.array_equal(out, region)


def test_decode_into_out_and_threads(site: Pixels) -> None:
    data = _turbo.encode(site)
    out = np.zeros(site.size, dtype=np.uint8)
    assert _turbo.decode(data, out=out) is out
    assert np.array_equal(out.reshape(site.shape), site)
    chunks = [_turbo.encode(site[c]) for c in range(6)]
    with ThreadPoolExecutor(2) as pool:  # the kernels release the GIL: concurrent decodes stay independent
        results = list(pool.map(_turbo.decode, chunks * 4))
    assert all(np.array_equal(r[0], site[i % 6]) for i, r in enumerate(results))


def test_config_is_validated() -> None:
    for bad in ({"tile": (0, 8)}, {"tile": (8, 5000)}, {"tile": (8,)}, {"predictor": "med"}, {"table_log": 13}, {"table_log": 8}):
        with pytest.raises(ValueError, match=r"rxrx2\.turbo"):
            TurboConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        _turbo.encode(np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match="non-empty"):
        _turbo.encode(np.zeros((0, 4), dtype=np.uint8))


# --- corrupt input ----------------------------------------------------------------------------------------------------


def _header(data: bytes, **fields: int) -> bytes:
    names = ["magic", "version", "predictor", "log", "planes", "images", "height", "width", "th", "tw", "tables"]
    values = dict(zip(names, HEADER.unpack_from(data), strict=True))
    values.update(fields)
    return HEADER.pack(*values.values()) + data[HEADER_BYTES:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d[:10], "shorter than"),
        (lambda d: b"XXXX" + d[4:], "not an rxrx2.turbo chunk"),
        (lambda d: _header(d, version=2), "format version 2"),
        (lambda d: _header(d, predictor=9), "predictor 9"),
        (lambda d: _header(d, log=4), "table log 4"),
        (lambda d: _header(d, planes=9), "9 planes"),
        (lambda d: _header(d, th=0), "tile 0 x"),
        (lambda d: _header(d, tables=10**6), "table section"),
        (lambda d: _header(d, height=7), "corrupt: tile offsets"),
        (lambda d: d[:-1], "corrupt"),
        (lambda d: d + b"\0", "corrupt"),
    ],
)
def test_structural_damage_is_named(site: Pixels, change: Callable[[bytes], bytes], message: str) -> None:
    data = change(_turbo.encode(site[1]))
    with pytest.raises(CodecError, match=message):
        _turbo.decode(data)
    with pytest.raises(CodecError, match=message):
        _turbo.decode_region(data, (0, 5, 0, 5))


def test_each_stage_reports_its_error(site: Pixels) -> None:
    data = bytearray(_turbo.encode(site[1]))
    header = ChunkHeader.parse(bytes(data))
    table = bytearray(data)
    table[HEADER_BYTES] ^= 0xFF
    with pytest.raises(CodecError, match="table"):
        _turbo.decode(bytes(table))
    offsets = HEADER_BYTES + header.table_bytes
    tile = bytearray(data)
    tile[offsets + 4] ^= 0x40  # the second tile's offset
    with pytest.raises(CodecError, match="tile"):
        _turbo.decode(bytes(tile))
    stream = bytearray(data)
    stream[len(stream) // 2] ^= 0x10  # inside some tile's plane stream
    with pytest.raises(CodecError, match=r"stream|context|tile"):
        _turbo.decode(bytes(stream))


@functools.cache
def _small_chunks() -> list[bytes]:
    return [
        _turbo.encode(render_site("HUVEC-1_1_B02_2", "EMPTY", float("nan"), size=64, seed=1)[:2], TurboConfig(tile=(16, 40))),
        _turbo.encode(np.random.default_rng(5).integers(0, 256, (30, 50), dtype=np.uint8), TurboConfig(tile=(8, 24))),
        _turbo.encode(np.zeros((3, 9, 9), dtype=np.uint8)),
    ]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_damage_never_escapes(data: st.DataObject) -> None:
    """Any mutation of a valid chunk either decodes (to an array of the header's shape) or raises CodecError,
    in both implementations; never another exception, never a crash."""
    chunks = _small_chunks()
    encoded = bytearray(chunks[data.draw(st.integers(0, len(chunks) - 1))])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "insert"]))
        at = data.draw(st.integers(0, len(encoded) - 1))
        if kind == "flip":
            encoded[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            encoded[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del encoded[at:]
        else:
            encoded[at:at] = bytes(data.draw(st.binary(min_size=1, max_size=8)))
        if not encoded:
            encoded = bytearray(b"R")
    for impl in (_numba, _numpy):
        try:
            header = ChunkHeader.parse(bytes(encoded))
        except CodecError:
            return
        if header.images * header.height * header.width > 1 << 22:
            return  # a header claiming a huge array: allocating it is the caller's decision (shape is checked first)
        code, out = _decode_with(impl, bytes(encoded))
        assert code <= 0
        assert out.shape == header.shape


@pytest.mark.slow
def test_kernels_never_index_out_of_bounds(tmp_path: Path) -> None:
    """The damage test again, in a fresh process whose kernels are compiled with numba's bounds checking on
    (a separate cache): an out-of-bounds index raises IndexError there instead of reading memory."""
    script = tmp_path / "fuzz.py"
    script.write_text(
        "import numpy as np\n"
        "from rxrx2_zarr import _turbo\n"
        "from rxrx2_zarr._errors import CodecError\n"
        "from rxrx2_zarr.testing import render_site\n"
        "rng = np.random.default_rng(11)\n"
        "base = _turbo.encode(render_site('HUVEC-1_1_B02_3', 'EMPTY', float('nan'), size=96, seed=2), _turbo.TurboConfig(tile=(16, 48)))\n"
        "decoded = rejected = 0\n"
        "for trial in range(400):\n"
        "    data = bytearray(base)\n"
        "    for _ in range(int(rng.integers(1, 4))):\n"
        "        at = int(rng.integers(0, len(data)))\n"
        "        if trial % 3 == 0:\n"
        "            del data[at:]\n"
        "            data = data or bytearray(b'R')\n"
        "        else:\n"
        "            data[at] ^= 1 << int(rng.integers(0, 8))\n"
        "    try:\n"
        "        _turbo.decode(bytes(data))\n"
        "        decoded += 1\n"
        "    except CodecError:\n"
        "        rejected += 1\n"
        "print(decoded, rejected)\n"
    )
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    decoded, rejected = map(int, result.stdout.split())
    assert decoded + rejected == 400 and rejected > 200


# --- zarr-python and numcodecs ----------------------------------------------------------------------------------------


def _declared_entry_points() -> dict[str, dict[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {group: dict(eps) for group, eps in project["entry-points"].items()}


@pytest.fixture(scope="module")
def registered() -> None:
    """Load the codecs through the entry points this package declares, as zarr-python and numcodecs do when it
    is installed (this checkout may run from ``PYTHONPATH``, without its metadata installed), and register them."""
    import numcodecs
    import zarr.registry

    declared = _declared_entry_points()
    zarr_ep = importlib.metadata.EntryPoint("rxrx2.turbo", declared["zarr.codecs"]["rxrx2.turbo"], "zarr.codecs")
    numcodecs_ep = importlib.metadata.EntryPoint("rxrx2.turbo", declared["numcodecs.codecs"]["rxrx2.turbo"], "numcodecs.codecs")
    zarr.registry.register_codec("rxrx2.turbo", zarr_ep.load())
    numcodecs.register_codec(numcodecs_ep.load())


def test_zarr_python_pipeline_round_trip(tmp_path: Path, site: Pixels, registered: None) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec

    from rxrx2_zarr._turbo_codec import TurboCodec

    path = tmp_path / "site.zarr"
    # as a site array of this package: one shard per site, inner chunks (1, 128, 128), turbo + crc32c inside
    array = zarr.create_array(
        str(path), shape=site.shape, dtype="uint8", chunks=(1, 128, 128), shards=site.shape,
        serializer=TurboCodec(TurboConfig(tile=(32, 64))), compressors=[Crc32cCodec()],
    )
    array[:] = site
    document = json.loads((path / "zarr.json").read_text())
    inner = document["codecs"][0]["configuration"]["codecs"]
    assert inner[0] == {"name": "rxrx2.turbo", "configuration": {"tile": [32, 64], "predictor": "up3", "table_log": 10}}
    reopened = zarr.open_array(str(path), mode="r")
    assert np.array_equal(reopened[:], site)
    assert np.array_equal(reopened[3, 17:200, 90:131], site[3, 17:200, 90:131])
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(300, 70), dtype="uint8", chunks=(100, 70), serializer=TurboCodec(), compressors=None)
    plain[:] = np.concatenate([site[0], site[1]])[:300, :70]
    assert np.array_equal(zarr.open_array(str(tmp_path / "plain.zarr"))[:], plain[:])


def test_zarr_python_rejects_other_dtypes(tmp_path: Path, registered: None) -> None:
    import zarr

    from rxrx2_zarr._turbo_codec import TurboCodec

    with pytest.raises(ValueError, match="uint8"):
        zarr.create_array(str(tmp_path / "x.zarr"), shape=(4, 4), dtype="uint16", chunks=(4, 4), serializer=TurboCodec(), compressors=None)


def test_codec_documents(registered: None) -> None:
    from rxrx2_zarr._turbo_codec import TurboCodec

    codec = TurboCodec.from_dict({"name": "rxrx2.turbo", "configuration": {"tile": [16, 32], "table_log": 12}})
    assert codec.config == TurboConfig(tile=(16, 32), table_log=12)
    assert TurboCodec.from_dict(codec.to_dict()) == codec
    assert TurboCodec.from_dict({"name": "rxrx2.turbo"}).config == TurboConfig()
    for bad in ({"name": "bytes"}, {"name": "rxrx2.turbo", "configuration": {"level": 3}}, {"name": "rxrx2.turbo", "configuration": {"tile": 7}}):
        with pytest.raises(ValueError):
            TurboCodec.from_dict(bad)


def test_numcodecs_round_trip(site: Pixels, registered: None) -> None:
    import numcodecs

    codec = numcodecs.get_codec({"id": "rxrx2.turbo", "tile": [64, 64]})
    assert codec.get_config() == {"id": "rxrx2.turbo", "tile": [64, 64], "predictor": "up3", "table_log": 10}
    encoded = codec.encode(site)
    assert np.array_equal(codec.decode(encoded).reshape(site.shape), site)
    out = np.zeros_like(site)
    codec.decode(encoded, out=out)
    assert np.array_equal(out, site)


# --- import cost -------------------------------------------------------------------------------------------------------


def test_importing_the_package_or_the_codec_api_does_not_import_numba() -> None:
    code = (
        "import sys, rxrx2_zarr, rxrx2_zarr._turbo, rxrx2_zarr._turbo_format\n"
        "print(sorted(m for m in ('numba', 'llvmlite', 'zarr', 'numcodecs') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_backend_choice_by_environment(tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "from rxrx2_zarr import _turbo\n"
        "a = np.arange(4000, dtype=np.uint8).reshape(40, 100)\n"
        "assert np.array_equal(_turbo.decode(_turbo.encode(a))[0], a)\n"
        "import sys; print(_turbo.backend(), 'numba' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RXRX2_TURBO_BACKEND": "numpy"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["numpy", "False"]
    env["RXRX2_TURBO_BACKEND"] = "fast"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "RXRX2_TURBO_BACKEND must be auto, numba or numpy" in result.stderr


# --- the turbo profile: conversion, the direct shard path, transcode ----------------------------------------------------


def test_turbo_profile_store(source_tree: Path, tmp_path: Path, registered: None) -> None:
    """A store of the turbo profile: its chain, its pixels through this package and through zarr-python (with the
    codec found through this package's entry point), verify, and transcode to a core-codec store and back."""
    import zarr

    from rxrx2_zarr import open as open_store
    from rxrx2_zarr._convert import ConvertOptions, convert
    from rxrx2_zarr._transcode import transcode
    from rxrx2_zarr._verify import verify

    out = tmp_path / "turbo.zarr"
    convert(str(source_tree), str(out), ConvertOptions(profile="turbo", limit=4, progress=False))
    dataset = open_store(str(out))
    paths = zarr.open_group(str(out), path="index", mode="r")
    for site_id, path in zip(paths["site_id"][:], paths["path"][:], strict=True):
        document = json.loads((out / path / "zarr.json").read_text())
        chain = document["codecs"][0]["configuration"]["codecs"]
        assert [c["name"] for c in chain] == ["rxrx2.turbo", "crc32c"]
        pixels = dataset.read(site_id)[0]
        assert np.array_equal(zarr.open_array(str(out), path=path, mode="r")[:], pixels)
        assert np.array_equal(dataset.read(site_id, region=(7, 90, 20, 61))[0], pixels[:, 7:90, 20:61])
    assert verify(str(source_tree), str(out)).ok
    core = tmp_path / "core.zarr"
    transcode(str(out), str(core), ConvertOptions(profile="zstd", progress=False))
    back = tmp_path / "back.zarr"
    transcode(str(core), str(back), ConvertOptions(profile="turbo", progress=False))
    assert verify(str(out), str(core)).ok and verify(str(core), str(back)).ok  # a transcode is verified against its source
    assert np.array_equal(open_store(str(back)).read(site_id)[0], pixels)


def test_shard_crops_decode_only_their_tiles(site: Pixels) -> None:
    """The direct shard path's windowed decode (rxrx2.turbo decodes the tiles a crop touches) equals slicing a
    full decode, for crops inside one chunk and across chunks, and a damaged tile outside the crop is not read."""
    from rxrx2_zarr._codec_table import ShardDataError
    from rxrx2_zarr._layout import SiteArraySpec
    from rxrx2_zarr._shard import ShardCodec

    spec = SiteArraySpec(256, 256, (256, 256), "turbo")
    codec = ShardCodec(spec)
    shard = codec.encode(site)
    full = codec.decode(shard)
    assert np.array_equal(full, site)
    rng = np.random.default_rng(3)
    for _ in range(12):
        y0, x0 = int(rng.integers(0, 200)), int(rng.integers(0, 200))
        y1, x1 = int(rng.integers(y0 + 1, 257)), int(rng.integers(x0 + 1, 257))
        channels = sorted({int(c) for c in rng.integers(0, 6, 3)})
        assert np.array_equal(codec.decode(shard, channels=channels, region=(y0, y1, x0, x1)), site[channels, y0:y1, x0:x1])
    spec2 = SiteArraySpec(256, 256, (128, 128), "turbo")
    codec2 = ShardCodec(spec2)
    assert np.array_equal(codec2.decode(codec2.encode(site), region=(100, 200, 60, 190)), site[:, 100:200, 60:190])
    # the chunk's crc32c covers every tile, so damage anywhere in the chunk is still caught on a crop
    damaged = bytearray(shard)
    damaged[len(shard) // 3] ^= 0x01
    with pytest.raises(ShardDataError, match="crc32c"):
        codec.decode(bytes(damaged), region=(0, 8, 0, 8))
