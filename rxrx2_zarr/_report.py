"""What a conversion (or a transcode) did: :class:`ConvertReport`, returned by ``convert`` and printed by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._json import report_json
from ._plan import Skip
from ._text import count, problem_lines

__all__ = ["ConvertReport"]


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did."""

    src: str
    dst: str
    sites_total: int
    converted: int
    resumed_skipped: int
    """Sites found complete in the store by ``--resume`` and not rewritten."""
    skipped: tuple[Skip, ...]
    png_bytes: int
    stored_bytes: int
    seconds: float
    extra_files: int
    embeddings_missing: int
    warnings: tuple[str, ...]
    pixels: bool
    execution: str
    source: str = ""
    """Where the images, metadata and embeddings were found."""
    source_unit: str = "PNG"
    """What ``png_bytes`` counts: the PNG files (convert), or decoded pixels of a source store (transcode)."""

    @property
    def ratio(self) -> float:
        """Stored shard bytes over the PNG bytes of the same sites (lower is smaller)."""
        return self.stored_bytes / self.png_bytes if self.png_bytes else float("nan")

    @property
    def sites_per_second(self) -> float:
        return self.converted / self.seconds if self.seconds > 0 else float("nan")

    @property
    def png_mb_per_second(self) -> float:
        return self.png_bytes / 1e6 / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The report's fields and its rates as a JSON-ready document (``rxrx2-zarr convert --json``)."""
        return report_json(
            self, ratio=self.ratio, sites_per_second=self.sites_per_second, png_mb_per_second=self.png_mb_per_second
        )

    def summary(self) -> str:
        lines = [
            f"converted {self.converted:,} of {count(self.sites_total, 'site')} from {self.src} to {self.dst} ({self.execution})",
        ]
        if self.source:
            lines.append(f"source: {self.source}")
        if self.resumed_skipped:
            lines.append(f"resume: {count(self.resumed_skipped, 'site')} already complete, not rewritten")
        if self.pixels and self.source_unit == "PNG":
            ratio = f" ({self.ratio:.3f}x the PNG bytes)" if self.png_bytes else ""
            lines.append(
                f"read {self.png_bytes / 1e6:,.1f} MB of PNG, wrote {self.stored_bytes / 1e6:,.1f} MB of shards{ratio}"
            )
        elif self.pixels:
            lines.append(
                f"read {self.png_bytes / 1e6:,.1f} MB of {self.source_unit}, wrote {self.stored_bytes / 1e6:,.1f} MB "
                f"of shards and thumbnails"
            )
        else:
            lines.append("no pixels written (--no-pixels): the tree, attributes, index and embeddings only")
        lines.append(
            f"wall time {self.seconds:.1f} s: {self.sites_per_second:.2f} sites/s, {self.png_mb_per_second:.1f} MB/s of "
            f"{self.source_unit}"
        )
        if self.extra_files:
            lines.append(f"ignored {count(self.extra_files, 'file')} under images/ that are not RxRx2 image names")
        if self.embeddings_missing:
            lines.append(f"{count(self.embeddings_missing, 'site')} without an embedding (NaN rows)")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.skipped:
            lines.append(f"skipped {count(len(self.skipped), 'site')}:")
            lines.extend(problem_lines([f"{s.site_id}: {s.reason}" for s in self.skipped]))
        return "\n".join(lines)
