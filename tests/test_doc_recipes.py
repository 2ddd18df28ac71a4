"""The docs' recipes, run as printed on an archive made by ``skyarchive seed`` and exported through the plugin.

Every runnable block of docs/usage.md and docs/verify-an-export.md has ``<!-- recipe: NAME -->`` just above
its code fence; the tests take the block's text from the page, so that what the docs print is what runs. The
archive's owner is seeded as ``did:plc:yourdid``, the DID the docs use, and the only thing replaced in a recipe
is the docs' example export folder (``~/exports/did_plc_yourdid/2026-12-03_12-04-31``), by a real one. Shell
recipes run in bash (HOME is the test's folder); Python recipes run in a fresh namespace in the export's folder.

The archive is real data, not rows made to suit: texts with newlines, carriage returns, U+2028 and emoji, posts
without text, and embeds holding integers beyond 64 bits, which skyarchive stores and exports as they are.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from export_batching_plugin import __version__

from .conftest import HOST_VERSION

pytestmark = pytest.mark.slow  # a 6,000-post archive, exported through the CLI in subprocesses

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / "docs" / "usage.md"
VERIFY = ROOT / "docs" / "verify-an-export.md"
README = ROOT / "README.md"

DID = "did:plc:yourdid"  # the docs' DID
EXAMPLE_EXPORT = "~/exports/did_plc_yourdid/2026-12-03_12-04-31"  # the docs' export folder
POSTS = 6000  # more than the default threshold (5,000): the plugin exports them
# Seed 6 of did:plc:yourdid: no post among the newest 100 carries labels (sqlite-utils's case, asserted below).
SEED = ("seed", "--posts", str(POSTS), "--media-every", "10", "--did", DID, "--seed", "6")
IN_CI = os.environ.get("CI") == "true"
JSONL = HOST_VERSION >= (0, 5)
needs_jsonl = pytest.mark.skipif(not JSONL, reason="JSON Lines: skyarchive 0.5")


def recipe(page: Path, name: str) -> str:
    """The code block marked ``<!-- recipe: name -->`` on ``page``, exactly as the page prints it."""
    pattern = rf"^<!-- recipe: {re.escape(name)} -->\n```[a-z]*\n(.*?)^```$"
    blocks = re.findall(pattern, page.read_text(encoding="utf-8"), flags=re.M | re.S)
    assert len(blocks) == 1, f"{page.name}: expected one block marked 'recipe: {name}', found {len(blocks)}"
    return str(blocks[0])


def in_folder(text: str, folder: Path) -> str:
    """A shell recipe with the docs' example export folder replaced by ``folder``."""
    assert EXAMPLE_EXPORT in text, f"the recipe no longer names {EXAMPLE_EXPORT}: {text!r}"
    return text.replace(EXAMPLE_EXPORT, shlex.quote(str(folder)))


def need_pandas() -> ModuleType:
    """pandas, installed in tox's slow-host05 environment only; there CI must run these tests, not skip them."""
    if IN_CI and JSONL:
        return importlib.import_module("pandas")
    return pytest.importorskip("pandas", reason="pandas is installed in tox's slow-host05 environment")


@dataclass
class Seeded:
    """A seeded archive in ``home`` and its exports through the plugin (``exports[format]``)."""

    home: Path
    env: dict[str, str]
    exports: dict[str, Path]
    export_out: str  # standard output of the docs' export command

    def sh(self, script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["bash", "-c", script], cwd=cwd or self.home, env=self.env, capture_output=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        result = self.sh(shlex.join(["skyarchive", *args]))
        assert result.returncode == 0, result.stderr.decode()
        return result

    def export(self, *args: str) -> Path:
        return Path(self.cli(*args).stdout.decode().splitlines()[-1])

    def posts(self, where: str = "", *params: Any) -> list[sqlite3.Row]:
        """The seeded posts in export order, read with the stdlib sqlite3 module: an oracle independent of both."""
        with sqlite3.connect(self.home / "skyarchive.db") as conn:
            conn.row_factory = sqlite3.Row
            query = f"SELECT * FROM posts WHERE did = ? {where} ORDER BY created_at DESC, uri ASC"
            return conn.execute(query, (DID, *params)).fetchall()

    def manifest(self, format: str) -> dict[str, Any]:
        return dict(json.loads((self.exports[format] / "manifest.json").read_text(encoding="utf-8")))

    def tool(self, name: str, *, needed_in_ci: bool) -> str:
        """The path of command-line tool ``name``; skips where it is missing (fails under CI if it must be there)."""
        path = shutil.which(name, path=self.env["PATH"])
        if path is None:
            if IN_CI and needed_in_ci:
                pytest.fail(f"{name} is not installed; tox's slow-host05 environment installs it")
            pytest.skip(f"{name} is not installed")
        return path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """The docs' config written as skyarchive.toml, 6,000 posts seeded, exported with the docs' command (JSON)
    and, with media, to CSV and JSON Lines (0.5)."""
    home = tmp_path_factory.mktemp("home")
    env = {key: value for key, value in os.environ.items() if key != "SKYARCHIVE_CONFIG"}
    env.update(HOME=str(home), LC_ALL="C.UTF-8", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    (home / "skyarchive.toml").write_text(recipe(USAGE, "enable"), encoding="utf-8")
    archive = Seeded(home, env, {}, "")
    archive.cli(*SEED)
    result = archive.sh(recipe(USAGE, "export"))
    assert result.returncode == 0, result.stderr.decode()
    archive.export_out = result.stdout.decode()
    archive.exports["json"] = Path(archive.export_out.splitlines()[-1])
    archive.exports["csv"] = archive.export("export", "--did", DID, "--format", "csv", "--media", "--out", "csv")
    if JSONL:
        archive.exports["jsonl"] = archive.export("export", "--did", DID, "--format", "jsonl", "--media", "--out", "l")
    yield archive


def run_python(name: str, folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run usage.md's Python recipe ``name`` in ``folder``; its namespace and what it printed."""
    monkeypatch.chdir(folder)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    capsys.readouterr()
    exec(compile(recipe(USAGE, name), f"<docs/usage.md recipe {name}>", "exec"), namespace)
    return namespace, capsys.readouterr().out


def big_integers(value: Any) -> list[int]:
    """The integers beyond 64 bits (signed) anywhere in a parsed JSON value."""
    if isinstance(value, dict):
        return [n for item in value.values() for n in big_integers(item)]
    if isinstance(value, list):
        return [n for item in value for n in big_integers(item)]
    return [value] if type(value) is int and not -(2**63) <= value < 2**63 else []


def parsed_embeds(archive: Seeded) -> dict[str, Any]:
    """Each post's embed_data as stored, parsed by the stdlib (exact), by URI."""
    return {row["uri"]: json.loads(row["embed_data"]) for row in archive.posts("AND embed_data IS NOT NULL")}


def assert_holds_big_integers(embeds: dict[str, Any]) -> None:
    assert any(n >= 2**64 for e in embeds.values() for n in big_integers(e)), "no integer beyond 64 bits seeded"
    assert any(n < -(2**63) for e in embeds.values() for n in big_integers(e)), "no integer below -2**63 seeded"


# -- usage.md, sections 2 to 5: enable, export, tell the plugin ran, verify ---------------------------------------


def test_the_enable_and_export_recipes_export_through_the_plugin(seeded: Seeded) -> None:
    *_, said, folder = seeded.export_out.splitlines()
    assert said == f"exported {POSTS} posts and 0 media files"  # the line usage.md shows
    assert Path(folder).parent == seeded.home / "exports" / "did_plc_yourdid"
    manifest = seeded.manifest("json")
    assert manifest["exporter"] == f"export_batching {__version__}" and manifest["post_count"] == POSTS
    assert (seeded.exports["json"] / "SHA256SUMS").is_file(), "the config recipe turns checksums on"
    posts = json.loads((seeded.exports["json"] / "posts.json").read_text(encoding="utf-8"))
    assert [post["uri"] for post in posts] == [row["uri"] for row in seeded.posts()]


def test_the_which_exporter_recipe_prints_the_line_it_shows(seeded: Seeded) -> None:
    text = recipe(USAGE, "which-exporter")
    (shown,) = [line for line in text.splitlines() if line.startswith("#")]
    result = seeded.sh(in_folder(text, seeded.exports["json"]))
    assert result.returncode == 0, result.stderr.decode()
    printed = result.stdout.decode().strip()
    assert printed == shown.lstrip("#").strip() == f'"exporter": "export_batching {__version__}",'


def test_the_verify_recipe_says_ok_and_only_then(seeded: Seeded, tmp_path: Path) -> None:
    text = recipe(USAGE, "verify")
    for format in ("json", "csv"):
        result = seeded.sh(in_folder(text, seeded.exports[format]))
        assert (result.returncode, result.stdout, result.stderr) == (0, b"OK\n", b""), format
    copy = shutil.copytree(seeded.exports["csv"], tmp_path / "copy")
    media = sorted((copy / "media").iterdir())
    assert len(media) == seeded.manifest("csv")["media_count"] > 0
    media[0].write_bytes(b"\0" + media[0].read_bytes()[1:])
    result = seeded.sh(in_folder(text, copy))
    assert result.returncode != 0 and b"OK" not in result.stdout
    assert result.stdout.decode() == f"media/{media[0].name}: FAILED\n"


# -- verify-an-export.md ----------------------------------------------------------------------------------------------


def test_the_checksums_on_recipe_puts_sums_in_an_export_below_the_threshold(seeded: Seeded) -> None:
    (seeded.home / "checksums.toml").write_text(recipe(VERIFY, "checksums-on"), encoding="utf-8")
    since = seeded.posts()[1000]["created_at"][:10]
    selected = len(seeded.posts("AND created_at >= ?", since))
    assert 0 < selected < 5000, "a selection below the default threshold"
    args = ("export", "--did", DID, "--format", "csv", "--since", since)
    folder = seeded.export("--config", "checksums.toml", *args, "--out", "small")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["exporter"] == f"export_batching {__version__}" and manifest["post_count"] == selected
    assert (folder / "SHA256SUMS").read_text(encoding="utf-8").count("\n") == 2
    # The page's warning: the table alone (without the plugin enabled) is refused (0.5) or ignored (0.3, 0.4).
    (seeded.home / "alone.toml").write_text("[plugins.export_batching]\nchecksums = true\n", encoding="utf-8")
    result = seeded.sh(shlex.join(["skyarchive", "--config", "alone.toml", *args, "--out", "alone"]))
    if HOST_VERSION >= (0, 5):
        assert result.returncode != 0 and b"the table of a plugin that is not enabled" in result.stderr
    else:
        folder = Path(result.stdout.decode().splitlines()[-1])
        assert result.returncode == 0 and not (folder / "SHA256SUMS").exists()


def test_the_check_recipe_verifies_every_file_and_says_what_failed(seeded: Seeded, tmp_path: Path) -> None:
    folder = seeded.exports["csv"]
    sums = (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    names = [line.split("  ", 1)[1] for line in sums]
    media = sorted(f"media/{path.name}" for path in (folder / "media").iterdir())
    assert names[:2] == ["posts.csv", "manifest.json"] and sorted(names[2:]) == media  # the order the page gives
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "posts.csv").write_bytes((copy / "posts.csv").read_bytes().replace(b"true", b"True", 1))
    (copy / media[-1]).unlink()
    ran = []
    for line in recipe(VERIFY, "check").splitlines():  # one line per system: each runs where its tool is
        if shutil.which(line.split()[0], path=seeded.env["PATH"]) is None:
            continue
        ran.append(line.split()[0])
        result = seeded.sh(line, cwd=folder)
        lines = result.stdout.decode().splitlines()
        assert result.returncode == 0 and lines == [f"{name}: OK" for name in names], line
        result = seeded.sh(line, cwd=copy)
        said = dict(entry.rsplit(": ", 1) for entry in result.stdout.decode().splitlines())
        assert result.returncode != 0, line
        assert said.pop("posts.csv") == "FAILED" and said.pop(media[-1]) == "FAILED open or read", line
        assert set(said.values()) == {"OK"}, line
    assert "sha256sum" in ran


# -- usage.md, section 6: who reads an export ---------------------------------------------------------------------


@needs_jsonl
def test_the_pandas_jsonl_recipe_reads_every_post_of_a_seeded_archive(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pandas = need_pandas()
    path = seeded.exports["jsonl"] / "posts.jsonl"
    rows, embeds = seeded.posts(), parsed_embeds(seeded)
    assert_holds_big_integers(embeds)
    reader = pandas.read_json(path, lines=True, chunksize=10_000, dtype=False)
    with reader, pytest.raises(ValueError, match=r"Value is too (big!|small)"):  # the page's word on read_json
        for _ in reader:
            pass
    if importlib.util.find_spec("pyarrow") is not None:  # not in tox's environments: checked where it is installed
        with pytest.raises(Exception, match=r"changed from number to array"):
            pandas.read_json(path, lines=True, engine="pyarrow")

    namespace, out = run_python("pandas-jsonl", seeded.exports["jsonl"], capsys, monkeypatch)
    assert out == f"{POSTS} posts from {rows[-1]['created_at']} to {rows[0]['created_at']}\n"
    chunks = list(namespace["read_posts"](path, chunksize=1000))
    assert [len(chunk) for chunk in chunks] == [1000] * 6
    posts = pandas.concat(chunks, ignore_index=True)
    assert len(posts) == seeded.manifest("jsonl")["post_count"] == POSTS
    assert posts["uri"].tolist() == [row["uri"] for row in rows]
    for row, text in zip(rows, posts["text"], strict=True):  # every text, as stored (None: no text)
        assert text == row["text"] or (row["text"] is None and pandas.isna(text))
    assert any("\u2028" in (row["text"] or "") for row in rows), "a text with U+2028 seeded"
    for uri, embed in zip(posts["uri"], posts["embed_data"], strict=True):  # every embed, integers exact
        assert embed == embeds[uri] if uri in embeds else pandas.isna(embed)
    counts = ("like_count", "repost_count", "reply_count", "quote_count")
    assert [str(posts[name].dtype) for name in counts] == ["int64"] * 4
    assert str(posts["has_media"].dtype) == str(posts["is_reply"].dtype) == "bool"
    # The page's word on flattening: an integer beyond 64 bits stays a Python int in an object column.
    flat = pandas.json_normalize(posts["embed_data"].dropna().tolist())
    assert flat["x_meta.big"].dtype == object and set(big_integers(flat["x_meta.big"].dropna().tolist()))
    with pytest.raises(OverflowError, match="Python int too large to convert to C long"):
        flat["x_meta.big"].dropna().astype("int64")


def test_the_pandas_csv_recipe_reads_every_field_as_it_is_in_the_file(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pandas = need_pandas()
    path = seeded.exports["csv"] / "posts.csv"
    rows = seeded.posts()
    assert path.read_bytes().startswith(b"\xef\xbb\xbfURI,"), "the BOM"
    assert any("\r" in (row["text"] or "") for row in rows) and any("\n" in (row["text"] or "") for row in rows)
    assert any(row["text"] is None for row in rows) and any(row["text"] == "" for row in rows)

    namespace, out = run_python("pandas-csv", seeded.exports["csv"], capsys, monkeypatch)
    assert out == f"{POSTS} posts from {rows[-1]['created_at']} to {rows[0]['created_at']}\n"
    chunks = list(namespace["read_posts_csv"](path, chunksize=1000))
    assert [len(chunk) for chunk in chunks] == [1000] * 6
    with open(path, encoding="utf-8-sig", newline="") as file:
        header, *records = csv.reader(file)
    assert all(list(chunk.columns) == header for chunk in chunks) and header[0] == "URI"
    assert [record for chunk in chunks for record in chunk.values.tolist()] == records  # every field
    assert len(records) == seeded.manifest("csv")["post_count"] == POSTS
    posts = pandas.concat(chunks, ignore_index=True)
    assert posts["URI"].tolist() == [row["uri"] for row in rows]
    assert posts["Text"].tolist() == [row["text"] or "" for row in rows]  # CSV has no NULL: both are ""
    assert posts["LikeCount"].astype("int64").tolist() == [row["like_count"] for row in rows]
    assert (posts["IsReply"] == "true").tolist() == [bool(row["is_reply"]) for row in rows]


def test_the_csv_module_recipe_reads_every_post(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = run_python("csv-module", seeded.exports["csv"], capsys, monkeypatch)
    expected = "".join(f"{row['uri']} {row['like_count']} {(row['text'] or '')[:20]!r}\n" for row in seeded.posts())
    assert out == expected


def test_the_pandas_json_recipe_reads_every_post(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pandas = need_pandas()
    embeds = parsed_embeds(seeded)
    assert_holds_big_integers(embeds)
    with pytest.raises(ValueError, match=r"Value is too (big!|small)"):
        pandas.read_json(seeded.exports["json"] / "posts.json")
    namespace, out = run_python("pandas-json", seeded.exports["json"], capsys, monkeypatch)
    assert out == f"{POSTS} posts\n"
    posts = namespace["posts"]
    assert posts["uri"].tolist() == [row["uri"] for row in seeded.posts()]
    for uri, embed in zip(posts["uri"], posts["embed_data"], strict=True):
        assert embed == embeds[uri] if uri in embeds else pandas.isna(embed)


@needs_jsonl
def test_the_sqlite_utils_recipe_loads_every_post(seeded: Seeded, tmp_path: Path) -> None:
    seeded.tool("sqlite-utils", needed_in_ci=True)
    lines = (seeded.exports["jsonl"] / "posts.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    first = next(n for n, line in enumerate(lines) if "labels" in json.loads(line))
    assert first >= 100, "the seed's newest 100 posts carry no labels: sqlite-utils needs --alter"
    (tmp_path / "posts.jsonl").symlink_to(seeded.exports["jsonl"] / "posts.jsonl")
    text = recipe(USAGE, "sqlite-utils")
    result = seeded.sh(text.replace(" --alter", ""), cwd=tmp_path)  # the page's word on --alter
    assert result.returncode != 0 and b"Error: table posts has no column named labels" in result.stderr
    (tmp_path / "posts.db").unlink(missing_ok=True)
    result = seeded.sh(text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    embeds = parsed_embeds(seeded)
    assert_holds_big_integers(embeds)
    with sqlite3.connect(tmp_path / "posts.db") as conn:
        loaded = conn.execute("SELECT uri, text, embed_data, labels FROM posts ORDER BY rowid").fetchall()
    rows = seeded.posts()
    assert len(loaded) == POSTS and [uri for uri, *_ in loaded] == [row["uri"] for row in rows]
    assert [text for _, text, *_ in loaded] == [row["text"] for row in rows]
    for uri, _, embed, _ in loaded:
        assert (embed is None) if uri not in embeds else json.loads(embed) == embeds[uri]
    assert sum(labels is not None for *_, labels in loaded) == sum(row["labels"] is not None for row in rows)


@needs_jsonl
def test_the_jq_recipe_selects_posts_and_big_integers_are_as_the_page_says(seeded: Seeded) -> None:
    jq = seeded.tool("jq", needed_in_ci=False)  # a system tool: tox cannot install it
    folder = seeded.exports["jsonl"]
    result = seeded.sh(recipe(USAGE, "jq"), cwd=folder)
    assert result.returncode == 0, result.stderr.decode()
    selected = [json.loads(line)["uri"] for line in result.stdout.decode().splitlines()]
    expected = [row["uri"] for row in seeded.posts("AND like_count > 100")]
    assert selected == expected and expected, "the posts with more than 100 likes, newest first"
    line = next(line for line in (folder / "posts.jsonl").open(encoding="utf-8") if big_integers(json.loads(line)))
    big = big_integers(json.loads(line))[0]
    version = subprocess.run([jq, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run([jq, "-c", "."], input=line, capture_output=True, text=True, check=True).stdout
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    assert (str(big) in out) == (major_minor >= (1, 7)), f"{version}: {big} printed as {out!r}"


# -- README.md ---------------------------------------------------------------------------------------------------


def test_the_readme_config_exports_through_the_plugin(seeded: Seeded) -> None:
    """README's config block (README is not marked: its first TOML block under "Install and enable")."""
    section = README.read_text(encoding="utf-8").split("## Install and enable", 1)[1]
    config = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (seeded.home / "readme.toml").write_text(config, encoding="utf-8")
    folder = seeded.export("--config", "readme.toml", "export", "--did", DID, "--format", "csv", "--out", "readme")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["exporter"] == f"export_batching {__version__}" and manifest["post_count"] == POSTS
    assert (folder / "posts.csv").read_bytes() == (seeded.exports["csv"] / "posts.csv").read_bytes()
