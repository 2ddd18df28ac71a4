"""Showing export progress: a tqdm bar on a terminal, plain lines otherwise.

The console listens to ``(processed, total)`` updates and, since 0.5, to
``status(text)``: one line saying what the export is doing while no post
count moves. On a terminal the text is shown beside the bar, and a daemon
thread redraws the bar every ``redraw`` seconds so that its elapsed time keeps
moving between updates. Otherwise each update or status is a plain
``export: ...`` line, at most one every ``interval`` seconds (the line at 100%
always). Status lines are not log records: a WARNING stays a warning.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from typing import TextIO

from tqdm import TqdmMonitorWarning, tqdm

log = logging.getLogger("skyarchive.progress")


class ConsoleProgress:
    """A progress listener ``(processed, total)`` with ``status(text)``; plain lines at most every ``interval`` s."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0, redraw: float = 0.5) -> None:
        self.stream = stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.redraw = redraw
        self._tty = stream.isatty()
        self._bar: tqdm | None = None  # type: ignore[type-arg]
        self._last: float | None = None
        self._activity: str | None = None  # the status text, kept until the bar exists
        self._stop = threading.Event()
        self._redrawer: threading.Thread | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the console draws a bar (its stream is a terminal)."""
        return self._tty

    def __call__(self, processed: int, total: int) -> None:
        if self._tty:
            bar = self._bar if self._bar is not None else self._open_bar(total)
            bar.total = total
            bar.update(processed - bar.n)
            return
        pct = 100 * processed // total if total else 100
        self._line(f"{processed}/{total} posts ({pct}%)", always=processed >= total)

    def status(self, text: str) -> None:
        """Show what the export is doing: beside the bar, or as a plain ``export: <text>`` line."""
        if self._tty:
            self._activity = text
            if self._bar is not None:
                self._bar.set_postfix_str(text)
            return
        self._line(text)

    def close(self) -> None:
        """Stop the redraws and close the bar (if any); the console is not used afterwards."""
        self._stop.set()
        if self._redrawer is not None:
            self._redrawer.join()
            self._redrawer = None
        if self._bar is not None:
            self._bar.close()

    def _line(self, text: str, *, always: bool = False) -> None:
        """Print one plain line, unless one was printed less than ``interval`` s ago."""
        now = time.monotonic()
        if always or self._last is None or now - self._last >= self.interval:
            self._last = now
            print(f"export: {text}", file=self.stream, flush=True)

    def _open_bar(self, total: int) -> tqdm:  # type: ignore[type-arg]
        """Draw the bar, with the status text kept so far, and start redrawing it."""
        with warnings.catch_warnings():
            # tqdm's own monitor thread may not start either (a container's task limit); the bar works without it.
            warnings.simplefilter("ignore", TqdmMonitorWarning)
            bar = tqdm(total=total, unit="post", file=self.stream, dynamic_ncols=True)
        if self._activity is not None:
            bar.set_postfix_str(self._activity)
        self._bar = bar
        self._start_redraws()
        return bar

    def _start_redraws(self) -> None:
        """Start the redraw thread; without one (no thread can start) the bar moves on updates only."""
        thread = threading.Thread(target=self._redraw_loop, name="skyarchive-progress-redraw", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread", e.g. under a container's task limit
            log.debug("progress: no redraw thread (%s)", exc)
            return
        self._redrawer = thread

    def _redraw_loop(self) -> None:
        """Redraw the bar every ``redraw`` s until close(); refresh() takes tqdm's lock."""
        while not self._stop.wait(self.redraw):
            if self._bar is not None:
                self._bar.refresh()
