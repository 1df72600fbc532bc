"""``transcode``: rewrite an existing store with another codec profile (or layout), without the PNGs.

A store is its own source: the plan (sites in store order, their metadata, the embeddings, the image size) comes
from the source store's index, and each site task reads the site's pixels from the source store instead of six PNGs.
Everything else is the converter's machinery (:func:`._convert.run_conversion`): destination checks, lock,
bulk documents, resumable per-site tasks, finalize. So a ``balanced`` or ``compact`` store made by an earlier version
(layout 1) becomes a default store that opens in every Zarr reader, and ``verify SRC_STORE DST_STORE`` checks the
result pixel by pixel against the source store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._convert import ConvertOptions, ConvertReport, resolve_options, run_conversion
from ._dataset import Dataset, open_any_layout
from ._destination import check_separate
from ._errors import ChunkReadError, ImageError
from ._fs import portable_url
from ._layout import site_paths
from ._paths import parse_site_id
from ._plan import ConversionPlan, SiteItem
from ._storage import StoreIO

__all__ = ["StoreSource", "plan_from_store", "transcode"]

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class StoreSource:
    """Site pixels read from an existing rxrx2-zarr store (any layout ``transcode`` reads)."""

    url: str
    options: Mapping[str, Any]
    unit = "decoded pixels (source store)"

    def dataset(self) -> Dataset:
        # one open source store per process (site tasks run in threads or worker processes)
        return open_any_layout(self.url, self.options, cached=True)

    def read(self, item: SiteItem, size: tuple[int, int], notes: list[str] | None = None) -> tuple[Pixels, int]:
        del notes  # a store holds no PNG quirks to warn about
        dataset = self.dataset()
        try:
            pixels = dataset.site(item.site_id, threads=1)
        except ChunkReadError as exc:
            # a damaged site of the source store is that site's problem (skipped with --on-error skip)
            raise ImageError(f"source store: {exc}") from None
        if pixels.shape[1:] != size:
            raise ImageError(f"source store: site {item.site_id} is {pixels.shape[1:]}, expected {size}")
        return pixels, int(pixels.nbytes)


def plan_from_store(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[ConversionPlan, Dataset]:
    """The conversion plan that rewrites the store at ``url``: its sites, metadata and embeddings as stored."""
    dataset = open_any_layout(url, storage_options)
    sites = dataset.sites.reset_index(drop=True)
    keys = [parse_site_id(s) for s in sites["site_id"]]
    paths = [site_paths(k) for k in keys]
    items = tuple(
        SiteItem(i, k.site_id, k.site, p.site, p.array, p.shard, "") for i, (k, p) in enumerate(zip(keys, paths, strict=True))
    )
    sites = sites.assign(row=[k.well.row for k in keys], column=[k.well.column_name for k in keys], path=[p.array for p in paths])
    attrs = dataset.attrs
    source = attrs.get("source") or {}
    embeddings = dataset.embeddings
    features = dataset.embedding_features
    if embeddings is not None and len(features) != embeddings.shape[1]:
        features = tuple(f"feature_{i}" for i in range(embeddings.shape[1]))
    plan = ConversionPlan(
        src=url,
        sites=sites,
        items=items,
        size=(dataset.spec.height, dataset.spec.width),
        embeddings=None if embeddings is None else np.array(embeddings, dtype=np.float32),
        embedding_features=features,
        metadata_file=str(source.get("metadata_file", "")),
        metadata_sha256=f"store:{source.get('metadata_sha256', '')}",
        png_bytes={},
    )
    return plan, dataset


def transcode(src: str, dst: str, options: ConvertOptions | None = None, **kwargs: Any) -> ConvertReport:
    """Rewrite the store ``src`` as a new store ``dst`` with ``options.profile`` (and level, inner chunks).

    Resumable (``resume=True``) and parallel like :func:`convert`; ``src_storage_options`` apply to the source
    store. Verify the result with ``verify(src, dst)``.
    """
    options = resolve_options(options, kwargs)
    if options.experiments or options.plates or options.limit or options.no_pixels:
        raise ValueError("transcode rewrites a whole store: experiments, plates, limit and no_pixels do not apply")
    started = time.perf_counter()
    plan, dataset = plan_from_store(src, options.src_storage_options)
    if not dataset.pixels:
        raise ValueError(f"{src}: a --no-pixels store has no pixels to transcode")
    check_separate(src, options.src_storage_options, StoreIO(dst, options.dst_storage_options))
    source = StoreSource(portable_url(src), dict(options.src_storage_options))
    return run_conversion(plan, source, src, dst, options, started)
