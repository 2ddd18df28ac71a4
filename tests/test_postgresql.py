"""PostgreSQL: both host releases on a real server, and the plugin streaming from a server-side cursor.

Each test gets a database of its own (tests/postgres.py). Under CI a missing
server fails these tests; elsewhere they skip with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skyarchive.models import Base, media_table, posts_table
from skyarchive.seed import DEFAULT_DID, seed_archive
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import Engine

from export_batching_plugin import batched, reading, worker
from export_batching_plugin.batched import ExportFailed
from export_batching_plugin.plan import DIRECT, SPOOL

from .conftest import ArchiveFolder
from .differential import STAMPS, fill, posts, run_both
from .harness import FORMATS, add_slow_media_file, export, feed_fifo, force_plan, insert_rows, post_row
from .postgres import DRIVER, pg_url, terminate_other_backends  # noqa: F401 - pg_url is a fixture

#: Every plan the export can follow on PostgreSQL: (where the rows wait, whether a child process encodes too).
PLANS = [(SPOOL, False), (SPOOL, True), (DIRECT, False)]

pytestmark = pytest.mark.postgresql


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:  # noqa: F811 - the fixture above
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(media_table))
        conn.execute(delete(posts_table))


def test_cli_round_trip_on_postgresql(archive_folder: ArchiveFolder, pg_url: str) -> None:  # noqa: F811
    assert archive_folder.cli("--db", pg_url, "init").code == 0
    seeding = archive_folder.cli("--db", pg_url, "seed", "--posts", "300", "--media-every", "7")
    assert seeding.code == 0, seeding.err
    outputs = {}
    for exporter in ("host", "plugin"):
        if exporter == "plugin":
            archive_folder.enable_plugin(threshold=0, batch_size=64)
        for fmt in ("json", "csv"):
            result = archive_folder.cli(
                "--db", pg_url, "export", "--did", DEFAULT_DID, "--format", fmt, "--media",
                "--out", str(archive_folder.root / f"{exporter}-{fmt}"),
            )  # fmt: skip
            assert result.code == 0, result.err
            manifest = json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8"))
            assert manifest["exporter"].startswith("skyarchive" if exporter == "host" else "export_batching")
            assert manifest["post_count"] == 300 and manifest["media_count"] > 0
            posts_file = result.export_dir / f"posts.{fmt}"
            outputs[exporter, fmt] = (
                posts_file.read_bytes(),
                sorted(p.name for p in (result.export_dir / "media").iterdir()),
            )
    for fmt in ("json", "csv"):
        assert outputs["plugin", fmt] == outputs["host", fmt]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    templates=st.lists(posts(), max_size=5),
    count=st.integers(0, 20),
    batch=st.data(),
    format=st.sampled_from(FORMATS),
    budget=st.sampled_from([None, 1, 4096]),
    window=st.one_of(st.none(), st.tuples(st.sampled_from(STAMPS), st.sampled_from(STAMPS))),
    plan=st.sampled_from(PLANS),
)
def test_random_archives_on_postgresql(
    engine: Engine, tmp_path: Path, templates: list[dict[str, Any]], count: int, batch: Any,
    format: str, budget: int | None, window: tuple[str, str] | None, plan: tuple[str, bool],
) -> None:  # fmt: skip
    batch_size = batch.draw(st.integers(1, count + 2), label="batch_size")
    since, until = sorted(window) if window else (None, None)
    clear(engine)
    fill(engine, templates, count, nul_free=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        force_plan(monkeypatch, source=plan[0], child=plan[1])
        run_both(
            engine, tmp_path, batch_size=batch_size, max_batch_bytes=budget, format=format, since=since, until=until
        )


@pytest.mark.parametrize("plan", PLANS, ids=[f"{source}{'+child' if child else ''}" for source, child in PLANS])
@pytest.mark.parametrize("count", [0, 1001])
def test_counts_around_the_default_batch_size_on_postgresql(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, plan: tuple[str, bool]
) -> None:
    force_plan(monkeypatch, source=plan[0], child=plan[1])
    fill(engine, [{"text": "plain"}, {"text": None, "created_at": STAMPS[0], "labels": '[{"val":"x"}]'}], count)
    for fmt in ("json", "csv"):
        run_both(engine, tmp_path / fmt, batch_size=1000, format=fmt)


@pytest.mark.parametrize("source", [SPOOL, DIRECT])
def test_concurrent_changes_do_not_reach_the_export(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Another session writes as the first batch is written (once the snapshot has ended, or inside it)."""
    force_plan(monkeypatch, source=source, child=False)
    fill(engine, [{"text": "old"}], 3000, spread=True)
    before = export(engine, tmp_path / "before", settings=None)
    other = create_engine(engine.url)
    done: list[bool] = []
    original = worker.Writer.write

    def change(self: worker.Writer, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        if batch is not None and not done:
            done.append(True)
            with other.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, archived_at)"
                        " SELECT 'at://new/' || g, 'c', 'did:plc:owner', 'new', '2026-01-01T00:00:00.000Z', 'x', 'x'"
                        " FROM generate_series(1, 100) AS g"
                    )
                )
                conn.execute(
                    text("DELETE FROM posts WHERE uri IN (SELECT uri FROM posts ORDER BY created_at LIMIT 100)")
                )
        original(self, pieces, batch=batch, posts=posts)

    monkeypatch.setattr(worker.Writer, "write", change)
    outcome = export(engine, tmp_path / "during", settings={"threshold": 0, "batch_size": 100})
    other.dispose()
    monkeypatch.setattr(worker.Writer, "write", original)
    assert outcome.error is None, outcome.error
    assert outcome.posts_bytes == before.posts_bytes
    uris = [post["uri"] for post in json.loads(outcome.posts_bytes or b"[]")]
    assert len(uris) == len(set(uris)) == 3000
    after = export(engine, tmp_path / "after", settings={"threshold": 0})
    assert after.posts_bytes != before.posts_bytes


def test_connection_killed_mid_export_fails_cleanly(
    engine: Engine,
    pg_url: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fill(engine, [{"text": "x"}], 3000, spread=True)
    killed: list[int] = []
    original = batched.open_stream

    def open_stream(*args: Any, **kwargs: Any) -> Any:
        stream = original(*args, **kwargs)
        fetch, fetches = stream.fetchmany, []

        def fetchmany(size: int) -> Any:  # the server ends the session once two batches have been read
            fetches.append(size)
            if sum(fetches) > 500 and not killed:
                killed.append(terminate_other_backends(pg_url))
            return fetch(size)

        return reading.Stream(fetchmany, stream.close)

    monkeypatch.setattr(batched, "open_stream", open_stream)
    outcome = export(engine, tmp_path, settings={"threshold": 0, "batch_size": 250})
    assert killed and killed[0] >= 1
    assert isinstance(outcome.error, ExportFailed), outcome.error
    failed = re.fullmatch(r"reading batch (\d+) \(posts (\d+)-(\d+)\) failed: \((\S+)\) (.*)", str(outcome.error))
    assert failed is not None, str(outcome.error)
    number, first, last = (int(failed[n]) for n in (1, 2, 3))
    assert number == 3 and (first, last) == (501, 750), "the batch whose fetch found the session gone"
    assert failed[4] in ("psycopg.errors.AdminShutdown", "psycopg2.errors.AdminShutdown", "psycopg2.OperationalError")
    assert list(tmp_path.rglob("*.staging-*")) == [] and list(tmp_path.rglob("manifest.json")) == []
    assert outcome.job is not None and outcome.job.status == "failed"


# -- the session is held only while rows are read ------------------------------------------------


def slow_media_archive(engine: Engine, media_dir: Path) -> Path:
    """300 posts, one media file on "slow storage": a FIFO that :func:`feed_after` writes to later."""
    fill(engine, [{"text": "x"}], 300, spread=True)
    return add_slow_media_file(engine, media_dir)


def feed_after(fifo: Path, seconds: float, then: Callable[[], None] | None = None) -> threading.Thread:
    def feed() -> None:
        time.sleep(seconds)
        if then is not None:
            then()
        feed_fifo(fifo)

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


@pytest.mark.slow
def test_an_idle_in_transaction_timeout_does_not_fail_a_slow_export(
    engine: Engine,
    pg_url: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The server ends sessions idle in a transaction after 1 s; copying a media file takes 3 s."""
    fifo = slow_media_archive(engine, tmp_path / "media")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"ALTER DATABASE \"{pg_url.rsplit('/', 1)[1]}\" SET idle_in_transaction_session_timeout = '1s'"
        )
    engine.dispose()
    outcomes = {}
    for name, table in (("host", None), ("plugin", {"threshold": 0, "batch_size": 50})):
        feeder = feed_after(fifo, 3)
        outcomes[name] = export(engine, tmp_path / name, settings=table, media=True, media_dir=tmp_path / "media")
        feeder.join()
    host, plugin = outcomes["host"], outcomes["plugin"]
    assert host.error is None, host.error
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.result is not None and (plugin.result.export_dir / "media" / "slow.jpg").read_bytes() == b"jpeg"


@pytest.mark.slow
@pytest.mark.parametrize("timeout", ["idle_in_transaction_session_timeout", "statement_timeout"])
@pytest.mark.parametrize("format", FORMATS)
def test_server_timeouts_do_not_fail_an_export_whose_posts_file_is_slow_to_write(
    engine: Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    timeout: str, format: str,
) -> None:  # fmt: skip
    """A 1 s timeout on the server; one write to posts.* takes 2 s (slow storage): the host's result.

    Without a spool, the snapshot is open while the posts file is written. What the timeout would end: a
    session idle between fetches while a batch is written (the server-side cursor: JSON, and CSV on
    psycopg2), or a COPY waiting on the client (CSV on psycopg 3; 20 MB of rows, more than the socket buffers
    hold, so the server is still sending).
    """
    force_plan(monkeypatch, source=DIRECT, child=False)
    insert_rows(engine, [post_row(n, text=f"{n} " + "x" * 5000) for n in range(4000)])
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE \"{pg_url.rsplit('/', 1)[1]}\" SET {timeout} = '1s'")
    engine.dispose()
    host = export(engine, tmp_path / "host", settings=None, format=format)
    assert host.error is None, host.error
    calls = 0
    original = worker.Writer._put

    def slow_write(self: worker.Writer, pieces: Any) -> None:  # one write(2) of the posts file takes 2 s
        nonlocal calls
        calls += 1
        if calls == 3:
            time.sleep(2)
        original(self, pieces)

    monkeypatch.setattr(worker.Writer, "_put", slow_write)
    plugin = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": 100}, format=format)
    assert calls > 3
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    with engine.connect() as conn:  # the connection went back to the pool with the server's settings
        assert conn.exec_driver_sql(f"SHOW {timeout}").scalar_one() == "1s"


def test_the_timeouts_lifted_are_those_the_server_has(engine: Engine) -> None:
    """transaction_timeout only from PostgreSQL 17 on: an older server refuses a setting it does not know."""
    assert "transaction_timeout" in reading._no_timeouts((17, 0))
    assert "transaction_timeout" not in reading._no_timeouts((16, 4))
    with engine.connect() as conn:
        version = conn.dialect.server_version_info or ()
        with conn.begin():
            conn.exec_driver_sql(reading._no_timeouts(version))
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar_one() == "0"
            if version >= (17,):
                assert conn.exec_driver_sql("SHOW transaction_timeout").scalar_one() == "0"
            else:
                with pytest.raises(Exception, match="transaction_timeout"), conn.begin_nested():
                    conn.exec_driver_sql("SELECT set_config('transaction_timeout', '0', true)")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["while media files are copied", "as the read transaction ends"])
def test_a_session_terminated_late_does_not_change_the_outcome(
    engine: Engine, pg_url: str, tmp_path: Path, when: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """pg_terminate_backend once every row is read: the export is complete, and is reported so."""
    fifo = slow_media_archive(engine, tmp_path / "media")
    killed: list[int] = []

    def kill() -> None:
        killed.append(terminate_other_backends(pg_url))

    if when == "as the read transaction ends":
        original = reading.Snapshot.end

        def end(self: reading.Snapshot, *, complete: bool) -> None:
            if complete:  # as every row has been read (not the undo on the way out, which does nothing then)
                kill()
            original(self, complete=complete)

        monkeypatch.setattr(reading.Snapshot, "end", end)
    feeder = feed_after(fifo, 2, then=kill if when == "while media files are copied" else None)
    outcome = export(
        engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 50}, media=True,
        media_dir=tmp_path / "media",
    )  # fmt: skip
    feeder.join()
    assert killed == [1], killed  # the export's session (idle in the pool by then, while media files are copied)
    if when == "as the read transaction ends":
        assert "every row was read, but ending the read transaction failed: (psycopg" in caplog.text
    assert outcome.error is None, outcome.error
    assert outcome.result is not None and outcome.result.export_dir.is_dir()
    assert outcome.manifest is not None and outcome.manifest["post_count"] == 300
    assert outcome.manifest["media_count"] == 1
    assert list(tmp_path.rglob("*.staging-*")) == []


def test_an_autocommit_engine_still_gets_one_snapshot(engine: Engine, tmp_path: Path) -> None:
    """isolation_level=AUTOCOMMIT on the engine: the plugin's connection is still one REPEATABLE READ snapshot."""
    fill(engine, [{"text": "old"}], 1000, spread=True)
    autocommit = create_engine(engine.url, isolation_level="AUTOCOMMIT")
    before = export(autocommit, tmp_path / "before", settings=None)

    def change(processed: int, total: int) -> None:
        if processed == 100:
            with engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM posts WHERE uri IN (SELECT uri FROM posts ORDER BY created_at LIMIT 50)")
                )

    during = export(autocommit, tmp_path / "during", settings={"threshold": 0, "batch_size": 100}, listener=change)
    autocommit.dispose()
    assert during.error is None, during.error
    assert during.posts_bytes == before.posts_bytes


# -- CSV from PostgreSQL's own CSV writer (COPY), psycopg 3 ----------------------------------------

pg_text = st.text(
    st.one_of(
        st.sampled_from(list(",\"\r\n \t\x0b\x0c\x85\u2028\ufeff\\'#;ab")),
        st.characters(codec="utf-8", exclude_characters="\x00"),  # PostgreSQL text: UTF-8, no NUL
    ),
    max_size=8,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(pg_text, min_size=1, max_size=6))
def test_postgresql_quotes_csv_as_csv_writer_does(engine: Engine, values: list[str]) -> None:
    """What the COPY path relies on: NULLIF(v, '') in a CSV row, as PostgreSQL writes it, is csv.writer's v."""
    copied = io.BytesIO()
    query = "COPY (SELECT NULLIF(v, ''), 'x' FROM t ORDER BY id) TO STDOUT (FORMAT csv)"
    with engine.connect() as conn, conn.begin() as transaction:
        cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("CREATE TEMP TABLE t (id int, v text)")
        for n, value in enumerate(values):
            cursor.execute("INSERT INTO t VALUES (%(n)s, %(v)s)", {"n": n, "v": value})
        if DRIVER == "psycopg2":
            cursor.copy_expert(query, copied)
        else:
            with cursor.copy(query) as copy:
                for data in copy:
                    copied.write(bytes(data))
        transaction.rollback()
    lines = []
    for value in values:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([value, "x"])
        lines.append(buffer.getvalue())
    # PostgreSQL ends its lines with \n, csv.writer with \r\n (the COPY path puts \r\n back)
    assert copied.getvalue() == "".join(line.removesuffix("\r\n") + "\n" for line in lines).encode("utf-8")


HOSTILE = [
    {"cid": "c\n", "text": 'a,"b"\r\nc', "reply_parent": "x,y", "embed_type": 'e"t',
     "indexed_at": "", "embed_data": '{"images": [{"fullsize": "x/h,\\"1@j"}], "external": {"thumb": "y/t\\n"}}',
     "labels": '[{"val": "a,b"}, {"val": "c\\"d"}]'},
    {"text": "", "indexed_at": 'i,"x"', "embed_type": "", "labels": '[{"val": ""}]'},
    {"text": None, "embed_data": "{}", "labels": None, "like_count": 2**31 - 1},
    {"text": "é 😀 \u2028", "embed_data": '{"images": [{"fullsize": "a/é😀@x"}]}'},
    {"embed_data": '{"external": {"thumb": "t/x"}}', "labels": '"not a list"', "embed_type": "z"},
]  # fmt: skip


@pytest.mark.parametrize("bad", [None, "", "{not json"], ids=["valid", "empty embed", "invalid embed"])
def test_the_csv_path_of_postgresql_equals_the_host(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str | None
) -> None:
    """Hostile values in every column the COPY path writes, MediaFiles and Labels put in; or the host's error."""
    used: list[bool] = []
    original = worker.copy_lines_encoder
    monkeypatch.setattr(worker, "copy_lines_encoder", lambda *a: used.append(True) or original(*a))
    templates = [dict(row) for row in HOSTILE]
    if bad is not None:
        templates[2]["embed_data"] = bad
    fill(engine, templates, 40, spread=True)
    insert_rows(engine, [post_row(99, **HOSTILE[0], uri='at://u,"1"\r\n')])
    run_both(engine, tmp_path, batch_size=7, format="csv")
    assert used == ([True] if DRIVER == "psycopg" else []), "COPY is for psycopg 3; psycopg2 reads tuples"


@pytest.mark.parametrize("source", [SPOOL, DIRECT])
@pytest.mark.parametrize("format", ["csv", "json"])
def test_a_failure_while_streaming_leaves_the_connection_clean(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    format: str,
    source: str,
) -> None:
    """A write failure mid-export (inside the snapshot, without a spool) stops the COPY or the cursor and rolls
    back without noise."""
    force_plan(monkeypatch, source=source, child=False)
    fill(engine, [{"text": "x"}], 3000, spread=True)
    calls: list[int] = []
    original = worker.Writer.write

    def fails(self: Any, pieces: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(self.path))
        original(self, pieces, **kwargs)

    monkeypatch.setattr(worker.Writer, "write", fails)
    outcome = export(engine, tmp_path, settings={"threshold": 0, "batch_size": 100}, format=format)
    assert isinstance(outcome.error, ExportFailed) and "disk full" in str(outcome.error)
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert list(tmp_path.rglob("*.staging-*")) == []
    monkeypatch.setattr(worker.Writer, "write", original)
    again = export(engine, tmp_path / "again", settings={"threshold": 0, "batch_size": 100}, format=format)
    assert again.error is None, again.error


# -- memory: the server-side cursor keeps the client flat ---------------------------------------

PEAK = textwrap.dedent(
    """
    import sys
    def peak_mb():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) // 1024
    if sys.argv[1] == "buffered":
        from sqlalchemy import create_engine
        engine = create_engine(sys.argv[2])
        with engine.connect() as conn:
            sql = "SELECT * FROM posts WHERE did = %(d)s ORDER BY created_at DESC, uri"
            result = conn.exec_driver_sql(sql, {"d": sys.argv[3]})
            count = 0
            while rows := result.fetchmany(1000):
                count += len(rows)
        print(0 if count else 1, peak_mb(), file=sys.stderr)
    else:
        from skyarchive.cli import main
        code = main(sys.argv[2:])
        print(code, peak_mb(), file=sys.stderr)
    """
)


def peak_rss(*args: str, cwd: Path) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=cwd, capture_output=True, text=True, check=False)
    code, peak = done.stderr.strip().splitlines()[-1].split()
    assert code == "0", done.stderr
    return int(peak)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_streaming_200k_posts_stays_flat(engine: Engine, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    seed_archive(engine, posts_table, media_table, posts=200_000, media_every=0, media_dir=tmp_path / "media")
    (tmp_path / "plugin.toml").write_text(
        '[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\nthreshold = 0\n', encoding="utf-8"
    )
    plugin = peak_rss(
        "plugin", "--config", "plugin.toml", "--db", pg_url, "export", "--did", DEFAULT_DID, "--format", "json",
        cwd=tmp_path,
    )  # fmt: skip
    buffered = peak_rss("buffered", pg_url, DEFAULT_DID, cwd=tmp_path)
    print(f"peak RSS, 200k posts from PostgreSQL: plugin {plugin} MB, client-side buffered fetch {buffered} MB")
    assert plugin < 120
    assert buffered > 2 * plugin, "a client-side buffered fetch should need far more than the streaming export"
