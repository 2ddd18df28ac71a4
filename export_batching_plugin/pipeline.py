"""Encoders on both cores, one ordered writer: the export's side of :mod:`.worker` (docs/how-it-works.md,
"One spool, both cores, one writer").

Where a child process could be started (and said it was ready within :data:`READY_TIMEOUT` of its start, before
the snapshot opened), it is the one writer of the posts file: it encodes the batches it is given (at most
:data:`DEPTH` ahead of what it has written) and writes them, in order, with those the export encoded meanwhile
and handed over. Without one, the export encodes and writes every batch itself.

The child runs only the plugin's code: started isolated (``python -I``: no current directory on ``sys.path``,
no ``PYTHON*`` variables), in ``/``, with the folders its imports come from appended; in a session of its own
(Ctrl-C does not reach it), killed as one process group with anything it started.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from .blocks import BatchFailed, Block, Chunk, Copy, Spool, _write_all
from .worker import COMMAND, Framing, Recipe, Writer, encoded, gathered

log = logging.getLogger("export_batching_plugin")
#: How long the child may take from its start to say it is ready before the export does without it (s).
READY_TIMEOUT = 2.0
#: Batches the child is given ahead of what it has written; the export encodes the others.
DEPTH = 2
#: The command pipe's capacity, so that a batch the export encoded is usually handed over in one write.
PIPE_SIZE = 1 << 20
#: What the child runs: the handed-over folders appended to ``sys.path``, then the module's ``main(argv)``.
_BOOT = (
    "import sys, json; sys.path += [p for p in json.loads(sys.argv[1]) if p not in sys.path];"
    " from importlib import import_module; sys.exit(import_module(sys.argv[2]).main(sys.argv[3:]))"
)


def import_path() -> list[str]:
    """The folders the child's imports come from, as this process found them (absolute)."""
    import orjson
    import simplejson

    import export_batching_plugin

    folders: list[str] = []
    for module in (export_batching_plugin, orjson, simplejson):
        folder = str(Path(module.__file__ or "").resolve().parent.parent)
        if folder not in folders:
            folders.append(folder)
    return folders


def spawn(module: str, args: Sequence[str], *, pass_fds: Sequence[int], stderr: Any) -> subprocess.Popen[bytes]:
    """Start ``module.main(args)`` in an isolated child (see the module's docstring); raises what Popen raises."""
    argv = [sys.executable, "-I", "-c", _BOOT, json.dumps(import_path()), module, *args]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=tuple(pass_fds),
        close_fds=True, cwd="/", start_new_session=True,
    )  # fmt: skip


class Child:
    """The child process of :mod:`.worker` and its two pipes, from the export's side; a context manager that
    kills it (and anything it started) on the way out."""

    def __init__(self, process: Any, commands: int, status: int, errors: IO[bytes], post_error: type[Exception]):
        self._process, self._commands, self._status, self._errors = process, commands, status, errors
        self._post_error = post_error
        self._buffer = b""
        self._started = time.monotonic()
        self.ready = self.done = self._closed = False
        self.digest: str | None = None
        self.written_batch = self.posts = 0
        self.given: collections.deque[int] = collections.deque()  # batches given to it, not yet written
        self.on_written: Callable[[int], None] = lambda posts: None

    @classmethod
    def start(cls, config: dict[str, Any], *, pass_fds: tuple[int, ...], post_error: type[Exception]) -> Child | None:
        """Start the child and wait for it to say it is ready; None (logged at INFO) where it cannot start or
        does not answer in time: the export then does the work itself."""
        opened: list[int] = []
        errors: IO[bytes] | None = None
        try:
            opened += [*os.pipe(), *os.pipe()]
            commands_read, commands_write, status_read, status_write = opened
            with contextlib.suppress(OSError):
                fcntl.fcntl(commands_write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            config = {**config, "commands": commands_read, "status": status_write}
            process = spawn(
                "export_batching_plugin.worker", [json.dumps(config)],
                pass_fds=(*pass_fds, commands_read, status_write), stderr=errors,
            )  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:  # too few descriptors, a task limit, no executable
            for fd in opened:
                os.close(fd)
            if errors is not None:
                errors.close()
            log.info("export_batching: cannot start the encoder process (%s); encoding here", exc)
            return None
        os.close(commands_read)
        os.close(status_write)
        os.set_blocking(status_read, False)
        made = cls(process, commands_write, status_read, errors, post_error)
        if made._wait_ready():
            return made
        log.info("export_batching: the encoder process did not get ready; encoding here")
        made.close()
        return None

    def _wait_ready(self) -> bool:
        deadline = self._started + READY_TIMEOUT
        with contextlib.suppress(BatchFailed):
            while not self.ready and (left := deadline - time.monotonic()) > 0:
                if not self.poll(min(left, 0.05)):
                    return False
        return self.ready

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(BaseException):
            self.close()

    @property
    def backlog(self) -> int:
        """Batches given to it that it has not written yet."""
        while self.given and self.given[0] <= self.written_batch:
            self.given.popleft()
        return len(self.given)

    def encode(self, block: Block) -> None:
        """Give it ``block`` to encode and write."""
        self.given.append(block.number)
        self._send(COMMAND.pack(b"E", block.number, block.first, block.count, block.offset, block.length))

    def write(self, pieces: Iterable[Any], *, batch: Block | None = None, posts: int = 0) -> None:
        """Hand it bytes (of ``batch``, completing ``posts``) to write after what it has been given."""
        number, first, count = (batch.number, batch.first, batch.count) if batch is not None else (0, 0, 0)
        for held, size in gathered(pieces):
            self._send(COMMAND.pack(b"B", number, 0, size, first, count), *held)
        self._send(COMMAND.pack(b"B", number, posts, 0, first, count))  # the posts they complete

    def settle(self, batch: int) -> None:
        """Wait until it has written every batch up to ``batch`` it was given (raising its failure, if any)."""
        while self.backlog and self.given[0] <= batch and self.poll(0.1):
            pass

    def finish(self, *, tick: Callable[[], None]) -> str | None:
        """Everything is handed over: wait until the file is written (``tick`` at least every 0.1 s); the sha256
        of the file (with checksums), else None."""
        self._send(COMMAND.pack(b"Z", 0, 0, 0, 0, 0))
        while not self.done:
            if not self.poll(0.1):
                raise BatchFailed(None, OSError(errno.EIO, self._ended()))
            tick()
        return self.digest

    def _send(self, *pieces: Any) -> None:
        try:
            _write_all(self._commands, pieces, where="the encoder process")
        except BrokenPipeError:  # it has ended: what it said, or how it ended, tells why
            while self.poll(1.0):
                pass
            raise BatchFailed(None, OSError(errno.EIO, self._ended())) from None

    def poll(self, timeout: float = 0.0) -> bool:
        """Take what it has said (waiting up to ``timeout`` s for something); False once it has said all it will.
        Raises BatchFailed if it failed."""
        if not select.select([self._status], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self._status, 65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            word, _, rest = line.decode("utf-8", "replace").partition(" ")
            if word == "ready":
                self.ready = True
            elif word == "written":
                batch, posts = rest.split()
                self.written_batch, self.posts = int(batch), int(posts)
                self.on_written(self.posts)
            elif word == "done":
                self.digest, self.done = (None if rest == "-" else rest), True
            elif word == "failed":
                raise BatchFailed.of(json.loads(rest), self._post_error)
        return True

    def close(self) -> None:
        """Kill it and anything it started (it leaves its file to the staging directory's removal) and reap it,
        once (then its process group is no longer there to kill)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):  # the group is there until the child is reaped, even if it has ended
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        for fd in (self._commands, self._status):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._errors.close()

    def _ended(self) -> str:
        """Why it ended without finishing, in one line."""
        code = self._process.wait()
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        self._errors.seek(0)
        last = (self._errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        return f"the export's encoder process ended ({how}){': ' + last if last else ''}"


class Pipeline:
    """The posts file from the spool's batches: encoded on both cores (with a :class:`Child`) or here, written
    once, in order. ``posts`` (posts handed over so far) and ``on_written(posts written)``."""

    def __init__(
        self,
        framing: Framing,
        *,
        source: Copy | Spool | None,
        writer: Writer,
        child: Child | None,
        budget: int,
        on_written: Callable[[int], None],
    ) -> None:
        self.framing, self.source, self.child, self.budget = framing, source, child, budget
        self._writer = writer
        self._queue: collections.deque[Block] = collections.deque()
        self.posts = 0
        self._begun = False
        if child is not None:
            child.on_written = on_written
            self._write: Callable[..., None] = child.write
        else:
            self._write = writer.write

    def _begin(self) -> None:
        """The file's head (posts.csv's BOM and header), before anything else."""
        if not self._begun:
            self._begun = True
            if self.framing.head:
                self._write([self.framing.head])

    def without_spool(self) -> None:
        """Before anything is written: no spool after all (and so no child); every batch written here."""
        assert not self._begun
        if self.child is not None:
            self.child.close()
        if self.source is not None:
            self.source.close()
            with contextlib.suppress(OSError):
                os.unlink(self.source.path)
        self.source = self.child = None
        self._write = self._writer.write

    @staticmethod
    def child_config(recipe: Recipe, *, source: Copy | Spool, writer: Writer, budget: int) -> dict[str, Any]:
        """The child's configuration (the descriptors it is handed keep their numbers)."""
        where = {"copy": source.path} if isinstance(source, Copy) else {"spool": source.path}
        return {"recipe": asdict(recipe), **where, "posts": writer.fd, "path": writer.path,
                "checksums": writer.checksums, "budget": budget}  # fmt: skip

    def put(self, block: Block) -> None:
        """One more batch is in the spool (inside the snapshot: the child, if any, is given what it can take;
        nothing here waits on the disk or the console)."""
        self._begin()
        self._queue.append(block)
        self.posts += block.count
        if self.child is not None:
            self.child.poll()
            while self._queue and self.child.backlog < DEPTH:
                self.child.encode(self._queue.popleft())

    def drain(self, blocks: Iterable[Block] = ()) -> None:
        """Outside the snapshot: every batch still waiting, then ``blocks``, encoded on both cores and written."""
        if self.source is None:  # no spool: every batch was written as it was read
            return
        self._begin()
        for block in self._waiting(blocks):
            if self.child is not None:
                self.child.poll()
                if self.child.backlog < DEPTH:
                    self.child.encode(block)
                    continue
            try:
                encoded(self.framing, block, self._chunks(block), self._write)
            except BatchFailed:
                if self.child is not None:  # the first failure in the file's order is the one told
                    self.child.settle(block.number - 1)
                raise

    def _chunks(self, block: Block) -> Iterator[Chunk]:
        """The rows of ``block`` from the spool, read as they are encoded (a failure to read is the batch's)."""
        assert self.source is not None
        yield from self.source.chunks(block, self.budget)

    def _waiting(self, blocks: Iterable[Block]) -> Iterator[Block]:
        while self._queue:
            yield self._queue.popleft()
        for block in blocks:
            self.posts += block.count
            yield block

    def write_chunk(self, block: Block, chunk: Chunk, *, opening: bool) -> None:
        """Encode and write posts of ``block`` read here, without a spool (inside the snapshot)."""
        self._begin()
        self.posts += len(chunk[0])
        encoded(self.framing, block, (chunk,), self._write, posts=len(chunk[0]), opening=opening)

    def finish(self, *, tick: Callable[[], None]) -> str | None:
        """The last batch is handed over: end the file, wait until it is written; its sha256 (with checksums),
        else None."""
        self._begin()
        tail = self.framing.tail(self.posts)
        if tail:
            self._write([tail])
        if self.child is not None:
            return self.child.finish(tick=tick)
        return self._writer.finish()
