"""Helper threads that may not start: a container's task limit (cgroup ``pids.max``, ``docker run
--pids-limit``) or a tight address-space limit makes ``Thread.start`` fail with ``RuntimeError: can't start
new thread``. The export then does that work on its own thread, as skyarchive alone would; a thread that
cannot be started is never an error, a leftover or a held transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("export_batching_plugin")


class Helper:
    """A started daemon thread, waited for through an Event it sets when it ends.

    Not ``Thread.join``: a join interrupted by Ctrl-C can mark a thread that is still running as stopped
    (CPython before 3.13, gh-90882), and the export's cleanup must know which threads still run.
    """

    def __init__(self, target: Callable[..., Any], name: str, args: tuple[Any, ...]) -> None:
        self.done = threading.Event()
        self.name = name
        self._target, self._args = target, args
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target(*self._args)
        finally:
            self.done.set()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the thread has ended, ``timeout`` seconds at most; whether it has."""
        return self.done.wait(timeout)


def start_thread(target: Callable[..., Any], name: str, *args: Any, doing: str) -> Helper | None:
    """Start ``target(*args)`` on a daemon thread; None, logged at INFO, when it cannot be started.

    ``doing`` says what the export's own thread does instead, for the log line.
    """
    helper = Helper(target, name, args)
    try:
        helper.thread.start()
    except (RuntimeError, MemoryError) as exc:
        log.info("export_batching: cannot start a thread (%s); %s on the export's own thread", exc, doing)
        return None
    return helper


def on_fresh_stack(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` on a new thread, whose Python stack starts empty; its result, or what it raised.

    For the rare value nested deeper than the export's own call stack leaves room for (an ``embed_data``
    nested ~980 levels): skyarchive parses and encodes it a few frames from the bottom of its stack, the
    plugin from below the hook call; on a fresh stack the plugin's limit is at least the host's. Where no
    thread can be started, it runs here (and fails where it would have failed).
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, function(*args)))
        except BaseException as exc:
            outcome.append((False, exc))

    helper = start_thread(run, "export-deep-value", doing="encoding a deeply nested value")
    if helper is None:
        return function(*args)
    helper.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
