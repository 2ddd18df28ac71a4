"""Verifiable exports: with ``checksums = true``, a SHA256SUMS that the real ``sha256sum -c`` checks.

Every file of the export is listed (the posts file, manifest.json, each media
file), names are escaped as GNU sha256sum escapes them, the posts file is
hashed while it is written, and the SHA256SUMS is published with the rest of
the export, or not at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_batching_plugin import batched
from export_batching_plugin.checksums import file_digest, sums_line

from .conftest import DID, ArchiveFolder
from .harness import FORMATS, archive_with_media, export, fail_writing, post_row

SHA256SUM = shutil.which("sha256sum")
needs_sha256sum = pytest.mark.skipif(SHA256SUM is None, reason="no sha256sum on this machine (GNU coreutils)")
AWKWARD = ["with space.jpg", "back\\slash.jpg", "new\nline.jpg", "car\rriage.jpg", " lead and trail .jpg",
           "*star.jpg", "-dash.jpg", "日本語 ü.jpg", "tab\there.jpg", "quote\"'.jpg"]  # fmt: skip


def verify(export_dir: Path, *tool: str) -> subprocess.CompletedProcess[str]:
    command = [*(tool or [str(SHA256SUM)]), "-c", "SHA256SUMS"]
    return subprocess.run(command, cwd=export_dir, capture_output=True, text=True, check=False)


@pytest.fixture
def media_archive(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """40 posts; media files for ten of them, with awkward names (and a skipped row: a missing file)."""
    rows = [post_row(n, created_at=f"2025-01-01T00:00:{59 - n:02d}.000Z") for n in range(40)]
    files: dict[str, tuple[int, bytes | None]] = {
        name: (n * 3, f"image {n}".encode() * (n + 1)) for n, name in enumerate(AWKWARD)
    }
    files["gone.jpg"] = (1, None)
    engine, media_dir = archive_with_media(tmp_path, rows, files)
    yield engine, media_dir
    engine.dispose()


def sums_of(export_dir: Path) -> list[bytes]:
    return (export_dir / "SHA256SUMS").read_bytes().splitlines(keepends=True)


@needs_sha256sum
@pytest.mark.parametrize("format", FORMATS)
def test_a_fresh_export_verifies_and_lists_every_file(
    media_archive: tuple[Any, Path], tmp_path: Path, format: str
) -> None:
    engine, media_dir = media_archive
    outcome = export(
        engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 7, "checksums": True}, format=format,
        media=True, media_dir=media_dir,
    )  # fmt: skip
    assert outcome.result is not None, outcome.error
    folder = outcome.result.export_dir
    checked = verify(folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == len(AWKWARD) + 2
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    assert len(files) == len(AWKWARD) + 2
    lines = sums_of(folder)
    assert len(lines) == len(files)
    assert lines[0] == sums_line(file_digest(folder / f"posts.{format}"), f"posts.{format}")
    assert lines[1] == sums_line(file_digest(folder / "manifest.json"), "manifest.json")
    assert lines[2:] == [sums_line(file_digest(folder / "media" / name), f"media/{name}") for name in AWKWARD]
    host = export(engine, tmp_path / "host", settings=None, format=format, media=True, media_dir=media_dir)
    assert outcome.posts_bytes == host.posts_bytes


@needs_sha256sum
@pytest.mark.parametrize(
    "damage", ["flip a byte of the posts file", "flip a byte of a media file", "remove a media file"]
)
def test_damage_is_caught(media_archive: tuple[Any, Path], tmp_path: Path, damage: str) -> None:
    engine, media_dir = media_archive
    outcome = export(engine, tmp_path, settings={"threshold": 0, "checksums": True}, media=True, media_dir=media_dir)
    assert outcome.result is not None
    folder = outcome.result.export_dir
    target = folder / ("posts.json" if "posts" in damage else "media/new\nline.jpg")
    if damage == "remove a media file":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    checked = verify(folder)
    assert checked.returncode == 1
    failed = "FAILED open or read" if damage == "remove a media file" else "FAILED"
    assert (failed in checked.stdout) and checked.stdout.count(": OK") == len(AWKWARD) + 1


@pytest.mark.skipif(shutil.which("shasum") is None, reason="no shasum (Perl) on this machine")
def test_shasum_as_on_macos_verifies_too(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    """macOS has shasum, not sha256sum; it reads the same escapes, except \\r, which GNU's alone knows."""
    engine, media_dir = media_archive
    outcome = export(engine, tmp_path, settings={"threshold": 0, "checksums": True}, media=True, media_dir=media_dir)
    assert outcome.result is not None
    checked = verify(outcome.result.export_dir, "shasum", "-a", "256")
    assert checked.stdout.count(": OK") == len(AWKWARD) + 1, checked.stdout + checked.stderr


def test_without_checksums_there_is_no_sha256sums(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, media_dir = media_archive
    outcome = export(engine, tmp_path, settings={"threshold": 0}, media=True, media_dir=media_dir)
    assert outcome.result is not None and not (outcome.result.export_dir / "SHA256SUMS").exists()


@needs_sha256sum
def test_selections_below_the_threshold_get_one_too(archive_folder: ArchiveFolder) -> None:
    """With checksums on, the plugin exports small selections itself: the host's bytes, and a SHA256SUMS."""
    archive_folder.seed(40)
    host = archive_folder.cli("export", "--did", DID, "--format", "csv", "--out", str(archive_folder.root / "host"))
    archive_folder.enable_plugin(checksums=True)  # the default threshold, 5,000
    plugin = archive_folder.cli("export", "--did", DID, "--format", "csv", "--out", str(archive_folder.root / "plugin"))
    assert plugin.code == 0, plugin.err
    manifest = json.loads((plugin.export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["exporter"].startswith("export_batching")
    assert (plugin.export_dir / "posts.csv").read_bytes() == (host.export_dir / "posts.csv").read_bytes()
    assert verify(plugin.export_dir).returncode == 0


def test_a_failure_while_writing_sha256sums_leaves_nothing(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, media_dir = media_archive

    def full(path: Path, *entries: Any) -> None:
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(batched, "write_sums", full)
    outcome = export(engine, tmp_path, settings={"threshold": 0, "checksums": True}, media=True, media_dir=media_dir)
    assert outcome.job is not None
    assert str(outcome.error) == f"writing SHA256SUMS failed: disk full: {outcome.job.export_dir / 'SHA256SUMS'}"
    assert [p for p in tmp_path.rglob("*") if p.name == "SHA256SUMS" or ".staging-" in p.name] == []


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("posts.json", b"ab  posts.json\n"),
        ("media/a b.jpg", b"ab  media/a b.jpg\n"),
        ("media/a\\b.jpg", b"\\ab  media/a\\\\b.jpg\n"),
        ("media/a\nb.jpg", b"\\ab  media/a\\nb.jpg\n"),
        ("media/a\rb.jpg", b"\\ab  media/a\\rb.jpg\n"),
        ("media/\udcff.jpg", b"ab  media/\xff.jpg\n"),  # a name that is not UTF-8: its bytes as on disk
    ],
)
def test_sums_line_escapes_as_gnu_sha256sum(name: str, line: bytes) -> None:
    assert sums_line("ab", name) == line


@needs_sha256sum
def test_sums_lines_match_what_sha256sum_writes(tmp_path: Path) -> None:
    for n, name in enumerate(AWKWARD):
        (tmp_path / name).write_bytes(b"x" * n)
    ours = b"".join(sums_line(file_digest(tmp_path / name), name) for name in sorted(AWKWARD))
    theirs = subprocess.run([str(SHA256SUM), "--", *sorted(AWKWARD)], cwd=tmp_path, capture_output=True, check=True)
    assert ours == theirs.stdout


def test_a_failure_mid_export_with_checksums_on_leaves_nothing(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is published, no SHA256SUMS is left."""
    engine, media_dir = media_archive
    fail_writing(monkeypatch, batch=2, error=OSError(28, "No space left on device"))
    outcome = export(engine, tmp_path, settings={"threshold": 0, "batch_size": 5, "checksums": True},
                     media=True, media_dir=media_dir)  # fmt: skip
    assert outcome.job is not None and str(outcome.error).startswith("writing batch 2 (posts 6-10) failed: disk full")
    assert [p for p in tmp_path.rglob("*") if p.name == "SHA256SUMS" or ".staging-" in p.name] == []
