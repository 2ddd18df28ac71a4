"""The benchmark harness (benchmarks/): its pure parts on made-up data, and tiny real runs.

No timing is asserted. sqlite-utils, the sqlite3 CLI, psql, matplotlib and a PostgreSQL server are
optional: the real runs include the contenders whose tools are installed, the PostgreSQL run skips (with
the reason) when the server or psycopg 3 is missing (as under skyarchive 0.3), and the chart is checked
only when matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from skyarchive.seed import DEFAULT_DID

# benchmarks/ is not installed: its folder is appended to sys.path, after site-packages, so the plugin
# imported here and in the benchmark's processes is still the installed one.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks import archives, chart, contenders, measure, report, run
from benchmarks.archives import BenchmarkError
from benchmarks.contenders import BY_NAME, POSTGRESQL, SQLITE, Archive, Case, Contender, Job
from benchmarks.report import Measurement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = pytest.mark.harness  # tests of benchmarks/: once, in their own environment

SIZE, MEDIA_POSTS = 30, 8
PG = "postgresql://u@db.example:5432"
SQL = "SELECT * FROM posts WHERE did = 'did:x' ORDER BY created_at DESC, uri ASC"
SAMPLE_STATUS = (
    "Name:\tpython3\nUmask:\t0022\nState:\tR (running)\nVmPeak:\t  123456 kB\nVmSize:\t  120000 kB\n"
    "VmHWM:\t   54321 kB\nVmRSS:\t   50000 kB\nThreads:\t1\n"
)

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")


def test_vmhwm_parser_reads_the_sample() -> None:
    assert measure.parse_vmhwm_kb(SAMPLE_STATUS) == 54321
    assert measure.parse_vmhwm_kb("Name:\tzombie\nState:\tZ (zombie)\n") is None
    assert measure.parse_vmhwm_kb("VmHWM:\tgarbage\n") is None


@linux_only
def test_vmhwm_of_this_process_is_positive() -> None:
    assert (measure.read_vmhwm_kb("self") or 0) > 0


def test_measure_usage_errors() -> None:
    assert measure.parse_args(["--report", "r.json", "--", "true", "x"]) == ("r.json", ["true", "x"])
    for bad in ([], ["--", "true"], ["--report", "r.json", "true"], ["--report", "r.json", "--"]):
        with pytest.raises(ValueError):
            measure.parse_args(bad)


def test_default_did_is_the_hosts() -> None:
    assert contenders.DEFAULT_DID == DEFAULT_DID


# -- options and cases ---------------------------------------------------------------------------------


def test_default_options_measure_every_backend_and_the_media_case() -> None:
    options = run.parse_options([])
    assert (options.backends, options.formats, options.repeat) == ((SQLITE, POSTGRESQL), ("json", "csv"), 1)
    assert options.contenders == tuple(BY_NAME)
    assert options.cases([SQLITE, POSTGRESQL]) == [
        *(Case(SQLITE, size) for size in (500, 5_000, 50_000, 100_000)),
        Case(SQLITE, 6_000, media=True),
        Case(POSTGRESQL, 100_000),
    ]
    million = run.parse_options(["--million", "--repeat", "3"])
    assert million.repeat == 3
    assert [c.size for c in million.cases([POSTGRESQL])] == [100_000, 1_000_000]
    assert Case(SQLITE, 1_000_000) in million.cases([SQLITE, POSTGRESQL])


def test_options_choose_backends_sizes_formats_contenders_and_media() -> None:
    options = run.parse_options(
        ["--backends", "postgresql", "--sizes", "20_000,5000,5000", "--formats", "csv", "--media-posts", "0",
         "--contenders", "plugin,psql-copy", "--pg", PG]
    )  # fmt: skip
    assert options.cases(options.backends) == [Case(POSTGRESQL, 5_000), Case(POSTGRESQL, 20_000)]
    assert (options.formats, options.contenders, options.pg) == (("csv",), ("plugin", "psql-copy"), PG)
    sqlite = run.parse_options(["--backends", "sqlite", "--sizes", "300", "--media-posts", "40"])
    assert sqlite.cases(sqlite.backends) == [Case(SQLITE, 300), Case(SQLITE, 40, media=True)]
    assert sqlite.cases([]) == []


@pytest.mark.parametrize(
    "argv",
    [["--backends", "oracle"], ["--sizes", "0"], ["--sizes", "x"], ["--formats", "xml"], ["--formats", ""],
     ["--contenders", "nope"], ["--repeat", "0"], ["--media-posts", "-1"]],
)  # fmt: skip
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_options(argv)
    assert "error" in capsys.readouterr().err


# -- contenders ----------------------------------------------------------------------------------------


def job(archive: Archive, fmt: str, tmp_path: Path) -> Job:
    return Job(archive=archive, fmt=fmt, did="did:x", out_dir=tmp_path / "out", config=tmp_path / "c.toml")


def test_commands_of_each_contender(tmp_path: Path) -> None:
    lite = archives.locate(Case(SQLITE, 10), tmp_path, PG)
    media = archives.locate(Case(SQLITE, 10, media=True), tmp_path, PG)
    pg = archives.locate(Case(POSTGRESQL, 100_000), tmp_path, PG)
    assert (lite.url, lite.location) == (f"sqlite:///{tmp_path}/archive-10.db", f"{tmp_path}/archive-10.db")
    assert media.media_dir == tmp_path / "archive-10-media1.media"
    assert pg.location == f"{PG}/skyarchive_bench_100000"
    assert pg.url == "postgresql+psycopg://u@db.example:5432/skyarchive_bench_100000"

    def cmd(name: str, archive: Archive, fmt: str) -> list[str]:
        return BY_NAME[name].command("/exe", job(archive, fmt, tmp_path))

    export = ["--did", "did:x", "--format", "json", "--out", str(tmp_path / "out")]
    assert cmd("host", pg, "json") == ["/exe", "-m", "skyarchive", "--config", str(tmp_path / "c.toml"),
                                       "--db", pg.url, "export", *export]  # fmt: skip
    assert cmd("plugin", media, "json")[-7:] == [*export, "--media"]
    assert cmd("sqlite-utils", lite, "json") == ["/exe", "query", lite.location, SQL]
    assert cmd("sqlite-utils", lite, "csv") == ["/exe", "query", lite.location, SQL, "--csv"]
    assert cmd("sqlite3", lite, "json") == ["/exe", "-json", lite.location, SQL]
    psql = ["/exe", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.location]
    assert cmd("psql-copy", pg, "csv") == [*psql, "-c", f"\\copy ({SQL}) TO STDOUT WITH CSV HEADER"]
    json_agg = "SELECT json_agg(p ORDER BY created_at DESC, uri ASC) FROM posts p WHERE did = 'did:x'"
    assert cmd("psql-json", pg, "json") == [*psql, "-A", "-t", "-c", json_agg]
    assert contenders.select_sql("did:o'k").endswith("did = 'did:o''k' ORDER BY created_at DESC, uri ASC")


def test_each_contender_takes_part_where_it_can() -> None:
    def names(case: Case, fmt: str) -> set[str]:
        return {c.name for c in contenders.CONTENDERS if c.takes_part(case, fmt)}

    ours = {"host", "plugin", "plugin-checksums"}
    assert names(Case(SQLITE, 9), "json") == {*ours, "sqlite-utils", "sqlite3"}
    assert names(Case(SQLITE, 9), "csv") == {*ours, "sqlite-utils"}
    assert names(Case(SQLITE, 9, media=True), "json") == names(Case(SQLITE, 9, media=True), "csv") == ours
    assert names(Case(POSTGRESQL, 9), "json") == {*ours, "psql-json"}
    assert names(Case(POSTGRESQL, 9), "csv") == {*ours, "psql-copy"}


def test_configs_are_valid_toml(tmp_path: Path) -> None:
    assert len(BY_NAME) == len(contenders.CONTENDERS)
    for contender in contenders.CONTENDERS:
        assert (contender.config is None) == (contender.exporter is None)
    plugin = tomllib.loads(contenders.config_text(BY_NAME["plugin"], tmp_path / "m"))
    assert plugin == {"media_dir": str(tmp_path / "m"), "plugins": {"enabled": ["export_batching"],
                                                                     "export_batching": {"threshold": 0}}}  # fmt: skip
    assert tomllib.loads(contenders.config_text(BY_NAME["host"], tmp_path)) == {"media_dir": str(tmp_path)}
    variant = tomllib.loads(contenders.plugin_config(threshold=0, checksums=True, name='a "b"'))
    assert variant["plugins"]["export_batching"] == {"threshold": 0, "checksums": True, "name": 'a "b"'}
    for ratio in report.RATIOS:
        assert {ratio.num, ratio.den} <= set(BY_NAME)


def test_a_variant_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    variant = Contender("plugin-x", contenders.BACKENDS, contenders.FORMATS, contenders.skyarchive,
                        config=contenders.plugin_config(threshold=0, x=True), exporter="export_batching")  # fmt: skip
    monkeypatch.setitem(BY_NAME, variant.name, variant)
    assert run.parse_options(["--contenders", "plugin-x"]).contenders == ("plugin-x",)
    data = [made_up("host", 500, 1.0), made_up("plugin", 500, 0.5), made_up("plugin-x", 500, 0.6)]
    text = report.render_markdown(meta(), report.summarise(data))
    assert "| host s | host MB | plugin s | plugin MB | plugin-x s | plugin-x MB |" in text
    assert "| 500 | 1.000 | 50.0 | 0.500 | 50.0 | 0.600 | 50.0 | 1,000 | 0.50 | yes |" in text


def test_missing_tools_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contenders, "find_tool", lambda tool: None if tool == "psql" else f"/bin/{tool}")
    runners, skipped = run.select_contenders(tuple(BY_NAME), [SQLITE, POSTGRESQL])
    assert list(runners) == ["host", "plugin", "plugin-checksums", "sqlite-utils", "sqlite3"]
    assert skipped == {"psql-copy": "psql executable not found", "psql-json": "psql executable not found"}
    runners, skipped = run.select_contenders(tuple(BY_NAME), [SQLITE])
    assert (list(runners), skipped) == (["host", "plugin", "plugin-checksums", "sqlite-utils", "sqlite3"], {})


def test_an_unreachable_server_skips_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--backends", "postgresql", "--pg", "postgresql://postgres@127.0.0.1:1", "--workdir", str(tmp_path)]
    assert run.main([*argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "skipping postgresql: " in err and "nothing to measure" in err
    assert not (tmp_path / "out").exists()


# -- checks --------------------------------------------------------------------------------------------


def test_the_manifest_must_name_the_intended_exporter() -> None:
    assert run.check_exporter({"exporter": "export_batching 0.1.0"}, BY_NAME["plugin"]) == "export_batching 0.1.0"
    assert run.check_exporter({"exporter": "skyarchive 0.4.1"}, BY_NAME["host"]) == "skyarchive 0.4.1"
    for manifest in ({"exporter": "skyarchive 0.4.1"}, {}, {"exporter": None}):
        with pytest.raises(BenchmarkError, match="plugin: the export was made by"):
            run.check_exporter(manifest, BY_NAME["plugin"])


def test_a_different_output_fails() -> None:
    host, plugin = made_up("host", 500, 1.0, sha="a", media="m"), made_up("plugin", 500, 1.0, sha="a", media="m")
    run.check_same(host, plugin)
    with pytest.raises(BenchmarkError, match=r"plugin .*posts file sha256 b differs from host's a"):
        run.check_same(host, made_up("plugin", 500, 1.0, sha="b", media="m"))
    with pytest.raises(BenchmarkError, match="media files sha256 n differs"):
        run.check_same(host, made_up("plugin", 500, 1.0, sha="a", media="n"))


def test_folder_digest_covers_names_and_bytes(tmp_path: Path) -> None:
    def folder(name: str, files: dict[str, bytes]) -> Path:
        for rel, data in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_bytes(data)
        return tmp_path / name

    same = {"a.jpg": b"\xff\xd8", "b/c.png": b"\x89PNG"}
    digest, count = run.folder_digest(folder("one", same))
    assert (digest, count) == run.folder_digest(folder("two", same)) and count == 2
    assert run.folder_digest(folder("bytes", {**same, "a.jpg": b"\xff\xd9"}))[0] != digest
    assert run.folder_digest(folder("names", {"a2.jpg": b"\xff\xd8", "b/c.png": b"\x89PNG"}))[0] != digest
    assert run.folder_digest(tmp_path / "missing")[1] == 0


def test_rotation_spreads_the_order() -> None:
    assert [run.rotated(["a", "b", "c"], by) for by in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]  # fmt: skip
    assert run.rotated([], 3) == []


# -- the report ----------------------------------------------------------------------------------------


def made_up(
    contender: str, size: int, wall: float, *, backend: str = SQLITE, fmt: str = "json", repeat: int = 1,
    rss: float = 50.0, sha: str = "a", media: str | None = None,
) -> Measurement:  # fmt: skip
    return Measurement(
        contender=contender, backend=backend, size=size, media=media is not None, format=fmt, repeat=repeat,
        wall_s=wall, vmhwm_mb=rss, ru_maxrss_mb=rss, floor_mb=9.0, outer_wall_s=wall + 0.02,
        output_bytes=100, sha256=sha, exporter="x" if BY_NAME[contender].is_skyarchive else None, media_digest=media,
        media_files=3 if media is not None else None,
    )  # fmt: skip


def meta(**changes: Any) -> dict[str, Any]:
    return {
        "command": "python -m benchmarks.run --sizes 500", "date": "2025-01-01T00:00:00+00:00", "python": "3.11.7",
        "platform": "Linux", "cpu_count": 2, "versions": {"skyarchive": "0.4.1", "sqlite3": None},
        "formats": ["json"], "repeat": 1, "contenders": ["host", "plugin"], "skipped": {}, "archives": [], **changes,
    }  # fmt: skip


def test_rows_take_medians_ratios_and_identity() -> None:
    data = [
        *(made_up("host", 10_000, wall, repeat=r, rss=100.0) for r, wall in enumerate((1.0, 3.0, 2.0), 1)),
        *(made_up("plugin", 10_000, wall, repeat=r) for r, wall in enumerate((1.0, 1.5, 0.5), 1)),
        made_up("sqlite3", 10_000, 0.25, sha="z"),
        made_up("host", 10_000, 2.0, fmt="csv", sha="b"),
        made_up("plugin", 10_000, 1.0, fmt="csv", sha="c"),
        made_up("sqlite-utils", 10_000, 2.0, fmt="csv", sha="y"),
        made_up("host", 10_000, 4.0, backend=POSTGRESQL),
        made_up("plugin", 10_000, 1.5, backend=POSTGRESQL),
        made_up("psql-json", 10_000, 0.5, backend=POSTGRESQL, sha="w"),
        made_up("host", 6_000, 2.0, media="m"),
        made_up("plugin", 6_000, 1.0, media="n"),
    ]
    rows = {(row.backend, row.media, row.format, row.size): row for row in report.build_rows(data)}
    assert list(rows) == [(SQLITE, False, "json", 10_000), (SQLITE, False, "csv", 10_000),
                          (SQLITE, True, "json", 6_000), (POSTGRESQL, False, "json", 10_000)]  # fmt: skip
    lite = rows[SQLITE, False, "json", 10_000]
    assert lite.seconds == {"host": 2.0, "plugin": 1.0, "sqlite3": 0.25}
    assert (lite.megabytes["host"], lite.identical) == (100.0, True)
    assert lite.ratios == {"plugin/host": 0.5, "plugin/sqlite3": 4.0, "checksums on/off": None}
    csv = rows[SQLITE, False, "csv", 10_000]
    assert (csv.ratios, csv.identical) == (
        {"plugin/host": 0.5, "plugin/sqlite-utils": 0.5, "checksums on/off": None},
        False,
    )
    pg = rows[POSTGRESQL, False, "json", 10_000]
    assert pg.ratios == {
        "plugin/host": 0.375,
        "plugin/psql-json": 3.0,
        "plugin PG/SQLite": 1.5,
        "checksums on/off": None,
    }
    media = rows[SQLITE, True, "json", 6_000]
    assert (media.identical, media.media_files, media.ratios) == (
        False,
        3,
        {"plugin/host": 0.5, "plugin/sqlite3": None, "checksums on/off": None},
    )


def test_derived_figures_check_targets_at_the_largest_size() -> None:
    data = [made_up("sqlite3", 100_000, 4.0)]
    data += [made_up("plugin", 100_000, 8.0, backend=POSTGRESQL), made_up("host", 100_000, 20.0, backend=POSTGRESQL)]
    for size in (10_000, 50_000, 100_000):
        data += [made_up("host", size, size / 5_000, rss=900.0)]
        data += [made_up("plugin", size, size / 10_000, rss=41.25 if size == 100_000 else 40.0)]
    figures = {(f.table, f.what): f for f in report.derived_figures(report.build_rows(data))}
    target = figures["SQLite, JSON", "plugin/sqlite3 at 100,000 posts"]
    assert (target.value, target.target, target.met) == (pytest.approx(2.5), 2.0, False)
    assert "(target ≤ 2x: **missed**)" in target.line()
    assert figures["PostgreSQL, JSON", "plugin PG/SQLite at 100,000 posts"].met is True
    host = figures["SQLite, JSON", "host time per post at 100,000 vs at 50,000 posts"]
    assert host.value == pytest.approx(1.0) and host.target is None
    spread = figures["SQLite, JSON", "plugin peak RSS at 100,000 minus at 10,000 posts"]
    assert spread.value == pytest.approx(1.25) and spread.line().endswith(": +1.2 MB")


def test_reference_sizes() -> None:
    assert report.reference([500, 50_000, 100_000, 1_000_000], 50_000) == (50_000, 1_000_000)
    assert report.reference([500, 5_000, 50_000, 100_000], 10_000) == (5_000, 100_000)
    assert report.reference([500, 10_000, 20_000], 10_000) == (10_000, 20_000)
    assert report.reference([500, 5_000], 10_000) is None
    assert report.reference([5_000], 5_000) is None


def test_markdown_has_one_table_per_backend_case_and_format() -> None:
    data = [
        made_up("host", 500, 0.5), made_up("plugin", 500, 0.4, rss=49.0),
        made_up("host", 500, 0.8, backend=POSTGRESQL, fmt="csv"),
        made_up("plugin", 500, 0.6, backend=POSTGRESQL, fmt="csv"),
        made_up("psql-copy", 500, 0.1, backend=POSTGRESQL, fmt="csv", sha="q"),
        made_up("host", 60, 0.5, media="m"), made_up("plugin", 60, 0.5, media="m"),
    ]  # fmt: skip
    archive = {"backend": POSTGRESQL, "size": 500, "media": False, "rows": "skyarchive seed --posts 500",
               "sqlite": "/w/archive-500.db", "seed_s": None, "postgresql": "postgresql://h/db", "copy": "COPY",
               "copy_s": 1.5}  # fmt: skip
    text = report.render_markdown(
        meta(skipped={"sqlite3": "sqlite3 executable not found"}, archives=[archive]), report.summarise(data)
    )
    assert (
        text.index("### SQLite, JSON") < text.index("### SQLite with media, JSON") < text.index("### PostgreSQL, CSV")
    )
    assert "### SQLite, CSV" not in text and "### PostgreSQL, JSON" not in text
    assert (
        "`python -m benchmarks.run --sizes 500`" in text and "Skipped: sqlite3 (sqlite3 executable not found)" in text
    )
    assert "| 500 | 0.500 | 50.0 | 0.400 | 49.0 | 1,250 | 0.80 | yes |" in text
    assert "| posts | host s | host MB | plugin s | plugin MB | psql-copy s | psql-copy MB | plugin posts/s | " in text
    assert "| plugin/host | plugin/psql-copy (≤ 2) | identical |" in text
    assert "| 500 | 0.800 | 50.0 | 0.600 | 50.0 | 0.100 | 50.0 | 833 | 0.75 | 6.00 | yes |" in text
    assert "| 60 | 0.500 | 50.0 | 0.500 | 50.0 | 120 | 1.00 | 3 | yes |" in text
    assert "PostgreSQL, 500 posts: `skyarchive seed --posts 500` into `/w/archive-500.db`, then COPY into " in text
    assert "- PostgreSQL, CSV, plugin/psql-copy at 500 posts: 6.00x (target ≤ 2x: **missed**)" in text


def test_chart_is_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "chart.png"
    assert chart.render_chart(report.build_rows([made_up("host", 500, 0.5)]), path) == "matplotlib is not installed"
    assert not path.exists()


@linux_only
def test_measure_reports_the_exit_code(tmp_path: Path) -> None:
    report_, _ = run.measure_command(
        [sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path, stdout_path=tmp_path / "out",
        stderr_path=tmp_path / "err", report_path=tmp_path / "report.json",
    )  # fmt: skip
    assert report_["exit_code"] == 3
    assert report_["vmhwm_kb"] > 0


# -- tiny real runs ------------------------------------------------------------------------------------


def real_run(root: Path, *argv: str) -> tuple[Path, list[str], dict[str, Any]]:
    """Run the harness on tiny archives with every contender whose tool is installed."""
    workdir, out = root / "work", root / "out"
    kept = [c.name for c in contenders.CONTENDERS if contenders.find_tool(c.tool)]
    assert (
        run.main([*argv, "--repeat", "1", "--contenders", ",".join(kept), "--workdir", str(workdir), "--out", str(out)])
        == 0
    )
    return workdir, kept, json.loads((out / run.RESULTS_JSON).read_text(encoding="utf-8"))


SKYARCHIVE = {"host": "skyarchive", "plugin": "export_batching", "plugin-checksums": "export_batching"}


def expected_runs(kept: list[str], cases: list[Case]) -> set[tuple[str, str, int, bool, str]]:
    """Every contender on its backends and formats; in the media case, skyarchive's contenders only."""
    return {
        (c, case.backend, case.size, case.media, fmt)
        for case in cases
        for c in kept
        for fmt in BY_NAME[c].formats
        if case.backend in BY_NAME[c].backends and (c in SKYARCHIVE or not case.media)
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, Any]]:
    """SQLite, 30 posts and the media case with 8, JSON and CSV."""
    return real_run(tmp_path_factory.mktemp("bench"), "--backends", "sqlite", "--sizes", str(SIZE),
                    "--media-posts", str(MEDIA_POSTS))  # fmt: skip


@linux_only
def test_tiny_run_measures_and_checks_every_contender(tiny_run: tuple[Path, list[str], dict[str, Any]]) -> None:
    _, kept, results = tiny_run
    seen = [(m["contender"], m["backend"], m["size"], m["media"], m["format"]) for m in results["measurements"]]
    assert sorted(seen) == sorted(expected_runs(kept, [Case(SQLITE, SIZE), Case(SQLITE, MEDIA_POSTS, media=True)]))
    for m in results["measurements"]:
        assert m["rss_mb"] > 0 and m["output_bytes"] > 0
        expected = SKYARCHIVE.get(m["contender"])
        assert m["exporter"] is None if expected is None else m["exporter"].startswith(expected)
        assert (m["media_files"] or 0) > 0 if m["media"] else m["media_files"] is None
    assert [(r["format"], r["media"], r["identical"]) for r in results["rows"]] == [
        ("json", False, True), ("csv", False, True), ("json", True, True), ("csv", True, True)]  # fmt: skip


@linux_only
def test_tiny_run_writes_markdown_and_maybe_chart(tiny_run: tuple[Path, list[str], dict[str, Any]]) -> None:
    out = tiny_run[0].parent / "out"
    text = (out / run.RESULTS_MD).read_text(encoding="utf-8")
    assert "### SQLite, JSON" in text and "### SQLite with media, CSV" in text
    assert (out / run.CHART_PNG).is_file() == (importlib.util.find_spec("matplotlib") is not None)


@linux_only
def test_archive_is_reused(tiny_run: tuple[Path, list[str], dict[str, Any]]) -> None:
    workdir, lines = tiny_run[0], []
    for case in (Case(SQLITE, SIZE), Case(SQLITE, MEDIA_POSTS, media=True)):
        archive, made = archives.ensure_archive(case, workdir=workdir, did=DEFAULT_DID, python=sys.executable,
                                                pg=PG, log=lines.append)  # fmt: skip
        assert archives.is_complete(archive, DEFAULT_DID) and made["seed_s"] is None
    assert lines == [f"{workdir}/archive-{SIZE}.db: reused ({SIZE} posts)",
                     f"{workdir}/archive-{MEDIA_POSTS}-media1.db: reused ({MEDIA_POSTS} posts)"]  # fmt: skip
    assert not [path for path in (workdir / "runs").iterdir() if "fake" not in path.name]


@linux_only
def test_a_wrong_exporter_fails_the_run_and_keeps_what_was_measured(
    tiny_run: tuple[Path, list[str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    # "plugin" whose config leaves the plugin off: the host exports, and the manifest says so.
    fake = Contender("fake-plugin", (SQLITE,), ("json",), contenders.skyarchive, config="", exporter="export_batching")
    monkeypatch.setitem(BY_NAME, fake.name, fake)
    workdir, out = tiny_run[0], tmp_path / "out"
    argv = ["--backends", "sqlite", "--sizes", str(SIZE), "--media-posts", "0", "--formats", "json"]
    assert run.main([*argv, "--contenders", "host,fake-plugin", "--workdir", str(workdir), "--out", str(out)]) == 1
    assert not out.exists()
    results = json.loads((workdir / "failed-run" / run.RESULTS_JSON).read_text(encoding="utf-8"))
    assert "fake-plugin: the export was made by 'skyarchive " in results["meta"]["failed"]
    assert [m["contender"] for m in results["measurements"]] == ["host"]
    assert list((workdir / "runs").iterdir()) == [workdir / "runs" / f"sqlite-{SIZE}-json-fake-plugin-r1"]


@linux_only
@pytest.mark.postgresql
def test_tiny_run_on_postgresql(tmp_path: Path) -> None:
    try:
        archives.probe_postgresql(archives.DEFAULT_PG)
    except BenchmarkError as exc:
        pytest.skip(str(exc))
    _, kept, results = real_run(tmp_path, "--backends", "postgresql", "--sizes", "40")
    seen = [(m["contender"], m["backend"], m["size"], m["media"], m["format"]) for m in results["measurements"]]
    assert sorted(seen) == sorted(expected_runs(kept, [Case(POSTGRESQL, 40)]))
    assert all(row["identical"] for row in results["rows"])
    made = results["meta"]["archives"][0]
    assert made["postgresql"] == f"{archives.DEFAULT_PG}/skyarchive_bench_40"
    archive = archives.locate(Case(POSTGRESQL, 40), tmp_path / "work", archives.DEFAULT_PG)
    assert archives.is_complete(archive, DEFAULT_DID)  # the rows were copied in
