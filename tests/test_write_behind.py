"""Read at the database's speed, write at the disk's: the posts file is written behind the export.

The read snapshot ends when the last row is read, however slow the disk the posts file goes to; what
the disk has not taken yet waits in memory (bounded) and then in an unnamed spool file, which gives its
space back as the writer catches up. The bytes are the host's.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from export_batching_plugin import batched, output, reading, rows, spoolfile, writing

from .harness import FORMATS, export, insert_rows, make_engine, post_row

SETTINGS = {"threshold": 0, "batch_size": 10}


def slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """Every write of the posts file (on the writer thread) takes ``seconds`` more: a slow disk."""
    original = output.Output._write
    times: list[float] = []

    def write(self: output.Output, *args: Any) -> None:
        time.sleep(seconds)
        original(self, *args)
        times.append(time.monotonic())

    monkeypatch.setattr(output.Output, "_write", write)
    return times


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    """300 posts of one owner, a few KiB each."""
    engine = make_engine(tmp_path / "a.db")
    rows = [post_row(n, text=f"{n} " + "é" * 2000, created_at=f"2025-01-{1 + n // 60:02d}T00:00:{n % 60:02d}.000Z")
            for n in range(300)]  # fmt: skip
    insert_rows(engine, rows)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("format", FORMATS)
def test_the_snapshot_ends_before_a_slow_disk_has_the_posts(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    host = export(engine, tmp_path / "host", settings=None, format=format)
    ended: list[float] = []
    original = reading.Snapshot.end

    def end(self: reading.Snapshot, *, complete: bool) -> None:
        if complete:
            ended.append(time.monotonic())
        original(self, complete=complete)

    monkeypatch.setattr(reading.Snapshot, "end", end)
    writes = slow_writes(monkeypatch, 0.04)
    started = time.monotonic()
    plugin = export(engine, tmp_path / "plugin", settings={**SETTINGS, "checksums": True}, format=format)
    finished = time.monotonic()
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert len(writes) >= 30 and finished - started >= 30 * 0.04
    (snapshot_end,) = ended
    assert snapshot_end < writes[len(writes) // 2], "the snapshot must end before the disk has half the posts"
    assert plugin.events[-1] == (300, 300)


def test_what_the_disk_has_not_taken_waits_in_the_spool(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room in memory, batches wait in the spool file; it gives its space back once written."""
    monkeypatch.setattr(output, "MEMORY", 0)
    seen: list[output.Output] = []
    original_init = output.Output.__init__

    def init(self: output.Output, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(output.Output, "__init__", init)
    slow_writes(monkeypatch, 0.02)
    host = export(engine, tmp_path / "host", settings=None)
    plugin = export(engine, tmp_path / "plugin", settings=SETTINGS)
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    (out,) = seen
    assert out.spool_peak >= 10 * 2 * 2000, "several batches should have waited in the spool"
    assert out._spool is not None and out._spool.held == 0


def test_the_spool_gives_space_back_and_keeps_the_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    original = output.Output._write

    def write(self: output.Output, *args: Any) -> None:
        gate.wait(10)
        original(self, *args)

    monkeypatch.setattr(output.Output, "_write", write)
    out = output.Output(tmp_path / "posts", spool_dir=tmp_path, checksums=True, memory=1000)
    pieces = [bytes([65 + n % 26]) * (300 + n) for n in range(40)]
    for piece in pieces:
        out.write([piece[:100], piece[100:]], posts=1)
    spool = out._spool
    assert spool is not None and spool.held > 30 * 300  # the writer has taken nothing yet
    assert os.fstat(spool._fd).st_blocks > 0
    gate.set()
    deadline = time.monotonic() + 10
    while out.written < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.fstat(spool._fd).st_blocks == 0, "the spool gives back what the writer has written"
    digest = out.finish()
    whole = b"".join(pieces)
    assert (tmp_path / "posts").read_bytes() == whole
    import hashlib

    assert digest == hashlib.sha256(whole).hexdigest()
    assert out.written == 40 and out._spool.held == 0


def test_the_spool_is_never_held_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TMPDIR on a tmpfs (memory): the spool goes beside the export instead; elsewhere, TMPDIR."""
    monkeypatch.setattr(spoolfile.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(spoolfile, "filesystem_type", lambda path: "tmpfs")
    assert spoolfile.spool_directory(tmp_path / "exports") == tmp_path / "exports"
    monkeypatch.setattr(spoolfile, "filesystem_type", lambda path: "ext4")
    assert spoolfile.spool_directory(tmp_path / "exports") == tmp_path / "tmp"


def test_the_filesystem_type_is_read_from_the_mounts() -> None:
    assert spoolfile.filesystem_type(Path("/proc/self")) == "proc"
    assert spoolfile.filesystem_type(Path("/")) not in (None, "proc")


def test_a_full_spool_disk_names_the_spool(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "MEMORY", 0)
    slow_writes(monkeypatch, 0.05)
    original = output.os.pwritev
    calls: list[int] = []

    def pwritev(fd: int, buffers: Any, offset: int) -> int:
        if sys._getframe(1).f_globals["__name__"] != output.__name__:  # the row spool's, say
            return original(fd, buffers, offset)
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fd, buffers, offset)

    monkeypatch.setattr(output.os, "pwritev", pwritev)
    outcome = export(engine, tmp_path / "out", settings=SETTINGS)
    failure = outcome.error
    assert isinstance(failure, batched.ExportFailed), failure
    assert failure.phase == "writing" and failure.batch is not None
    assert "disk full: " in str(failure) and "(the export's spool file)" in str(failure)
    assert not any(".staging-" in p.name for p in (tmp_path / "out").rglob("*"))


class Recording:
    """An output that records what it is handed: (bytes, posts) of each write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes: list[tuple[int, int]] = []

    def write(self, pieces: Any, *, posts: int = 0, tag: Any = None) -> None:
        self.writes.append((sum(len(piece) for piece in pieces), posts))


@pytest.mark.parametrize("writer", [writing.JsonWriter, writing.JsonlWriter])
def test_a_batch_of_large_posts_is_handed_over_in_pieces(tmp_path: Path, writer: Any) -> None:
    """Not held whole while the batch before it is written: about CHUNK at a time, the count with the last."""
    post = 600 << 10

    def encode(rows: Any, sizes: Any) -> Any:
        return iter([b"x" * post for _ in rows])

    output = Recording(tmp_path / "posts")
    batch = rows.Batch(number=1, offset=0, rows=[()] * 8, sizes=[post] * 8)
    writer(output, encode).write_batch(batch)
    sizes = [size for size, _ in output.writes]
    assert len(sizes) >= 3 and max(sizes) <= writing.CHUNK + post + 4, sizes
    assert sum(sizes) >= 8 * post
    assert [posts for _, posts in output.writes] == [0] * (len(sizes) - 1) + [8]
