"""The package's error hierarchy.

One base class, :class:`RxRx2ZarrError`; every subclass also inherits the built-in exception a caller would
naturally catch (``ValueError`` for bad input, ``FileNotFoundError`` for missing things, ...), in the manner of
zarr-python's ``NodeNotFoundError(BaseZarrError, FileNotFoundError)``. Messages always name the offending file,
row, site or string.
"""

from __future__ import annotations

__all__ = [
    "ChunkReadError",
    "CodecError",
    "ImageError",
    "MetadataError",
    "PathGrammarError",
    "RxRx2ZarrError",
    "SiteNotFoundError",
    "SourceError",
    "SpecialFileError",
    "StoreExistsError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreWriteError",
    "TransferError",
]


class RxRx2ZarrError(Exception):
    """Base class of every error this package raises on purpose."""


class PathGrammarError(RxRx2ZarrError, ValueError):
    """A string is not a valid RxRx2 image path, well address, well_id or site_id."""


class MetadataError(RxRx2ZarrError, ValueError):
    """``metadata.csv`` or ``embeddings.csv`` is malformed (the message names the row, column and value)."""


class ImageError(RxRx2ZarrError, ValueError):
    """A source PNG is corrupt, of the wrong kind or size (the message names the file)."""


class SourceError(RxRx2ZarrError, FileNotFoundError):
    """The source tree lacks something it must have (metadata file, an image of a site)."""


class SpecialFileError(RxRx2ZarrError, OSError):
    """A path names a FIFO, device, socket or directory (or a symlink to one) where a regular file is expected;
    refused without reading it (a FIFO would block forever)."""


class TransferError(RxRx2ZarrError, OSError):
    """Reading the source failed after bounded retries: an HTTP error status, a connection lost, a short transfer.

    Not a problem of one image (so never skipped by ``--on-error skip``): the run stops, what was written stays
    complete and ``--resume`` continues it. The message names the URL (and zip member) and the HTTP status.
    """


class StoreExistsError(RxRx2ZarrError, FileExistsError):
    """The destination exists and neither overwrite nor resume was asked for, or resume does not match it."""


class StoreLockedError(RxRx2ZarrError, RuntimeError):
    """Another converter holds the destination's lock."""


class StoreWriteError(RxRx2ZarrError, OSError):
    """Writing an object failed in a way that retrying cannot fix (disk full, quota); the message names the object
    and the store, ``errno`` is the original one."""


class StoreFormatError(RxRx2ZarrError, ValueError):
    """A store is not an rxrx2-zarr store, or its metadata is malformed or unsafe to read."""


class SiteNotFoundError(RxRx2ZarrError, KeyError):
    """A site_id is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class ChunkReadError(RxRx2ZarrError, OSError):
    """A stored object of a site is missing or corrupt (the message names the site_id and the object)."""



class CodecError(RxRx2ZarrError, ValueError):
    """Bytes given to this package's own codec (``rxrx2.turbo``) are not a valid chunk of it: the message says
    which structure is wrong (header, tables, tile, plane stream); callers add which object they came from."""
