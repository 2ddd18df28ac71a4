"""Shared fixtures: a temporary archive folder and an in-process ``skyarchive`` CLI."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import skyarchive
from skyarchive.cli import main

HOST_VERSION = tuple(int(part) for part in skyarchive.__version__.split(".")[:2])
DID = "did:plc:q6gjnaw2blty4crticxkmujt"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def export_dir(self) -> Path:
        """The export directory: the last line of standard output."""
        return Path(self.out.strip().splitlines()[-1])

    @property
    def error_line(self) -> str:
        """Standard error less progress lines, which must be exactly one line."""
        lines = [line for line in self.err.strip().splitlines() if not line.startswith("export: ")]
        assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
        return lines[0]


def plugin_toml(**settings: Any) -> str:
    """A skyarchive.toml that enables the plugin, with ``settings`` as its table."""
    table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return f'[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\n{table}'


class ArchiveFolder:
    """A folder holding skyarchive.toml, the SQLite archive, media/ and exports/."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.db = root / "skyarchive.db"
        self.media_dir = root / "media"
        self.exports_dir = root / "exports"

    def write_config(self, text: str) -> Path:
        path = self.root / "skyarchive.toml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def enable_plugin(self, **settings: Any) -> Path:
        return self.write_config(plugin_toml(**settings))

    def cli(self, *args: str) -> CliResult:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    def seed(self, posts: int, *extra: str) -> None:
        result = self.cli("seed", "--posts", str(posts), *extra)
        assert result.code == 0, result.err

    def sql(self, query: str, *params: Any) -> list[sqlite3.Row]:
        """Read the archive with the stdlib sqlite3 module: an oracle independent of the host."""
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(query, params).fetchall()

    def export_dirs(self) -> list[Path]:
        return sorted(p for p in self.exports_dir.glob("*/*") if p.is_dir()) if self.exports_dir.exists() else []


@pytest.fixture
def archive_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[ArchiveFolder]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKYARCHIVE_CONFIG", raising=False)
    yield ArchiveFolder(tmp_path, capsys)


@pytest.fixture
def seeded_folder(archive_folder: ArchiveFolder) -> ArchiveFolder:
    """An archive with 300 posts (media every 10th post)."""
    archive_folder.seed(300, "--media-every", "10")
    return archive_folder


@pytest.fixture(autouse=True)
def own_temporary_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR of each test's own, for the spools of its exports (and what one may leave: see no_spool_left)."""
    folder = tmp_path_factory.mktemp("TMPDIR")
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
