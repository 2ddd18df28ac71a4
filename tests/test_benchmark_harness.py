"""The benchmark harness (benchmarks/): pure parts on made-up data, and one tiny real run.

No timing is asserted. sqlite-utils, the sqlite3 CLI and matplotlib are optional: the real run
includes the peers that are installed and the chart only when matplotlib is.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from skyarchive.seed import DEFAULT_DID

from benchmarks import chart, contenders, measure, report, run
from benchmarks.contenders import HOST, PLUGIN, SQLITE3, SQLITE_UTILS, Tools
from benchmarks.report import Measurement, Meta

SIZE = 30
FORMATS = ("json", "csv")
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


def test_commands_of_each_contender(tmp_path: Path) -> None:
    tools = Tools(python="/py", sqlite_utils="/bin/sqlite-utils", sqlite3="/bin/sqlite3")
    db, out, cfg = tmp_path / "a.db", tmp_path / "out", tmp_path / "cfg"

    def cmd(contender: str, fmt: str) -> list[str]:
        return contenders.build_command(
            contender, tools=tools, db=db, fmt=fmt, did="did:x", out_dir=out, config_dir=cfg
        )

    sql = "SELECT * FROM posts WHERE did = 'did:x' ORDER BY created_at DESC, uri ASC"
    assert cmd(HOST, "json")[:5] == ["/py", "-m", "skyarchive", "--config", str(cfg / "host.toml")]
    assert cmd(PLUGIN, "csv")[4] == str(cfg / "plugin.toml")
    assert cmd(PLUGIN, "csv")[-6:] == ["--did", "did:x", "--format", "csv", "--out", str(out)]
    assert f"sqlite:///{db}" in cmd(HOST, "csv")
    assert cmd(SQLITE_UTILS, "json") == ["/bin/sqlite-utils", "query", str(db), sql]
    assert cmd(SQLITE_UTILS, "csv") == ["/bin/sqlite-utils", "query", str(db), sql, "--csv"]
    assert cmd(SQLITE3, "json") == ["/bin/sqlite3", "-json", str(db), sql]
    assert not contenders.supports(SQLITE3, "csv")
    with pytest.raises(ValueError):
        cmd(SQLITE3, "csv")
    assert contenders.select_sql("did:o'k").endswith("did = 'did:o''k' ORDER BY created_at DESC, uri ASC")
    assert 'enabled = ["export_batching"]' in contenders.CONFIG_TEXT[PLUGIN]
    assert "threshold = 0" in contenders.CONFIG_TEXT[PLUGIN]
    assert contenders.CONFIG_TEXT[HOST] == ""


def test_missing_peers_are_skipped() -> None:
    tools = Tools(python="/py", sqlite_utils=None, sqlite3=None)
    kept, skipped = contenders.select_contenders(contenders.CONTENDERS, tools)
    assert kept == [HOST, PLUGIN]
    assert set(skipped) == {SQLITE_UTILS, SQLITE3}
    with pytest.raises(ValueError):
        contenders.select_contenders(["nope"], tools)


def made_up(contender: str, size: int, fmt: str, repeat: int, wall: float, rss: float, sha: str) -> Measurement:
    return Measurement(
        contender=contender, size=size, format=fmt, repeat=repeat, wall_s=wall, rss_mb=rss, vmhwm_mb=rss,
        ru_maxrss_mb=rss, floor_mb=9.0, outer_wall_s=wall + 0.02, output_bytes=100, sha256=sha,
    )  # fmt: skip


def test_rows_take_medians_ratios_and_identity() -> None:
    data = [
        *(made_up(HOST, 10_000, "json", r, wall, 100.0, "a") for r, wall in enumerate((1.0, 3.0, 2.0), 1)),
        *(made_up(PLUGIN, 10_000, "json", r, wall, 50.0, "a") for r, wall in enumerate((1.0, 1.5, 0.5), 1)),
        made_up(SQLITE3, 10_000, "json", 1, 0.25, 9.0, "z"),
        made_up(HOST, 10_000, "csv", 1, 2.0, 80.0, "b"),
        made_up(PLUGIN, 10_000, "csv", 1, 1.0, 40.0, "c"),
        made_up(HOST, 100_000, "csv", 1, 30.0, 800.0, "d"),
        made_up(PLUGIN, 100_000, "csv", 1, 20.0, 42.5, "d"),
    ]
    rows = {(row.format, row.size): row for row in report.build_rows(data)}
    json_row = rows["json", 10_000]
    assert (json_row.host_s, json_row.plugin_s, json_row.plugin_mb) == (2.0, 1.0, 50.0)
    assert json_row.plugin_host_ratio == 0.5
    assert json_row.plugin_posts_per_s == 10_000
    assert json_row.plugin_sqlite3_ratio == 4.0
    assert json_row.sqlite_utils_s is None
    assert json_row.identical is True
    assert rows["csv", 10_000].identical is False
    assert rows["csv", 10_000].sqlite3_s is None
    assert rows["csv", 100_000].identical is True
    spreads = report.rss_spreads(list(rows.values()))
    assert [(s.format, s.reference, s.largest, s.spread_mb) for s in spreads] == [("csv", 10_000, 100_000, 2.5)]
    scaling = {(s.format, s.contender): s.ratio for s in report.scaling_figures(list(rows.values()))}
    assert scaling == {("csv", HOST): pytest.approx(1.5), ("csv", PLUGIN): pytest.approx(2.0)}


def test_reference_sizes() -> None:
    assert report.scaling_reference([500, 50_000, 100_000, 1_000_000]) == (50_000, 1_000_000)
    assert report.scaling_reference([500, 5_000]) == (500, 5_000)
    assert report.scaling_reference([500]) is None
    assert report.rss_reference([500, 5_000, 50_000, 100_000]) == (5_000, 100_000)
    assert report.rss_reference([500, 10_000, 20_000]) == (10_000, 20_000)
    assert report.rss_reference([500, 5_000]) is None


def test_markdown_has_one_table_per_format() -> None:
    data = [made_up(HOST, 500, "json", 1, 0.5, 50.0, "a"), made_up(PLUGIN, 500, "json", 1, 0.4, 49.0, "a")]
    meta = Meta(
        command="python -m benchmarks.run --sizes 500", date="2025-01-01T00:00:00+00:00", python="3.11.7",
        platform="Linux", cpu_count=2, host_version="0.4.1", plugin_version="0.1.0", sqlite3_version=None,
        sqlite_utils_version=None, sizes=[500], formats=["json"], repeat=1, contenders=[HOST, PLUGIN],
        skipped={SQLITE3: "sqlite3 executable not found"},
    )  # fmt: skip
    text = report.render_markdown(meta, data)
    assert report.TABLE_HEADER in text
    assert "`python -m benchmarks.run --sizes 500`" in text
    assert "| 500 | 0.500 | 50.0 | 0.400 | 49.0 | 1,250 | 0.80 | — | — | — | yes |" in text
    assert "### CSV" not in text
    assert "Skipped: sqlite3" in text


def test_chart_is_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "chart.png"
    assert chart.render_chart([made_up(HOST, 500, "json", 1, 0.5, 50.0, "a")], path) == "matplotlib is not installed"
    assert not path.exists()


@linux_only
def test_measure_reports_the_exit_code(tmp_path: Path) -> None:
    report_, _ = run.measure_command(
        [sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path, stdout_path=tmp_path / "out",
        stderr_path=tmp_path / "err", report_path=tmp_path / "report.json",
    )  # fmt: skip
    assert report_.exit_code == 3
    assert report_.rss_mb > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], dict[str, Any]]:
    """One real run: 30 posts, JSON and CSV, host and plugin plus whichever peers are installed."""
    root = tmp_path_factory.mktemp("bench")
    workdir, out = root / "work", root / "out"
    kept, _ = contenders.select_contenders(contenders.CONTENDERS, contenders.find_tools())
    argv = ["--sizes", str(SIZE), "--repeat", "1", "--formats", ",".join(FORMATS), "--contenders", ",".join(kept)]
    code = run.main([*argv, "--workdir", str(workdir), "--out", str(out)])
    assert code == 0
    results = json.loads((out / run.RESULTS_JSON).read_text(encoding="utf-8"))
    return workdir, out, kept, results


@linux_only
def test_tiny_run_measures_every_contender(tiny_run: tuple[Path, Path, list[str], dict[str, Any]]) -> None:
    _, _, kept, results = tiny_run
    seen = {(m["contender"], m["size"], m["format"]) for m in results["measurements"]}
    expected = {(c, SIZE, fmt) for c in kept for fmt in FORMATS if contenders.supports(c, fmt)}
    assert seen == expected
    assert len(results["measurements"]) == len(expected)
    for m in results["measurements"]:
        assert m["rss_mb"] > 0
        assert m["output_bytes"] > 0
    exporters = {m["contender"]: m["exporter"] for m in results["measurements"] if m["contender"] in (HOST, PLUGIN)}
    assert exporters[HOST].startswith("skyarchive")
    assert exporters[PLUGIN].startswith("export_batching")


@linux_only
def test_tiny_run_plugin_output_is_identical(tiny_run: tuple[Path, Path, list[str], dict[str, Any]]) -> None:
    rows = tiny_run[3]["rows"]
    assert [(row["format"], row["size"]) for row in rows] == [(fmt, SIZE) for fmt in FORMATS]
    assert all(row["identical"] is True for row in rows)


@linux_only
def test_tiny_run_writes_markdown_and_maybe_chart(tiny_run: tuple[Path, Path, list[str], dict[str, Any]]) -> None:
    _, out, _, results = tiny_run
    text = (out / run.RESULTS_MD).read_text(encoding="utf-8")
    assert report.TABLE_HEADER in text
    assert "### JSON" in text and "### CSV" in text
    assert results["meta"]["cpu_count"]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / run.CHART_PNG).is_file() == has_matplotlib


@linux_only
def test_archive_is_reused(tiny_run: tuple[Path, Path, list[str], dict[str, Any]]) -> None:
    workdir = tiny_run[0]
    lines: list[str] = []
    tools = contenders.find_tools()
    db = run.ensure_archive(SIZE, workdir=workdir, tools=tools, did=contenders.DEFAULT_DID, log=lines.append)
    assert run.count_posts(db, contenders.DEFAULT_DID) == (SIZE, SIZE)
    assert lines == [f"archive {db} ({SIZE:,} posts): reused"]
    assert not list((workdir / "runs").iterdir())
