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


def start_thread(target: Callable[..., Any], name: str, *args: Any, doing: str) -> threading.Thread | None:
    """Start ``target(*args)`` on a daemon thread; None, logged at INFO, when it cannot be started.

    ``doing`` says what the export's own thread does instead, for the log line.
    """
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    try:
        thread.start()
    except (RuntimeError, MemoryError) as exc:
        log.info("export_batching: cannot start a thread (%s); %s on the export's own thread", exc, doing)
        return None
    return thread
