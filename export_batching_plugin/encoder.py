"""The encoder process: it encodes and writes the posts file while the export reads, on the second core.

``python -m export_batching_plugin.encoder CONFIG``, started by :mod:`.offload` with three file descriptors
of the export's (the rest are closed): the row spool the export appends each batch to (:mod:`.rows`), a
wake pipe the export writes ``r`` to after each batch and ``e`` after the last, and a status pipe this
process answers on. It imports neither skyarchive nor SQLAlchemy (only the encoders, :mod:`.jsonenc`, and
the writers), so it starts in a few tens of milliseconds, in a few MB.

CONFIG (JSON): ``format`` (``"json"`` or ``"jsonl"``), ``options`` (the host's simplejson options for it),
``posts`` (the file to create, exclusively), ``checksums``, ``spool``, ``wake``, ``status`` (the fds).

The status pipe carries one line per message:

- ``ready``: about to read the spool (sent before anything is read);
- ``written N``: N posts are in the file so far (after each batch);
- ``done SHA256`` (``done -`` without checksums): the file is complete and synced;
- ``failed JSON``: what stopped it: ``{"kind": "os"|"post"|"other", "errno", "strerror", "filename",
  "message", "batch": [number, first, last] or null}``; it then exits 1.

End of the wake pipe without ``e`` means the export has stopped: this process exits at once. Ctrl-C from
the terminal reaches the whole process group: it is ignored here, and the export stops this process itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .jsonenc import json_items, jsonl_lines
from .output import Output, WriteBehindError
from .rows import Batch, read_spool
from .writing import JsonlWriter, JsonWriter, PostsWriter


class InvalidPost(ValueError):
    """A post whose ``embed_data`` or ``labels`` is not JSON; the message is the host's."""


class Stopped(Exception):
    """The export went away (its end of the wake pipe closed before the last batch)."""


def waiter(wake: int) -> Callable[[], bool]:
    """``wait()`` for :func:`.rows.read_spool`: block until the export has spooled more, False once it has
    spooled the last; raises Stopped if the export has gone."""
    ended = False

    def wait() -> bool:
        nonlocal ended
        if ended:
            return False
        news = os.read(wake, 4096)
        if not news:
            raise Stopped("the export stopped")
        ended = b"e" in news
        return True

    return wait


class Status:
    """The status pipe: one line at a time, from any thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def failure(exc: BaseException, batch: Batch | None) -> dict[str, Any]:
    """The ``failed`` message of ``exc``."""
    span = [batch.number, batch.offset + 1, batch.offset + len(batch.rows)] if batch is not None else None
    if isinstance(exc, OSError):
        return {"kind": "os", "errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename,
                "message": str(exc), "batch": span}  # fmt: skip
    kind = "post" if isinstance(exc, InvalidPost) else "other"
    return {"kind": kind, "message": (str(exc).strip().splitlines() or [type(exc).__name__])[0], "batch": span}


def run(config: dict[str, Any], status: Status) -> None:
    """Encode every spooled batch into the posts file, then say ``done``."""
    encode = (json_items if config["format"] == "json" else jsonl_lines)(config["options"], error=InvalidPost)
    output = Output(
        Path(config["posts"]),
        spool_dir=Path(config["posts"]).parent,
        checksums=config["checksums"],
        on_written=lambda written: status.say(f"written {written}"),
        memory=1 << 20,
        spill=False,  # waits on the disk: what the disk has not taken waits in the export's row spool
    )
    with output:
        writer: PostsWriter = (JsonWriter if config["format"] == "json" else JsonlWriter)(output, encode)
        status.say("ready")
        batch: Batch | None = None
        try:
            for batch in read_spool(config["spool"], wait=waiter(config["wake"]), where=config["posts"]):
                writer.write_batch(batch)
            batch = None
            writer.end()
            digest = writer.finish()
        except WriteBehindError as late:
            raise Failed(late.cause, late.tag if isinstance(late.tag, Batch) else None) from None
        except (OSError, InvalidPost) as exc:
            raise Failed(exc, batch) from None
    status.say(f"done {digest or '-'}")


class Failed(Exception):
    """What stopped the encoding, and the batch it stopped at."""

    def __init__(self, cause: BaseException, batch: Batch | None) -> None:
        super().__init__(str(cause))
        self.cause, self.batch = cause, batch


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the export stops this process itself
    config = json.loads(argv[0])
    status = Status(os.fdopen(config["status"], "w", encoding="utf-8"))
    try:
        run(config, status)
    except Stopped:
        return 1
    except Failed as failed:
        status.say("failed " + json.dumps(failure(failed.cause, failed.batch)))
        return 1
    except BaseException as exc:  # anything else: said, then the export fails with it
        status.say("failed " + json.dumps(failure(exc, None)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
