"""Showing export progress: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class ConsoleProgress:
    """A progress listener ``(processed, total)``; plain lines at most every ``interval`` s."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0) -> None:
        self.stream = stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._tty = stream.isatty()
        self._bar: tqdm | None = None  # type: ignore[type-arg]
        self._last: float | None = None

    def __call__(self, processed: int, total: int) -> None:
        if self._tty:
            if self._bar is None:
                self._bar = tqdm(total=total, unit="post", file=self.stream, dynamic_ncols=True)
            self._bar.total = total
            self._bar.update(processed - self._bar.n)
            return
        now = time.monotonic()
        if self._last is None or processed >= total or now - self._last >= self.interval:
            self._last = now
            pct = 100 * processed // total if total else 100
            print(f"export: {processed}/{total} posts ({pct}%)", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
