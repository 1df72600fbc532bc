"""The gate of every store this package opens: is the root ``zarr.json`` ours, of a layout this version reads, and
complete? Shared by the typed model (:class:`._attrs.RootAttributes`, used by the writer, ``verify``, ``info`` and
``transcode``) and by ``open()``, which stops at this gate instead of parsing the whole model: pydantic and the
models cost about 100 ms to import and build in a fresh process, against an ``open()`` of about 250 ms for the
full release (measured with ``python -X importtime``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ._errors import StoreFormatError
from ._layout import LAYOUT_VERSION, TRANSCODABLE_LAYOUTS

__all__ = ["check_complete", "check_layout", "rxrx2_root"]


def rxrx2_root(doc: Any, store: str) -> dict[str, Any]:
    """The raw ``rxrx2`` attributes of a root ``zarr.json`` document, after checking that it is one of ours (any
    layout); StoreFormatError naming ``store`` otherwise."""
    if not isinstance(doc, Mapping) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreFormatError(f"{store}: zarr.json: not a Zarr v3 group")
    attributes = doc.get("attributes")
    attrs = attributes.get("rxrx2") if isinstance(attributes, Mapping) else None
    if not isinstance(attrs, Mapping) or attrs.get("format") != "rxrx2-zarr":
        raise StoreFormatError(f"{store}: not an rxrx2-zarr store (the root group has no 'rxrx2' attributes)")
    return dict(attrs)


def check_layout(version: Any, store: str, layouts: Collection[int] | None) -> None:
    """StoreFormatError unless ``version`` is in ``layouts`` (None: any); an older layout's message names
    ``transcode``."""
    if layouts is None or version in layouts:
        return
    if version in TRANSCODABLE_LAYOUTS:
        raise StoreFormatError(
            f"{store}: layout version {version} is an older rxrx2-zarr layout (no per-chunk checksums, no "
            f"thumbnails, no columnar index); rewrite it as layout {LAYOUT_VERSION} with "
            f"`rxrx2-zarr transcode {store} NEW_STORE` (no PNGs needed)"
        )
    raise StoreFormatError(
        f"{store}: layout version {version!r} is not one this version of rxrx2-zarr "
        f"reads ({LAYOUT_VERSION}); upgrade rxrx2-zarr or re-convert the store"
    )


def check_complete(complete: Any, store: str) -> None:
    """StoreFormatError unless the conversion finished (an incomplete store has no index yet)."""
    if complete is not True:
        raise StoreFormatError(
            f"{store}: the store is incomplete (its conversion did not finish); "
            "finish it with `rxrx2-zarr convert SRC DST --resume` before reading it"
        )
