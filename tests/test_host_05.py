"""What skyarchive 0.5 adds: JSON Lines, the status channel, config mistakes caught, the empty-selection warning.

Expected files are computed from the database with the stdlib ``sqlite3`` and
``json`` modules (and the bytes with simplejson, the encoder the host reference
names), independently of the host's code.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import simplejson
import skyarchive.cli
import skyarchive.export
import skyarchive.plugins
from skyarchive.cli import main, run_export
from skyarchive.config import load_config
from skyarchive.export import ExportJob, ExportRequest, ExportResult
from skyarchive.hookspecs import hookimpl
from skyarchive.plugins import load_plugins
from skyarchive.progress import ConsoleProgress
from sqlalchemy import create_engine
from tqdm import TqdmMonitorWarning, tqdm
from tqdm._monitor import TMonitor

from .conftest import DID, HOST_VERSION, ArchiveFolder

pytestmark = [
    pytest.mark.host,  # tests of the host fixture itself: once per host release
    pytest.mark.skipif(HOST_VERSION < (0, 5), reason="JSON Lines, status(), config checks: skyarchive 0.5"),
]

COLUMNS = [
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
    "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type", "embed_data", "labels", "archived_at",
]  # fmt: skip
OPTIONAL = {"reply_parent", "embed_type", "embed_data", "labels"}
ORDER = "ORDER BY created_at DESC, uri ASC"
NOBODY = "did:plc:nobody"
EMPTY_WARNING = (
    f"skyarchive: WARNING: no posts of {NOBODY} (any date) were selected: the export is empty;"
    " check --did and --since/--until"
)


# -- oracles -------------------------------------------------------------------


def expected_records(archive_folder: ArchiveFolder, where: str = "did = ?", *params: Any) -> list[dict[str, Any]]:
    """The posts.json records of the selection, read with sqlite3 and json."""
    if not params:
        params = (DID,)
    records = []
    for row in archive_folder.sql(f"SELECT * FROM posts WHERE {where} {ORDER}", *params):
        record: dict[str, Any] = {}
        for name in COLUMNS:
            value = row[name]
            if name in OPTIONAL and value is None:
                continue
            if name in ("embed_data", "labels"):
                value = json.loads(value)
            elif name in ("has_media", "is_reply"):
                value = bool(value)
            record[name] = value
        records.append(record)
    return records


def expected_jsonl(records: list[dict[str, Any]]) -> bytes:
    """posts.jsonl as the host reference fixes it: simplejson, not ASCII-escaped, compact, one record a line."""
    return b"".join(
        (simplejson.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        for record in records
    )


def jsonl_records(data: bytes) -> list[Any]:
    """Parse JSON Lines, splitting on "\\n" only (str.splitlines would also split at U+2028)."""
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def manifest(export_dir: Path) -> dict[str, Any]:
    return json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def media_rows(archive_folder: ArchiveFolder, where: str = "posts.did = ?", *params: Any) -> list[Any]:
    return archive_folder.sql(
        f"SELECT media.* FROM media JOIN posts ON posts.uri = media.post_uri WHERE {where}", *(params or (DID,))
    )


# -- fakes ---------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A console stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True

    def frames(self) -> list[str]:
        """What was drawn, one item per carriage return or newline."""
        return [frame for frame in re.split(r"[\r\n]", self.getvalue()) if frame.strip()]


@dataclass
class FakeEntryPoint:
    """Just what the host uses of an importlib.metadata.EntryPoint."""

    name: str
    factory: Callable[[dict[str, Any]], object]
    group: str = "skyarchive.plugins"

    def load(self) -> Callable[[dict[str, Any]], object]:
        return self.factory


def install(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    """Make ``eps`` the installed plugins, whatever the venv holds."""

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(skyarchive.plugins, "entry_points", fake_entry_points)


class StatusRecorder:
    """A listener with a status method: records updates and status texts, with their times."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []

    def __call__(self, processed: int, total: int) -> None:
        self.events.append(("update", (processed, total), time.monotonic()))

    def status(self, text: str) -> None:
        self.events.append(("status", text, time.monotonic()))

    def texts(self) -> list[str]:
        return [value for kind, value, _ in self.events if kind == "status"]


@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older tqdm releases size a bar on a stream without a terminal size by COLUMNS/LINES: make it wide."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LINES", "50")


def cli_on_terminal(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, FakeTerminal]:
    """Run the CLI in-process with standard error a (fake) terminal."""
    terminal = FakeTerminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        code = main(list(args))
    return code, terminal


# -- JSON Lines ------------------------------------------------------------------


def test_jsonl_export_matches_the_database(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "jsonl")
    assert result.code == 0, result.err
    data = (result.export_dir / "posts.jsonl").read_bytes()
    expected = expected_records(seeded_folder)
    assert len(expected) == 300
    assert jsonl_records(data) == expected
    assert data == expected_jsonl(expected)
    assert [list(r) for r in jsonl_records(data)] == [list(r) for r in expected]  # same keys, same order
    assert any(byte > 127 for byte in data) and b"\\u3" not in data  # UTF-8, not ASCII-escaped (kana, kanji)
    assert sorted(os.listdir(result.export_dir)) == ["manifest.json", "posts.jsonl"]
    info = manifest(result.export_dir)
    assert info["format"] == "jsonl" and info["post_count"] == 300 and info["files"] == ["posts.jsonl"]
    assert info["host_version"].startswith("0.5")
    assert "export: 300/300 posts (100%)" in result.err


def test_jsonl_lines_are_the_records_of_posts_json(seeded_folder: ArchiveFolder) -> None:
    as_json = seeded_folder.cli("export", "--did", DID, "--format", "json", "--out", "a")
    as_jsonl = seeded_folder.cli("export", "--did", DID, "--format", "jsonl", "--out", "b")
    assert as_json.code == as_jsonl.code == 0, as_json.err + as_jsonl.err
    records = json.loads((as_json.export_dir / "posts.json").read_text(encoding="utf-8"))
    assert jsonl_records((as_jsonl.export_dir / "posts.jsonl").read_bytes()) == records


def test_empty_jsonl_is_an_empty_file(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", NOBODY, "--format", "jsonl")
    assert result.code == 0, result.err
    assert (result.export_dir / "posts.jsonl").read_bytes() == b""
    info = manifest(result.export_dir)
    assert info["post_count"] == 0 and info["files"] == ["posts.jsonl"] and info["format"] == "jsonl"


def test_jsonl_with_a_date_range_and_media(seeded_folder: ArchiveFolder) -> None:
    days = [r["d"] for r in seeded_folder.sql("SELECT DISTINCT substr(created_at, 1, 10) AS d FROM posts ORDER BY d")]
    assert len(days) >= 3, "the seed should span several days"
    since, until = days[1], days[-2]
    result = seeded_folder.cli(
        "export", "--did", DID, "--format", "jsonl", "--since", since, "--until", until, "--media"
    )
    assert result.code == 0, result.err
    where, bounds = "did = ? AND created_at >= ? AND created_at <= ?", (DID, since, until + "T23:59:59.999Z")
    expected = expected_records(seeded_folder, where, *bounds)
    assert 0 < len(expected) < 300
    data = (result.export_dir / "posts.jsonl").read_bytes()
    assert data == expected_jsonl(expected) and jsonl_records(data) == expected
    rows = media_rows(seeded_folder, "posts.did = ? AND posts.created_at >= ? AND posts.created_at <= ?", *bounds)
    assert rows, "the range should hold posts with media"
    assert sorted(os.listdir(result.export_dir / "media")) == sorted(Path(r["file_path"]).name for r in rows)
    info = manifest(result.export_dir)
    assert info["files"] == ["posts.jsonl", "media/"] and info["media_count"] == len(rows)
    assert info["date_range"] == {"since": f"{since}T00:00:00.000Z", "until": f"{until}T23:59:59.999Z"}


def test_unknown_format_lists_jsonl(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "ndjson")
    assert result.code == 2
    assert result.error_line == "skyarchive: error: --format: unknown format 'ndjson' (expected json, csv or jsonl)"
    assert seeded_folder.export_dirs() == []


# -- the status channel: the console off a terminal --------------------------------


def test_status_off_a_terminal_is_a_plain_line_throttled_with_progress(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    console = ConsoleProgress(stream, interval=1.0)
    with caplog.at_level("DEBUG"):
        console(0, 10)  # the first line is always printed
        console.status("loading posts")  # less than 1 s after the last line: dropped
        console(5, 10)  # dropped as well: one timer for both kinds of line
        time.sleep(1.1)
        console.status("copying media files: 1 of 3")
        console(6, 10)  # dropped: the status line just reset the timer
        console(10, 10)  # 100% is always printed
        console.close()
    assert stream.getvalue().splitlines() == [
        "export: 0/10 posts (0%)",
        "export: copying media files: 1 of 3",
        "export: 10/10 posts (100%)",
    ]
    assert caplog.records == [], "status lines are not log records"


def test_status_first_is_printed_at_once() -> None:
    stream = io.StringIO()
    console = ConsoleProgress(stream, interval=60.0)
    console.status("counting posts")
    console.status("still counting")
    console.close()
    assert stream.getvalue() == "export: counting posts\n"


# -- the status channel: the console on a terminal ---------------------------------


@pytest.mark.usefixtures("wide_terminal")
def test_status_on_a_terminal_is_shown_beside_the_bar() -> None:
    terminal = FakeTerminal()
    console = ConsoleProgress(terminal)
    try:
        console.status("preparing")  # no bar yet: kept for when it is drawn
        assert terminal.getvalue() == ""
        console(0, 100)
        assert "0/100" in terminal.frames()[-1] and "preparing" in terminal.frames()[-1]
        console.status("copying media files: 1 of 3")
        frame = terminal.frames()[-1]
        assert "0/100" in frame and "copying media files: 1 of 3" in frame  # one line: the bar and the text
        console(50, 100)  # drawn at the latest when the bar is closed (tqdm skips draws within 0.1 s)
    finally:
        console.close()
    assert "50/100" in terminal.frames()[-1] and "copying media files: 1 of 3" in terminal.frames()[-1]
    assert "export: " not in terminal.getvalue(), "no plain lines on a terminal"
    assert terminal.getvalue().count("\n") == 1, "the bar stays on one line until it is closed"


@pytest.mark.usefixtures("wide_terminal")
def test_terminal_bar_is_redrawn_while_no_update_comes() -> None:
    before = set(threading.enumerate())
    terminal = FakeTerminal()
    console = ConsoleProgress(terminal)
    try:
        console(10, 100)
        console.status("copying media files: 0 of 10,210")
        drawn = len(terminal.frames())
        time.sleep(2.2)
        redraws = len(terminal.frames()) - drawn
        last = terminal.frames()[-1]
    finally:
        console.close()
    assert redraws >= 2, f"at least one redraw a second, got {redraws} in 2.2 s"
    assert "[00:02" in last and "10/100" in last and "copying media files: 0 of 10,210" in last  # elapsed moved
    closed = terminal.getvalue()
    time.sleep(0.7)
    assert terminal.getvalue() == closed, "no redraws after close()"
    assert [t for t in threading.enumerate() if t not in before and not isinstance(t, TMonitor)] == []


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads cannot start, as under a container's task limit."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(tqdm, "monitor_interval", tqdm.monitor_interval)  # tqdm turns its monitor off for good
    monkeypatch.setattr(tqdm, "monitor", None)  # so that the next bar tries to start tqdm's monitor thread too
    monkeypatch.setattr(threading.Thread, "start", refuse)


@pytest.mark.usefixtures("wide_terminal", "no_threads")
def test_redraw_thread_that_cannot_start_leaves_the_console_working() -> None:
    terminal = FakeTerminal()
    console = ConsoleProgress(terminal)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmMonitorWarning)
        console(0, 10)
        console.status("copying media files: 1 of 3")
        console(10, 10)
        console.close()
    assert "10/10" in terminal.frames()[-1] and "copying media files: 1 of 3" in terminal.getvalue()


@pytest.mark.usefixtures("wide_terminal", "no_threads")
def test_export_on_a_terminal_without_threads_succeeds(
    seeded_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, terminal = cli_on_terminal(monkeypatch, "export", "--did", DID, "--format", "jsonl", "--media")
    assert code == 0, terminal.getvalue()
    export_dir = seeded_folder.export_dirs()[0]
    assert (export_dir / "posts.jsonl").read_bytes() == expected_jsonl(expected_records(seeded_folder))
    assert "300/300" in terminal.getvalue() and "error" not in terminal.getvalue()


@pytest.mark.usefixtures("wide_terminal")
def test_log_records_do_not_garble_the_bar(seeded_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    code, terminal = cli_on_terminal(monkeypatch, "export", "--did", NOBODY, "--format", "json")
    assert code == 0, terminal.getvalue()
    warnings_shown = [frame for frame in terminal.frames() if "WARNING" in frame]
    assert warnings_shown == [EMPTY_WARNING], "one warning, on a line of its own, in the CLI's log format"
    assert (seeded_folder.export_dirs()[0] / "posts.json").read_bytes() == b"[]\n"


# -- the status channel: the host's exporter --------------------------------------


def test_host_exporter_says_status_while_copying_media(
    seeded_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_copy = skyarchive.export.copy_media_file

    def slow_copy(*args: Any) -> bool:
        time.sleep(0.03)
        return real_copy(*args)

    monkeypatch.setattr(skyarchive.export, "copy_media_file", slow_copy)
    total = len(media_rows(seeded_folder))
    assert total >= 40, "the copy should take over a second"
    recorder, plain = StatusRecorder(), []
    config = load_config(db_url=f"sqlite:///{seeded_folder.db}")
    engine = create_engine(config.database_url)
    job = ExportJob(
        request=ExportRequest.create(did=DID, format="jsonl", media=True), config=config, engine=engine,
        export_dir=tmp_path / "out" / "x", started_at=datetime.now(timezone.utc),
        listeners=[recorder, lambda processed, total: plain.append((processed, total))],
    )  # fmt: skip
    try:
        result = run_export(job, load_plugins(config))
    finally:
        engine.dispose()
    assert result.media_count == total and plain == [(0, 300), (300, 300)]  # plain listeners get updates only
    texts = recorder.texts()
    assert len(texts) >= 3, texts  # 40+ files at 30 ms each: at the start, then every 0.5 s
    counts = []
    for text in texts:
        match = re.fullmatch(rf"copying media files: ([\d,]+) of {total:,}", text)
        assert match, text
        counts.append(int(match[1].replace(",", "")))
    assert counts == sorted(counts) and counts[-1] < total
    times = [at for kind, _, at in recorder.events if kind == "status"]
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(times)), "at most one status every 0.5 s"
    first_status = next(i for i, (kind, _, _) in enumerate(recorder.events) if kind == "status")
    assert recorder.events[first_status - 1][:2] == ("update", (300, 300)), "media are copied after the posts"
    assert job.activity == texts[-1] and job.status == "done"


def test_status_reaches_the_console_as_a_plain_line(
    seeded_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skyarchive.cli, "ConsoleProgress", functools.partial(ConsoleProgress, interval=0.0))
    result = seeded_folder.cli("export", "--did", DID, "--format", "json", "--media")
    assert result.code == 0, result.err
    total = len(media_rows(seeded_folder))
    assert f"export: copying media files: 0 of {total:,}" in result.err.splitlines()
    assert not [line for line in result.err.splitlines() if line.startswith("skyarchive:")], "not through logging"


# -- config mistakes -------------------------------------------------------------


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """export_batching is the one installed plugin (a fake: nothing is loaded from it but a plain object)."""
    install(monkeypatch, FakeEntryPoint("export_batching", lambda settings: object()))


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("name", ["export-batching-plugin", "export-batching", "Export_Batching"])
def test_enabled_name_not_installed_suggests_the_closest_installed(archive_folder: ArchiveFolder, name: str) -> None:
    archive_folder.write_config(f'[plugins]\nenabled = ["{name}"]\n')
    result = archive_folder.cli("init")
    assert result.code == 2
    assert result.error_line == (
        f"skyarchive: error: config: plugin '{name}' is enabled but not installed"
        " (no skyarchive.plugins entry point); did you mean 'export_batching'?"
    )
    assert not archive_folder.db.exists()


@pytest.mark.parametrize("name", ["skyarchive-dedup-plugin", "DE.DUP"])
def test_names_are_compared_without_case_separators_and_affixes(
    archive_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    install(monkeypatch, FakeEntryPoint("dedup", lambda settings: object()))
    archive_folder.write_config(f'[plugins]\nenabled = ["{name}"]\n')
    result = archive_folder.cli("init")
    assert result.code == 2 and result.error_line.endswith("; did you mean 'dedup'?")


@pytest.mark.usefixtures("installed")
def test_enabled_name_far_from_any_installed_has_no_suggestion(archive_folder: ArchiveFolder) -> None:
    archive_folder.write_config('[plugins]\nenabled = ["zebra"]\n')
    result = archive_folder.cli("init")
    assert result.code == 2
    assert result.error_line == (
        "skyarchive: error: config: plugin 'zebra' is enabled but not installed (no skyarchive.plugins entry point)"
    )


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("table", ["export-batching", "export_batching_plugin", "Export.Batching"])
def test_table_of_a_plugin_not_enabled_suggests_the_enabled_name(archive_folder: ArchiveFolder, table: str) -> None:
    archive_folder.write_config(f'[plugins]\nenabled = ["export_batching"]\n["plugins"."{table}"]\nthreshold = 10\n')
    result = archive_folder.cli("init")
    assert result.code == 2
    assert result.error_line == (
        f"skyarchive: error: config: [plugins.{table}] is the table of a plugin that is not enabled;"
        " did you mean 'export_batching'?"
    )
    assert not archive_folder.db.exists()


@pytest.mark.usefixtures("installed")
def test_table_of_a_plugin_not_enabled_suggests_an_installed_name(archive_folder: ArchiveFolder) -> None:
    archive_folder.write_config("[plugins.export-batching]\nthreshold = 10\n")
    result = archive_folder.cli("init")
    assert result.code == 2
    assert result.error_line.startswith(
        "skyarchive: error: config: [plugins.export-batching] is the table of a plugin that is not enabled;"
    )
    assert "did you mean 'export_batching'?" in result.error_line


@pytest.mark.usefixtures("installed")
def test_table_far_from_any_plugin_names_the_enabled_plugins(archive_folder: ArchiveFolder) -> None:
    archive_folder.write_config('[plugins]\nenabled = ["export_batching"]\n[plugins.zebra]\nstripes = 3\n')
    result = archive_folder.cli("init")
    assert result.code == 2
    line = result.error_line
    assert line.startswith("skyarchive: error: config: [plugins.zebra] is the table of a plugin that is not enabled;")
    assert "did you mean" not in line and "'export_batching'" in line


def test_config_mistakes_with_no_plugin_installed(
    archive_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    archive_folder.write_config("[plugins.export_batching]\nthreshold = 10\n")
    table = archive_folder.cli("init")
    assert table.code == 2
    assert "[plugins.export_batching] is the table of a plugin that is not enabled;" in table.error_line
    assert "no plugin is enabled" in table.error_line
    archive_folder.write_config('[plugins]\nenabled = ["export_batching"]\n')
    enabled = archive_folder.cli("init")
    assert enabled.code == 2
    assert enabled.error_line.endswith(
        "'export_batching' is enabled but not installed (no skyarchive.plugins entry point)"
    )


# -- the empty selection ------------------------------------------------------------


def test_empty_selection_warns_once_and_is_still_written(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", NOBODY, "--format", "csv")
    assert result.code == 0, result.err
    assert result.err.count("WARNING") == 1
    assert EMPTY_WARNING in result.err.splitlines()
    assert (result.export_dir / "posts.csv").read_bytes().decode("utf-8-sig").count("\r\n") == 1
    assert manifest(result.export_dir)["post_count"] == 0


def test_empty_selection_warning_names_the_date_range(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli(
        "export", "--did", DID, "--format", "json", "--since", "2001-01-01", "--until", "2001-01-31"
    )
    assert result.code == 0, result.err
    (line,) = [line for line in result.err.splitlines() if "WARNING" in line]
    assert line.startswith(f"skyarchive: WARNING: no posts of {DID} (from 2001-01-01")
    assert "2001-01-31" in line and "the export is empty" in line
    assert json.loads((result.export_dir / "posts.json").read_text(encoding="utf-8")) == []


def test_a_selection_with_posts_does_not_warn(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "jsonl", "--until", "2100-01-01")
    assert result.code == 0, result.err
    assert "WARNING" not in result.err


class EmptyExporter:
    """A plugin exporter that selects nothing."""

    @hookimpl
    def skyarchive_export(self, job: ExportJob, progress: Any) -> ExportResult:
        job.export_dir.mkdir(parents=True)
        (job.export_dir / "posts.json").write_text("[]\n", encoding="utf-8")
        progress.update(0, 0)
        return ExportResult(export_dir=job.export_dir, post_count=0, media_count=0)


def test_empty_selection_warning_holds_for_a_plugin_exporter(
    seeded_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, FakeEntryPoint("empty", lambda settings: EmptyExporter()))
    seeded_folder.write_config('[plugins]\nenabled = ["empty"]\n')
    result = seeded_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 0, result.err
    (line,) = [line for line in result.err.splitlines() if "WARNING" in line]
    assert line.startswith(f"skyarchive: WARNING: no posts of {DID} (any date) were selected")


# -- export --help ------------------------------------------------------------------


def option_help(text: str) -> Iterator[tuple[str, str]]:
    """(option, description) of each option in argparse's help."""
    option, words = None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("  -") or not line.startswith("    "):
            if option is not None:
                yield option, " ".join(words)
            option, words = None, []
        if line.startswith("  -"):
            invocation, _, rest = line.strip().partition("  ")
            option = next(part for part in re.split(r"[ ,]+", invocation) if part.startswith("--"))
            words = [rest.strip()]
        elif option is not None:
            words.append(line.strip())


def test_export_help_describes_every_option(archive_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        archive_folder.cli("export", "--help")
    assert exit_info.value.code == 0
    text = archive_folder.capsys.readouterr().out
    described = dict(option_help(text))
    options = ["--did", "--format", "--since", "--until", "--media", "--out"]
    assert [name for name in options if len(described.get(name, "").strip()) < 10] == [], described
    assert "--format json|csv|jsonl" in text
    assert all(name in described["--format"] for name in ("json", "csv", "jsonl"))
    for bound in ("--since", "--until"):
        assert "YYYY-MM-DD" in described[bound] and "RFC 3339" in described[bound]
    assert "whole day" in described["--until"]
