"""Encoding on the second core: the export's side of the encoder process (:mod:`.encoder`).

The export reads the rows into the row spool inside its snapshot; the encoder process reads the spool as
it grows, encodes, writes and hashes the posts file. So the reading holds the archive only as long as the
rows take to read (no encoding inside the snapshot), and the encoding runs beside it, on the other core,
instead of after it. A thread could not do it: sqlite3 gives the GIL up for every row it steps, and a
thread encoding beside it would take it back each time (docs/benchmarks.md, "Measurements behind the
design").

Where no process can be started (a container's task limit, an interpreter that cannot run ``python -m``),
or the encoder does not say it is ready, the export encodes the spool itself once the snapshot has ended
(:meth:`Offload.start` returns None, or :attr:`Offload.ready` stays False): the same bytes, a little later.
Once it was ready, anything that stops it fails the export (:class:`EncoderFailed`, naming the batch).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from . import child
from .host import SkyarchiveError

log = logging.getLogger("export_batching_plugin")
#: How long the encoder may take from its start to say it is ready, before the export encodes itself.
READY_TIMEOUT = 2.0


class EncoderFailed(Exception):
    """The encoder process stopped the export: ``cause`` is why (an OSError, the host's error for a post that
    is not JSON, or why the process ended), ``batch`` the ``(number, first, last)`` it was writing, or None."""

    def __init__(self, cause: BaseException, batch: tuple[int, int, int] | None) -> None:
        super().__init__(str(cause))
        self.cause, self.batch = cause, batch


class Offload:
    """One encoder process and its pipes; a context manager that stops it (SIGKILL) if it still runs."""

    def __init__(self, process: subprocess.Popen[bytes], wake: int, status: int, errors: IO[bytes]) -> None:
        self._process, self._wake, self._status, self._errors = process, wake, status, errors
        self._buffer = b""
        self._started = time.monotonic()
        self.ready = False
        self.written = 0
        self.digest: str | None = None
        self._done = False

    @classmethod
    def start(
        cls, *, format: str, options: Mapping[str, Any], posts: Path, checksums: bool, spool: int
    ) -> Offload | None:
        """Start the encoder for ``posts`` reading the spool fd ``spool``; None where no process can start."""
        wake_read, wake_write = os.pipe()
        status_read, status_write = os.pipe()
        config = {"format": format, "options": dict(options), "posts": os.path.abspath(posts), "checksums": checksums,
                  "spool": spool, "wake": wake_read, "status": status_write}  # fmt: skip
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            process = child.spawn(
                "export_batching_plugin.encoder", [json.dumps(config)],
                pass_fds=(spool, wake_read, status_write), stderr=errors,
            )  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:  # EAGAIN under a task limit; no executable
            log.info("export_batching: cannot start the encoder process (%s); encoding after the read", exc)
            for fd in (wake_read, wake_write, status_read, status_write):
                os.close(fd)
            errors.close()
            return None
        finally:
            with contextlib.suppress(OSError):
                os.close(wake_read)
            with contextlib.suppress(OSError):
                os.close(status_write)
        os.set_blocking(wake_write, False)
        os.set_blocking(status_read, False)
        return cls(process, wake_write, status_read, errors)

    def __enter__(self) -> Offload:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(BaseException):
            self.close()

    def wake(self) -> None:
        """One more batch is in the spool (never waits: a full pipe means the encoder has wake-ups enough)."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake, b"r")

    def poll(self, on_written: Callable[[int], None]) -> None:
        """Take what the encoder has said so far (never waits); raises EncoderFailed if it failed."""
        self._take(on_written, timeout=0.0)

    def finish(self, on_written: Callable[[int], None], *, tick: Callable[[], None]) -> str | None:
        """The last batch is in the spool: wait until the encoder has written and synced the posts file (``tick``
        at least every 0.1 s); the sha256 it computed (with checksums), else None."""
        os.set_blocking(self._wake, True)
        with contextlib.suppress(BrokenPipeError):  # it has ended already: what it said tells why
            os.write(self._wake, b"e")
        while not self._done:
            if not self._take(on_written, timeout=0.1):
                self._process.wait()
                raise EncoderFailed(OSError(errno.EIO, self._ended()), None)
            tick()
        self._process.wait()
        return self.digest

    def wait_ready(self, on_written: Callable[[int], None], *, timeout: float = READY_TIMEOUT) -> bool:
        """Whether the encoder is (or becomes, within ``timeout`` s of its start) ready to encode."""
        deadline = self._started + timeout
        while not self.ready and time.monotonic() < deadline:
            if not self._take(on_written, timeout=0.05):
                return False
        return self.ready

    def close(self) -> None:
        """Stop the encoder and anything it started (it leaves its file to the staging directory's removal)."""
        child.stop(self._process)
        for fd in (self._wake, self._status):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._errors.close()

    def _take(self, on_written: Callable[[int], None], *, timeout: float) -> bool:
        """Read and act on the status lines there are (waiting up to ``timeout`` s); False at their end."""
        ready, _, _ = select.select([self._status], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self._status, 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._said(line.decode("utf-8", "replace"), on_written)
        return True

    def _said(self, line: str, on_written: Callable[[int], None]) -> None:
        word, _, rest = line.partition(" ")
        if word == "ready":
            self.ready = True
        elif word == "written":
            self.written = int(rest)
            on_written(self.written)
        elif word == "done":
            self.digest = None if rest == "-" else rest
            self._done = True
        elif word == "failed":
            raise _failure(json.loads(rest))

    def _ended(self) -> str:
        """Why the encoder ended without finishing, in one line."""
        code = self._process.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        self._errors.seek(0)
        last = (self._errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        return f"the export's encoder process ended ({how}){': ' + last if last else ''}"


def _failure(message: dict[str, Any]) -> EncoderFailed:
    """The exception a ``failed`` message stands for, as the export itself would have raised it."""
    batch = tuple(message["batch"]) if message.get("batch") else None
    cause: BaseException
    if message["kind"] == "os":
        cause = OSError(message["errno"], message["strerror"], message["filename"])
    elif message["kind"] == "post":
        cause = SkyarchiveError(message["message"])
    else:
        cause = RuntimeError(message["message"])
    return EncoderFailed(cause, batch)
