"""Differential tests: the plugin's posts file equals the host's, byte for byte, or both fail alike.

Runs against whichever host release tox installed (env factor host03/host04).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import simplejson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from export_batching_plugin.batched import BatchFailed

from .harness import Outcome, export, insert_rows, make_engine, post_row

OWNER = "did:plc:owner"
STAMPS = [f"2025-0{m}-1{d}T0{h}:00:00.{ms:03d}Z" for m in (1, 2) for d in (0, 5) for h in (0, 9) for ms in (0, 999)]

hostile_text = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(
        ['"quoted", comma', "line\nbreak", "cr\r\nlf", "\u2028\u2029", "\x00\x07\x1f", "emoji 👩‍👩‍👧 🇯🇵", "", " ", "\\"]
    ),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
image = st.fixed_dictionaries(
    {"fullsize": st.sampled_from(["https://cdn/img/plain/did:plc:x/bafkreiaaa@jpeg", "x/y/z", "", "@", "/a@b@c"])},
    optional={"alt": hostile_text, "extra": json_value},
)
embed = st.one_of(
    st.none(),
    st.fixed_dictionaries({"images": st.lists(image, max_size=3)}),
    st.fixed_dictionaries({"media": st.fixed_dictionaries({"images": st.lists(image, max_size=2)})}),
    st.fixed_dictionaries(
        {"external": st.fixed_dictionaries({}, optional={"thumb": st.text(max_size=12), "uri": st.text()})}
    ),
    st.dictionaries(st.text(max_size=6), json_value, max_size=3),
    json_value,
)
labels = st.one_of(
    st.none(),
    st.lists(st.fixed_dictionaries({"val": st.text(max_size=8)}), max_size=3),
    st.lists(json_value, max_size=2),
)


@st.composite
def posts(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(embed)
    tags = draw(labels)
    return {
        "did": draw(st.sampled_from([OWNER, OWNER, OWNER, "did:plc:other"])),
        "text": draw(hostile_text),
        "created_at": draw(st.sampled_from(STAMPS)),
        "has_media": draw(st.booleans()),
        "is_reply": draw(st.booleans()),
        "like_count": draw(st.integers(0, 2**31)),
        "reply_parent": draw(st.one_of(st.none(), st.text(max_size=20))),
        "embed_type": draw(
            st.one_of(st.none(), st.sampled_from(["images", "external", "record", "record_with_media"]))
        ),
        "embed_data": None if body is None else simplejson.dumps(body, ensure_ascii=draw(st.booleans())),
        "labels": None if tags is None else simplejson.dumps(tags),
    }


def build(tmp: Path, templates: list[dict[str, Any]], count: int) -> Any:
    """An archive of ``count`` posts cycling through ``templates`` (unique uris; shuffled insert order)."""
    engine = make_engine(tmp / "archive.db")
    rows = [post_row(n, **templates[n % len(templates)]) if templates else post_row(n) for n in range(count)]
    rows.sort(key=lambda r: r["cid"][-3:])  # insertion order unrelated to export order
    insert_rows(engine, rows)
    return engine


def assert_same(host: Outcome, plugin: Outcome) -> None:
    if host.error is not None:
        assert plugin.error is not None, f"the host failed ({host.error!r}) but the plugin did not"
        cause = plugin.error.__cause__ if isinstance(plugin.error, BatchFailed) else plugin.error
        assert type(cause) is type(host.error), (host.error, plugin.error)
        assert str(host.error).splitlines()[0] in str(plugin.error)
        return
    assert plugin.error is None, f"the plugin failed where the host did not: {plugin.error!r}"
    assert plugin.manifest is not None and plugin.manifest["exporter"].startswith("export_batching")
    assert host.manifest is not None and host.manifest["exporter"].startswith("skyarchive")
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.manifest["post_count"] == host.manifest["post_count"]


def run_both(engine: Any, out: Path, *, batch_size: int, max_batch_bytes: int | None = None, **request: Any) -> None:
    settings: dict[str, Any] = {"threshold": 0, "batch_size": batch_size}
    if max_batch_bytes is not None:
        settings["max_batch_bytes"] = max_batch_bytes
    host = export(engine, out / "host", settings=None, **request)
    plugin = export(engine, out / "plugin", settings=settings, **request)
    assert_same(host, plugin)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    templates=st.lists(posts(), max_size=6),
    count=st.integers(0, 25),
    batch=st.data(),
    format=st.sampled_from(["json", "csv"]),
    budget=st.sampled_from([None, 1, 64, 4096]),
    window=st.one_of(
        st.none(), st.tuples(st.sampled_from(STAMPS), st.sampled_from([*STAMPS, "2025-01-15", "2025-02-10"]))
    ),
)
@example(templates=[], count=0, batch=None, format="json", budget=None, window=None)
@example(templates=[], count=0, batch=None, format="csv", budget=None, window=None)
def test_random_archives(
    templates: list[dict[str, Any]],
    count: int,
    batch: Any,
    format: str,
    budget: int | None,
    window: tuple[str, str] | None,
) -> None:
    batch_size = batch.draw(st.integers(1, count + 2), label="batch_size") if batch is not None else 1000
    since, until = sorted(window) if window else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        engine = build(Path(tmp), templates, count)
        try:
            run_both(
                engine,
                Path(tmp),
                batch_size=batch_size,
                max_batch_bytes=budget,
                format=format,
                since=since,
                until=until,
            )
        finally:
            engine.dispose()


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 2001])
@pytest.mark.parametrize("format", ["json", "csv"])
def test_counts_around_the_default_batch_size(tmp_path: Path, count: int, format: str) -> None:
    templates = [
        {"text": "plain"},
        {"text": 'a "quote", a comma\nand a newline', "embed_type": "images",
         "embed_data": '{"images":[{"fullsize":"https://x/y/bafkreiabc@jpeg","alt":"é"}],"f":0.1,"big":123456789012345678901234}'},
        {"text": None, "labels": '[{"val":"spam"},{"val":"!warn"}]', "created_at": "2025-01-01T00:00:00.000Z"},
    ]  # fmt: skip
    engine = build(tmp_path, templates, count)
    run_both(engine, tmp_path, batch_size=1000, format=format)


@pytest.mark.parametrize("batch_size", [1, 2, 7, 10, 11, 12])
def test_every_batch_size_around_the_archive_size(tmp_path: Path, batch_size: int) -> None:
    engine = build(tmp_path, [{"text": "tie", "created_at": "2025-01-01T00:00:00.000Z"}, {"text": "x"}], 10)
    run_both(engine, tmp_path, batch_size=batch_size, format="json")
    run_both(engine, tmp_path / "csv", batch_size=batch_size, format="csv")


def test_invalid_embed_json_fails_on_both_paths(tmp_path: Path) -> None:
    engine = build(tmp_path, [{"text": "ok"}, {"embed_data": "{not json"}], 5)
    host = export(engine, tmp_path / "host", settings=None)
    plugin = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": 2})
    assert host.error is not None and plugin.error is not None
    assert "embed_data is not valid JSON" in str(host.error) and "embed_data is not valid JSON" in str(plugin.error)
    assert "batch " in str(plugin.error)
