"""Tools for testing, demonstrating and benchmarking rxrx2-zarr, apart from the library's core.

* :func:`synth`: write a dataset shaped exactly like RxRx2 (PNG tree, ``metadata.csv``, ``embeddings.csv``), the
  data every test, the demo and the benchmarks run on (``rxrx2-zarr synth``); :func:`render_site` and
  :func:`site_embeddings` are its pixels and embeddings alone.
* :class:`PngSiteReader`, :func:`time_calls`, :func:`time_throughput`: the timing helpers the demo and the
  benchmark suite share (both sides of every comparison in one process).
* :func:`demo`: ``rxrx2-zarr demo``.

Nothing in the core imports this package: the reader, the writer and the ``rxrx2.vpredict`` codec load without
it (and without pandas). Its names are imported on first use, like the core's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

if TYPE_CHECKING:
    from ._demo import demo
    from ._embeddings import site_embeddings
    from ._pixels import render_site
    from ._plates import CELL_TYPE, EMPTY, FACTORS, dose_series
    from ._synth import SynthReport, synth
    from ._timing import PngSiteReader, Timing, time_calls, time_throughput

__all__ = [
    "CELL_TYPE",
    "EMPTY",
    "FACTORS",
    "PngSiteReader",
    "SynthReport",
    "Timing",
    "demo",
    "dose_series",
    "render_site",
    "site_embeddings",
    "synth",
    "time_calls",
    "time_throughput",
]

_EXPORTS: dict[str, str] = {
    "CELL_TYPE": "._plates",
    "EMPTY": "._plates",
    "FACTORS": "._plates",
    "PngSiteReader": "._timing",
    "SynthReport": "._synth",
    "Timing": "._timing",
    "demo": "._demo",
    "dose_series": "._plates",
    "render_site": "._pixels",
    "site_embeddings": "._embeddings",
    "synth": "._synth",
    "time_calls": "._timing",
    "time_throughput": "._timing",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())
