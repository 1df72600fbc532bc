"""rxrx2-zarr: the RxRx2 cell-painting dataset as one OME-NGFF 0.5 HCS Zarr v3 store, read lazily with Dask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exports import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from ._convert import ConvertOptions, ConvertReport, convert
    from ._dataset import Dataset, open
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
        TransferError,
    )
    from ._info import InfoReport, info
    from ._layout import PROFILES, CodecProfile, SiteArraySpec
    from ._paths import ImageKey, SiteKey, WellAddress, parse_image_path, parse_site_id, parse_well_id
    from ._render import render_rgb
    from ._schema import load_embeddings, load_metadata
    from ._verify import VerifyReport, verify
    from .testing import SynthReport, synth

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
    "TransferError",
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
    "render_rgb",
    "synth",
    "verify",
]

#: Where each public name lives. ``import rxrx2_zarr`` imports none of these modules: ``open()`` needs the reader
#: only, and the converter (pandas, zarr, the codecs) or the generator cost hundreds of milliseconds to import.
_EXPORTS: dict[str, str] = {
    "ChunkReadError": "._errors",
    "CodecProfile": "._layout",
    "ConvertOptions": "._convert",
    "ConvertReport": "._convert",
    "Dataset": "._dataset",
    "ImageError": "._errors",
    "ImageKey": "._paths",
    "InfoReport": "._info",
    "MetadataError": "._errors",
    "PROFILES": "._layout",
    "PathGrammarError": "._errors",
    "RxRx2ZarrError": "._errors",
    "SiteArraySpec": "._layout",
    "SiteKey": "._paths",
    "SiteNotFoundError": "._errors",
    "SourceError": "._errors",
    "SpecialFileError": "._errors",
    "StoreExistsError": "._errors",
    "StoreFormatError": "._errors",
    "StoreLockedError": "._errors",
    "StoreWriteError": "._errors",
    "SynthReport": ".testing",
    "TransferError": "._errors",
    "VerifyReport": "._verify",
    "WellAddress": "._paths",
    "convert": "._convert",
    "info": "._info",
    "load_embeddings": "._schema",
    "load_metadata": "._schema",
    "open": "._dataset",
    "parse_image_path": "._paths",
    "parse_site_id": "._paths",
    "parse_well_id": "._paths",
    "render_rgb": "._render",
    "synth": ".testing",
    "verify": "._verify",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())
