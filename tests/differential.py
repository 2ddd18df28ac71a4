"""The differential check shared by the SQLite and PostgreSQL tests: random archives, both exporters, same bytes.

``posts()`` draws hostile posts; ``fill`` writes an archive of them; ``run_both``
exports it with the host alone and through the plugin and compares the files
byte for byte (or checks that both fail alike).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import simplejson
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from export_batching_plugin.batched import ExportFailed

from .harness import Outcome, export, insert_rows, post_row

OWNER = "did:plc:owner"
STAMPS = [f"2025-0{m}-1{d}T0{h}:00:00.{ms:03d}Z" for m in (1, 2) for d in (0, 5) for h in (0, 9) for ms in (0, 999)]

hostile_text = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(
        ['"quoted", comma', "line\nbreak", "cr\r\nlf", "\u2028\u2029", "\x00\x07\x1f", "emoji 👩‍👩‍👧 🇯🇵", "", " ", "\\"]
    ),
)
#: Numbers whose text differs between encoders (orjson writes 1e-7 for Python's 1e-07; 64-bit edges).
TRICKY_NUMBERS = [1e-07, 2.5e-05, -1e-09, 1e16, 1e22, 1.5e300, 5e-324, -0.0, 0.1, 2**63 - 1, 2**64, -(2**63) - 1]
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(TRICKY_NUMBERS),
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
        "like_count": draw(st.integers(0, 2**31 - 1)),
        "reply_parent": draw(st.one_of(st.none(), st.text(max_size=20))),
        "embed_type": draw(
            st.one_of(st.none(), st.sampled_from(["images", "external", "record", "record_with_media"]))
        ),
        "embed_data": None if body is None else simplejson.dumps(body, ensure_ascii=draw(st.booleans())),
        "labels": None if tags is None else simplejson.dumps(tags),
    }


def fill(
    engine: Engine, templates: list[dict[str, Any]], count: int, *, nul_free: bool = False, spread: bool = False
) -> None:
    """Insert ``count`` posts cycling through ``templates`` (unique uris; insertion order unrelated to export order).

    ``nul_free`` drops NUL characters from text columns (PostgreSQL cannot store them);
    ``spread`` gives every post its own ``created_at``.
    """
    rows = [post_row(n, **templates[n % len(templates)]) if templates else post_row(n) for n in range(count)]
    for n, row in enumerate(rows):
        if spread:
            row["created_at"] = f"2025-01-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.{n // 86400:03d}Z"
        if nul_free:
            for key in ("text", "reply_parent"):
                if isinstance(row[key], str):
                    row[key] = row[key].replace("\x00", "")
    rows.sort(key=lambda r: r["cid"][-3:])
    insert_rows(engine, rows)


def _essence(error: BaseException) -> tuple[type, str]:
    """What must match between the two paths' failures.

    A database error is compared as the driver raised it (the plugin reads
    SQLite's own cursor, so its error is not wrapped in SQLAlchemy's); a
    Unicode error by its reason (its positions count from different starts:
    the host encodes the whole file at once).
    """
    error = getattr(error, "orig", None) or error
    if isinstance(error, UnicodeError):
        return type(error), str(getattr(error, "reason", error))
    return type(error), str(error).splitlines()[0]


def assert_same(host: Outcome, plugin: Outcome, *, exact: bool = True) -> None:
    """The same bytes, or both failed (the harness checks that a failed export left nothing).

    ``exact``: a failure must also be the host's (same error). Leave it off for archives with several
    bad rows: the host meets them while building every record, the plugin batch by batch, so each may
    name a different one first.
    """
    if host.error is not None:
        assert plugin.error is not None, f"the host failed ({host.error!r}) but the plugin did not"
        assert isinstance(plugin.error, ExportFailed), repr(plugin.error)
        cause = plugin.error.__cause__
        assert cause is not None
        if exact:
            assert _essence(cause)[0] is _essence(host.error)[0], (host.error, plugin.error)
            assert _essence(host.error)[1] in str(plugin.error), (host.error, plugin.error)
        return
    assert plugin.error is None, f"the plugin failed where the host did not: {plugin.error!r}"
    assert plugin.manifest is not None and plugin.manifest["exporter"].startswith("export_batching")
    assert host.manifest is not None and host.manifest["exporter"].startswith("skyarchive")
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.manifest["post_count"] == host.manifest["post_count"]


def run_both(
    engine: Any, out: Path, *, batch_size: int, max_batch_bytes: int | None = None, exact: bool = True, **request: Any
) -> None:
    settings: dict[str, Any] = {"threshold": 0, "batch_size": batch_size}
    if max_batch_bytes is not None:
        settings["max_batch_bytes"] = max_batch_bytes
    host = export(engine, out / "host", settings=None, **request)
    plugin = export(engine, out / "plugin", settings=settings, **request)
    assert_same(host, plugin, exact=exact)
