"""The benchmark harness (benchmarks/): its pure parts on made-up data, and tiny real runs.

No timing is asserted. sqlite-utils, the sqlite3 CLI, psql, matplotlib and a PostgreSQL server are
optional: the real runs include the contenders whose tools are installed, the PostgreSQL run skips (with
the reason) when the server or psycopg 3 is missing (as under skyarchive 0.3), and the chart is checked
only when matplotlib is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from skyarchive.seed import DEFAULT_DID

# benchmarks/ is not installed: its folder is appended to sys.path, after site-packages, so the plugin
# imported here and in the benchmark's processes is still the installed one.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks import archives, chart, contenders, measure, observe, report, run
from benchmarks.archiver import ArchiverReport
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
    assert measure.parse_args(["--report", "r.json", "--", "true", "x"]) == ("r.json", None, ["true", "x"])
    lock = ["--report", "r.json", "--sqlite-lock", "a.db", "--", "true"]
    swapped = [*lock[2:4], *lock[:2], "--", "true"]
    assert measure.parse_args(lock) == measure.parse_args(swapped) == ("r.json", "a.db", ["true"])
    bad_usages = ([], ["--", "true"], ["--report", "r.json", "true"], ["--report", "r.json", "--"],
                  ["--sqlite-lock", "a.db", "--", "true"], ["--report", "r", "--report", "s", "--", "true"],
                  ["--report", "r.json", "--sqlite-lock", "--", "true"])  # fmt: skip
    for bad in bad_usages:
        with pytest.raises(ValueError):
            measure.parse_args(bad)


def test_default_did_is_the_hosts() -> None:
    assert contenders.DEFAULT_DID == DEFAULT_DID
    assert contenders.ARCHIVER_DID != DEFAULT_DID


# -- measure.py: SQLite's lock, temporary space, the whole export's memory, its first progress line ------

SAMPLE_LOCKS = """\
1: POSIX  ADVISORY  READ 4242 fd:01:1234567 1073741826 1073742335
2: POSIX  ADVISORY  WRITE 4242 fd:01:1234567 1073741825 1073741825
2: -> POSIX  ADVISORY  READ 4242 fd:01:7777777 1073741826 1073742335
3: FLOCK  ADVISORY  WRITE 4243 fd:01:7654321 0 EOF
4: OFDLCK ADVISORY  READ -1 fd:01:1234567 1073741826 1073742335
5: POSIX  ADVISORY  READ 4244 103:02:99 0 EOF
6: POSIX  ADVISORY  READ 4245 fd:01:1234567 1073741824 1073741824
7: POSIX  ADVISORY  WRITE 4246 fd:01:1234567 1073741826 1073742335
8: POSIX  ADVISORY  READ 4247 fd:01:1234567 0 1073741825
garbage line
9: POSIX  ADVISORY  READ x fd:01:1 0 1
"""


def test_proc_locks_parser_reads_the_sample() -> None:
    locks = measure.parse_locks(SAMPLE_LOCKS)
    assert locks[:3] == [("POSIX", "READ", 4242, "fd:01:1234567", 1073741826, 1073742335),
                         ("POSIX", "WRITE", 4242, "fd:01:1234567", 1073741825, 1073741825),
                         ("FLOCK", "WRITE", 4243, "fd:01:7654321", 0, -1)]  # fmt: skip
    assert len(locks) == 8  # no waiter (->), no garbage
    holds = measure.holds_shared
    assert holds(SAMPLE_LOCKS, 4242, "fd:01:1234567")  # SQLite's SHARED lock
    assert not holds(SAMPLE_LOCKS, 4242, "fd:01:7777777")  # only waiting for it
    assert not holds(SAMPLE_LOCKS, 4243, "fd:01:7654321")  # a flock
    assert holds(SAMPLE_LOCKS, 4244, "103:02:99")  # a read lock over the whole file covers the range
    assert not holds(SAMPLE_LOCKS, 4245, "fd:01:1234567")  # PENDING_BYTE only: on the way to SHARED
    assert not holds(SAMPLE_LOCKS, 4246, "fd:01:1234567")  # a write lock: EXCLUSIVE, a writer's
    assert not holds(SAMPLE_LOCKS, 4247, "fd:01:1234567")  # ends before the range
    assert not holds(SAMPLE_LOCKS, 4242, "fd:01:1234568") and not holds(SAMPLE_LOCKS, 1, "fd:01:1234567")
    assert not holds("", 4242, "fd:01:1234567")


def test_lock_holds_are_timed_from_the_polls() -> None:
    holds = measure.Holds()
    for held, now in ((False, 0.0), (True, 1.0), (True, 2.0), (False, 3.0), (False, 4.0), (True, 5.0), (True, 5.2)):
        holds.see(held, now)
    assert (holds.total, holds.longest, holds.since) == (2.0, 2.0, 5.0)
    holds.see(False, 5.5)  # the exit ends a hold
    assert (holds.total, holds.longest, holds.since) == (pytest.approx(2.5), 2.0, None)


@linux_only
def test_file_id_is_as_proc_locks_prints_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    major, minor, inode = measure.file_id(str(path)).split(":")
    st = path.stat()
    assert (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    assert len(major) >= 2 and len(minor) >= 2


#: A child that holds read transactions on argv[1] for 0.5 s and then 0.2 s, with 0.2 s between.
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
for hold in (0.5, 0.2):
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM t").fetchone()
    time.sleep(hold)
    db.execute("COMMIT")
    time.sleep(0.2)
"""


def measured(tmp_path: Path, code: str, *args: str, lock: Path | None = None) -> dict[str, Any]:
    """measure.py's report on a child Python running ``code`` with ``args``."""
    report_, _ = run.measure_command(
        [sys.executable, "-c", code, *args], cwd=tmp_path, stdout_path=tmp_path / "out", stderr_path=tmp_path / "err",
        report_path=tmp_path / "report.json", sqlite_lock=lock,
    )  # fmt: skip
    assert report_["exit_code"] == 0, (tmp_path / "err").read_text()
    return report_


@linux_only
@pytest.mark.slow
def test_a_held_read_transaction_is_measured(tmp_path: Path) -> None:
    db, other = tmp_path / "archive.db", tmp_path / "other.db"
    for path in (db, other):
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
        conn.close()
    found = measured(tmp_path, HOLDER, str(db), lock=db)
    assert 0.45 <= found["lock_longest_s"] <= 0.75, found
    assert 0.65 <= found["lock_s"] <= 1.05 and found["lock_s"] < found["wall_s"], found
    assert found["lock_polls"] >= found["wall_s"] / (measure.LOCK_POLL_MS / 1000) / 4, found
    assert found["ended_monotonic"] - found["started_monotonic"] == pytest.approx(found["wall_s"], abs=0.01)
    elsewhere = measured(tmp_path, HOLDER, str(db), lock=other)  # the lock is on another file
    assert (elsewhere["lock_s"], elsewhere["lock_longest_s"]) == (0.0, 0.0) and elsewhere["lock_polls"] > 0
    unwatched = measured(tmp_path, "pass")
    assert (unwatched["lock_s"], unwatched["lock_longest_s"], unwatched["lock_polls"]) == (None, None, None)


#: A command with temporary space in every form measure.py counts, 8 MiB in all, and 2 MiB it must not count:
#: 2 MiB in an unnamed temporary file, 1 MiB in a file it deleted, 3 MiB in a named file inside an
#: export-batching-* directory (which its child has open too: counted once), 1 MiB in a file whose export-batching-*
#: directory was removed while it was open; its child (in a session of its own, as the plugin's) holds 1 MiB in an
#: unnamed file of its own. A 2 MiB named file elsewhere, in a directory whose name only ends so, is not temporary.
TEMPORARY = """
import os, shutil, subprocess, sys, tempfile, time
files = sys.argv[1]
CHILD = '''
import os, sys, tempfile, time
shared = open(sys.argv[1], "rb")
own = tempfile.TemporaryFile(dir=sys.argv[2])
own.write(b"c" * (1 << 20)); own.flush(); os.fsync(own.fileno())
print("ready", flush=True)
time.sleep(0.5)
'''


def fill(path, mib):
    stream = open(path, "wb") if isinstance(path, str) else path
    stream.write(b"x" * (mib << 20)); stream.flush(); os.fsync(stream.fileno())
    return stream


os.makedirs(os.path.join(files, "not-export-batching-x"))
named = fill(os.path.join(files, "not-export-batching-x", "named"), 2)
spool = fill(tempfile.TemporaryFile(dir=files), 2)
deleted = fill(os.path.join(files, "deleted"), 1)
os.unlink(os.path.join(files, "deleted"))
private = tempfile.mkdtemp(prefix="export-batching-", dir=files)
copy = fill(os.path.join(private, "copy.db"), 3)
gone = tempfile.mkdtemp(prefix="export-batching-", dir=files)
orphan = fill(os.path.join(gone, "rows"), 1)
shutil.rmtree(gone)
child = subprocess.Popen([sys.executable, "-I", "-c", CHILD, copy.name, files], stdout=subprocess.PIPE,
                         start_new_session=True)
child.stdout.readline()
child.wait()
for stream in (spool, deleted, copy, orphan):
    stream.close()
shutil.rmtree(private)
time.sleep(0.2)
"""


@linux_only
@pytest.mark.slow
def test_temporary_space_is_measured_over_the_whole_tree(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    found = measured(tmp_path, TEMPORARY, str(tmp_path / "files"))
    assert 8 * 1024 <= found["temp_peak_kb"] <= 8 * 1024 + 64, found
    assert found["processes_peak"] == 2, found
    assert measured(tmp_path, "pass")["temp_peak_kb"] == 0


def test_what_is_temporary_space() -> None:
    temporary = measure.is_temporary
    assert temporary("/tmp/tmpabc (deleted)") and temporary("/var/tmp/#393228 (deleted)")  # unlinked, O_TMPFILE
    assert temporary("/tmp/export-batching-1a2b3c4d/copy.db") and temporary("/out/export-batching-x/y/rows")
    assert temporary("/tmp/export-batching-1a2b3c4d/rows (deleted)")  # its directory removed meanwhile
    assert not temporary("/out/exports/posts.json") and not temporary("/tmp/not-export-batching-x/rows")
    assert not temporary("pipe:[1234]") and not temporary("socket:[99]") and not temporary("anon_inode:[eventfd]")
    assert not temporary("/memfd:spool (deleted)")  # memory: in the PSS, not on disk


#: A command whose child, in a session of its own (as the plugin's), makes a grandchild that holds argv[1] MiB
#: (touched) for 0.6 s: only the tree's proportional set sizes see it. argv[2] "exec": the grandchild is a new
#: interpreter; "fork": a fork of the child after the child touched the MiB itself, the two mapping the same pages.
HOLDER_TREE = """
import subprocess, sys
CHILD = '''
import os, subprocess, sys, time
mib, how = int(sys.argv[1]), sys.argv[2]
HOLD = ("import time; b = bytearray(%d << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); "
        "time.sleep(0.6)")
if how == "fork":
    b = bytearray(mib << 20); b[::4096] = b"x" * len(b[::4096])
    if os.fork() == 0:
        time.sleep(0.6)
        os._exit(0)
    print("ready", flush=True)
    os.wait()
else:
    grandchild = subprocess.Popen([sys.executable, "-I", "-c", HOLD % mib], stdout=subprocess.PIPE)
    print(grandchild.stdout.readline().decode().strip(), flush=True)
    grandchild.wait()
'''
child = subprocess.Popen([sys.executable, "-I", "-c", CHILD, *sys.argv[1:]], stdout=subprocess.PIPE,
                         start_new_session=True)
assert child.stdout.readline() == b"ready\\n"
child.wait()
"""


def needs_smaps_rollup() -> None:
    if measure.read_pss_kb(os.getpid()) is None:
        pytest.skip("no /proc/<pid>/smaps_rollup (Linux 4.14 and later)")


@linux_only
@pytest.mark.slow
def test_the_whole_exports_memory_is_measured(tmp_path: Path) -> None:
    needs_smaps_rollup()
    small, big = (measured(tmp_path, HOLDER_TREE, str(mib), "exec") for mib in (1, 97))
    for found in (small, big):
        assert found["processes_peak"] == 3 and found["pss_reads"] >= 2, found
        assert found["vmhwm_kb"] < 40 * 1024, found  # the command alone: a small interpreter
    # 96 MiB more, less what the shared pages of three interpreters move with what else runs (CI: several MiB)
    assert 84 * 1024 <= big["pss_peak_kb"] - small["pss_peak_kb"] <= 104 * 1024, (small, big)
    assert 0 < big["pss_read_s"] < big["wall_s"] and big["measure_cpu_s"] < big["wall_s"], big


@linux_only
@pytest.mark.slow
def test_pages_two_processes_share_count_once(tmp_path: Path) -> None:
    needs_smaps_rollup()
    small, big = (measured(tmp_path, HOLDER_TREE, str(mib), "fork") for mib in (1, 96))
    assert big["processes_peak"] == 3, big
    # Summed resident sets would count the 96 MiB twice; proportional set sizes count them once.
    assert 90 * 1024 <= big["pss_peak_kb"] - small["pss_peak_kb"] <= 110 * 1024, (small, big)


class FakeProcesses:
    """The /proc readings a Sampler makes, as a test sets them; each PSS reading takes 5 ms of a fake clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.rss, self.pss, self.reads = 0.0, {1: 10_000, 2: 20_000}, {1: 8_000, 2: 15_000}, 0
        monkeypatch.setattr(measure.Tree, "pids", lambda tree: list(self.rss))
        monkeypatch.setattr(measure, "read_vmhwm_kb", lambda pid: 12_000)
        monkeypatch.setattr(measure, "read_rss_kb", lambda pid: self.rss.get(pid, 0))
        monkeypatch.setattr(measure, "temporary_files", lambda pid, found: None)
        monkeypatch.setattr(measure, "read_pss_kb", self.read_pss)

    def read_pss(self, pid: int) -> int | None:
        self.reads += 1
        self.now += 0.005
        return self.pss.get(pid)


def test_pss_is_read_within_its_budget_and_carried_by_the_rss_between(monkeypatch: pytest.MonkeyPatch) -> None:
    procs = FakeProcesses(monkeypatch)
    sampler = measure.Sampler(1, clock=lambda: procs.now)
    sampler.sample()  # both read: 10 ms
    assert (sampler.pss_kb, sampler.pss_read_kb, sampler.pss_reads, procs.reads) == (23_000, 23_000, 1, 2)
    assert sampler.pss_read_s == pytest.approx(0.01) and sampler.processes == 2
    wait = 0.01 / measure.PSS_SHARE  # before the next reading
    procs.now = wait / 2
    procs.rss, procs.pss = {1: 10_000, 2: 50_000}, {1: 8_000, 2: 45_000}  # the child allocated 30 MB
    sampler.sample()
    assert (sampler.pss_kb, sampler.pss_read_kb, procs.reads) == (53_000, 23_000, 2)  # carried by its RSS: not read
    procs.rss[3], procs.pss = 50_000, {1: 8_000, 2: 25_000, 3: 25_000}  # the child forked: they share 40 MB
    sampler.sample()  # a new process: every one read at once
    assert (sampler.pss_kb, sampler.pss_read_kb, procs.reads, sampler.pss_reads) == (58_000, 58_000, 5, 2)
    procs.now += 0.015 / measure.PSS_SHARE / 2
    procs.rss[3], procs.pss[3] = 60_000, 35_000  # the fork allocated 10 MB
    sampler.sample()
    assert (sampler.pss_kb, sampler.pss_read_kb, procs.reads, sampler.processes) == (68_000, 58_000, 5, 3)
    procs.now += 0.015 / measure.PSS_SHARE
    procs.pss = {1: 8_000, 2: 45_000, 3: 55_000}  # and wrote to the pages they shared: copied on write
    sampler.sample()  # its budget allows: every one read, exact
    assert (sampler.pss_kb, sampler.pss_read_kb, procs.reads) == (108_000, 108_000, 8)
    procs.now += 1.0
    procs.rss = {1: 10_000, 2: 40_000, 3: 10_000}  # 60,000 kB resident: no PSS can be above the peak
    sampler.sample()
    assert (sampler.pss_kb, procs.reads, sampler.pss_reads) == (108_000, 8, 3)
    procs.rss, procs.pss = {1: 10_000}, {1: 8_000}  # the children exited: the peak stays
    sampler.sample()
    assert (sampler.pss_kb, sampler.processes, sampler.vmhwm_kb) == (108_000, 3, 12_000)
    procs.rss, procs.pss, procs.now = {1: 200_000}, {1: 190_000}, procs.now + 0.001  # grew: read (its child ended)
    sampler.sample()
    assert (sampler.pss_kb, procs.reads, sampler.pss_reads, set(sampler.anchors)) == (190_000, 9, 4, {1})


def test_the_tree_follows_parent_pids(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 1, 14: 13, 15: 10}  # 10 starts 11 and 15, 11 starts 12
    listed, last, reads = [1, 10, 11, 12, 13, 14, 15], [b"15"], []
    monkeypatch.setattr(measure.os, "listdir", lambda path: [str(pid) for pid in listed] + ["self", "stat"])
    monkeypatch.setattr(measure, "last_pid", lambda: last[0])

    def read_stat(path: str, mode: str) -> io.BytesIO:
        pid = int(path.split("/")[2])
        reads.append(pid)
        return io.BytesIO(f"{pid} (py (x)) S {parents[pid]} 1 1".encode())

    monkeypatch.setattr(measure, "open", read_stat, raising=False)
    tree = measure.Tree(10)
    assert tree.pids()[0] == 10 and sorted(tree.pids()) == [10, 11, 12, 15]
    assert sorted(reads) == listed  # each parent read once
    listed.remove(11)  # 11 exits, its child 12 stays (reparented)
    assert sorted(tree.pids()) == [10, 11, 12, 15] and len(reads) == 7  # no pid given out: /proc not listed again
    last[0], parents[16] = b"16", 12
    listed.append(16)
    assert sorted(tree.pids()) == [10, 12, 15, 16] and reads[7:] == [16]


PROGRESS = """
import sys, time
err = sys.stderr
err.write("export: 0/10 posts (0%)\\nexport: copying the selection\\nWARNING: 3/4 posts skipped\\n"); err.flush()
time.sleep(0.4)
err.write("export: 3/1"); err.flush()  # a line written in two pieces
time.sleep(0.05)
err.write("0 posts (30%)\\n"); err.flush()
time.sleep(0.3)
err.write("export: 10/10 posts (100%)\\n")
"""


@linux_only
@pytest.mark.slow
def test_the_first_progress_line_is_timed(tmp_path: Path) -> None:
    found = measured(tmp_path, PROGRESS)
    assert found["stderr_watched"] and 0.45 <= found["first_progress_s"] <= 0.45 + 0.25, found
    assert found["first_progress_s"] < found["wall_s"]
    assert "export: 3/10 posts (30%)\n" in (tmp_path / "err").read_text()  # what it wrote is all there
    silent = measured(tmp_path, "import sys; print('export: 0/0 posts (100%)', file=sys.stderr)")
    assert silent["stderr_watched"] and silent["first_progress_s"] is None, silent


@linux_only
def test_progress_is_not_watched_on_a_pipe(tmp_path: Path) -> None:
    command = [sys.executable, "-I", "-S", str(run.MEASURE), "--report", str(tmp_path / "r.json"), "--",
               sys.executable, "-c", "import sys; print('export: 5/5 posts (100%)', file=sys.stderr)"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, check=False)
    assert done.returncode == 0 and done.stderr == b"export: 5/5 posts (100%)\n"
    found = json.loads((tmp_path / "r.json").read_text())
    assert (found["stderr_watched"], found["first_progress_s"]) == (False, None)


def test_progress_lines_are_parsed() -> None:
    count = measure.progress_count
    assert count(b"export: 36000/200000 posts (18%)") == 36000 and count(b"export: 0/5 posts (0%)") == 0
    for other in (b"export: copying the selection", b"export: 12 posts", b"WARNING: 3/4 posts", b"export: a/b posts",
                  b" export: 1/2 posts (50%)", b"export: 1/2 items", b""):  # fmt: skip
        assert count(other) is None, other


def test_proc_parsers() -> None:
    assert measure.parse_ppid(b"4242 (a) b) (c) S 4241 4242 4200 0 -1 4194560") == 4241
    assert measure.parse_ppid(b"garbage") is None
    rollup = b"55d0-7ffd ---p 00000000 00:00 0   [rollup]\nRss:  1696 kB\nPss:  246 kB\nPss_Anon: 116 kB\n"
    assert measure.parse_pss_kb(rollup) == 246 and measure.parse_pss_kb(b"Rss: 1 kB\nPss_Anon: 2 kB\n") is None


# -- observe.py: the page cache, PostgreSQL's transactions, the archiver's window ------------------------


def on_tmpfs(path: Path) -> bool:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    best = max((m for m in mounts if str(path.resolve()).startswith(m[1])), key=lambda m: len(m[1]))
    return best[2] in ("tmpfs", "ramfs")


@linux_only
def test_eviction_drops_a_file_from_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    path.write_bytes(os.urandom(4 << 20))
    observe.read_through([path])
    before = observe.resident_fraction(path)
    if before is None or on_tmpfs(tmp_path):
        pytest.skip("no mincore here, or a filesystem that cannot drop its pages")
    assert before > 0.95
    (tmp_path / "archive.db-journal").write_bytes(b"j" * 8192)
    assert observe.sqlite_files(path) == [path, tmp_path / "archive.db-journal"]
    observe.evict(observe.sqlite_files(path))
    assert (observe.resident_fraction(path) or 0.0) < 0.05
    assert (observe.resident_fraction(tmp_path / "archive.db-journal") or 0.0) < 0.5
    observe.read_through([path])
    assert (observe.resident_fraction(path) or 0.0) > 0.95
    assert observe.resident_fraction(tmp_path / "missing") is None
    (tmp_path / "empty").write_bytes(b"")
    assert observe.resident_fraction(tmp_path / "empty") is None
    observe.evict([tmp_path / "missing"])  # a vanished file is skipped


@linux_only
def test_cache_states_are_made_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "archive-1.db"
    db.write_bytes(os.urandom(2 << 20))
    archive = Archive(Case(SQLITE, 1), f"sqlite:///{db}", str(db), tmp_path / "archive-1.media")
    observe.read_through([db])
    if observe.resident_fraction(db) is None or on_tmpfs(tmp_path):
        pytest.skip("no mincore here, or a filesystem that cannot drop its pages")
    assert (run.prepare_cache(archive, "cold") or 0.0) < 0.05
    assert (run.prepare_cache(archive, "warm") or 0.0) >= run.WARM_MIN  # read again: it had left the cache
    monkeypatch.setattr(run, "evict", lambda paths: None)  # a filesystem that keeps its pages
    with pytest.raises(BenchmarkError, match="still in the page cache"):
        run.prepare_cache(archive, "cold")


def test_an_archiver_that_leaves_posts_behind_fails_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run, "stop_archiver", lambda process, path: archiver_report(inserted=4, deleted=4))
    assert run.watch_archiver(None, tmp_path, 1.2, 3.5) == {
        "archiver_attempts": 3, "archiver_errors": 1, "archiver_longest_wait_s": 5.0}  # fmt: skip
    monkeypatch.setattr(run, "stop_archiver", lambda process, path: archiver_report(inserted=4, deleted=3))
    with pytest.raises(BenchmarkError, match="removed 3 of the 4 posts it added"):
        run.watch_archiver(None, tmp_path, 1.2, 3.5)


@linux_only
def test_measure_runs_compiled_from_a_lower_floor(tmp_path: Path) -> None:
    compiled = run.compiled_measure(tmp_path / "cache")
    assert compiled.suffix == ".pyc" and compiled.parent == tmp_path / "cache"
    assert compiled == run.compiled_measure(tmp_path / "cache") and len(list((tmp_path / "cache").iterdir())) == 1
    floors = []
    for script in (compiled, run.MEASURE):
        command = [sys.executable, "-I", "-S", str(script), "--report", str(tmp_path / "r.json"), "--", "true"]
        assert subprocess.run(command, check=False).returncode == 0
        floors.append(json.loads((tmp_path / "r.json").read_text())["floor_kb"])
    assert floors[0] < floors[1] - 200, floors  # compiling the source peaks higher than running the bytecode
    used, _ = run.measure_command(["true"], cwd=tmp_path, stdout_path=tmp_path / "o", stderr_path=tmp_path / "e",
                                  report_path=tmp_path / "r.json")  # fmt: skip
    assert used["floor_kb"] < floors[1] - 200, (used, floors)  # the harness runs it compiled


def test_transactions_are_told_apart_by_backend_and_start() -> None:
    samples = [(1, "t0", 0.1), (1, "t0", 0.4), (2, "t1", 0.2), (1, "t2", 0.05), (2, "t1", 0.15)]
    assert observe.longest_and_total(samples) == (0.4, pytest.approx(0.65))
    assert observe.longest_and_total([]) == (0.0, 0.0)


def archiver_report(**changes: Any) -> ArchiverReport:
    data = {
        "attempts": 5, "inserted": 4, "errors": [{"at": 2.0, "message": "database is locked", "attempt": 2}],
        "waits": [0.01, 0.5, 5.0, 0.01, 0.01], "attempted_at": [0.0, 1.0, 2.0, 3.0, 4.0], "longest_wait": 5.0,
        "total_s": 4.1, "start_monotonic": 0.0, "end_monotonic": 4.1, "start_wall": "a", "end_wall": "b",
        "journal_mode": "delete", "deleted": 4, "pid": 1, "did": contenders.ARCHIVER_DID, **changes,
    }  # fmt: skip
    return ArchiverReport.from_json(data)


def test_the_archiver_is_counted_in_the_exports_window() -> None:
    report_ = archiver_report()
    assert observe.archiver_window(report_, 1.2, 3.5) == observe.ArchiverWindow(3, 1, 5.0)  # attempts 1 to 3
    assert observe.archiver_window(report_, 3.5, 3.9) == observe.ArchiverWindow(1, 1, 5.0)  # attempt 2 still waits
    assert observe.archiver_window(report_, 7.5, 8.0) == observe.ArchiverWindow(0, 0, 0.0)
    assert observe.archiver_window(report_, 0.0, 10.0) == observe.ArchiverWindow(5, 1, 5.0)
    assert observe.archiver_window(report_, 2.5, 2.6) == observe.ArchiverWindow(1, 1, 5.0)  # inside the long wait


@pytest.mark.slow
@pytest.mark.postgresql
def test_postgresql_transactions_are_polled() -> None:
    try:
        archives.probe_postgresql(archives.DEFAULT_PG)
    except BenchmarkError as exc:
        pytest.skip(str(exc))
    psycopg = archives.psycopg()
    database = "skyarchive_bench_poller_test"
    with psycopg.connect(f"{archives.DEFAULT_PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        location = f"{archives.DEFAULT_PG}/{database}"
        with observe.PgTransactions(location) as poller, psycopg.connect(location) as reader:
            time.sleep(0.1)
            reader.execute("SELECT 1").fetchone()  # psycopg opens a transaction here
            time.sleep(0.5)
            reader.commit()
            time.sleep(0.1)
            reader.execute("SELECT 2").fetchone()
            time.sleep(0.3)
            reader.commit()
        longest, total = poller.result()
        assert 0.45 <= longest <= 0.65 and 0.72 <= total <= 1.0, (longest, total)
        assert poller.polls >= 20
    finally:
        with psycopg.connect(f"{archives.DEFAULT_PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# -- options and cases ---------------------------------------------------------------------------------


def test_default_options_measure_every_backend_and_the_media_case() -> None:
    options = run.parse_options([])
    assert (options.backends, options.formats, options.repeat) == ((SQLITE, POSTGRESQL), ("json", "csv", "jsonl"), 1)
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


def test_layouts_caches_slow_disk_and_archiver_are_options() -> None:
    default = run.parse_options([])
    assert (default.layouts, default.caches, default.slow_disk, default.slow_disk_cases, default.archiver) == (
        ("seeded",), ("warm",), 0.0, (), False)  # fmt: skip
    options = run.parse_options(["--layouts", "oldest-first,seeded", "--cache", "cold,warm", "--slow-disk", "20",
                                 "--slow-disk-cases", "100_000", "--archiver", "--sizes", "300,100000",
                                 "--media-posts", "50"])  # fmt: skip
    assert (options.slow_disk, options.slow_disk_cases, options.archiver) == (20.0, ("100000",), True)
    oldest = contenders.OLDEST_FIRST
    assert options.cases([SQLITE, POSTGRESQL]) == [
        Case(SQLITE, 300), Case(SQLITE, 300, layout=oldest), Case(SQLITE, 100_000),
        Case(SQLITE, 100_000, layout=oldest), Case(SQLITE, 50, media=True),
        Case(POSTGRESQL, 300), Case(POSTGRESQL, 300, layout=oldest), Case(POSTGRESQL, 100_000),
        Case(POSTGRESQL, 100_000, layout=oldest),
    ]  # fmt: skip
    assert options.caches_of(Case(SQLITE, 300)) == ["warm", "cold"]  # in that order, whatever the option's
    assert options.caches_of(Case(POSTGRESQL, 300)) == ["warm"]  # no cold runs on PostgreSQL
    assert options.disks_of(Case(SQLITE, 300), "warm") == ["normal"]
    assert options.disks_of(Case(POSTGRESQL, 100_000), "warm") == ["normal", "slow"]
    assert run.parse_options(["--slow-disk", "5"]).disks_of(Case(SQLITE, 9), "cold") == ["normal", "slow"]
    assert run.parse_options(["--slow-disk-cases", "9"]).disks_of(Case(SQLITE, 9), "warm") == ["normal"]  # 0 ms: off


def test_the_slow_disk_runs_where_its_cases_say() -> None:
    where = run.case_filter("sqlite, 100_000,1000000,oldest-first")
    assert where == ("sqlite", "100000", "1000000", "oldest-first")
    picked = [(case, cache) for case in (Case(SQLITE, 100_000, layout="oldest-first"), Case(SQLITE, 100_000),
                                         Case(SQLITE, 5_000, layout="oldest-first"),
                                         Case(POSTGRESQL, 1_000_000, layout="oldest-first"),
                                         Case(SQLITE, 1_000_000, layout="oldest-first"))
              for cache in ("warm", "cold") if run.matches(where, case, cache)]  # fmt: skip
    oldest = "oldest-first"
    assert picked == [(Case(SQLITE, size, layout=oldest), cache) for size in (100_000, 1_000_000)
                      for cache in ("warm", "cold")]  # fmt: skip
    assert run.matches((), Case(POSTGRESQL, 7), "cold") and run.matches(("cold",), Case(SQLITE, 7), "cold")
    assert not run.matches(("cold",), Case(SQLITE, 7), "warm") and not run.matches(
        ("postgresql",), Case(SQLITE, 7), "warm"
    )
    assert run.matches(("seeded", "oldest-first"), Case(SQLITE, 7, layout=oldest), "warm")


def test_plan_runs_each_contender_on_its_disks() -> None:
    runners = list(BY_NAME)
    slow = run.parse_options(["--slow-disk", "20"])
    assert slow.plan(Case(SQLITE, 9), "warm", "json", runners) == [
        ("host", "normal"), ("host", "slow"), ("plugin", "normal"), ("plugin", "slow"),
        ("plugin-checksums", "normal"), ("plugin-checksums", "slow"), ("plugin-empty", "normal"),
        ("sqlite-utils", "normal"), ("sqlite3", "normal"),
    ]  # fmt: skip
    assert slow.plan(Case(POSTGRESQL, 9), "warm", "csv", ["host", "psql-copy", "psql-json"]) == [
        ("host", "normal"), ("host", "slow"), ("psql-copy", "normal")]  # fmt: skip
    normal = run.parse_options([]).plan(Case(SQLITE, 9, media=True), "cold", "csv", runners)
    assert normal == [(name, "normal") for name in ("host", "plugin", "plugin-checksums", "plugin-empty")]
    for contender in contenders.CONTENDERS:  # the peers write to stdout, which the shim cannot slow
        assert ("slow" in contender.disks) == (contender.is_skyarchive and contender.same_output)


@pytest.mark.parametrize(
    "argv",
    [["--backends", "oracle"], ["--sizes", "0"], ["--sizes", "x"], ["--formats", "xml"], ["--formats", ""],
     ["--contenders", "nope"], ["--repeat", "0"], ["--media-posts", "-1"], ["--layouts", "newest"],
     ["--layouts", ""], ["--cache", "hot"], ["--slow-disk", "-1"], ["--slow-disk", "nan"], ["--slow-disk", "x"],
     ["--slow-disk-cases", "hot"], ["--slow-disk-cases", "sqlite,x"]],
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
    assert cmd("plugin-empty", lite, "csv") == [*cmd("plugin", lite, "csv"), "--since", "2100-01-01"]
    oldest = archives.locate(Case(SQLITE, 10, layout=contenders.OLDEST_FIRST), tmp_path, PG)
    assert (
        oldest.location == f"{tmp_path}/archive-10-oldest.db"
        and oldest.media_dir == tmp_path / "archive-10-oldest.media"
    )
    pg_oldest = archives.locate(Case(POSTGRESQL, 10, layout=contenders.OLDEST_FIRST), tmp_path, PG)
    assert pg_oldest.location == f"{PG}/skyarchive_bench_10_oldest"
    assert contenders.select_sql("did:o'k").endswith("did = 'did:o''k' ORDER BY created_at DESC, uri ASC")


def test_each_contender_takes_part_where_it_can() -> None:
    def names(case: Case, fmt: str) -> set[str]:
        return {c.name for c in contenders.CONTENDERS if c.takes_part(case, fmt)}

    ours = {"host", "plugin", "plugin-checksums", "plugin-empty"}
    assert names(Case(SQLITE, 9), "json") == {*ours, "sqlite-utils", "sqlite3"}
    assert names(Case(SQLITE, 9, layout=contenders.OLDEST_FIRST), "json") == names(Case(SQLITE, 9), "json")
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
    assert list(runners) == ["host", "plugin", "plugin-checksums", "plugin-empty", "sqlite-utils", "sqlite3"]
    assert skipped == {"psql-copy": "psql executable not found", "psql-json": "psql executable not found"}
    runners, skipped = run.select_contenders(tuple(BY_NAME), [SQLITE])
    assert (list(runners), skipped) == (["host", "plugin", "plugin-checksums", "plugin-empty", "sqlite-utils",
                                         "sqlite3"], {})  # fmt: skip


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
    rss: float = 50.0, sha: str = "a", media: str | None = None, **fields: Any,
) -> Measurement:  # fmt: skip
    return Measurement(
        contender=contender, backend=backend, size=size, media=media is not None, format=fmt, repeat=repeat,
        wall_s=wall, vmhwm_mb=rss, ru_maxrss_mb=rss, floor_mb=9.0, outer_wall_s=wall + 0.02,
        output_bytes=100, sha256=sha, exporter="x" if BY_NAME[contender].is_skyarchive else None, media_digest=media,
        media_files=3 if media is not None else None, **fields,
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
    no_txn = {"checksums on/off": None, "read txn plugin/host": None}
    assert lite.ratios == {"plugin/host": 0.5, "plugin/sqlite3": 4.0, **no_txn}
    csv = rows[SQLITE, False, "csv", 10_000]
    assert (csv.ratios, csv.identical) == ({"plugin/host": 0.5, "plugin/sqlite-utils": 0.5, **no_txn}, False)
    pg = rows[POSTGRESQL, False, "json", 10_000]
    assert pg.ratios == {"plugin/host": 0.375, "plugin/psql-json": 3.0, "plugin PG/SQLite": 1.5, **no_txn}
    media = rows[SQLITE, True, "json", 6_000]
    assert (media.identical, media.media_files, media.ratios) == (
        False, 3, {"plugin/host": 0.5, "plugin/sqlite3": None, **no_txn}
    )  # fmt: skip
    assert (lite.read_txn, lite.archiver_errors, lite.archiver_wait, lite.temp_mb, lite.pss_mb) == ({},) * 5
    assert (lite.pss_over_empty_mb, lite.temp_over_stored, lite.first_progress_s) == ({}, {}, {})
    assert (lite.selection_mb, lite.processes) == (None, {})
    assert (lite.layout, lite.cache, lite.disk, lite.resident_min, lite.resident_max) == ("seeded", "warm", "normal",
                                                                                           None, None)  # fmt: skip


def test_derived_figures_check_targets_at_the_largest_size() -> None:
    data = [made_up("sqlite3", 100_000, 4.0)]
    data += [made_up("plugin", 100_000, 8.0, backend=POSTGRESQL), made_up("host", 100_000, 20.0, backend=POSTGRESQL)]
    for size in (10_000, 50_000, 100_000):
        data += [made_up("host", size, size / 5_000, rss=900.0)]
        data += [made_up("plugin", size, size / 10_000, rss=41.25 if size == 100_000 else 40.0)]
    figures = {(f.table, f.what): f for f in report.derived_figures(report.build_rows(data))}
    target = figures[LITE_JSON, "plugin/sqlite3 at 100,000 posts"]
    assert (target.value, target.target, target.met) == (pytest.approx(2.5), 1.0, False)
    assert "(target ≤ 1x: **missed**)" in target.line()
    assert figures["PostgreSQL, JSON (seeded, warm cache, normal disk)", "plugin PG/SQLite at 100,000 posts"].met
    host = figures[LITE_JSON, "host time per post at 100,000 vs at 50,000 posts"]
    assert host.value == pytest.approx(1.0) and host.target is None
    spread = figures[LITE_JSON, "plugin peak RSS at 100,000 minus at 10,000 posts"]
    assert spread.value == pytest.approx(1.25) and spread.line().endswith(": +1.2 MB")


LITE_JSON = "SQLite, JSON (seeded, warm cache, normal disk)"


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
    titles = [line for line in text.splitlines() if line.startswith("### ") and "Derived" not in line]
    assert titles == [f"### {title} (seeded, warm cache, normal disk)"
                      for title in ("SQLite, JSON", "SQLite with media, JSON", "PostgreSQL, CSV")]  # fmt: skip
    assert (
        "`python -m benchmarks.run --sizes 500`" in text and "Skipped: sqlite3 (sqlite3 executable not found)" in text
    )
    assert "| 500 | 0.500 | 50.0 | 0.400 | 49.0 | 1,250 | 0.80 | yes |" in text
    assert "| posts | host s | host MB | plugin s | plugin MB | psql-copy s | psql-copy MB | plugin posts/s | " in text
    assert "| plugin/host | plugin/psql-copy (≤ 1.2) | identical |" in text
    assert "| 500 | 0.800 | 50.0 | 0.600 | 50.0 | 0.100 | 50.0 | 833 | 0.75 | 6.00 | yes |" in text
    assert "| 60 | 0.500 | 50.0 | 0.500 | 50.0 | 120 | 1.00 | 3 | yes |" in text
    assert (
        "PostgreSQL, seeded, 500 posts: `skyarchive seed --posts 500` into `/w/archive-500.db`, then COPY into " in text
    )
    assert (
        "- PostgreSQL, CSV (seeded, warm cache, normal disk), plugin/psql-copy at 500 posts: 6.00x (target ≤ 1.2x: "
        "**missed**)"
    ) in text


def test_rows_carry_read_transactions_archiver_temporary_space_and_cache() -> None:
    cold = {"cache": "cold", "layout": "oldest-first"}
    data = [
        *(made_up("host", 1_000, 2.0, repeat=r, lock_longest_s=txn, lock_s=txn, archiver_errors=errors,
                  archiver_longest_wait_s=wait, archiver_attempts=9, temp_peak_mb=0.0, resident_before=res, **cold)
          for r, txn, errors, wait, res in ((1, 1.5, 2, 5.1, 0.01), (2, 1.0, 0, 0.3, 0.0), (3, 2.0, 1, 0.2, 0.02))),
        *(made_up("plugin", 1_000, 1.0, repeat=r, lock_longest_s=txn, archiver_errors=0, archiver_longest_wait_s=0.05,
                  temp_peak_mb=temp, resident_before=0.0, **cold)
          for r, txn, temp in ((1, 0.3, 4.0), (2, 0.5, 6.0), (3, 0.4, 5.0))),
        made_up("sqlite3", 1_000, 0.25, sha="z", resident_before=0.03, **cold),
        made_up("host", 1_000, 1.0, backend=POSTGRESQL, read_txn_s=0.8, read_txn_total_s=0.9),
        made_up("plugin", 1_000, 1.0, backend=POSTGRESQL, read_txn_s=0.2, read_txn_total_s=0.3),
    ]  # fmt: skip
    lite, pg = report.build_rows(data)
    assert (lite.layout, lite.cache, lite.disk) == ("oldest-first", "cold", "normal")
    assert lite.read_txn == {"host": 1.5, "plugin": 0.4}  # medians
    assert lite.ratios["read txn plugin/host"] == pytest.approx(0.4 / 1.5)
    assert lite.archiver_errors == {"host": 2, "plugin": 0} and lite.archiver_wait == {"host": 5.1, "plugin": 0.05}
    assert lite.temp_mb == {"host": 0.0, "plugin": 5.0}
    assert (lite.resident_min, lite.resident_max) == (0.0, 0.03)
    assert pg.read_txn == {"host": 0.8, "plugin": 0.2} and pg.ratios["read txn plugin/host"] == pytest.approx(0.25)
    assert (pg.archiver_errors, pg.temp_mb, pg.resident_max) == ({}, {}, None)
    assert dataclasses.replace(data[0], lock_longest_s=None, read_txn_s=0.7).read_txn == 0.7


def figures_of(data: list[Measurement]) -> dict[tuple[str, str], report.Figure]:
    return {(f.table, f.what): f for f in report.derived_figures(report.build_rows(data))}


def test_the_targets_are_checked_at_the_largest_size() -> None:
    big, pg, csv = 1_000_000, {"backend": POSTGRESQL}, {"fmt": "csv"}
    data = [
        made_up("plugin", big, 5.0, lock_longest_s=0.5), made_up("sqlite3", big, 5.5),
        made_up("host", big, 40.0, lock_longest_s=20.0),
        made_up("plugin-checksums", big, 5.5),  # 1.10x: missed
        made_up("plugin", big, 8.0, **csv), made_up("sqlite-utils", big, 10.0, **csv),  # 0.8x: missed
        made_up("plugin-checksums", big, 8.2, **csv),  # 1.025x: met
        made_up("plugin", big, 5.5, **pg), made_up("host", big, 40.0, read_txn_s=2.0, **pg),  # PG/SQLite 1.1x
        made_up("plugin", big, 3.0, read_txn_s=3.0, **pg, **csv), made_up("psql-copy", big, 2.5, **pg, **csv),
        made_up("host", big, 30.0, read_txn_s=2.0, **pg, **csv),
    ]  # fmt: skip
    figures = figures_of(data)
    pg_json, pg_csv = (f"PostgreSQL, {fmt} (seeded, warm cache, normal disk)" for fmt in ("JSON", "CSV"))
    lite_csv = "SQLite, CSV (seeded, warm cache, normal disk)"
    expected = {
        (LITE_JSON, "plugin/sqlite3 at 1,000,000 posts"): (1.0, True),
        (LITE_JSON, "checksums on/off at 1,000,000 posts"): (1.05, False),
        (LITE_JSON, "read txn plugin/host at 1,000,000 posts"): (1.0, True),
        (lite_csv, "plugin/sqlite-utils at 1,000,000 posts"): (0.7, False),
        (lite_csv, "checksums on/off at 1,000,000 posts"): (1.05, True),
        (pg_json, "plugin PG/SQLite at 1,000,000 posts"): (1.0, False),
        (pg_csv, "plugin/psql-copy at 1,000,000 posts"): (1.2, True),  # 1.2x: met (≤)
        (pg_csv, "read txn plugin/host at 1,000,000 posts"): (1.0, False),
    }
    assert {key: (figures[key].target, figures[key].met) for key in expected} == expected
    assert figures[pg_csv, "plugin/psql-copy at 1,000,000 posts"].line() == (
        f"- {pg_csv}, plugin/psql-copy at 1,000,000 posts: 1.20x (target ≤ 1.2x: met)")  # fmt: skip
    assert not [key for key in figures if "net of" in key[1]]  # only up to 100,000 posts


def test_ratios_to_the_floors_are_also_given_net_of_the_empty_export() -> None:
    data = []
    for size, plugin, empty, floor in ((5_000, 0.4, 0.3, 0.05), (100_000, 1.0, 0.3, 1.2), (1_000_000, 6.0, 0.3, 10.0)):
        data += [made_up("plugin", size, plugin, fmt="csv"), made_up("plugin-empty", size, empty, fmt="csv"),
                 made_up("sqlite-utils", size, floor, fmt="csv")]  # fmt: skip
    data += [made_up("plugin", 100_000, 1.0, disk="slow", fmt="csv")]  # no floor, no baseline on the slow disk
    figures = figures_of(data)
    lite_csv = "SQLite, CSV (seeded, warm cache, normal disk)"
    raw = figures[lite_csv, "plugin/sqlite-utils at 100,000 posts"]
    net = figures[lite_csv, "plugin/sqlite-utils net of plugin-empty's time at 100,000 posts"]
    assert (raw.value, raw.target) == (pytest.approx(1.0 / 1.2), None)  # targets are for the largest size
    assert (net.value, net.target) == (pytest.approx(0.7 / 1.2), None)
    at_5k = figures[lite_csv, "plugin/sqlite-utils net of plugin-empty's time at 5,000 posts"]
    assert at_5k.value == pytest.approx(2.0)
    assert figures[lite_csv, "plugin/sqlite-utils at 1,000,000 posts"].target == 0.7
    assert (lite_csv, "plugin/sqlite-utils net of plugin-empty's time at 1,000,000 posts") not in figures
    # The largest size at most 100,000: its net figure carries the target, its raw one is the targeted figure.
    small = figures_of([m for m in data if m.size <= 100_000 and m.disk == "normal"])
    assert small[lite_csv, "plugin/sqlite-utils net of plugin-empty's time at 100,000 posts"].met is True
    assert [key for key in small if key[1] == "plugin/sqlite-utils at 100,000 posts"] == [
        (lite_csv, "plugin/sqlite-utils at 100,000 posts")]  # fmt: skip
    assert not [key for key in figures if "slow disk" in key[0] and "net of" in key[1]]


def test_rss_over_the_empty_export_is_checked_at_every_size() -> None:
    data = []
    for size in (5_000, 100_000):
        data += [made_up("plugin-empty", size, 0.3, rss=50.0), made_up("plugin", size, 1.0, rss=55.0),
                 made_up("plugin-checksums", size, 1.0, rss=66.5 if size == 100_000 else 60.0),
                 made_up("plugin", size, 2.0, rss=58.0, disk="slow")]  # fmt: skip
    figures = figures_of(data)
    for size in ("5,000", "100,000"):
        plugin = figures[LITE_JSON, f"plugin peak RSS minus plugin-empty's at {size} posts"]
        assert (plugin.value, plugin.target, plugin.met, plugin.unit) == (5.0, 16.0, True, "MB")
    missed = figures[LITE_JSON, "plugin-checksums peak RSS minus plugin-empty's at 100,000 posts"]
    assert (missed.value, missed.met) == (16.5, False)
    assert missed.line().endswith(": +16.5 MB (target ≤ 16 MB: **missed**)")
    assert figures[LITE_JSON, "plugin-checksums peak RSS minus plugin-empty's at 5,000 posts"].met is True
    slow_json = "SQLite, JSON (seeded, warm cache, slow disk)"
    slow = figures[slow_json, "plugin peak RSS minus plugin-empty's at 5,000 posts"]
    assert slow.value == 8.0  # against the empty export on the normal disk
    alone = figures_of([made_up("plugin", 500, 1.0)])
    assert not [key for key in alone if "plugin-empty" in key[1]]


def test_the_whole_export_is_reported_against_the_empty_export_and_the_stored_size() -> None:
    data = []
    for size, stored in ((5_000, 2.0), (100_000, 40.0)):
        whole = {"selection_mb": stored, "processes_peak": 1}
        data += [
            made_up("plugin-empty", size, 0.3, pss_peak_mb=45.0, temp_peak_mb=0.1, **whole),
            *(made_up("plugin", size, 1.0, repeat=r, pss_peak_mb=pss, temp_peak_mb=temp, first_progress_s=first,
                      selection_mb=stored, processes_peak=2)
              for r, pss, temp, first in ((1, 60.0, stored * 0.9, 0.5), (2, 58.0, stored * 1.5, 2.5),
                                          (3, 70.0, stored * 0.95, 0.7))),
            made_up("host", size, 3.0, pss_peak_mb=900.0, temp_peak_mb=stored * 2, first_progress_s=3.0, **whole),
            made_up("plugin", size, 2.0, disk="slow", pss_peak_mb=62.5, temp_peak_mb=stored * 1.1,
                    first_progress_s=1.9, **whole),  # no empty export on the slow disk: the normal disk's
        ]  # fmt: skip
    rows = {(row.disk, row.size): row for row in report.build_rows(data)}
    normal = rows["normal", 100_000]
    assert normal.pss_mb == {"host": 900.0, "plugin": 60.0, "plugin-empty": 45.0}  # medians
    assert normal.pss_over_empty_mb == {"host": 855.0, "plugin": 15.0}
    assert normal.temp_mb["plugin"] == pytest.approx(38.0) and normal.selection_mb == 40.0
    assert normal.temp_over_stored == {"host": 2.0, "plugin": pytest.approx(0.95), "plugin-empty": 0.0025}
    assert normal.first_progress_s == {"host": 3.0, "plugin": 0.7} and normal.processes["plugin"] == 2
    assert rows["slow", 100_000].pss_over_empty_mb == {"plugin": 17.5}
    figures = figures_of(data)
    expected = {
        (LITE_JSON, "plugin whole-export memory (PSS) minus plugin-empty's at 100,000 posts"): (15.0, 16.0, True),
        (LITE_JSON, "plugin temporary space over the selection's stored size at 100,000 posts"): (0.95, 1.0, True),
        (LITE_JSON, "plugin first progress line (a count above 0) at 100,000 posts"): (0.7, 2.0, True),
        (LITE_JSON, "plugin temporary space over skyarchive alone's at 100,000 posts"): (0.475, 1.0, True),
        (SLOW_JSON, "plugin whole-export memory (PSS) minus plugin-empty's at 100,000 posts"): (17.5, 16.0, False),
        (SLOW_JSON, "plugin temporary space over the selection's stored size at 5,000 posts"): (1.1, 1.0, False),
        (SLOW_JSON, "plugin first progress line (a count above 0) at 5,000 posts"): (1.9, 2.0, True),
        (LITE_JSON, "plugin whole-export memory (PSS) at 100,000 minus at 5,000 posts"): (0.0, None, None),
    }
    found = {key: (pytest.approx(figures[key].value), figures[key].target, figures[key].met) for key in expected}
    assert found == expected
    assert not [key for key in figures if key[1].startswith(("host", "plugin-empty")) and "whole-export" in key[1]]
    assert not [key for key in figures if key[0] == SLOW_JSON and "skyarchive alone's" in key[1]]  # no host there
    line = figures[SLOW_JSON, "plugin whole-export memory (PSS) minus plugin-empty's at 100,000 posts"].line()
    assert line.endswith(": +17.5 MB (target ≤ 16 MB: **missed**)")
    barely = report.Figure("T", "temporary space", 1.0042, target=1.0)  # missed by less than two decimals show
    assert barely.line() == "- T, temporary space: 1.0042x (target ≤ 1x: **missed**)"
    assert report.Figure("T", "t", 1.0, target=1.0).line() == "- T, t: 1.00x (target ≤ 1x: met)"
    text = report.render_markdown(meta(), report.summarise(data))
    assert (
        "| posts | contender | whole export MB (PSS) | minus plugin-empty's MB | processes | temp MB | "
        "selection stored MB | temp / stored | first progress s |"
    ) in text
    assert "| 100,000 | plugin | 60.0 | +15.0 | 2 | 38.00 | 40.00 | 0.95 | 0.70 |" in text
    assert "| 100,000 | plugin-empty | 45.0 | — | 1 | 0.10 | 40.00 | 0.00 | — |" in text
    assert "| 100,000 | plugin | 62.5 | +17.5 | 1 | 44.00 | 40.00 | 1.10 | 1.90 |" in text  # the slow disk's


SLOW_JSON = "SQLite, JSON (seeded, warm cache, slow disk)"


def test_the_chart_shows_the_whole_exports_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    import matplotlib.axes

    plotted: list[tuple[str, list[float]]] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, title, *a, **k: plotted.append((title, [])))
    whole = [made_up(c, size, 0.5, rss=50.0, pss_peak_mb=70.0) for c in ("host", "plugin") for size in (500, 5_000)]
    assert chart.render_chart(report.build_rows(whole), tmp_path / "whole.png") is None
    assert "Memory of the whole export: every process, PSS summed" in plotted[1][0]
    plotted.clear()
    older = [*whole[:3], made_up("plugin", 5_000, 0.5, rss=50.0)]  # a point without it: RSS for all
    assert chart.render_chart(report.build_rows(older), tmp_path / "older.png") is None
    assert plotted[1][0].startswith("Peak RSS of the export process")


def test_an_archive_says_its_selections_stored_size() -> None:
    archive = {"backend": SQLITE, "size": 500, "media": False, "rows": "seed", "sqlite": "/w/a.db", "seed_s": None,
               "selection_bytes": 3 << 20, "selection_s": 0.2}  # fmt: skip
    assert report.render_archive(archive) == (
        "SQLite, seeded, 500 posts: `seed` into `/w/a.db`; the selection stored in 3.00 MB (one SQLite copy of its "
        "posts)"
    )


def test_the_archiver_with_the_plugin_is_compared_with_the_host() -> None:
    def runs(disk: str, host: tuple[int, float], plugin: tuple[int, float]) -> list[Measurement]:
        archiver = {"host": host, "plugin": plugin}
        return [made_up(c, 1_000_000, 1.0, disk=disk, archiver_attempts=60, archiver_errors=errors,
                        archiver_longest_wait_s=wait) for c, (errors, wait) in archiver.items()]  # fmt: skip

    figures = figures_of([*runs("normal", (4, 5.2), (0, 0.3)), *runs("slow", (0, 0.01), (1, 5.1))])
    at = "during the plugin's export at 1,000,000 posts"
    normal, slow = LITE_JSON, "SQLite, JSON (seeded, warm cache, slow disk)"
    errors, wait = figures[normal, f"archiver errors {at}"], figures[normal, f"archiver longest wait {at}"]
    assert (errors.value, errors.target, errors.met, wait.value, wait.target, wait.met) == (0, 4, True, 0.3, 5.2, True)
    assert errors.line().endswith(": 0 (target ≤ the host's 4: met)")
    assert wait.line().endswith(": 0.300 s (target ≤ the host's 5.200 s: met)")
    assert (figures[slow, f"archiver errors {at}"].met, figures[slow, f"archiver longest wait {at}"].met) == (
        False, False)  # fmt: skip
    assert not [key for key in figures_of([made_up("host", 9, 1.0)]) if "archiver" in key[1]]


def test_markdown_has_one_table_per_measured_combination() -> None:
    cold = {"cache": "cold", "resident_before": 0.004}
    data = [
        made_up("host", 500, 0.5, lock_longest_s=0.2, archiver_attempts=5, archiver_errors=1,
                archiver_longest_wait_s=5.01, temp_peak_mb=0.0, **cold),
        made_up("plugin", 500, 0.4, lock_longest_s=0.1, archiver_attempts=5, archiver_errors=0,
                archiver_longest_wait_s=0.02, temp_peak_mb=3.25, **cold),
        made_up("host", 500, 0.9, layout="oldest-first", disk="slow"),
        made_up("host", 500, 0.5),
    ]  # fmt: skip
    text = report.render_markdown(meta(layouts=["seeded", "oldest-first"], caches=["warm", "cold"],
                                       disks=["normal", "slow"], archiver={"did": "x"}, notes=["Slow disk: so."]),
                                  report.summarise(data))  # fmt: skip
    titles = [line for line in text.splitlines() if line.startswith("### ") and "Derived" not in line]
    assert titles == ["### SQLite, JSON (seeded, warm cache, normal disk)",
                      "### SQLite, JSON (seeded, cold cache, normal disk)",
                      "### SQLite, JSON (oldest-first, warm cache, slow disk)"]  # fmt: skip
    assert (
        "| posts | host s | host MB | plugin s | plugin MB | plugin posts/s | plugin/host | read txn plugin/host "
        "(≤ 1) | host read txn s | plugin read txn s | host archiver errors | plugin archiver errors | host "
        "archiver wait s | plugin archiver wait s | cached before % | identical |"
    ) in text
    assert (
        "| 500 | 0.500 | 50.0 | 0.400 | 50.0 | 1,250 | 0.80 | 0.50 | 0.200 | 0.100 | 1 | 0 | 5.010 | 0.020 | 0.4 | "
        "yes |" in text
    )
    assert "| 500 | plugin | — | — | — | 3.25 | — | — | — |" in text  # the temporary space, in the second table
    assert "| posts | host s | host MB | identical |" in text  # the warm table shows no empty column
    assert "- Layouts: seeded, oldest-first; page cache: warm, cold; disks: normal, slow; archiver: yes" in text
    assert "- Slow disk: so." in text
    archive = {"backend": SQLITE, "size": 500, "media": False, "layout": "oldest-first", "rows": "seed",
               "sqlite": "/w/a.db", "seed_s": None, "layout_sqlite": "/w/a-oldest.db", "layout_made": "made so",
               "layout_s": 0.5}  # fmt: skip
    made = "SQLite, oldest-first, 500 posts: `seed` into `/w/a.db`, then made so into `/w/a-oldest.db` (0.5 s)"
    assert report.render_archive(archive) == made


def test_chart_tells_every_series_apart(tmp_path: Path) -> None:
    assert len({chart.COLOURS[name] for name in BY_NAME}) == len(BY_NAME)  # a colour per contender
    assert len(set(chart.MARKERS.values())) == len(chart.MARKERS) and set(chart.MARKERS) == set(contenders.BACKENDS)
    assert len(set(chart.LINESTYLES.values())) == len(contenders.FORMATS)
    spare = chart.styles(["host", "new-a", "new-b"], chart.COLOURS, chart.SPARE_COLOURS)
    assert spare["host"] == chart.COLOURS["host"] and len(set(spare.values())) == 3
    assert not set(spare.values()) - {spare["host"]} & set(chart.COLOURS.values())
    cold_only = report.build_rows([made_up("host", 500, 0.5, cache="cold"), made_up("host", 500, 0.5, disk="slow")])
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    assert "warm cache" in (chart.render_chart(cold_only, tmp_path / "none.png") or "")
    assert not (tmp_path / "none.png").exists()
    rows = report.build_rows([made_up(c, size, 0.5) for c in ("host", "plugin") for size in (500, 5_000)])
    assert chart.render_chart(rows, tmp_path / "chart.png") is None and (tmp_path / "chart.png").stat().st_size > 0


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


# -- archives ------------------------------------------------------------------------------------------

OLDEST_POSTS = 200


def rows_of(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(sql).fetchall()
    conn.close()
    return rows


def posts_db(path: Path, posts: dict[str, tuple[int, int]]) -> Path:
    """A SQLite file with a posts table: for each DID, (how many posts, characters of text each)."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE posts (uri TEXT PRIMARY KEY, did TEXT NOT NULL, text TEXT)")
        for did, (count, chars) in posts.items():
            conn.executemany("INSERT INTO posts VALUES (?, ?, ?)",
                             [(f"at://{did}/{n}", did, "é" * chars) for n in range(count)])  # fmt: skip
    conn.close()
    return path


def test_the_selections_stored_size(tmp_path: Path) -> None:
    db = posts_db(tmp_path / "archive.db", {"did:a": (200, 2000), "did:b": (10, 10)})  # 4,000 bytes of text each
    a, b = archives.stored_selection(db, "did:a"), archives.stored_selection(db, "did:b")
    assert 200 * 4000 <= a <= 200 * 4000 * 1.2 and a % 4096 == 0, a  # its rows, in whole pages
    assert b <= 3 * 4096 < a < db.stat().st_size, (b, a)  # the selection only
    assert archives.stored_selection(db, "did:nobody") <= 2 * 4096
    assert sorted(path.name for path in tmp_path.iterdir()) == ["archive.db"]  # no scratch left behind


def test_the_selections_stored_size_is_kept_beside_the_archive(tmp_path: Path) -> None:
    db, lines = posts_db(tmp_path / "archive.db", {"did:a": (50, 100)}), []
    size, took = archives.cached_selection(db, "did:a", log=lines.append)
    assert size == archives.stored_selection(db, "did:a") and took is not None and len(lines) == 1
    assert archives.cached_selection(db, "did:a", log=lines.append) == (size, None) and len(lines) == 1
    assert json.loads((tmp_path / "archive.selection.json").read_text())["bytes"] == size
    other = posts_db(tmp_path / "other.db", {"did:a": (500, 100)})
    os.replace(other, db)  # the archive made again
    again, took = archives.cached_selection(db, "did:a", log=lines.append)
    assert again > size and took is not None and len(lines) == 2
    assert archives.cached_selection(db, "did:b", log=lines.append)[1] is not None  # another DID
    (tmp_path / "archive.selection.json").write_text("[1]")  # not a cache it can read: measured again
    assert archives.cached_selection(db, "did:a", log=lines.append)[1] is not None and len(lines) == 4


@pytest.mark.slow
def test_the_oldest_first_archive(tmp_path: Path) -> None:
    from skyarchive.export import media_hashes

    lines: list[str] = []
    case = Case(SQLITE, OLDEST_POSTS, layout=contenders.OLDEST_FIRST)
    archive, made = archives.ensure_archive(case, workdir=tmp_path, did=DEFAULT_DID, python=sys.executable, pg=PG,
                                            log=lines.append)  # fmt: skip
    seeded, oldest = tmp_path / f"archive-{OLDEST_POSTS}.db", tmp_path / f"archive-{OLDEST_POSTS}-oldest.db"
    assert (Path(archive.location), made["sqlite"], made["layout_sqlite"]) == (oldest, str(seeded), str(oldest))
    assert made["seed_s"] is not None and made["layout_s"] is not None and archives.is_complete(archive, DEFAULT_DID)
    assert "ORDER BY p.created_at ASC, p.uri DESC" in made["layout_sql"] and "ANALYZE" in made["layout_made"]
    # Inserted oldest first: rowid order is the export's order reversed.
    export_order = rows_of(oldest, "SELECT uri FROM posts ORDER BY created_at DESC, uri ASC")
    assert rows_of(oldest, "SELECT uri FROM posts ORDER BY rowid") == export_order[::-1]
    assert rows_of(seeded, "SELECT uri FROM posts ORDER BY rowid") != export_order[::-1]
    # The same posts of the same DID; every 4th row (seeded rowid) without an embed now has images.
    columns = "uri, cid, did, text, created_at, indexed_at, like_count, reply_parent, labels, archived_at"
    same = f"SELECT {columns} FROM posts ORDER BY uri"
    assert rows_of(oldest, same) == rows_of(seeded, same)
    assert rows_of(oldest, "SELECT DISTINCT did FROM posts") == [(DEFAULT_DID,)]
    chosen = {uri for (uri,) in rows_of(seeded, "SELECT uri FROM posts WHERE rowid % 4 = 0 AND embed_type IS NULL")}
    images = {row[0]: row for row in rows_of(oldest, "SELECT uri, embed_data, has_media, cid FROM posts "
                                                     "WHERE embed_type = 'images'")}  # fmt: skip
    assert set(images) == chosen and 0.18 <= len(chosen) / OLDEST_POSTS <= 0.25
    for _, embed_data, has_media, cid in images.values():
        embed = json.loads(embed_data)
        (image,) = embed["images"]
        assert set(image) == {"alt", "aspectRatio", "fullsize", "thumb"} and has_media == 1
        assert 60 <= len(image["alt"]) <= 500 and set(image["aspectRatio"]) == {"height", "width"}
        blob = "bafkrei" + cid[7:]
        assert image["fullsize"] == f"https://cdn.bsky.app/img/feed_fullsize/plain/{DEFAULT_DID}/{blob}@jpeg"
        assert image["thumb"] == f"https://cdn.bsky.app/img/feed_thumbnail/plain/{DEFAULT_DID}/{blob}@jpeg"
        assert media_hashes(embed) == [blob]  # the host finds the image's hash as in a real archive
    embeds = "SELECT uri, embed_type, embed_data, has_media FROM posts"
    before, after = ({row[0]: row for row in rows_of(db, embeds)} for db in (seeded, oldest))
    assert {uri: row for uri, row in after.items() if uri not in chosen} == {
        uri: row for uri, row in before.items() if uri not in chosen}  # fmt: skip
    assert rows_of(oldest, "SELECT count(*) FROM media") == [(0,)]
    assert rows_of(oldest, "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'posts'")[0][0] > 0  # ANALYZE ran
    assert not (tmp_path / f"archive-{OLDEST_POSTS}-oldest.partial.db").exists()
    _, again = archives.ensure_archive(case, workdir=tmp_path, did=DEFAULT_DID, python=sys.executable, pg=PG,
                                       log=lines.append)  # fmt: skip
    assert (again["seed_s"], again["layout_s"]) == (None, None) and lines[-1].endswith(": reused (200 posts)")


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


SKYARCHIVE = {"host": "skyarchive", "plugin": "export_batching", "plugin-checksums": "export_batching",
              "plugin-empty": "export_batching"}  # fmt: skip


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
        empty = m["contender"] == "plugin-empty" and m["format"] == "jsonl"  # no posts: no lines
        assert m["rss_mb"] > 0 and (m["output_bytes"] > 0 or empty)
        expected = SKYARCHIVE.get(m["contender"])
        assert m["exporter"] is None if expected is None else m["exporter"].startswith(expected)
        if not m["media"]:
            assert m["media_files"] is None
        else:  # plugin-empty exports no post, so no media file
            assert (m["media_files"] == 0) if m["contender"] == "plugin-empty" else m["media_files"] > 0
    assert [(r["format"], r["media"], r["identical"]) for r in results["rows"]] == [
        (fmt, media, True) for media in (False, True) for fmt in ("json", "csv", "jsonl")]  # fmt: skip


@linux_only
def test_tiny_run_measures_the_whole_export(tiny_run: tuple[Path, list[str], dict[str, Any]]) -> None:
    out, results = tiny_run[0].parent / "out", tiny_run[2]
    stored = {a["size"]: a["selection_bytes"] for a in results["meta"]["archives"]}
    assert len(stored) == 2 and all(size > 0 for size in stored.values())
    for m in results["measurements"]:
        assert m["temp_peak_mb"] >= 0 and m["measure_cpu_s"] >= 0, m
        assert m["selection_mb"] == pytest.approx(stored[m["size"]] / (1 << 20))
        if m["exporter"]:  # (sqlite3 may be done before the first poll)
            assert m["pss_peak_mb"] > 0 and m["pss_reads"] >= 1 and m["processes_peak"] >= 1, m
            assert 0 < m["pss_read_peak_mb"] <= m["pss_peak_mb"], m
        # skyarchive prints "export: N/N posts (100%)" at the end; the empty export's N is 0; the peers print none.
        counts = m["contender"] in ("host", "plugin", "plugin-checksums")
        assert (m["first_progress_s"] is not None) == counts, m
        assert not counts or 0 < m["first_progress_s"] <= m["wall_s"], m
    for row in results["rows"]:
        assert set(row["pss_over_empty_mb"]) == set(row["pss_mb"]) - {"plugin-empty"} and row["selection_mb"] > 0
        assert row["temp_over_stored"].keys() == row["temp_mb"].keys() and "plugin" in row["first_progress_s"]
    figures = {f["what"] for f in results["derived"]}
    for what in ("whole-export memory (PSS) minus plugin-empty's", "temporary space over the selection's stored size",
                 "first progress line (a count above 0)"):  # fmt: skip
        assert f"plugin {what} at {SIZE} posts" in figures
    text = (out / run.RESULTS_MD).read_text(encoding="utf-8")
    assert "| posts | contender | whole export MB (PSS) | minus plugin-empty's MB | processes | temp MB |" in text
    assert "MB (one SQLite copy of its posts)" in text


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
    kept = workdir / "runs" / f"sqlite-{SIZE}-seeded-warm-normal-json-fake-plugin-r1"
    assert list((workdir / "runs").iterdir()) == [kept]


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


#: The new conditions at once: both layouts, both cache states, the slow disk, the archiver (PostgreSQL too when
#: reachable: it skips the cold cache and the archiver).
CONDITIONS = ["--layouts", "seeded,oldest-first", "--cache", "warm,cold", "--slow-disk", "20", "--archiver",
              "--sizes", "300", "--formats", "json", "--contenders", "host,plugin,plugin-empty",
              "--media-posts", "0"]  # fmt: skip
PLANNED = (("host", "normal"), ("host", "slow"), ("plugin", "normal"), ("plugin", "slow"), ("plugin-empty", "normal"))
NEW_FIELDS = ("layout", "cache", "disk", "resident_before", "temp_peak_mb", "lock_s", "lock_longest_s", "lock_polls",
              "read_txn_s", "read_txn_total_s", "read_txn_polls", "archiver_attempts", "archiver_errors",
              "archiver_longest_wait_s")  # fmt: skip


@pytest.fixture(scope="module")
def conditions_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """One run with every new option; also what each measured command was given (cwd, env, lock file)."""
    reason = slowdisk_reason()
    if reason is not None:
        pytest.skip(reason)
    root, calls = tmp_path_factory.mktemp("conditions"), []
    real = run.measure_command

    def recording(command: Any, **kwargs: Any) -> Any:
        calls.append({"cwd": kwargs["cwd"], "env": kwargs.get("env") or {}, "lock": kwargs.get("sqlite_lock")})
        return real(command, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "measure_command", recording)
        argv = [*CONDITIONS, "--repeat", "1", "--workdir", str(root / "work"), "--out", str(root / "out")]
        assert run.main(argv) == 0
    return root, json.loads((root / "out" / run.RESULTS_JSON).read_text(encoding="utf-8")), calls


def slowdisk_reason() -> str | None:
    from benchmarks import slowdisk

    return slowdisk.available()


@linux_only
@pytest.mark.slow
def test_conditions_run_measures_every_combination(
    conditions_run: tuple[Path, dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, results, _ = conditions_run
    backends = {m["backend"] for m in results["measurements"]}
    expected = {
        (backend, layout, cache, contender, disk)
        for backend in backends
        for layout in ("seeded", "oldest-first")
        for cache in (("warm", "cold") if backend == SQLITE else ("warm",))
        for contender, disk in PLANNED
    }
    seen = [(m["backend"], m["layout"], m["cache"], m["contender"], m["disk"]) for m in results["measurements"]]
    assert SQLITE in backends and sorted(seen) == sorted(expected)
    meta_ = results["meta"]
    assert (meta_["layouts"], meta_["caches"], meta_["disks"], meta_["slow_disk_ms"]) == (
        ["seeded", "oldest-first"], ["warm", "cold"], ["normal", "slow"], 20.0)  # fmt: skip
    assert meta_["archiver"]["did"] == contenders.ARCHIVER_DID
    subjects = ["Cold cache:", "Layouts:", "Read transactions", "Slow disk:", "Archiver:"]
    assert [note.split(" ")[0] for note in meta_["notes"]] == [subject.split(" ")[0] for subject in subjects]
    assert ("cold cache on PostgreSQL" in meta_["skipped"]) == (POSTGRESQL in backends)
    assert [a["layout"] for a in meta_["archives"] if a["backend"] == SQLITE] == ["seeded", "oldest-first"]
    tables = {(r["backend"], r["layout"], r["cache"], r["disk"]) for r in results["rows"]}
    assert len(tables) == len(results["rows"]) == len({(*k[:3], k[4]) for k in expected})
    assert all(row["identical"] for row in results["rows"])  # the same bytes on both disks, warm or cold


@linux_only
@pytest.mark.slow
def test_conditions_run_fields_are_sane(conditions_run: tuple[Path, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, results, _ = conditions_run
    for m in results["measurements"]:
        assert set(NEW_FIELDS) <= set(m), m
        assert m["temp_peak_mb"] >= 0 and m["exporter"].startswith(SKYARCHIVE[m["contender"]])
        if m["backend"] == SQLITE:
            assert m["resident_before"] <= run.COLD_MAX if m["cache"] == "cold" else m["resident_before"] >= 0.99, m
            assert 0 <= m["lock_longest_s"] <= m["lock_s"] <= m["wall_s"], m
            assert m["lock_polls"] >= m["wall_s"] / (measure.LOCK_POLL_MS / 1000) / 4, m
            assert m["archiver_attempts"] >= 1 and m["archiver_errors"] == 0, m  # 300 posts: no 5 s lock
            assert 0 < m["archiver_longest_wait_s"] < 5, m
            assert (m["read_txn_s"], m["read_txn_total_s"], m["read_txn_polls"]) == (None, None, None)
        else:
            assert 0 <= m["read_txn_s"] <= m["read_txn_total_s"] <= 2 * m["wall_s"] and m["read_txn_polls"] >= 1, m
            assert (m["lock_s"], m["resident_before"], m["archiver_attempts"]) == (None, None, None)
    empty = [m for m in results["measurements"] if m["contender"] == "plugin-empty"]
    assert empty and all(m["output_bytes"] < 10 and m["disk"] == "normal" for m in empty)  # "[]\n", not compared
    # Some SHARED lock was seen: the plugin's snapshot holds it for the count and the posts.
    assert max(m["lock_longest_s"] for m in results["measurements"] if m["backend"] == SQLITE) > 0
    figures = {f["what"] for f in results["derived"]}
    assert {"plugin peak RSS minus plugin-empty's at 300 posts", "archiver errors during the plugin's export at 300 "
            "posts", "archiver longest wait during the plugin's export at 300 posts"} <= figures  # fmt: skip


@linux_only
@pytest.mark.slow
def test_conditions_run_wires_the_disk_the_lock_and_the_archiver(
    conditions_run: tuple[Path, dict[str, Any], list[dict[str, Any]]],
) -> None:
    root, results, calls = conditions_run
    workdir = root / "work"
    assert len(calls) == len(results["measurements"])
    for call in calls:
        name, env = call["cwd"].name, call["env"]
        slow, sqlite = "-slow-" in name, name.startswith("sqlite-")
        assert ("SLOWDISK_PREFIX" in env) == slow, name
        if slow:
            assert env["SLOWDISK_PREFIX"] == str((call["cwd"] / "exports").resolve())
            assert env["SLOWDISK_PER_CALL_US"] == "20000" and "slowdisk-" in env["LD_PRELOAD"]
        layout = "-oldest" if "oldest-first" in name else ""
        assert call["lock"] == (workdir / f"archive-300{layout}.db" if sqlite else None), name
    for layout in ("", "-oldest"):  # the archiver removed its posts: the archives are still complete
        db = workdir / f"archive-300{layout}.db"
        assert rows_of(db, "SELECT count(*), count(DISTINCT did) FROM posts") == [(300, 1)]
    text = (root / "out" / run.RESULTS_MD).read_text(encoding="utf-8")
    assert "### SQLite, JSON (oldest-first, cold cache, slow disk)" in text and "cached before %" in text
    assert "plugin read txn s" in text and "plugin archiver errors" in text and "| temp / stored |" in text
