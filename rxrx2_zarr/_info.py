"""``info``: what a store holds, what it costs on disk, and how that compares with its source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._dataset import open as open_store
from ._layout import LEVEL, SHARD_KEY, THUMBNAIL_LEVEL
from ._storage import StoreIO
from ._verify import _root_attrs

__all__ = ["InfoReport", "info"]


@dataclass(frozen=True)
class InfoReport:
    url: str
    attrs: Mapping[str, Any]
    per_plate: pd.DataFrame
    objects: int
    bytes_on_disk: int
    shard_objects: int
    shard_bytes: int
    thumbnail_bytes: int

    @property
    def source_png_bytes(self) -> int:
        return int(self.attrs.get("source", {}).get("png_bytes") or 0)

    @property
    def ratio(self) -> float:
        """Pixel bytes (shards and thumbnails) over the source PNG bytes."""
        pixels = self.shard_bytes + self.thumbnail_bytes
        return pixels / self.source_png_bytes if self.source_png_bytes else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "complete": self.attrs.get("complete"),
            "pixels": self.attrs.get("pixels"),
            "counts": self.attrs.get("counts"),
            "options": self.attrs.get("options"),
            "plates": self.per_plate.to_dict(orient="records"),
            "objects": self.objects,
            "bytes_on_disk": self.bytes_on_disk,
            "shard_objects": self.shard_objects,
            "shard_bytes": self.shard_bytes,
            "thumbnail_bytes": self.thumbnail_bytes,
            "readers": self.attrs.get("readers"),
            "source_png_bytes": self.source_png_bytes,
            "source_png_files": self.attrs.get("source", {}).get("png_files"),
            "ratio_to_png": None if self.ratio != self.ratio else self.ratio,
            "skipped": self.attrs.get("skipped", []),
        }

    def summary(self) -> str:
        counts = self.attrs.get("counts", {})
        options = self.attrs.get("options", {})
        lines = [
            f"{self.url}: rxrx2-zarr layout {self.attrs.get('layout_version')}, "
            f"{'complete' if self.attrs.get('complete') else 'INCOMPLETE (run convert --resume)'}"
            f"{'' if self.attrs.get('pixels', True) else ', no pixels'}",
            f"  {_count(counts.get('sites', 0), 'site')}, {_count(counts.get('wells', 0), 'well')}, "
            f"{_count(counts.get('plates', 0), 'plate')}, {_count(counts.get('experiments', 0), 'experiment')}; "
            f"sites {options.get('height')}x{options.get('width')} x 6 channels",
            f"  profile {options.get('profile')} (level {options.get('level')}), inner chunks {options.get('inner_chunks')}, "
            f"embeddings {counts.get('embedding_dim', 0)}-dim ({counts.get('embeddings_missing', 0)} missing)",
            f"  on disk: {self.bytes_on_disk / 1e6:,.1f} MB in {self.objects:,} objects "
            f"({self.shard_objects:,} site shards, {self.shard_bytes / 1e6:,.1f} MB; thumbnails "
            f"{self.thumbnail_bytes / 1e6:,.2f} MB)",
            f"  readable by: {self.attrs.get('readers') or 'rxrx2-zarr'}",
        ]
        if self.source_png_bytes:
            files = self.attrs.get("source", {}).get("png_files", 0)
            lines.append(
                f"  source: {self.source_png_bytes / 1e6:,.1f} MB in {files:,} PNG files; shards and thumbnails are {self.ratio:.3f}x "
                f"the PNG bytes, {files / max(self.shard_objects, 1):.1f} PNG files per stored object"
            )
        if self.attrs.get("skipped"):
            lines.append(f"  skipped at conversion: {len(self.attrs['skipped'])} site(s)")
        lines.append("  per plate:")
        lines.extend(
            f"    {r.experiment} plate {r.plate}: {r.wells} wells, {r.sites} sites, {r.empty_sites} EMPTY sites"
            for r in self.per_plate.itertuples()
        )
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def info(url: str, storage_options: Mapping[str, Any] | None = None) -> InfoReport:
    store = StoreIO(url, storage_options)
    attrs = _root_attrs(store)
    if attrs.get("complete"):
        sites = open_store(url, storage_options).sites
        per_plate = (
            sites.assign(empty=sites["treatment"] == "EMPTY")
            .groupby(["experiment", "plate"], sort=False)
            .agg(wells=("well_id", "nunique"), sites=("well_id", "size"), empty_sites=("empty", "sum"))
            .reset_index()
        )
    else:  # an interrupted conversion has no index yet: report what the root and the listing say
        per_plate = pd.DataFrame(columns=["experiment", "plate", "wells", "sites", "empty_sites"])
    listing = store.find(detail=True)
    shards = {k: v for k, v in listing.items() if k.endswith(f"/{LEVEL}/{SHARD_KEY}")}
    thumbnails = {k: v for k, v in listing.items() if k.endswith(f"/{THUMBNAIL_LEVEL}/{SHARD_KEY}")}
    return InfoReport(
        url=url,
        attrs=attrs,
        per_plate=per_plate,
        objects=len(listing),
        bytes_on_disk=sum(listing.values()),
        shard_objects=len(shards),
        shard_bytes=sum(shards.values()),
        thumbnail_bytes=sum(thumbnails.values()),
    )
