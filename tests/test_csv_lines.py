"""posts.csv lines without csv.writer (csvlines) equal csv.writer's of the host's csv_row, for rows of any values.

On every Python of the tox matrix (3.10's csv.writer raises on NUL, 3.11+ write it) and both host releases
(15 columns on 0.3, 16 on 0.4). Rows are drawn "usual" (the fast path runs) and "wild" (any value in any
column: None, bytes, floats, big ints, text with every special character): the lines, or the error (type
and message), must be csv.writer's.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import simplejson
import skyarchive.export as host_export
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from export_batching_plugin import csvlines, host

Post = namedtuple("Post", host.POST_COLUMNS)  # type: ignore[misc]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
WIDTH = len(host_export.CSV_HEADER)

# -- values -----------------------------------------------------------------------------------------------
SPECIAL = ",\"\r\n\x00 \t\x0b\x0c\x85\u2028\ufeff\\'#;@/"
chars = st.one_of(
    st.sampled_from(list(SPECIAL + "ab")),
    st.sampled_from(list(SPECIAL + "ab")),
    st.sampled_from(list(SPECIAL + "ab")),
    st.characters(codec=None, categories=None),  # anything, lone surrogates and non-BMP included
    st.sampled_from(["😀", "\U0010ffff", "\ud800", "é", "東"]),
)
dense = st.text(st.sampled_from(list(SPECIAL + "ab")), min_size=1, max_size=5)  # specials, densely
text = st.one_of(
    dense,
    dense,
    st.text(chars, max_size=20),
    st.sampled_from(["", " ", " a", "a ", "None", "1", "1.5", "-0", "1e5", "nan", "True", '"', '""', ",", "\r\n"]),
)
number = st.one_of(
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(),
    st.booleans(),
    st.sampled_from([0, 0.0, -0.0, 1e-7, 1.5e300, float("nan"), float("inf"), True, False]),
)
anything = st.one_of(st.none(), text, number, st.binary(max_size=6), st.sampled_from([b"", b'a"b', b"a,b", b"\r\n"]))
clean = st.from_regex(r"[a-z0-9:./_-]{0,12}", fullmatch=True)  # what these columns hold in practice


def column(usual: SearchStrategy[Any]) -> SearchStrategy[Any]:
    """Mostly the usual values (so that the fast path runs), sometimes anything at all."""
    return st.one_of(usual, usual, usual, anything)


def url_hash() -> SearchStrategy[str]:
    return st.one_of(clean, text).map(lambda h: f"https://cdn/x/feed_fullsize/plain/did/{h}@jpeg")


json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**64, max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=6,
)
images = st.lists(
    st.fixed_dictionaries({"fullsize": st.one_of(url_hash(), json_value)}, optional={"thumb": url_hash()}), max_size=3
)
embed = st.one_of(
    st.builds(lambda i: {"images": i}, images),
    st.builds(lambda i: {"record": {"uri": "at://x"}, "media": {"images": i}}, images),
    st.builds(lambda t: {"external": {"uri": "https://e", "thumb": t}}, st.one_of(url_hash(), json_value)),
    json_value,
)
labels = st.lists(st.one_of(st.fixed_dictionaries({"val": json_value}), json_value), max_size=3)


def as_json(strategy: SearchStrategy[Any]) -> SearchStrategy[str]:
    """JSON text as the archive may hold it: simplejson's, sometimes with escapes, NaN, a BOM, or broken."""
    plain = strategy.map(lambda v: simplejson.dumps(v, ensure_ascii=False))
    return st.one_of(
        plain,
        plain,
        plain,
        plain,
        plain,
        plain,
        strategy.map(lambda v: simplejson.dumps(v, ensure_ascii=True)),  # \\u escapes everywhere
        plain.map(lambda s: s.replace("fullsize", "full\\u0073ize").replace("thumb", "th\\u0075mb")),
        st.sampled_from(
            [
                '{"images": [{"fullsize": "a/b@c", "x": NaN}]}',
                '\ufeff{"external": {"thumb": "t/h"}}',
                '{"images": [{"fullsize": "a/\\ud800"}]}',
                '[{"val": 1e400}]',
                '[{"val": 18446744073709551616}]',
                '{"images": [{"fullsize": "a/1"}], "images": [{"fullsize": "a/2"}]}',
            ]
        ),
        st.sampled_from(["{", "", "nul\x00", "[1,]", '{"a": 1} x']),  # invalid: the host's error
    )


def make_rows(
    col: Callable[[SearchStrategy[Any]], SearchStrategy[Any]],
    free: Callable[[SearchStrategy[Any]], SearchStrategy[Any]],
) -> SearchStrategy[tuple[Any, ...]]:
    """Rows in schema order; ``col`` wraps the columns the fast path trusts, ``free`` the JSON columns."""
    return st.tuples(
        col(clean.map(lambda s: "at://" + s)),  # uri
        col(clean),  # cid
        col(clean),  # did
        st.one_of(st.none(), text, anything),  # text: always anything
        col(clean),  # created_at
        col(clean),  # indexed_at
        col(st.booleans()),  # has_media
        col(st.integers(0, 10**6)),
        col(st.integers(0, 10**6)),
        col(st.integers(0, 10**6)),
        col(st.integers(0, 10**6)),  # counts
        col(st.booleans()),  # is_reply
        col(st.one_of(st.none(), clean)),  # reply_parent
        col(st.one_of(st.none(), st.sampled_from(["images", "external", "record", "record_with_media"]))),
        free(as_json(embed)),  # embed_data
        free(as_json(labels)),  # labels
        col(clean),  # archived_at
    )


#: Columns as a database fills them (the fast path runs); text, embeds and labels as anything.
usual_rows = make_rows(lambda s: s, lambda s: st.one_of(st.none(), s))
#: Any value anywhere (None, bytes, floats, big ints, specials in any column): mostly csv.writer's path.
wild_rows = make_rows(column, lambda s: st.one_of(st.none(), s, anything))


# -- references ---------------------------------------------------------------------------------------------
def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the error must be the same too
        return ("error", type(exc).__name__, str(exc))


def host_text(batch: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in batch:
        writer.writerow(host_export.csv_row(Post._make(row)))
    return buffer.getvalue()


MEDIA_OF, LABELS_OF = csvlines.fields(host.SkyarchiveError)
ENCODE = csvlines.posts_csv_encoder(
    with_labels=host.has_labels(host.per_post().csv_header), media_of=MEDIA_OF, labels_of=LABELS_OF
)


@SETTINGS
@given(st.one_of(st.lists(usual_rows, min_size=1, max_size=8), st.lists(wild_rows, min_size=1, max_size=8)))
@example([("at://a", "c", "d", "x,y", "t", "t", 1, 0, 0, 0, 0, 0, None, None, None, None, "t")])
@example([("at://a", "c", "d", "nul\x00", "t", "t", 1, 0, 0, 0, 0, 0, None, None, "{", None, "t")])
@example([("at://a", None, "d", "", "t", "t", 1, 2**70, 0.1, b"", True, 0, 0, 1.5, b'a"b', "[]", None)])
@example([("at://a", "c", "d", "None", "t", "t", 1, 0, 0, 0, 0, 0, "None", "None", None, '[{"val": "a,b"}]', "t")])
def test_lines_equal_csv_writer(batch: list[tuple[Any, ...]]) -> None:
    event(f"fast path: {csvlines.plain_columns(batch)}")
    expected = outcome(host_text, batch)
    event(f"host {expected[0]}")
    assert outcome(ENCODE, batch) == expected


BASE = ("at://a", "c", "d", "t", "2025", "2025", 1, 0, 1, 2, 3, 0, None, None, None, None, "2025")


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 16), anything), max_size=3), st.integers(0, 3))
def test_one_odd_value_anywhere(changes: list[tuple[int, Any]], position: int) -> None:
    """A batch of plain rows but for a value or two drawn from anything, in any column of one row."""
    row = list(BASE)
    for index, value in changes:
        row[index] = value
    batch = [BASE] * position + [tuple(row)] + [BASE] * 2
    assert outcome(ENCODE, batch) == outcome(host_text, batch)


@SETTINGS
@given(st.lists(anything, min_size=2, max_size=17))
@example(["a\x00b", 1])
@example(["", None])
def test_a_field_as_csv_writer_writes_it(row: list[Any]) -> None:
    def reference(values: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        return buffer.getvalue()

    assert outcome(lambda r: ",".join(map(csvlines.csv_field, r)) + "\r\n", row) == outcome(reference, row)


@SETTINGS
@given(st.one_of(as_json(embed), text))
def test_media_field_same_as_host(embed_data: str) -> None:
    """orjson (with simplejson fallback) gives the host's MediaFiles, or the host's error."""

    def host_media(value: str, uri: str) -> str:
        try:
            parsed = simplejson.loads(value)
        except ValueError as exc:
            raise host.SkyarchiveError(f"post {uri}: embed_data is not valid JSON ({exc})") from None
        return ";".join(host_export.media_hashes(parsed))

    assert outcome(MEDIA_OF, embed_data, "at://u") == outcome(host_media, embed_data, "at://u")


JSONISH = st.text(
    st.sampled_from([*'{}[]":, \t\n0123456789.eE+-truefalsnlNaIiy\\/u@dabcfhimgsz', "\ud800", "\ufeff", "é", "😀"]),
    max_size=40,
)


@SETTINGS
@given(st.one_of(JSONISH, st.builds(lambda a, b: a + b, as_json(embed), JSONISH), as_json(embed).map(lambda s: s[:-1])))
@example('{"images": [{"fullsize": "a/b@c"}], "n": 123456789012345678901234}')  # accepted by both
@example('{"images": [{"fullsize": "a/b@c"}], "n": NaN}')  # refused by orjson: the fallback decides
def test_orjson_never_more_lenient(text: str) -> None:
    """Wherever orjson accepts a text simplejson accepts it too, with the same media hashes; elsewhere the
    fallback to simplejson decides."""
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    slow = simplejson.loads(text)  # must not raise
    event("orjson accepted")
    assert host_export.media_hashes(fast) == host_export.media_hashes(slow)


def test_the_csv_writer_facts_csvlines_relies_on() -> None:
    """Asserted on the interpreter that runs this: the rules in csvlines' docstring."""

    def w(row: list[Any]) -> tuple[Any, ...]:
        def write() -> str:
            buffer = io.StringIO()
            csv.writer(buffer).writerow(row)
            return buffer.getvalue()

        return outcome(write)

    nul = (
        ("error", "Error", "need to escape, but no escapechar set")
        if sys.version_info < (3, 11)
        else ("ok", "a\x00b,x\r\n")
    )
    assert w(["a\x00b", "x"]) == nul
    assert w([""]) == ("ok", '""\r\n') and w([None]) == ("ok", '""\r\n') and w(["", ""]) == ("ok", ",\r\n")
    assert w([" a ", "\t", "\x0b\x0c\x85\u2028", "😀", "\ud800", "1.5"]) == (
        "ok", " a ,\t,\x0b\x0c\x85\u2028,😀,\ud800,1.5\r\n"
    )  # fmt: skip
    assert w(["a,b", 'a"b', "a\rb", "a\nb"]) == ("ok", '"a,b","a""b","a\rb","a\nb"\r\n')
    assert w([1e-7, float("nan"), True, b'a"b', None, 2**70]) == (
        "ok", "1e-07,nan,True,\"b'a\"\"b'\",,1180591620717411303424\r\n"
    )  # fmt: skip
