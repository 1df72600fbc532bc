"""rxrx2-zarr: the RxRx2 cell-painting dataset as one OME-NGFF 0.5 HCS Zarr v3 store, read lazily with Dask."""

from __future__ import annotations

from ._convert import ConvertOptions, ConvertReport, convert
from ._errors import (
    ChunkReadError,
    ImageError,
    MetadataError,
    PathGrammarError,
    RxRx2ZarrError,
    SiteNotFoundError,
    SourceError,
    StoreExistsError,
    StoreFormatError,
    StoreLockedError,
    VerificationError,
)
from ._layout import PROFILES, CodecProfile, SiteArraySpec
from ._paths import ImageKey, SiteKey, WellAddress, parse_image_path, parse_site_id, parse_well_id
from ._schema import load_embeddings, load_metadata

__all__ = [
    "PROFILES",
    "ChunkReadError",
    "CodecProfile",
    "ConvertOptions",
    "ConvertReport",
    "ImageError",
    "ImageKey",
    "MetadataError",
    "PathGrammarError",
    "RxRx2ZarrError",
    "SiteArraySpec",
    "SiteKey",
    "SiteNotFoundError",
    "SourceError",
    "StoreExistsError",
    "StoreFormatError",
    "StoreLockedError",
    "VerificationError",
    "WellAddress",
    "convert",
    "load_embeddings",
    "load_metadata",
    "parse_image_path",
    "parse_site_id",
    "parse_well_id",
]
