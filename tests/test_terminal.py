"""The export as a person sees it on a terminal: a real pseudo-terminal, its output rendered by a terminal
emulator (pyte), screen by screen.

On the newest host (skyarchive 0.5, whose console redraws the bar and shows the status beside it): once
anything shows, the screen never stands still for more than 2 s until exit. On every host: a successful
run shows no WARNING, and the final screen holds exactly one bar, at 100%, and no line where a bar and
other text run together. With JSON, CSV and JSON Lines, with and without ``--media`` and checksums, and
with a media file on slow storage.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import select
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import HOST_VERSION, plugin_toml
from .harness import FORMATS, add_slow_media_file, feed_fifo, make_engine

if os.environ.get("CI") == "true":
    import pyte
else:
    pyte = pytest.importorskip("pyte", reason="pyte renders the terminal (a test dependency: tox installs it)")

pytestmark = pytest.mark.slow  # real terminals, real time
COLUMNS, ROWS = 110, 30
BAR = re.compile(r"\d+%\|")
#: The longest the screen may stand still, on a console that redraws (skyarchive 0.5).
STILL = 2.0
REDRAWS = HOST_VERSION >= (0, 5)


@dataclass
class Screen:
    """What a terminal showed: the screens it went through, with when each appeared (from the start)."""

    frames: list[tuple[float, list[str]]] = field(default_factory=list)
    ended: float = 0.0
    code: int = -1
    text: str = ""

    @property
    def final(self) -> list[str]:
        return [line.rstrip() for line in self.frames[-1][1]] if self.frames else []

    def longest_still(self) -> float:
        """The longest time the screen did not change, from its first non-blank frame to the exit."""
        shown = [at for at, lines in self.frames if any(line.strip() for line in lines)]
        if not shown:
            return float("inf")
        moments = [at for at, _ in self.frames if at >= shown[0]] + [self.ended]
        return max(b - a for a, b in itertools.pairwise(moments))


def run_in_terminal(argv: list[str], cwd: Path, *, while_running: Callable[[Screen], None] | None = None) -> Screen:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr, COLUMNS by ROWS; render what it writes."""
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    seen = Screen()
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal
        try:
            os.chdir(cwd)
            os.execv(sys.executable, [sys.executable, *argv])
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    helper = threading.Thread(target=while_running, args=(seen,)) if while_running else None
    if helper:
        helper.start()
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child has gone and the terminal is closed
                break
            if not data:
                break
            chunks.append(data)
            stream.feed(data)
            lines = list(screen.display)
            if not seen.frames or seen.frames[-1][1] != lines:
                seen.frames.append((time.monotonic() - started, lines))
    finally:
        _, status = os.waitpid(pid, 0)
        seen.ended = time.monotonic() - started
        os.close(fd)
        if helper:
            helper.join()
    seen.code = os.waitstatus_to_exitcode(status)
    seen.text = b"".join(chunks).decode("utf-8", "replace")
    return seen


def assert_tidy(seen: Screen, posts: int) -> None:
    """A successful run, as a person would want to see it end."""
    assert seen.code == 0, seen.text[-2000:]
    assert "WARNING" not in seen.text, seen.text[-2000:]
    bars = [line for line in seen.final if BAR.search(line)]
    assert len(bars) == 1, "\n".join(seen.final)
    (bar,) = bars
    assert bar.lstrip().startswith("100%|") and f"{posts}/{posts}" in bar, bar
    assert bar.rstrip().endswith("]"), f"the bar line runs into other text: {bar!r}"
    assert len(BAR.findall(bar)) == 1 and "skyarchive" not in bar and "exported" not in bar, bar
    assert any(line.startswith(f"exported {posts} posts") for line in seen.final), "\n".join(seen.final)
    if REDRAWS:
        assert seen.longest_still() <= STILL, [
            (round(at, 2), [x for x in lines if x.strip()]) for at, lines in seen.frames
        ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 posts (a media file every 10th), and the plugin's config with checksums and without."""
    from skyarchive.models import media_table, posts_table
    from skyarchive.seed import DEFAULT_DID, seed_archive

    root = tmp_path_factory.mktemp("terminal")
    engine = make_engine(root / "skyarchive.db")
    seed_archive(engine, posts_table, media_table, posts=12_000, did=DEFAULT_DID, media_every=10,
                 media_dir=root / "media")  # fmt: skip
    engine.dispose()
    (root / "plain.toml").write_text(plugin_toml(threshold=0, batch_size=500), encoding="utf-8")
    (root / "sums.toml").write_text(plugin_toml(threshold=0, batch_size=500, checksums=True), encoding="utf-8")
    return root


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("extras", [(), ("--media", "sums")], ids=["posts only", "media and checksums"])
def test_the_finish_on_a_terminal(folder: Path, tmp_path: Path, format: str, extras: tuple[str, ...]) -> None:
    from skyarchive.seed import DEFAULT_DID

    config = "sums.toml" if "sums" in extras else "plain.toml"
    media = ["--media"] if "--media" in extras else []
    argv = ["-m", "skyarchive", "--config", config, "export", "--did", DEFAULT_DID, "--format", format, *media,
            "--out", str(tmp_path / "out")]  # fmt: skip
    seen = run_in_terminal(argv, folder)
    assert_tidy(seen, 12_000)


def test_a_media_file_on_slow_storage(tmp_path: Path) -> None:
    """The export waits 7 s for one media file, once every post is written: the bar shows 100% while it waits
    (not the 98% tqdm last drew), the screen keeps moving (0.5), no log line breaks it, and it ends tidy."""
    from skyarchive.models import media_table, posts_table
    from skyarchive.seed import DEFAULT_DID, seed_archive

    engine = make_engine(tmp_path / "skyarchive.db")
    seed_archive(engine, posts_table, media_table, posts=3000, did=DEFAULT_DID, media_every=0,
                 media_dir=tmp_path / "media")  # fmt: skip
    fifo = add_slow_media_file(engine, tmp_path / "media")
    engine.dispose()
    (tmp_path / "skyarchive.toml").write_text(plugin_toml(threshold=0, batch_size=500), encoding="utf-8")
    waiting: list[list[str]] = []

    def slow_storage(seen: Screen) -> None:
        deadline = time.monotonic() + 30
        while not any(BAR.search(line) for _, lines in seen.frames[-1:] for line in lines):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(7)  # past the 5 s after which a status line is due
        waiting.append(seen.frames[-1][1])
        feed_fifo(fifo)

    argv = ["-m", "skyarchive", "export", "--did", DEFAULT_DID, "--format", "json", "--media"]
    seen = run_in_terminal(argv, tmp_path, while_running=slow_storage)
    assert seen.ended >= 7
    (screen,) = waiting
    assert next(line for line in screen if BAR.search(line)).lstrip().startswith("100%|"), screen
    assert_tidy(seen, 3000)
    if REDRAWS:  # what the export was doing, beside the bar, while it waited
        assert any("copying media files: 0 of 1 done" in line for line in screen), screen
