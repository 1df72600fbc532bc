"""How each side of a comparison reads pixels.

The PNG side is ``rxrx2_zarr.testing.PngSiteReader`` (six files decoded per site, Pillow or imagecodecs), plus the
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

from rxrx2_zarr._dataset import open as open_store
from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr.testing import PngSiteReader

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
    """Reads sites of an rxrx2-zarr store with one thread per call (``Dataset.read(..., threads=1)``)."""

    def __init__(self, url: str) -> None:
        self.dataset = open_store(url)
        self.path = "one thread (Dataset.read(threads=1))"

    def read(self, site_id: str, channels: list[int] | None, region: Region | None) -> Pixels:
        block: Pixels = self.dataset.read([site_id], channels=channels, region=region, threads=1)[0]
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
