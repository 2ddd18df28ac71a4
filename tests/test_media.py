"""Media in the batched path: the same files, names and refusals as the host's exporter."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import FORMATS, Outcome, export, feed_fifo, insert_rows, make_engine, media_row, post_row


@pytest.fixture
def hostile_media(tmp_path: Path) -> tuple[Any, Path, Path]:
    """30 posts; media for several of them, among them hostile rows."""
    media_dir = tmp_path / "media"
    (media_dir / "did").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"SECRET")
    for n in range(12):
        (media_dir / "did" / f"img{n}.jpg").write_bytes(f"image {n}".encode())
    (media_dir / "other").mkdir()
    (media_dir / "other" / "img3.jpg").write_bytes(b"same name, other folder")
    (media_dir / "escape.jpg").symlink_to(outside / "secret.jpg")
    (media_dir / "dirlink").symlink_to(outside, target_is_directory=True)
    rows = [media_row(f"h{n:02d}", post_row(n * 2), f"did/img{n}.jpg") for n in range(12)]
    rows += [
        media_row("x1", post_row(1), "../outside/secret.jpg"),
        media_row("x2", post_row(3), str(outside / "secret.jpg")),
        media_row("x3", post_row(5), "escape.jpg"),
        media_row("x4", post_row(7), "dirlink/secret.jpg"),
        media_row("x5", post_row(9), "did/missing.jpg"),
        media_row("x6", post_row(11), "other/img3.jpg"),  # same file name as h03's
        media_row("x7", post_row(13), ""),
        media_row("x8", post_row(15), "did/.."),
    ]
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n, created_at=f"2025-01-01T00:00:{59 - n:02d}.000Z") for n in range(30)], rows)
    yield engine, media_dir, outside
    engine.dispose()


def files(outcome: Outcome) -> dict[str, bytes]:
    assert outcome.result is not None, outcome.error
    folder = outcome.result.export_dir / "media"
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("batch_size", [1, 4, 7, 30, 1000])
@pytest.mark.parametrize("format", FORMATS)
def test_plugin_copies_what_the_host_copies(
    hostile_media: tuple[Any, Path, Path], tmp_path: Path, batch_size: int, format: str
) -> None:
    engine, media_dir, _ = hostile_media
    common = {"media": True, "media_dir": media_dir, "format": format}
    host = export(engine, tmp_path / "host", settings=None, **common)
    plugin = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": batch_size}, **common)
    assert plugin.manifest is not None and plugin.manifest["exporter"].startswith("export_batching")
    assert host.manifest is not None
    assert files(plugin) == files(host)
    assert set(files(plugin)) == {f"img{n}.jpg" for n in range(12)}
    assert b"SECRET" not in files(plugin).values()
    assert files(plugin)["img3.jpg"] == b"image 3"  # the first row of a name wins, as on the host
    for key in ("media_count", "media_skipped", "files"):
        assert plugin.manifest[key] == host.manifest[key], key
    assert (plugin.manifest["media_count"], plugin.manifest["media_skipped"]) == (12, 8)
    assert plugin.posts_bytes == host.posts_bytes


def test_refused_and_missing_media_are_reported(
    hostile_media: tuple[Any, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, media_dir, _ = hostile_media
    outcome = export(engine, tmp_path, settings={"threshold": 0, "batch_size": 5}, media=True, media_dir=media_dir)
    assert outcome.error is None
    for hash in ("x1", "x2", "x3", "x4", "x7", "x8"):
        assert f"media {hash}: refused path" in caplog.text
    assert "media x5: cannot read" in caplog.text
    assert "media x6: skipped" in caplog.text


def test_media_of_a_date_range_only(hostile_media: tuple[Any, Path, Path], tmp_path: Path) -> None:
    engine, media_dir, _ = hostile_media
    window = {"since": "2025-01-01T00:00:50.000Z", "until": "2025-01-01T00:00:59.000Z"}  # posts 0..9
    host = export(engine, tmp_path / "host", settings=None, media=True, media_dir=media_dir, **window)
    plugin = export(
        engine, tmp_path / "p", settings={"threshold": 0, "batch_size": 3}, media=True, media_dir=media_dir, **window
    )
    assert files(plugin) == files(host) == {f"img{n}.jpg": f"image {n}".encode() for n in range(5)}


def test_an_interrupt_while_a_copy_waits_on_storage_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A media file on storage that does not answer (a FIFO nobody writes): Ctrl-C still ends the export."""
    from export_batching_plugin import media

    media_dir = tmp_path / "media"
    media_dir.mkdir()
    os.mkfifo(media_dir / "stuck.jpg")
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(30)], [media_row("stuck", post_row(0), "stuck.jpg")])
    monkeypatch.setattr(media.MediaCopier.abort, "__kwdefaults__", {"timeout": 0.5})

    def interrupt(done: int, total: int) -> None:  # Ctrl-C, once every post is written
        if done == total and not interrupted:
            interrupted.append(threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)))
            interrupted[0].start()  # the worker is blocked opening the FIFO by then, the export waiting on it

    main, interrupted = threading.main_thread().ident, []
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 10}, media=True,
               media_dir=media_dir, listener=interrupt)  # fmt: skip
    assert interrupted
    assert time.monotonic() - started < 10
    assert "a media file copy is still waiting on its storage" in caplog.text
    assert [p for p in (tmp_path / "out").rglob("*") if ".staging-" in p.name] == []
    feed_fifo(media_dir / "stuck.jpg", b"late", timeout=0)  # the storage answers at last: the worker ends
    deadline = time.monotonic() + 10
    while any(t.name.startswith("export-media") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("export-media") for t in threading.enumerate()), "the worker should have ended"
    engine.dispose()
