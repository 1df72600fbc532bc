"""ShardCodec: encode/decode round trips on arbitrary small sites, and agreement with zarr-python's own reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
import zarr.storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from zarr.core.buffer.cpu import Buffer

from rxrx2_zarr._layout import PROFILES, SiteArraySpec
from rxrx2_zarr._shard import ShardCodec, ShardIndexError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr warns that numcodecs codecs are not core


@st.composite
def sites(draw: st.DrawFn) -> tuple[SiteArraySpec, np.ndarray]:
    """A spec with a size that is usually not a multiple of its chunks, and pixels for it (often sparse, as real
    sites are, so that absent all-zero chunks are exercised too)."""
    height = draw(st.integers(1, 24))
    width = draw(st.integers(1, 24))
    chunks = (draw(st.integers(1, 16)), draw(st.integers(1, 16)))
    spec = SiteArraySpec(height, width, chunks, draw(st.sampled_from(sorted(PROFILES))))
    dense = draw(st.booleans())
    elements = st.integers(0, 255) if dense else st.sampled_from([0, 0, 0, 0, 0, 1, 7, 255])
    pixels = draw(arrays(np.uint8, spec.shape, elements=elements))
    return spec, pixels


@st.composite
def selections(draw: st.DrawFn, spec: SiteArraySpec) -> tuple[list[int] | None, tuple[int, int, int, int] | None]:
    channels = draw(st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
    region = None
    if draw(st.booleans()):
        y0 = draw(st.integers(0, spec.height - 1))
        y1 = draw(st.integers(y0 + 1, spec.height))
        x0 = draw(st.integers(0, spec.width - 1))
        x1 = draw(st.integers(x0 + 1, spec.width))
        region = (y0, y1, x0, x1)
    return channels, region


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=sites(), data=st.data())
def test_encode_decode_roundtrip(site: tuple[SiteArraySpec, np.ndarray], data: st.DataObject) -> None:
    spec, pixels = site
    codec = ShardCodec(spec)
    shard = codec.encode(pixels)
    np.testing.assert_array_equal(codec.decode(shard), pixels)
    channels, region = data.draw(selections(spec))
    y0, y1, x0, x1 = region if region is not None else (0, spec.height, 0, spec.width)
    expected = pixels[channels if channels is not None else slice(None), y0:y1, x0:x1]
    np.testing.assert_array_equal(codec.decode(shard, channels=channels, region=region), expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=sites())
def test_zarr_python_reads_what_we_encode(site: tuple[SiteArraySpec, np.ndarray]) -> None:
    """The shard bytes are a standard Zarr v3 sharded chunk: plain zarr-python decodes them to the same pixels."""
    spec, pixels = site
    objects = {"a/zarr.json": json.dumps(spec.array_metadata()).encode(), "a/c/0/0/0": ShardCodec(spec).encode(pixels)}
    store = zarr.storage.MemoryStore({k: Buffer.from_bytes(v) for k, v in objects.items()})
    np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[:], pixels)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_decode_what_zarr_python_writes(profile: str) -> None:
    """The other direction: a site written by zarr-python from our array metadata decodes with ShardCodec."""
    spec = SiteArraySpec(20, 13, (8, 5), profile)
    pixels = np.random.default_rng(1).integers(0, 40, spec.shape, dtype=np.uint8)
    pixels[2] = 0  # a whole channel of absent chunks
    objects = {"a/zarr.json": Buffer.from_bytes(json.dumps(spec.array_metadata()).encode())}
    zarr.open_array(zarr.storage.MemoryStore(objects), path="a", mode="r+")[:] = pixels
    shard = objects["a/c/0/0/0"].to_bytes()
    np.testing.assert_array_equal(ShardCodec(spec).decode(shard), pixels)


def test_all_zero_site_still_has_a_shard() -> None:
    spec = SiteArraySpec(10, 10, (4, 4), "zstd")
    codec = ShardCodec(spec)
    shard = codec.encode(np.zeros(spec.shape, dtype=np.uint8))
    assert len(shard) == codec.index_nbytes  # index only: every chunk absent, read as the fill value
    np.testing.assert_array_equal(codec.decode(shard), 0)


def test_corrupt_index_is_refused() -> None:
    spec = SiteArraySpec(10, 10, (4, 4), "fast")
    codec = ShardCodec(spec)
    shard = bytearray(codec.encode(np.full(spec.shape, 3, dtype=np.uint8)))
    shard[-10] ^= 0xFF
    with pytest.raises(ShardIndexError, match="checksum"):
        codec.decode(bytes(shard))
    with pytest.raises(ShardIndexError, match="shorter than its index"):
        codec.decode(bytes(shard[:10]))
