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
    SpecialFileError,
    StoreExistsError,
    StoreFormatError,
    StoreLockedError,
    StoreWriteError,
    VerificationError,
)
from ._info import InfoReport, info
from ._layout import PROFILES, CodecProfile, SiteArraySpec
from ._paths import ImageKey, SiteKey, WellAddress, parse_image_path, parse_site_id, parse_well_id
from ._reader import Dataset, open
from ._render import to_rgb
from ._schema import load_embeddings, load_metadata
from ._synth import SynthReport, synth
from ._verify import VerifyReport, verify

__all__ = [
    "PROFILES",
    "ChunkReadError",
    "CodecProfile",
    "ConvertOptions",
    "ConvertReport",
    "Dataset",
    "ImageError",
    "ImageKey",
    "InfoReport",
    "MetadataError",
    "PathGrammarError",
    "RxRx2ZarrError",
    "SiteArraySpec",
    "SiteKey",
    "SiteNotFoundError",
    "SourceError",
    "SpecialFileError",
    "StoreExistsError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreWriteError",
    "SynthReport",
    "VerificationError",
    "VerifyReport",
    "WellAddress",
    "convert",
    "info",
    "load_embeddings",
    "load_metadata",
    "open",
    "parse_image_path",
    "parse_site_id",
    "parse_well_id",
    "synth",
    "to_rgb",
    "verify",
]
