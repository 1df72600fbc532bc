"""The store layout and array specification as pure data: no storage is touched here.

Hierarchy (OME-NGFF 0.5 high-content screening, one plate group per RxRx2 plate)::

    <root>/zarr.json                       group, attributes {"rxrx2": root attributes}
    <root>/index.parquet                   the index as one Parquet object (what ``open`` reads)
    <root>/index/<column>                  the same index as 1-D arrays, one per column (for Zarr and xarray)
    <root>/embeddings                      float32 (n_sites, K), aligned with the index
    <root>/<experiment>/                   group {"rxrx2": {experiment, cell_type, ...}}
    <root>/<experiment>/Plate<p>/          NGFF plate {"ome": {"plate": ...}, "rxrx2": {...}}
    <root>/<experiment>/Plate<p>/<row>/    row group (letters, e.g. "AA")
    <root>/<experiment>/Plate<p>/<row>/<column>/           NGFF well (column "02")
    <root>/<experiment>/Plate<p>/<row>/<column>/<site>/    NGFF image (field), {"rxrx2": {site_id, checksums}}
    <root>/<experiment>/Plate<p>/<row>/<column>/<site>/0   (c, y, x) uint8 array, one shard = one object
    <root>/<experiment>/Plate<p>/<row>/<column>/<site>/1   its thumbnail level, one chunk

The index order is fixed: experiment, plate, well row, well column, site (all ascending; experiments by name).
The attributes of each node are typed in ``_attrs.py``; the documents are built in ``_hierarchy.py``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from ._codec_table import ALLOWED_CODECS, CORE_READERS, CRC32C, profile_entries
from ._columns import METADATA_COLUMNS, STRING_COLUMNS
from ._paths import CHANNELS, SiteKey

__all__ = [
    "ALLOWED_CODECS",
    "DEFAULT_INNER_CHUNKS",
    "DEFAULT_PROFILE",
    "INDEX_COLUMNS",
    "INDEX_PARQUET",
    "INDEX_STRING_COLUMNS",
    "LAYOUT_VERSION",
    "MIN_INNER_CHUNK",
    "NGFF_VERSION",
    "PROFILES",
    "CodecProfile",
    "SiteArraySpec",
    "SitePaths",
    "site_paths",
]

#: 2: a crc32c codec in every chunk's chain, a thumbnail level per site, the columnar index (``index.parquet``),
#: per-site shard and thumbnail checksums in the index. Stores of layout 1 are read only by ``transcode``.
LAYOUT_VERSION = 2
#: Layouts that ``rxrx2-zarr transcode`` can read (to rewrite them as the current layout).
TRANSCODABLE_LAYOUTS = frozenset({1, 2})
NGFF_VERSION: Final = "0.5"
#: The resolution levels of every site image (NGFF multiscales dataset paths): full resolution, and a thumbnail
#: level that viewers (napari-ome-zarr's plate view) load instead of millions of full-resolution pixels per well.
LEVEL = "0"
THUMBNAIL_LEVEL = "1"
#: Edge of the pixel block a thumbnail pixel averages: 1/16 scale, 64 x 64 for RxRx2's 1024 x 1024 sites. Chosen by
#: measurement (``python -m benchmarks._frontier``): at 1/8 the thumbnails of generated sites cost 2.7% of the store
#: and put the default profile at 0.950x the PNG bytes; at 1/16 they cost under 1%. A plate of 32 x 48 wells at
#: 64 pixels per field is a 3072 x 2048 mosaic, about one screen; zooming in switches to the full level.
THUMBNAIL_FACTOR = 16
#: zstd level of the thumbnails (tiny arrays: even a high level costs a few milliseconds per site).
THUMBNAIL_ZSTD_LEVEL = 19
#: Key of the one shard object of a site array, relative to the array (default chunk key encoding, grid (1,1,1)),
#: and of the one chunk of a thumbnail array.
SHARD_KEY = "c/0/0/0"
INDEX_GROUP = "index"
#: The index as one columnar object (Apache Parquet) at the root: what ``open`` reads, and what pandas, polars
#: and duckdb open directly. The ``index/<column>`` arrays hold the same values for Zarr and xarray users.
INDEX_PARQUET = "index.parquet"
EMBEDDINGS_ARRAY = "embeddings"
#: The index arrays: the nine metadata columns, where each site's image lives, the CRC32C of its pixels, and the
#: CRC32C that closes its shard index (the shard's last 4 bytes) and its thumbnail chunk: recorded here, they
#: bind each object to its site, so a swapped shard or a rewritten shard index is an error, not wrong pixels.
INDEX_COLUMNS: tuple[str, ...] = (*METADATA_COLUMNS, "path", "checksum", "shard_checksum", "thumbnail_checksum")
#: The index arrays stored as UTF-8 strings (the rest are numbers).
INDEX_STRING_COLUMNS: tuple[str, ...] = (*STRING_COLUMNS, "path")
#: The unsigned 32-bit checksum columns of the index.
INDEX_CHECKSUM_COLUMNS: tuple[str, ...] = ("checksum", "shard_checksum", "thumbnail_checksum")
#: Checksum of a site's pixels: CRC32C (Castagnoli) of the C-order uint8 (6, H, W) bytes, as an unsigned int.
CHECKSUM_ALGORITHM = "crc32c"
#: Smallest inner chunk edge accepted: below it a 1024 x 1024 site becomes tens of thousands of chunks (1 x 1:
#: six million), each with its own codec call and index entry, for no partial-read gain.
MIN_INNER_CHUNK = 16
DEFAULT_PROFILE = "standard"
# Sanity bound for site sizes (RxRx2: 1024); anything larger is almost certainly a corrupt header.
MAX_SITE_EDGE = 16384
@dataclass(frozen=True)
class CodecProfile:
    """A lossless codec chain for the inner chunks of a site shard, always closed by a ``crc32c`` codec.

    ``compressor`` and ``filters`` name entries of the codec table (``_codec_table.CODECS``), which builds the
    chain's JSON, checks the settings and says who can read it: ``zstd`` and ``blosc`` are Zarr v3 core codecs;
    ``pcodec`` is numcodecs' PCodec behind ``numcodecs.astype`` to uint16; the filter ``rxrx2.vpredict`` is this
    package's predictor. ``cname`` and ``shuffle`` are Blosc's settings; ``zstd_parameters`` tune zstd's encoder
    (the frames stay standard zstd frames, which every decoder reads); ``inner_chunks`` is the profile's default
    inner chunk shape.
    """

    name: str
    description: str
    compressor: str
    level: int
    cname: str = "zstd"
    shuffle: str = "noshuffle"
    filters: tuple[str, ...] = ()
    inner_chunks: tuple[int, int] = (256, 256)
    zstd_parameters: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for entry in profile_entries(self):  # raises for unknown names
            problem = entry.check(self)
            if problem is not None:
                raise ValueError(f"profile {self.name}: {problem}")

    def with_level(self, level: int | None) -> CodecProfile:
        """The same profile at another compression level (``--level``); custom encoder parameters are dropped,
        since they were tuned for the profile's own level."""
        if level is None or level == self.level:
            return self
        return replace(self, level=int(level), zstd_parameters=())

    def inner_codecs(self) -> list[dict[str, Any]]:
        """The inner-chunk codec chain as Zarr v3 JSON (exactly what zarr-python writes for the same codecs)."""
        return [part for entry in profile_entries(self) for part in entry.to_json(self)] + [dict(CRC32C)]

    @property
    def standard(self) -> bool:
        """True when the chain has only Zarr v3 core codecs (the store opens in every Zarr v3 reader)."""
        return all(entry.core for entry in profile_entries(self))

    @property
    def readers(self) -> str:
        """Which readers decode this profile's pixels (recorded in the root attributes and shown by ``info``)."""
        special = list(dict.fromkeys(entry.readers for entry in profile_entries(self) if not entry.core))
        return "; ".join(special) if special else CORE_READERS


#: The codec profiles, chosen by measurement (README, "Codec profiles"; ``python -m benchmarks``, workloads
#: ``codecs`` and ``frontier``). ``standard`` (the default) and ``zstd`` and ``fast`` use only Zarr v3 core codecs
#: and open in every Zarr reader; ``balanced`` needs numcodecs + pcodec, ``compact`` and ``turbo`` this package
#: (``turbo``: its own codec, ``docs/turbo.md``, the fastest to read and the smallest; ``benchmarks._turbo_bench``).
PROFILES: Mapping[str, CodecProfile] = {
    p.name: p
    for p in (
        CodecProfile(
            "standard",
            "zstd level 19 on 1024 x 1024 chunks (core codecs): below the PNG bytes, ~10x faster to read, "
            "slow to write (~2 CPU-s per site)",
            "zstd",
            19,
            inner_chunks=(1024, 1024),
        ),
        CodecProfile(
            "zstd",
            "zstd level 3 (core codecs): quick to write (a laptop conversion), ~5x faster to read, ~1.2x the PNG bytes",
            "zstd",
            3,
        ),
        CodecProfile(
            "fast", "LZ4 + bit-shuffle (Blosc, core codecs): fastest to write and read, ~1.8x the PNG bytes",
            "blosc", 5, "lz4", "bitshuffle",
        ),
        CodecProfile(
            "balanced", "pcodec level 8 (numcodecs; not a core codec): below the PNG bytes, ~3x faster to read", "pcodec", 8
        ),
        CodecProfile(
            "compact",
            "vertical predictor + zigzag (rxrx2.vpredict, this package's codec) + bit-shuffle + zstd (Blosc): "
            "smallest; readable by zarr-python only with rxrx2-zarr installed",
            "blosc",
            1,
            "zstd",
            "bitshuffle",
            filters=("rxrx2.vpredict",),
        ),
        CodecProfile(
            "turbo",
            "rxrx2.turbo (this package's codec, compiled decoder) on 1024 x 1024 chunks: ~0.75x the PNG bytes, "
            "~12x faster to read than Pillow, crops ~50-90x; readable by zarr-python only with rxrx2-zarr installed",
            "turbo",
            0,
            inner_chunks=(1024, 1024),
        ),
    )
}
DEFAULT_INNER_CHUNKS = PROFILES[DEFAULT_PROFILE].inner_chunks


def _thumbnail_edge(edge: int) -> int:
    return -(-edge // THUMBNAIL_FACTOR)


@dataclass(frozen=True)
class SiteArraySpec:
    """The (c, y, x) uint8 array of one site: size, inner chunks, codec profile and level, pixel size.

    ``inner_chunks`` and ``level`` default to the profile's own.
    """

    height: int
    width: int
    inner_chunks: tuple[int, int] | None = None
    profile: str = DEFAULT_PROFILE
    pixel_size: float | None = None
    channels: int = len(CHANNELS)
    level: int | None = None

    def __post_init__(self) -> None:
        for name, edge in (("height", self.height), ("width", self.width)):
            if not isinstance(edge, int) or not 1 <= edge <= MAX_SITE_EDGE:
                raise ValueError(f"site {name} must be 1..{MAX_SITE_EDGE}, got {edge!r}")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown codec profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        if self.inner_chunks is None:
            object.__setattr__(self, "inner_chunks", PROFILES[self.profile].inner_chunks)
        inner = self.inner_chunks
        if (
            inner is None
            or len(inner) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < MIN_INNER_CHUNK for v in inner)
        ):
            raise ValueError(
                f"inner chunks must be two integers (Y, X) of at least {MIN_INNER_CHUNK}, got {self.inner_chunks!r}"
            )
        if self.pixel_size is not None and not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise ValueError(f"pixel size must be a positive number, got {self.pixel_size!r}")
        self.codec_profile  # validates the level  # noqa: B018

    @property
    def chunks(self) -> tuple[int, int]:
        """The inner chunk shape (Y, X) (``inner_chunks``, resolved)."""
        assert self.inner_chunks is not None  # resolved in __post_init__
        return self.inner_chunks

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def chunk_shape(self) -> tuple[int, int, int]:
        """Inner chunk shape: one channel, clipped to the site (a chunk larger than the site is pointless)."""
        return (1, min(self.chunks[0], self.height), min(self.chunks[1], self.width))

    @property
    def shard_shape(self) -> tuple[int, int, int]:
        """The one outer chunk: the site rounded up to whole inner chunks (Zarr requires divisibility)."""
        _, y, x = self.chunk_shape
        return (self.channels, -(-self.height // y) * y, -(-self.width // x) * x)

    @property
    def codec_profile(self) -> CodecProfile:
        return PROFILES[self.profile].with_level(self.level)

    @property
    def thumbnail_shape(self) -> tuple[int, int, int]:
        """(c, y, x) of the thumbnail level: each pixel the rounded mean of a THUMBNAIL_FACTOR-square block."""
        return (self.channels, _thumbnail_edge(self.height), _thumbnail_edge(self.width))

    def array_metadata(self) -> dict[str, Any]:
        """The site array's ``zarr.json`` document: one shard spanning the whole site."""
        return _array_document(
            self.shape,
            self.shard_shape,
            [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(self.chunk_shape),
                        "codecs": self.codec_profile.inner_codecs(),
                        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                        "index_location": "end",
                    },
                }
            ],
        )

    def thumbnail_metadata(self) -> dict[str, Any]:
        """The thumbnail array's ``zarr.json``: one plain chunk (a few KB), zstd + crc32c, whatever the profile,
        so that every viewer can browse a plate even when the full level needs this package's codecs."""
        shape = self.thumbnail_shape
        return _array_document(shape, shape, THUMBNAIL_CODECS)

    def options(self) -> dict[str, Any]:
        """The output-affecting options, as recorded in the root attributes (and compared on resume)."""
        profile = self.codec_profile
        return {
            "height": self.height,
            "width": self.width,
            "inner_chunks": list(self.chunks),
            "profile": self.profile,
            "level": profile.level,
            "zstd_parameters": dict(profile.zstd_parameters),
            "pixel_size": self.pixel_size,
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SiteArraySpec:
        profile = str(options.get("profile", DEFAULT_PROFILE))
        inner = options.get("inner_chunks")
        level = options.get("level")
        return cls(
            height=int(options["height"]),
            width=int(options["width"]),
            inner_chunks=None if inner is None else (int(inner[0]), int(inner[1])),
            profile=profile,
            pixel_size=None if options.get("pixel_size") is None else float(options["pixel_size"]),
            level=None if level is None else int(level),
        )


#: The thumbnail chunk's codec chain (Zarr v3 core codecs, whatever the site's profile).
THUMBNAIL_PROFILE = CodecProfile("thumbnail", "the thumbnail level's one chunk", "zstd", THUMBNAIL_ZSTD_LEVEL)
THUMBNAIL_CODECS: list[dict[str, Any]] = THUMBNAIL_PROFILE.inner_codecs()


def _array_document(shape: Sequence[int], chunks: Sequence[int], codecs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "shape": list(shape),
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": codecs,
        "attributes": {},
        "dimension_names": ["c", "y", "x"],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


@dataclass(frozen=True)
class SitePaths:
    """Where one site lives in the store (keys relative to the store root, ``/``-separated)."""

    experiment: str
    plate: str
    row: str
    well: str
    site: str
    array: str
    shard: str


def plate_name(plate: int) -> str:
    return f"Plate{plate}"


def site_paths(key: SiteKey) -> SitePaths:
    """The one rule that maps a site to its groups, array and shard object."""
    experiment = key.experiment
    plate = f"{experiment}/{plate_name(key.plate)}"
    row = f"{plate}/{key.well.row}"
    well = f"{row}/{key.well.column_name}"
    site = f"{well}/{key.site}"
    array = f"{site}/{LEVEL}"
    return SitePaths(experiment, plate, row, well, site, array, f"{array}/{SHARD_KEY}")
