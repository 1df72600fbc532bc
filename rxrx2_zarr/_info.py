"""``info``: what a store holds, what it costs on disk, and how that compares with its source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._dataset import open as open_store
from ._json import report_json
from ._layout import LEVEL, SHARD_KEY, THUMBNAIL_LEVEL
from ._storage import StoreIO
from ._text import count, problem_lines
from ._verify import _root_attrs

__all__ = ["InfoReport", "info"]


@dataclass(frozen=True)
class InfoReport:
    """What ``info`` found: the root attributes, sites per plate, and the objects and bytes of the store."""

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
        """The report's fields (``per_plate`` as a list of rows), ``source_png_bytes`` and ``ratio`` as a
        JSON-ready document (``rxrx2-zarr info --json``)."""
        return report_json(self, source_png_bytes=self.source_png_bytes, ratio=self.ratio)

    def summary(self) -> str:
        counts = self.attrs.get("counts", {})
        options = self.attrs.get("options", {})
        lines = [
            f"{self.url}: rxrx2-zarr layout {self.attrs.get('layout_version')}, "
            f"{'complete' if self.attrs.get('complete') else 'INCOMPLETE (run convert --resume)'}"
            f"{'' if self.attrs.get('pixels', True) else ', no pixels'}",
            f"  {count(counts.get('sites', 0), 'site')}, {count(counts.get('wells', 0), 'well')}, "
            f"{count(counts.get('plates', 0), 'plate')}, {count(counts.get('experiments', 0), 'experiment')}; "
            f"sites {options.get('height')}x{options.get('width')} x 6 channels",
            f"  profile {options.get('profile')} (level {options.get('level')}), inner chunks {options.get('inner_chunks')}, "
            f"embeddings {counts.get('embedding_dim', 0)}-dim ({counts.get('embeddings_missing', 0)} missing)",
            f"  on disk: {self.bytes_on_disk / 1e6:,.1f} MB in {count(self.objects, 'object')} "
            f"({count(self.shard_objects, 'site shard')}, {self.shard_bytes / 1e6:,.1f} MB; thumbnails "
            f"{self.thumbnail_bytes / 1e6:,.2f} MB)",
            f"  readable by: {self.attrs.get('readers') or 'rxrx2-zarr'}",
        ]
        if self.source_png_bytes:
            files = self.attrs.get("source", {}).get("png_files", 0)
            lines.append(
                f"  source: {self.source_png_bytes / 1e6:,.1f} MB in {count(files, 'PNG file')}; shards and thumbnails are {self.ratio:.3f}x "
                f"the PNG bytes, {files / max(self.shard_objects, 1):.1f} PNG files per stored object"
            )
        skipped = self.attrs.get("skipped") or []
        if skipped:
            lines.append(f"  skipped at conversion: {count(len(skipped), 'site')}")
            lines.extend(problem_lines([f"{s.get('site_id')}: {s.get('reason')}" for s in skipped], prefix="    "))
        lines.append("  per plate:")
        for r in self.per_plate.to_dict(orient="records"):
            lines.append(
                f"    {r['experiment']} plate {r['plate']}: {count(int(r['wells']), 'well')}, "
                f"{count(int(r['sites']), 'site')}, {count(int(r['empty_sites']), 'EMPTY site')}"
            )
        return "\n".join(lines)


def info(url: str, storage_options: Mapping[str, Any] | None = None) -> InfoReport:
    """What the store at ``url`` holds (counts per experiment and plate), its objects and bytes, and how they
    compare with the source it was converted from."""
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
