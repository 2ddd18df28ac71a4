"""Media files of the selection: listed inside the read snapshot, copied outside it.

Inside the snapshot, one streamed query lists the media rows in the host's order into an unnamed temporary file
beside the export (memory does not grow with their number, nothing is left if the process dies). Worker threads
copy them after the snapshot, while the posts are written (the snapshot never waits on a slow disk); without threads (a
container's task limit), the export's own thread copies them afterwards, as skyarchive does. All rows of one file
name go to one worker, in order, so the first of them wins, as in the host. Each file is made by skyarchive's
rules but cloned or linked where it can be (:mod:`.reuse`), made durable by the export's final sync (one
``syncfs`` for many files: :func:`.staging.sync_tree`; why: docs/benchmarks.md, "Measurements behind the design").
"""

from __future__ import annotations

import heapq
import io
import logging
import os
import pickle
import queue
import tempfile
import threading
import time
import unicodedata
import zlib
from collections import namedtuple
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, closing, suppress
from pathlib import Path
from typing import IO, Any

from . import host
from .checksums import file_digest
from .reuse import Earlier, clone_or_copy
from .threads import Helper, start_thread

#: Copying threads: small files' system calls run without the GIL, but files made in one folder contend, and two
#: measured fastest (docs/benchmarks.md, "Measurements behind the design").
WORKERS = 2
log = logging.getLogger("export_batching_plugin")
_MediaRow = namedtuple("_MediaRow", host.MEDIA_COLUMNS)  # type: ignore[misc]  # what copy_media_file reads


def _load(stream: IO[bytes]) -> Iterator[Any]:
    """What was pickled to ``stream``, from its start; closed once read (a descriptor fewer)."""
    stream.seek(0)
    with suppress(EOFError):
        while True:
            yield pickle.load(stream)
    stream.close()


class MediaCopier(AbstractContextManager["MediaCopier"]):
    """Spool the selection's media rows (:meth:`spool`), copy them (:meth:`start`), wait (:meth:`wait`)."""

    def __init__(
        self, *, media_root: Path, dest: Path, spool_dir: Path, checksums: bool = False, link_unchanged: bool = False
    ) -> None:
        self._earlier = Earlier.find(dest, checksums=checksums) if link_unchanged else None  # to link from
        self.dest, self._root = dest, media_root.resolve()
        self._spool_dir, self._checksums = spool_dir, checksums
        self._spool: IO[bytes] = io.BytesIO()  # until spool() makes the file
        #: With checksums, each worker's (row number, sha256, file name) of the files it copied, in row order.
        self._sums: list[IO[bytes]] = []
        self.rows = self.copied = self.skipped = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._error: BaseException | None = None
        self._queues: list[queue.Queue[Any]] = [queue.Queue(256) for _ in range(WORKERS)]  # rows each
        self._threads: list[Helper] = []  # started ones only; none: wait() copies

    def spool(self, chunks: Generator[list[tuple[Any, ...]], None, None]) -> None:
        """Write the media rows to the spool (inside the snapshot; fast, sequential)."""
        self._spool = self._file()
        with closing(chunks):  # its cursor, also when this fails
            for chunk in chunks:
                pickle.dump(chunk, self._spool, protocol=pickle.HIGHEST_PROTOCOL)
                self.rows += len(chunk)
        self._spool.flush()

    def start(self, *, threads: bool = True) -> None:
        """Start copying on worker threads; where they cannot all start (or ``threads`` is off), :meth:`wait` copies."""
        doing = "copying media files, once the posts are read,"
        self._sums = [self._file() for _ in range(WORKERS if threads else 1)] if self._checksums else []
        for n in range(WORKERS):  # the workers first: until the dispatcher runs, none has a row
            if not threads or (worker := start_thread(self._work, f"export-media-{n}", n, doing=doing)) is None:
                break
            self._threads.append(worker)
        else:
            if (dispatcher := start_thread(self._dispatch, "export-media-rows", doing=doing)) is not None:
                self._threads.append(dispatcher)
                return
        self._stop.set()  # the workers started have no row: they stop
        for thread in self._threads:
            thread.wait()
        self._threads.clear()  # none: wait() copies

    def _file(self) -> IO[bytes]:
        """An unnamed temporary file beside the export (a full disk or too few descriptors named as such)."""
        try:
            return tempfile.TemporaryFile(dir=self._spool_dir)
        except OSError as exc:
            exc.filename = f"{self._spool_dir} (the media rows' spool)"
            raise

    def __exit__(self, *exc_info: object) -> None:
        """Stop the workers and close the spools (after :meth:`wait`: nothing left to do); never raises."""
        with suppress(BaseException):
            self.abort()

    @property
    def done(self) -> int:
        return self.copied + self.skipped

    def wait(self, *, tick: Callable[[], None] = lambda: None) -> None:
        """Wait until every row is handled (or, without threads, handle them); raise the first error. ``tick`` is
        called at least every 0.1 s meanwhile (or after each file, without threads)."""
        if not self._threads:
            for number, row in enumerate(self._rows()):
                self._copy(0, number, row)
                tick()
        for thread in self._threads:
            while not thread.wait(0.1):
                tick()
        if self._error is not None:
            raise self._error

    def _rows(self) -> Iterator[Any]:
        return (_MediaRow._make(values) for chunk in _load(self._spool) for values in chunk)

    def sums(self) -> Iterator[tuple[str, str]]:
        """After :meth:`wait`, with checksums: ``(sha256, "media/<name>")`` of each file copied, in row order."""
        for _number, hexdigest, name in heapq.merge(*map(_load, self._sums)):
            yield hexdigest, f"{host.MEDIA_DIR_NAME}/{name}"

    def abort(self, *, timeout: float = 10.0) -> None:
        """Stop the workers (each finishes the file at hand) and wait for them, ``timeout`` seconds at most: one
        blocked on storage that does not answer is left to end when it does (a daemon thread; its folder is gone)."""
        self._stop.set()
        try:
            deadline = time.monotonic() + timeout
            for thread in self._threads:
                thread.wait(max(0.0, deadline - time.monotonic()))
            if any(thread.running for thread in self._threads):
                log.warning("export_batching: a media file copy is still waiting on its storage; left to end by itself")
        finally:
            for stream in (self._spool, *self._sums):
                stream.close()
            if self._earlier is not None:
                self._earlier.close()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop.set()

    def _put(self, target: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            with suppress(queue.Full):
                target.put(item, timeout=0.1)
                return True
        return False

    def _dispatch(self) -> None:
        try:
            for number, row in enumerate(self._rows()):  # number: the row's place in the export's order
                # by the name copy_media_file gives the copy, normalised as a case-insensitive disk compares it
                name = unicodedata.normalize("NFC", os.path.basename(str(row.file_path or ""))).casefold()
                worker = zlib.crc32(name.encode("utf-8", "replace")) % WORKERS
                if not self._put(self._queues[worker], (number, row)):
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            for target in self._queues:
                self._put(target, None)

    def _work(self, worker: int) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._queues[worker].get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is None:
                    return
                self._copy(worker, *item)
        except BaseException as exc:
            self._fail(exc)

    def _copy(self, worker: int, number: int, row: Any) -> None:
        name = os.path.basename(row.file_path or "")
        try:
            made, digest = copy_media_file(row, self._root, self.dest, self._earlier)
            if made and self._sums:  # a copy is read back, from the page cache as a rule
                pickle.dump((number, digest or file_digest(self.dest / name), name), self._sums[worker])
        except OSError as exc:
            if exc.filename is None:  # a write to an open file does not say which file it was
                exc.filename = str(self.dest / name)
            raise
        with self._lock:
            self.copied += made
            self.skipped += not made


def copy_media_file(media: Any, media_root: Path, dest_dir: Path, earlier: Earlier | None) -> tuple[bool, str | None]:
    """skyarchive's ``copy_media_file``, rule for rule and warning for warning, but the file is linked from the
    ``earlier`` export when it is unchanged since, or cloned where it can be, else copied. Returns whether it was
    made (False: skipped, with a warning) and, for a link with checksums, its sha256 from the earlier SHA256SUMS."""
    rel = media.file_path or ""
    name = os.path.basename(rel)
    if not rel or os.path.isabs(rel) or name in ("", ".", ".."):
        log.warning("media %s: refused path %r (not inside media_dir)", media.hash, rel)
        return False, None
    source = (media_root / rel).resolve()
    if source != media_root and media_root not in source.parents:
        log.warning("media %s: refused path %r (leads outside media_dir)", media.hash, rel)
        return False, None
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        log.warning("media %s: cannot read %s (%s)", media.hash, source, exc.strerror or exc)
        return False, None
    with src:
        try:
            digest = earlier.link(name, os.fstat(src.fileno()), dest_dir / name) if earlier is not None else None
            if digest is None:
                fd = os.open(dest_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            log.warning(
                "media %s: skipped, %s/%s was already copied for another row", media.hash, host.MEDIA_DIR_NAME, name
            )
            return False, None
        if digest is None:
            with open(fd, "wb", buffering=0):  # closes fd
                clone_or_copy(src.fileno(), fd)
    return True, digest or None
