"""A progress bar for site-by-site work: sites/s, PNG MB/s and ETA (tqdm), silent when disabled."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, total_bytes: int, *, enabled: bool, initial: int = 0, desc: str = "convert") -> None:
        self.enabled = enabled
        self.total_bytes = total_bytes
        self.bytes_done = 0
        self._start = time.perf_counter()
        self._last_postfix = 0.0
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="site", desc=desc, file=sys.stderr, dynamic_ncols=True)

    def advance(self, nbytes: int, sites: int = 1) -> None:
        self.bytes_done += nbytes
        if self._bar is None:
            return
        self._bar.update(sites)
        now = time.perf_counter()
        if self.total_bytes and now - self._last_postfix > 0.5:  # formatting every update would cost more than the bar is worth
            elapsed = max(now - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self.bytes_done / 1e6 / elapsed:.1f} MB/s PNG", refresh=False)
            self._last_postfix = now

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
