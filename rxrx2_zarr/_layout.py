"""The store layout and array specification as pure data: no storage is touched here.

Hierarchy (OME-NGFF 0.5 high-content screening, one plate group per RxRx2 plate)::

    <root>/zarr.json                       group, attributes {"rxrx2": root attributes}
    <root>/index/<column>                  1-D arrays, one per metadata column, plus path and checksum
    <root>/embeddings                      float32 (n_sites, K), aligned with the index
    <root>/<experiment>/                   group {"rxrx2": {experiment, cell_type}}
    <root>/<experiment>/Plate<p>/          NGFF plate {"ome": {"plate": ...}, "rxrx2": {...}}
    <root>/<experiment>/Plate<p>/<row>/    row group (letters, e.g. "AA")
    <root>/<experiment>/Plate<p>/<row>/<column>/           NGFF well (column "02")
    <root>/<experiment>/Plate<p>/<row>/<column>/<site>/    NGFF image (field), {"rxrx2": {site_id, checksum}}
    <root>/<experiment>/Plate<p>/<row>/<column>/<site>/0   (c, y, x) uint8 array, one shard = one object

The index order is fixed: experiment, plate, well row, well column, site (all ascending; experiments by name).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._channels import CHANNEL_SPECS
from ._paths import CHANNELS, GRID_COLUMNS, GRID_ROWS, SiteKey, WellAddress
from ._schema import METADATA_COLUMNS, STRING_COLUMNS

__all__ = [
    "DEFAULT_INNER_CHUNKS",
    "DEFAULT_PROFILE",
    "INDEX_COLUMNS",
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

LAYOUT_VERSION = 1
NGFF_VERSION = "0.5"
#: Name of the single resolution level of every site image (NGFF multiscales dataset path).
LEVEL = "0"
#: Key of the one shard object of a site array, relative to the array (default chunk key encoding, grid (1,1,1)).
SHARD_KEY = "c/0/0/0"
INDEX_GROUP = "index"
EMBEDDINGS_ARRAY = "embeddings"
#: The index arrays: the nine metadata columns, then where each site's image lives and its pixel checksum.
INDEX_COLUMNS: tuple[str, ...] = (*METADATA_COLUMNS, "path", "checksum")
#: The index arrays stored as UTF-8 strings (the rest are numbers).
INDEX_STRING_COLUMNS: tuple[str, ...] = (*STRING_COLUMNS, "path")
#: Checksum of a site's pixels: CRC32C (Castagnoli) of the C-order uint8 (6, H, W) bytes, as an unsigned int.
CHECKSUM_ALGORITHM = "crc32c"
DEFAULT_INNER_CHUNKS = (256, 256)
#: Smallest inner chunk edge accepted: below it a 1024 x 1024 site becomes tens of thousands of chunks (1 x 1:
#: six million), each with its own codec call and index entry, for no partial-read gain.
MIN_INNER_CHUNK = 16
DEFAULT_PROFILE = "balanced"
# Sanity bound for site sizes (RxRx2: 1024); anything larger is almost certainly a corrupt header.
MAX_SITE_EDGE = 16384


@dataclass(frozen=True)
class CodecProfile:
    """A lossless codec chain for the inner chunks of a site shard, made only of codecs that zarr-python (>= 3.1)
    with numcodecs decodes: ``blosc`` and ``zstd`` are Zarr v3 core codecs; ``pcodec`` is numcodecs' PCodec
    (``numcodecs.pcodec``, the ``pcodec`` package) behind ``numcodecs.astype`` to uint16, because pcodec refuses
    8-bit input by default."""

    name: str
    description: str
    compressor: str
    level: int
    cname: str = "zstd"
    shuffle: str = "noshuffle"
    predictor: bool = False
    """Put this package's ``rxrx2.vpredict`` codec (vertical predictor + zigzag) before the compressor."""

    def __post_init__(self) -> None:
        if self.predictor and self.compressor == "pcodec":
            raise ValueError(f"profile {self.name}: the predictor works in front of blosc or zstd only")
        if self.compressor not in ("blosc", "zstd", "pcodec"):
            raise ValueError(f"profile {self.name}: unknown compressor {self.compressor!r}")
        if self.compressor == "blosc":
            if self.cname not in ("lz4", "lz4hc", "zstd", "zlib", "blosclz"):
                raise ValueError(f"profile {self.name}: unknown blosc cname {self.cname!r}")
            if self.shuffle not in ("noshuffle", "shuffle", "bitshuffle"):
                raise ValueError(f"profile {self.name}: unknown blosc shuffle {self.shuffle!r}")
            if not 0 <= self.level <= 9:
                raise ValueError(f"profile {self.name}: blosc clevel must be 0..9, got {self.level}")
        elif self.compressor == "zstd" and not -7 <= self.level <= 22:
            raise ValueError(f"profile {self.name}: zstd level must be -7..22, got {self.level}")
        elif self.compressor == "pcodec" and not 0 <= self.level <= 12:
            raise ValueError(f"profile {self.name}: pcodec level must be 0..12, got {self.level}")

    def inner_codecs(self) -> list[dict[str, Any]]:
        """The inner-chunk codec chain as Zarr v3 JSON (exactly what zarr-python writes for the same codecs)."""
        if self.compressor == "pcodec":
            return [
                {"name": "numcodecs.astype", "configuration": {"encode_dtype": "uint16", "decode_dtype": "uint8"}},
                {"name": "numcodecs.pcodec", "configuration": {"level": self.level}},
            ]
        prefix: list[dict[str, Any]] = [{"name": "rxrx2.vpredict"}] if self.predictor else []
        if self.compressor == "blosc":
            return [
                *prefix,
                {"name": "bytes"},
                {
                    "name": "blosc",
                    "configuration": {
                        "typesize": 1,
                        "cname": self.cname,
                        "clevel": self.level,
                        "shuffle": self.shuffle,
                        "blocksize": 0,
                    },
                },
            ]
        return [*prefix, {"name": "bytes"}, {"name": "zstd", "configuration": {"level": self.level, "checksum": False}}]


#: The codec profiles, chosen by measurement (README, "Codec profiles"; ``python -m benchmarks``, workload
#: ``codecs``). On RxRx2-like generated sites: ``balanced`` (pcodec) is smaller than PNG and ~3x faster to decode,
#: using only codecs zarr-python + numcodecs decode; ``zstd`` decodes ~5x faster than PNG at ~1.1x its bytes;
#: ``fast`` (LZ4 + bit-shuffle) is fastest and largest; ``compact`` needs this package's own codec and is both
#: the smallest and faster to write and read than ``balanced``.
PROFILES: Mapping[str, CodecProfile] = {
    p.name: p
    for p in (
        CodecProfile("fast", "LZ4 + bit-shuffle (Blosc): fastest to write and read, ~1.8x the PNG bytes", "blosc", 5, "lz4", "bitshuffle"),
        CodecProfile("zstd", "zstd level 3: ~5x faster to read than PNG, ~1.1x its bytes", "zstd", 3),
        CodecProfile("balanced", "pcodec level 8 (numcodecs): smaller than PNG and ~3x faster to read", "pcodec", 8),
        CodecProfile(
            "compact",
            "vertical predictor + zigzag (rxrx2.vpredict, this package's codec) + bit-shuffle + zstd (Blosc): "
            "smallest; readable by zarr-python only with rxrx2-zarr installed",
            "blosc",
            1,
            "zstd",
            "bitshuffle",
            predictor=True,
        ),
    )
}

#: Every codec name a store written by this package may contain (the reader refuses any other).
ALLOWED_CODECS = frozenset(
    {
        "sharding_indexed",
        "bytes",
        "crc32c",
        "blosc",
        "zstd",
        "numcodecs.astype",
        "numcodecs.pcodec",
        "rxrx2.vpredict",
        "vlen-utf8",
    }
)


@dataclass(frozen=True)
class SiteArraySpec:
    """The (c, y, x) uint8 array of one site: size, inner chunks, codec profile, pixel size."""

    height: int
    width: int
    inner_chunks: tuple[int, int] = DEFAULT_INNER_CHUNKS
    profile: str = DEFAULT_PROFILE
    pixel_size: float | None = None
    channels: int = len(CHANNELS)

    def __post_init__(self) -> None:
        for name, edge in (("height", self.height), ("width", self.width)):
            if not isinstance(edge, int) or not 1 <= edge <= MAX_SITE_EDGE:
                raise ValueError(f"site {name} must be 1..{MAX_SITE_EDGE}, got {edge!r}")
        if len(self.inner_chunks) != 2 or any(not isinstance(v, int) or v < MIN_INNER_CHUNK for v in self.inner_chunks):
            raise ValueError(
                f"inner chunks must be two integers of at least {MIN_INNER_CHUNK} (Y, X), got {self.inner_chunks!r}"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"unknown codec profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        if self.pixel_size is not None and not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise ValueError(f"pixel size must be a positive number, got {self.pixel_size!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def chunk_shape(self) -> tuple[int, int, int]:
        """Inner chunk shape: one channel, clipped to the site (a chunk larger than the site is pointless)."""
        return (1, min(self.inner_chunks[0], self.height), min(self.inner_chunks[1], self.width))

    @property
    def chunks_per_shard(self) -> tuple[int, int, int]:
        c, y, x = self.chunk_shape
        return (self.channels // c, -(-self.height // y), -(-self.width // x))

    @property
    def shard_shape(self) -> tuple[int, int, int]:
        """The one outer chunk: the site rounded up to whole inner chunks (Zarr requires divisibility)."""
        _, y, x = self.chunk_shape
        return (self.channels, -(-self.height // y) * y, -(-self.width // x) * x)

    @property
    def codec_profile(self) -> CodecProfile:
        return PROFILES[self.profile]

    def array_metadata(self) -> dict[str, Any]:
        """The site array's ``zarr.json`` document: one shard spanning the whole site."""
        return {
            "shape": list(self.shape),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(self.shard_shape)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [
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
            "attributes": {},
            "dimension_names": ["c", "y", "x"],
            "zarr_format": 3,
            "node_type": "array",
            "storage_transformers": [],
        }

    def options(self) -> dict[str, Any]:
        """The output-affecting options, as recorded in the root attributes (and compared on resume)."""
        return {
            "height": self.height,
            "width": self.width,
            "inner_chunks": list(self.inner_chunks),
            "profile": self.profile,
            "pixel_size": self.pixel_size,
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SiteArraySpec:
        inner = options.get("inner_chunks", DEFAULT_INNER_CHUNKS)
        return cls(
            height=int(options["height"]),
            width=int(options["width"]),
            inner_chunks=(int(inner[0]), int(inner[1])),
            profile=str(options.get("profile", DEFAULT_PROFILE)),
            pixel_size=None if options.get("pixel_size") is None else float(options["pixel_size"]),
        )


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


# --- attribute documents (pure functions of the metadata) --------------------------------------------------------


def omero_metadata() -> dict[str, Any]:
    return {
        "channels": [
            {
                "label": spec.label,
                "color": spec.hex_color,
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {"start": spec.window[0], "end": spec.window[1], "min": 0, "max": 255},
            }
            for spec in CHANNEL_SPECS
        ],
        "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0},
    }


def image_attributes(spec: SiteArraySpec, name: str) -> dict[str, Any]:
    """NGFF 0.5 ``multiscales`` + ``omero`` for a site image group."""
    space_axis: dict[str, Any] = {"type": "space"}
    scale = 1.0
    if spec.pixel_size is not None:
        space_axis["unit"] = "micrometer"
        scale = spec.pixel_size
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, {"name": "y", **space_axis}, {"name": "x", **space_axis}],
                "datasets": [
                    {"path": LEVEL, "coordinateTransformations": [{"type": "scale", "scale": [1.0, scale, scale]}]}
                ],
            }
        ],
        "omero": omero_metadata(),
    }


def plate_attributes(name: str, wells: Sequence[WellAddress], field_count: int) -> dict[str, Any]:
    """NGFF 0.5 ``plate``: every row and column of the physical 1536-well plate, and the wells present."""
    return {
        "version": NGFF_VERSION,
        "plate": {
            "name": name,
            "rows": [{"name": r} for r in GRID_ROWS],
            "columns": [{"name": c} for c in GRID_COLUMNS],
            "wells": [
                {"path": f"{w.row}/{w.column_name}", "rowIndex": w.row_index, "columnIndex": w.column_index}
                for w in sorted(wells, key=lambda w: (w.row_index, w.column))
            ],
            "field_count": field_count,
        },
    }


def well_attributes(sites: Sequence[int]) -> dict[str, Any]:
    return {"version": NGFF_VERSION, "well": {"images": [{"path": str(s)} for s in sorted(sites)]}}


def group_document(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}


@dataclass(frozen=True)
class RootAttributes:
    """What the root group records (under ``rxrx2``). ``complete`` turns true only when conversion finished."""

    options: Mapping[str, Any]
    source: Mapping[str, Any]
    counts: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    pixels: bool = True
    complete: bool = False
    skipped: Sequence[Mapping[str, str]] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "layout_version": LAYOUT_VERSION,
            "format": "rxrx2-zarr",
            "complete": self.complete,
            "pixels": self.pixels,
            "channels": [
                {"number": s.number, "label": s.label, "rgb": list(s.rgb), "window": list(s.window)}
                for s in CHANNEL_SPECS
            ],
            "checksum": CHECKSUM_ALGORITHM,
            "index": {"group": INDEX_GROUP, "columns": list(INDEX_COLUMNS), "order": ["experiment", "plate", "row", "column", "site"]},
            "embeddings": EMBEDDINGS_ARRAY,
            "counts": dict(self.counts),
            "source": dict(self.source),
            "options": dict(self.options),
            "versions": dict(self.versions),
            "skipped": [dict(s) for s in self.skipped],
        }
