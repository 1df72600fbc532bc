"""How each side of a comparison reads pixels.

The PNG side is ``rxrx2_zarr._timing.PngSiteReader`` (six files decoded per site, Pillow or imagecodecs), plus the
one-file read of a single channel here. The store side is :class:`StoreSiteReader`: strictly one thread per read,
so that "1 thread" means the same on both sides. The library's own ``Dataset.site``/``read`` split a single site
over its read pool (faster on an idle multi-core machine, but not a one-thread figure); the suite reports that
path separately as the library default.
"""

from __future__ import annotations

import io
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt

from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr._reader import open as open_store
from rxrx2_zarr._timing import PngSiteReader

__all__ = ["PngSiteReader", "StoreSiteReader", "decode_png_bytes", "open_store", "png_channel", "same"]

Pixels = npt.NDArray[np.uint8]
Region = tuple[int, int, int, int]


def decode_png_bytes(data: bytes, decoder: str) -> Pixels:
    if decoder == "pillow":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image)
    decoded: Pixels = imagecodecs.png_decode(data)
    return decoded


def png_channel(reader: PngSiteReader, site_id: str, channel: int) -> Pixels:
    """One channel (1..6) of a site from the PNG tree: a single file read and decoded."""
    path = parse_site_id(site_id).image_paths((channel,))[0]
    return decode_png_bytes(reader.store.read(path), reader.decoder)


class StoreSiteReader:
    """Reads sites of an rxrx2-zarr store with one thread per call.

    Uses the reader's per-site path with ``parallel=False`` (``Dataset._store.reader``); if a later version of
    the reader no longer has it, falls back to the public ``Dataset.read`` and says so in :attr:`path`.
    """

    def __init__(self, url: str) -> None:
        self.dataset = open_store(url)
        store = getattr(self.dataset, "_store", None)
        self._reader = getattr(store, "reader", None)
        self._ref = getattr(store, "ref", None)
        self._positions = {site_id: k for k, site_id in enumerate(self.dataset.site_ids)}
        self.path = (
            "one thread (reader.read(parallel=False))"
            if self._reader and self._ref
            else "public Dataset.read (library read pool)"
        )

    def read(self, site_id: str, channels: list[int] | None, region: Region | None) -> Pixels:
        if self._reader is not None and self._ref is not None:
            ref = self._ref(self._positions[site_id])
            zero_based = None if channels is None else [c - 1 for c in channels]
            pixels: Pixels = self._reader.read(ref, zero_based, region, parallel=False)
            return pixels
        block: Pixels = self.dataset.read([site_id], channels=channels, region=region)[0]
        return block

    def site(self, site_id: str) -> Pixels:
        return self.read(site_id, None, None)

    def crop(self, site_id: str, region: Region) -> Pixels:
        return self.read(site_id, None, region)

    def channel(self, site_id: str, channel: int) -> Pixels:
        plane: Pixels = self.read(site_id, [channel], None)[0]
        return plane

    def default_site(self, site_id: str) -> Pixels:
        """The library's default single-site read (``Dataset.site``, which may use its read pool)."""
        return self.dataset.site(site_id)


def same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
