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
from rxrx2_zarr._shard import (
    ShardCodec,
    ShardDataError,
    ShardIndexError,
    decode_thumbnail,
    encode_thumbnail,
    thumbnail,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr warns that numcodecs codecs are not core


@st.composite
def sites(draw: st.DrawFn) -> tuple[SiteArraySpec, np.ndarray]:
    """A spec with a size that is usually not a multiple of its chunks, and pixels for it (often sparse, as real
    sites are, so that absent all-zero chunks are exercised too)."""
    height = draw(st.integers(1, 48))
    width = draw(st.integers(1, 48))
    chunks = (draw(st.integers(16, 24)), draw(st.integers(16, 24)))
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
    spec = SiteArraySpec(40, 26, (16, 16), profile)
    pixels = np.random.default_rng(1).integers(0, 40, spec.shape, dtype=np.uint8)
    pixels[2] = 0  # a whole channel of absent chunks
    objects = {"a/zarr.json": Buffer.from_bytes(json.dumps(spec.array_metadata()).encode())}
    zarr.open_array(zarr.storage.MemoryStore(objects), path="a", mode="r+")[:] = pixels
    shard = objects["a/c/0/0/0"].to_bytes()
    np.testing.assert_array_equal(ShardCodec(spec).decode(shard), pixels)


def test_all_zero_site_still_has_a_shard() -> None:
    spec = SiteArraySpec(40, 40, (16, 16), "zstd")
    codec = ShardCodec(spec)
    shard = codec.encode(np.zeros(spec.shape, dtype=np.uint8))
    assert len(shard) == codec.index_nbytes  # index only: every chunk absent, read as the fill value
    np.testing.assert_array_equal(codec.decode(shard), 0)


def test_corrupt_index_is_refused() -> None:
    spec = SiteArraySpec(40, 40, (16, 16), "fast")
    codec = ShardCodec(spec)
    shard = bytearray(codec.encode(np.full(spec.shape, 3, dtype=np.uint8)))
    shard[-10] ^= 0xFF
    with pytest.raises(ShardIndexError, match="checksum"):
        codec.decode(bytes(shard))
    with pytest.raises(ShardIndexError, match="shorter than its index"):
        codec.decode(bytes(shard[:10]))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_inner_chunk_is_checksummed(profile: str) -> None:
    """A flipped bit anywhere in any inner chunk is an error on full and partial decodes, for every profile."""
    spec = SiteArraySpec(32, 32, (16, 16), profile)
    assert spec.codec_profile.inner_codecs()[-1] == {"name": "crc32c"}
    codec = ShardCodec(spec)
    pixels = np.random.default_rng(2).integers(0, 30, spec.shape, dtype=np.uint8)
    shard = codec.encode(pixels)
    index = codec.parse_index(shard)
    for flat in (0, codec.n_chunks // 2, codec.n_chunks - 1):
        offset, nbytes = (int(v) for v in index[flat])
        for position in (offset, offset + nbytes // 2, offset + nbytes - 1):
            bad = bytearray(shard)
            bad[position] ^= 0x10
            with pytest.raises(ShardDataError, match=f"inner chunk {flat} fails its crc32c"):
                codec.decode(bytes(bad))
            channel = flat // 4
            with pytest.raises(ShardDataError, match="crc32c"):
                codec.decode(bytes(bad), channels=[channel], region=(0, 32, 0, 32))


def test_shard_index_is_bound_to_its_site() -> None:
    """A shard whose index checksum is not the one recorded for the site (another site's shard, or an index
    rewritten with a valid checksum of its own) is refused when the recorded value is given. The index checksum
    covers the chunks' offsets and sizes, so it tells apart shards whose chunks compress to different sizes (noisy
    microscopy sites); full-site reads also check the pixels' own CRC32C."""
    spec = SiteArraySpec(32, 32, (16, 16), "standard")
    codec = ShardCodec(spec)
    rng = np.random.default_rng(5)
    first = rng.integers(0, 30, spec.shape, dtype=np.uint8)
    one = codec.encode(first)
    other = codec.encode(rng.integers(0, 30, spec.shape, dtype=np.uint8))
    recorded = int.from_bytes(one[-4:], "little")
    np.testing.assert_array_equal(codec.decode(one, expected=recorded), first)
    with pytest.raises(ShardIndexError, match="recorded for this site"):
        codec.decode(other, expected=recorded)
    with pytest.raises(ShardIndexError, match="recorded for this site"):
        codec.parse_index(other[-codec.index_nbytes :], recorded)


@settings(max_examples=60, deadline=None)
@given(pixels=arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40))))
def test_thumbnail_is_the_rounded_block_mean(pixels: np.ndarray) -> None:
    c, h, w = pixels.shape
    thumb = thumbnail(pixels, 8)
    assert thumb.shape == (c, -(-h // 8), -(-w // 8))
    for ty in range(thumb.shape[1]):
        for tx in range(thumb.shape[2]):
            block = pixels[:, ty * 8 : ty * 8 + 8, tx * 8 : tx * 8 + 8].astype(np.int64)
            n = block.shape[1] * block.shape[2]
            np.testing.assert_array_equal(thumb[:, ty, tx], (block.sum(axis=(1, 2)) + n // 2) // n)
    data = encode_thumbnail(thumb)
    np.testing.assert_array_equal(decode_thumbnail(data, thumb.shape), thumb)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(ShardDataError, match="crc32c"):
        decode_thumbnail(bytes(flipped), thumb.shape)
