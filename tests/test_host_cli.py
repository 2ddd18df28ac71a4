"""The host's CLI round trip (init, seed, export) and its answers to bad input.

Expected files are computed from the database with the stdlib ``sqlite3`` and
``json`` modules, independently of the host's code.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import DID, HOST_VERSION, ArchiveFolder

pytestmark = pytest.mark.host  # tests of the host fixture itself: once per host release

COLUMNS = [
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
    "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type", "embed_data", "labels", "archived_at",
]  # fmt: skip
OPTIONAL = {"reply_parent", "embed_type", "embed_data", "labels"}
ORDER = "ORDER BY created_at DESC, uri ASC"


def expected_records(archive_folder: ArchiveFolder, where: str = "did = ?", *params: Any) -> list[dict[str, Any]]:
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


def hashes(embed: dict[str, Any] | None) -> list[str]:
    embed = embed or {}
    images = embed.get("images", []) + embed.get("media", {}).get("images", [])
    urls = [image["fullsize"] for image in images]
    if "thumb" in embed.get("external", {}):
        urls.append(embed["external"]["thumb"])
    return [url.rsplit("/", 1)[-1].split("@")[0] for url in urls]


def expected_csv_rows(archive_folder: ArchiveFolder) -> list[list[str]]:
    rows = []
    for row in archive_folder.sql(f"SELECT * FROM posts WHERE did = ? {ORDER}", DID):
        embed = json.loads(row["embed_data"]) if row["embed_data"] else None
        flag = {0: "false", 1: "true"}
        cells = [
            row["uri"], row["cid"], row["did"], row["text"] or "", row["created_at"], str(row["like_count"]),
            str(row["repost_count"]), str(row["reply_count"]), str(row["quote_count"]), flag[row["is_reply"]],
            row["reply_parent"] or "", flag[row["has_media"]], ";".join(hashes(embed)), row["embed_type"] or "",
            row["indexed_at"],
        ]  # fmt: skip
        if HOST_VERSION >= (0, 4):
            cells.append(";".join(label["val"] for label in json.loads(row["labels"] or "[]")))
        rows.append(cells)
    return rows


def test_init_creates_archive_and_folders(archive_folder: ArchiveFolder) -> None:
    result = archive_folder.cli("init")
    assert result.code == 0, result.err
    assert archive_folder.db.is_file() and archive_folder.media_dir.is_dir() and archive_folder.exports_dir.is_dir()
    assert {r["name"] for r in archive_folder.sql("SELECT name FROM sqlite_master WHERE type = 'index'")} >= {
        "idx_posts_did",
        "idx_posts_created_at",
        "idx_media_post_uri",
    }


def test_export_json_matches_the_database(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 0, result.err
    export_dir = result.export_dir
    assert export_dir.parent == (seeded_folder.exports_dir / DID.replace(":", "_")).resolve()
    raw = (export_dir / "posts.json").read_text(encoding="utf-8")
    records = json.loads(raw)
    assert records == expected_records(seeded_folder, "did = ?", DID)
    assert len(records) == 300
    assert [list(r) for r in records] == [[c for c in COLUMNS if c in r] for r in records]
    assert raw.startswith('[\n  {\n    "uri": ') and raw.endswith("\n  }\n]\n")
    if any(ord(ch) > 127 for ch in json.dumps(records, ensure_ascii=False)):
        assert "\\u" not in raw.replace("\\u2028", "").replace("\\u2029", "").replace("\\u00", "")
    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "json" and manifest["post_count"] == 300 and manifest["did"] == DID
    assert manifest["host_version"].startswith(".".join(map(str, HOST_VERSION)))
    assert manifest["files"] == ["posts.json"]
    assert sorted(os.listdir(export_dir)) == ["manifest.json", "posts.json"]


def test_export_csv_matches_the_database(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "csv")
    assert result.code == 0, result.err
    data = (result.export_dir / "posts.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    header = (
        "URI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,"
        "IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt"
    )
    assert rows[0] == header.split(",") + (["Labels"] if HOST_VERSION >= (0, 4) else [])
    assert rows[1:] == expected_csv_rows(seeded_folder)
    assert b"\r\n" in data and data.endswith(b"\r\n")


def test_date_range_is_inclusive_and_bare_until_covers_the_day(seeded_folder: ArchiveFolder) -> None:
    days = [r["d"] for r in seeded_folder.sql("SELECT DISTINCT substr(created_at, 1, 10) AS d FROM posts ORDER BY d")]
    assert len(days) >= 3, "the seed should span several days"
    since, until = days[1], days[-2]
    result = seeded_folder.cli("export", "--did", DID, "--format", "json", "--since", since, "--until", until)
    assert result.code == 0, result.err
    records = json.loads((result.export_dir / "posts.json").read_text(encoding="utf-8"))
    expected = expected_records(
        seeded_folder, "did = ? AND created_at >= ? AND created_at <= ?", DID, since, until + "T23:59:59.999Z"
    )
    assert records == expected and 0 < len(records) < 300
    assert {r["created_at"][:10] for r in records} == set(days[1:-1])
    manifest = json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["date_range"] == {"since": f"{since}T00:00:00.000Z", "until": f"{until}T23:59:59.999Z"}


def test_timestamp_bounds_are_inclusive(seeded_folder: ArchiveFolder) -> None:
    stamp = seeded_folder.sql(f"SELECT created_at FROM posts {ORDER} LIMIT 1 OFFSET 10")[0]["created_at"]
    result = seeded_folder.cli("export", "--did", DID, "--format", "json", "--since", stamp, "--until", stamp)
    assert result.code == 0, result.err
    records = json.loads((result.export_dir / "posts.json").read_text(encoding="utf-8"))
    assert records and {r["created_at"] for r in records} == {stamp}


def test_media_copies_the_selected_posts_files(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "json", "--media")
    assert result.code == 0, result.err
    rows = seeded_folder.sql(
        "SELECT file_path FROM media JOIN posts ON posts.uri = media.post_uri WHERE posts.did = ?", DID
    )
    assert rows, "the seed should write media rows"
    copied = sorted(os.listdir(result.export_dir / "media"))
    assert copied == sorted(Path(r["file_path"]).name for r in rows)
    for r in rows:
        source = seeded_folder.media_dir / r["file_path"]
        assert (result.export_dir / "media" / source.name).read_bytes() == source.read_bytes()
    manifest = json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["media_count"] == len(rows) and manifest["files"] == ["posts.json", "media/"]


def test_media_outside_media_dir_is_never_read(seeded_folder: ArchiveFolder, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    (seeded_folder.media_dir / "link.jpg").symlink_to(secret)
    post = seeded_folder.sql(f"SELECT uri FROM posts {ORDER} LIMIT 1")[0]["uri"]
    hostile = {"h1": "../secret.jpg", "h2": str(secret), "h3": "link.jpg", "h4": "nowhere/missing.jpg"}
    import sqlite3

    with sqlite3.connect(seeded_folder.db) as conn:
        conn.executemany(
            "INSERT INTO media (hash, post_uri, mime_type, file_path, size_bytes, created_at)"
            " VALUES (?, ?, 'image/jpeg', ?, 6, '2025-01-01T00:00:00.000Z')",
            [(h, post, path) for h, path in hostile.items()],
        )
    result = seeded_folder.cli("export", "--did", DID, "--format", "csv", "--media")
    assert result.code == 0, result.err
    names = os.listdir(result.export_dir / "media")
    assert "secret.jpg" not in names and "link.jpg" not in names and "missing.jpg" not in names
    assert all((result.export_dir / "media" / n).read_bytes() != b"secret" for n in names)
    for h in hostile:
        assert f"media {h}:" in result.err
    manifest = json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["media_skipped"] == 4


def test_unknown_did_is_an_empty_export(seeded_folder: ArchiveFolder) -> None:
    json_result = seeded_folder.cli("export", "--did", "did:plc:nobody", "--format", "json")
    assert json_result.code == 0, json_result.err
    assert (json_result.export_dir / "posts.json").read_bytes() == b"[]\n"
    csv_result = seeded_folder.cli("export", "--did", "did:plc:nobody2", "--format", "csv")
    assert csv_result.code == 0, csv_result.err
    assert (csv_result.export_dir / "posts.csv").read_bytes().decode("utf-8-sig").count("\r\n") == 1


def test_export_shows_progress_on_stderr(seeded_folder: ArchiveFolder) -> None:
    result = seeded_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 0
    assert "export: 300/300 posts (100%)" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "unknown format 'xml'"),
        (["--format", "json", "--since", "2025-02-01", "--until", "2025-01-01"], "before --since"),
        (["--format", "json", "--since", "yesterday"], "--since: invalid date 'yesterday'"),
        (["--format", "json", "--until", "2025-13-01"], "--until: invalid date"),
        (["--format", "json", "--since", "2025-01-01T10:00:00"], "--since: invalid date"),
    ],
)
def test_bad_export_input_is_a_one_line_error(seeded_folder: ArchiveFolder, args: list[str], message: str) -> None:
    result = seeded_folder.cli("export", "--did", DID, *args)
    assert result.code == 2
    assert message in result.error_line
    assert seeded_folder.export_dirs() == []


@pytest.mark.parametrize(
    "args",
    [["export", "--format", "json"], ["seed"], ["seed", "--posts", "many"], ["frobnicate"], []],
)
def test_bad_command_line_is_a_one_line_error(archive_folder: ArchiveFolder, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        archive_folder.cli(*args)
    assert exit_info.value.code == 2
    assert len(archive_folder.capsys.readouterr().err.strip().splitlines()) == 1


def test_seed_rejects_negative_counts_and_reseeding(archive_folder: ArchiveFolder) -> None:
    assert archive_folder.cli("seed", "--posts", "-1").code == 2
    archive_folder.seed(20)
    again = archive_folder.cli("seed", "--posts", "20")
    assert again.code == 2 and "seed" in again.error_line
    assert archive_folder.sql("SELECT count(*) AS n FROM posts")[0]["n"] == 20
    archive_folder.seed(20, "--seed", "1")
    assert archive_folder.sql("SELECT count(*) AS n FROM posts")[0]["n"] == 40


def test_export_without_an_archive_says_so(archive_folder: ArchiveFolder) -> None:
    result = archive_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 2 and "run 'skyarchive init'" in result.error_line


def test_failed_export_removes_its_directory(seeded_folder: ArchiveFolder) -> None:
    import sqlite3

    with sqlite3.connect(seeded_folder.db) as conn:
        conn.execute("UPDATE posts SET embed_data = '{broken' WHERE rowid = 7")
    uri = seeded_folder.sql("SELECT uri FROM posts WHERE rowid = 7")[0]["uri"]
    result = seeded_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 1
    assert uri in result.error_line and "embed_data is not valid JSON" in result.error_line
    assert seeded_folder.export_dirs() == []


def test_out_option_and_db_option(seeded_folder: ArchiveFolder, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    result = seeded_folder.cli(
        "--db", f"sqlite:///{seeded_folder.db}", "export", "--did", DID, "--format", "json", "--out", str(other)
    )
    assert result.code == 0, result.err
    assert result.export_dir.parent.parent == other.resolve()
    empty = tmp_path / "empty.db"
    result = seeded_folder.cli("--db", f"sqlite:///{empty}", "init")
    assert result.code == 0 and empty.is_file()
