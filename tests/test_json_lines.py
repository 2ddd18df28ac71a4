"""JSON Lines (skyarchive 0.5): streamed byte for byte as skyarchive writes it, and read back by a streaming consumer.

The differential tests of the other formats run on JSON Lines too (tests/test_byte_identity.py and the
others parametrize over every format the host writes); here: what is particular to it. Its readers (pandas,
sqlite-utils, jq) read a seeded archive's posts.jsonl in tests/test_doc_recipes.py, as docs/usage.md prints them.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .conftest import HOST_VERSION
from .harness import export, insert_rows, make_engine, post_row

pytestmark = pytest.mark.skipif(HOST_VERSION < (0, 5), reason="JSON Lines: skyarchive 0.5")


def test_an_empty_selection_is_an_empty_file(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n, did="did:plc:other") for n in range(3)])
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0}, format="jsonl")
    assert outcome.error is None and outcome.posts_bytes == b""
    assert outcome.manifest is not None and outcome.manifest["files"] == ["posts.jsonl"]
    assert outcome.manifest["exporter"].startswith("export_batching")


def test_each_line_is_one_post_in_export_order(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "a.db")
    rows = [post_row(n, text=f"line {n}\nwith a newline", created_at=f"2025-01-01T00:00:{n % 7:02d}.000Z")
            for n in range(50)]  # fmt: skip
    insert_rows(engine, rows)
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 7}, format="jsonl")
    assert outcome.posts_bytes is not None
    lines = outcome.posts_bytes.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 51, "one line per post, each ending in \\n"
    with sqlite3.connect(tmp_path / "a.db") as conn:
        order = [uri for (uri,) in conn.execute("SELECT uri FROM posts ORDER BY created_at DESC, uri ASC")]
    assert [json.loads(line)["uri"] for line in lines[:-1]] == order
