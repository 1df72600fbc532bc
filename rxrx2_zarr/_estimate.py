"""``convert --dry-run``: plan a conversion (every check, no writes) and time reading and encoding a few sites."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._convert import ConvertOptions, PngSource, encode_site, plan_conversion, resolve_options, site_spec
from ._json import report_json
from ._text import count

__all__ = ["RELEASE_SITES", "ConversionEstimate", "estimate"]


#: Sites in the whole RxRx2 release (../shared/RXRX2.md), for ``convert --dry-run``'s estimate.
RELEASE_SITES = 131_953


@dataclass(frozen=True)
class ConversionEstimate:
    """What ``convert --dry-run`` measured on a few sites: the cost per site of each side, one core."""

    sites: int
    sample: tuple[str, ...]
    profile: str
    level: int
    read_seconds: float
    """Reading and decoding one site's six PNGs (median of the sample)."""
    encode_seconds: float
    """Encoding one site's shard and thumbnail (median of the sample)."""
    ratio: float
    """Encoded bytes over the PNG bytes of the sample."""

    def cpu_hours(self, sites: int) -> float:
        return sites * (self.read_seconds + self.encode_seconds) / 3600

    def to_json(self) -> dict[str, Any]:
        """The estimate's fields and its CPU-hours as a JSON-ready document (``convert --dry-run --json``)."""
        return report_json(self, cpu_hours=self.cpu_hours(self.sites), release_cpu_hours=self.cpu_hours(RELEASE_SITES))

    def summary(self) -> str:
        return "\n".join(
            [
                f"dry run: {count(self.sites, 'site')} planned; measured on {len(self.sample)} of them, one core:",
                f"  PNG read + decode {self.read_seconds * 1e3:,.0f} ms/site, encode ({self.profile}, level "
                f"{self.level}) {self.encode_seconds * 1e3:,.0f} ms/site, {self.ratio:.3f}x the PNG bytes",
                f"  estimate: {self.cpu_hours(self.sites):,.2f} CPU-hours for this conversion, "
                f"{self.cpu_hours(RELEASE_SITES):,.0f} CPU-hours for the whole release ({RELEASE_SITES:,} sites) "
                "at this site size; divide by the workers you run",
                "  nothing was written",
            ]
        )


def estimate(src: str, options: ConvertOptions | None = None, sample: int = 3, **kwargs: Any) -> ConversionEstimate:
    """Plan the conversion (all checks, no writes) and time reading and encoding a few of its sites."""
    options = resolve_options(options, kwargs)
    plan = plan_conversion(src, options, on_error="fail", need_pixels=True)
    spec = site_spec(plan, options)
    assert plan.source is not None  # make_plan always resolves its source
    source = PngSource(plan.source)
    picks = [plan.items[i] for i in np.linspace(0, len(plan.items) - 1, min(sample, len(plan.items))).astype(int)]
    reads, encodes, png, stored = [], [], 0, 0
    for item in picks:
        begin = time.perf_counter()
        pixels, nbytes = source.read(item, plan.size)
        middle = time.perf_counter()
        shard, thumb = encode_site(spec, pixels)
        reads.append(middle - begin)
        encodes.append(time.perf_counter() - middle)
        png += nbytes
        stored += len(shard) + len(thumb)
    return ConversionEstimate(
        sites=len(plan.items),
        sample=tuple(item.site_id for item in picks),
        profile=spec.profile,
        level=spec.codec_profile.level,
        read_seconds=float(np.median(reads)),
        encode_seconds=float(np.median(encodes)),
        ratio=stored / png if png else float("nan"),
    )
