"""Rendering sites as RGB with Recursion's channel colours, montages of labelled tiles, and ``show``.

The colour rule is rxrx1-utils' ``convert_tensor_to_rgb`` (``rxrx/io.py``), reproduced exactly: for each channel
with colour ``rgb`` and window ``(lo, hi)``::

    x = (t / vmax) / ((hi - lo) / 255) + lo / 255        # vmax = 255
    x = min(x, 1)
    contribution = int(x * rgb)                          # truncated per channel, as its ``dtype=int`` does

summed over channels and clipped to 255. rxrx1-utils hard-codes 512 x 512; here any size works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._channels import CHANNEL_SPECS, ChannelSpec
from ._paths import CHANNELS

if TYPE_CHECKING:
    from PIL import Image

    from ._dataset import Dataset

__all__ = ["montage", "render_planes", "render_rgb", "show"]

RGB = npt.NDArray[np.uint8]
_SPECS: Mapping[int, ChannelSpec] = {spec.number: spec for spec in CHANNEL_SPECS}
#: Default tile edge of a montage: 16 RxRx2 sites at 256 px make a 1024 px wide image.
DEFAULT_TILE = 256


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    numbers = tuple(channels)
    if not numbers or any(not isinstance(c, int | np.integer) or isinstance(c, bool) or int(c) not in _SPECS for c in numbers):
        raise ValueError(f"channels must be channel numbers {sorted(_SPECS)}, got {channels!r}")
    return tuple(int(c) for c in numbers)


def render_planes(planes: npt.ArrayLike, channels: Sequence[int], vmax: float = 255.0) -> RGB:
    """Render ``planes`` (..., len(channels), H, W), plane i being channel ``channels[i]``, to (..., H, W, 3)."""
    numbers = _check_channels(channels)
    data = np.asarray(planes)
    if data.ndim < 3 or data.shape[-3] != len(numbers):
        raise ValueError(f"expected planes of shape (..., {len(numbers)}, H, W) for channels {numbers}, got {data.shape}")
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax!r}")
    total = np.zeros((*data.shape[:-3], *data.shape[-2:], 3), dtype=np.int64)
    for i, number in enumerate(numbers):
        spec = _SPECS[number]
        lo, hi = spec.window
        # float64 throughout, as rxrx1-utils computes it: the per-channel truncation must land on the same integers
        x = (data[..., i, :, :].astype(np.float64) / vmax) / ((hi - lo) / 255) + lo / 255
        np.minimum(x, 1.0, out=x)
        for component, weight in enumerate(spec.rgb):
            if weight:
                total[..., component] += (x * weight).astype(np.int64)
    return np.clip(total, 0, 255).astype(np.uint8)


def render_rgb(pixels: npt.ArrayLike, channels: Sequence[int] = CHANNELS, vmax: float = 255.0) -> RGB:
    """Recursion's RGB rendering of pixels: a site (6, H, W) -> (H, W, 3) uint8, or sites (n, 6, H, W) -> (n, H, W, 3).

    Pixels in, RGB out; ``Dataset.to_rgb(site_ids)`` reads sites of a store by id and renders them the same way.

    ``channels`` (numbers 1..6) chooses which channels contribute. Pixels holding only some channels are accepted
    too when they hold exactly ``len(channels)`` planes, in the order of ``channels`` (as ``Dataset.read(...,
    channels=...)`` returns them); a six-plane input is always taken as a full site, w1..w6.
    """
    numbers = _check_channels(channels)
    data = np.asarray(pixels)
    if data.ndim not in (3, 4):
        raise ValueError(f"expected pixels of shape (6, H, W) or (n, 6, H, W), got {data.shape}")
    if data.shape[-3] == len(CHANNEL_SPECS):
        data = data[..., [n - 1 for n in numbers], :, :]
    elif data.shape[-3] != len(numbers):
        raise ValueError(
            f"pixels have {data.shape[-3]} channel planes: expected 6 (a full site) or {len(numbers)} (one per "
            f"channel in {numbers})"
        )
    return render_planes(data, numbers, vmax)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _label_lines(row: Mapping[str, Any]) -> list[str]:
    conc = row["treatment_conc"]
    treatment = str(row["treatment"])
    if isinstance(conc, float) and math.isnan(conc):
        return [str(row["site_id"]), treatment]
    return [str(row["site_id"]), f"{treatment} @ {conc:.3g}"]


def montage(
    dataset: Dataset,
    site_ids: Sequence[str],
    *,
    channels: Sequence[int] = CHANNELS,
    tile: int = DEFAULT_TILE,
    columns: int | None = None,
    vmax: float = 255.0,
    label: bool = True,
) -> Image.Image:
    """A grid of the sites rendered with Recursion's colours, each tile labelled with its site_id, treatment and
    concentration. Tiles are at most ``tile`` pixels wide (sites are shrunk by area averaging, never enlarged)."""
    from PIL import Image, ImageDraw

    ids = list(site_ids)
    if not ids:
        raise ValueError("montage needs at least one site")
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    numbers = _check_channels(channels)
    spec = dataset.spec
    width = min(tile, spec.width)
    height = max(1, round(spec.height * width / spec.width))
    font_size = max(8, min(14, width // 14))
    font = _font(font_size)
    line_height = font_size + 3
    label_height = 2 * line_height + 4 if label else 0
    columns = columns if columns is not None else math.ceil(math.sqrt(len(ids)))
    columns = max(1, min(columns, len(ids)))
    rows = math.ceil(len(ids) / columns)
    canvas = Image.new("RGB", (columns * width, rows * (height + label_height)), (0, 0, 0))
    planes = dataset.read(ids, channels=numbers)  # only the channels rendered are read; unknown ids raise here
    metadata = dataset.sites.loc[ids]
    for k in range(len(ids)):
        image = Image.fromarray(render_planes(planes[k], numbers, vmax), mode="RGB")
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.BOX)
        cell = Image.new("RGB", (width, height + label_height), (24, 24, 24))
        cell.paste(image, (0, 0))
        if label:
            draw = ImageDraw.Draw(cell)  # drawn on the tile, so a long label is clipped at its edge
            row = {str(key): value for key, value in metadata.iloc[k].items()}
            for line, text in enumerate(_label_lines(row)):
                draw.text((3, height + 2 + line * line_height), text, fill=(235, 235, 235), font=font)
        canvas.paste(cell, ((k % columns) * width, (k // columns) * (height + label_height)))
    return canvas


def show(
    url: str,
    site_ids: Sequence[str] = (),
    *,
    out: str | Path,
    select: Mapping[str, Any] | None = None,
    max_sites: int = 16,
    storage_options: Mapping[str, Any] | None = None,
    channels: Sequence[int] = CHANNELS,
    tile: int = DEFAULT_TILE,
) -> Path:
    """Write a labelled montage PNG of ``site_ids`` (or of the first ``max_sites`` sites matching ``select``) of
    the store at ``url`` to ``out``; returns the path written.

    With both, the site_ids must belong to the selection. At most ``max_sites`` tiles are drawn.
    """
    from ._dataset import open as open_store

    if max_sites < 1:
        raise ValueError(f"max_sites must be at least 1, got {max_sites}")
    dataset = open_store(url, storage_options)
    if select:
        dataset = dataset.select(**dict(select))
    ids = list(site_ids) if site_ids else dataset.site_ids[:max_sites]
    if not ids:
        raise ValueError(f"no site of {url} matches the selection {dict(select or {})}")
    image = montage(dataset, ids[:max_sites], channels=channels, tile=tile)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
