"""Run one command and report its wall time, its memory (the command's own, and its whole process tree's), its
temporary disk space, its first progress line and its SQLite lock:
``python measure.py --report FILE [--sqlite-lock DBFILE] -- CMD...``.

The command inherits this process's stdin, stdout, stderr and environment (the harness points stdout and stderr
at files). The report (JSON, written to FILE after the command ends) holds:

- ``wall_s``: ``time.perf_counter()`` from just before the spawn to the moment the command exits;
  ``started_monotonic``, ``ended_monotonic``: the same two moments as ``time.monotonic()`` (CLOCK_MONOTONIC,
  which every process on Linux shares: the harness lays the archiver's attempts over them);
- ``vmhwm_kb``: the largest ``VmHWM`` read from ``/proc/<pid>/status`` while it ran (polled every 20 ms,
  and woken at once by a pidfd when it exits, so the poll adds no latency to ``wall_s`` beyond the poll that is
  under way);
- ``ru_maxrss_kb``: the command's own ``ru_maxrss``, from ``os.wait4`` (covers the last 20 ms too);
- ``floor_kb``: this wrapper's own ``VmHWM`` when it spawned the command;
- ``pss_peak_kb``: the whole export's memory: the largest, over the polls (every 20 ms), of the sum of the
  proportional set sizes (``Pss`` of ``/proc/<pid>/smaps_rollup``) of the command and of every descendant alive
  at that poll (found by their parent pids: see Tree), so that pages two of them share count once; read within
  a share of the time, and carried from one reading to the next by the RSS counters (see Sampler). None if no
  reading succeeded. ``pss_read_peak_kb``: the same over the polls that read every process (exact, never
  more); ``pss_reads``: how many polls read some; ``pss_read_s``: the seconds those readings took in all;
  ``processes_peak``: the most processes of the tree alive at one poll (2: the command and one child);
- ``temp_peak_kb``: the most temporary disk space the tree held at once: the sum of ``st_blocks * 512`` of the
  regular files its processes have open that are unnamed (deleted, or made with ``O_TMPFILE``: ``readlink`` of
  ``/proc/<pid>/fd/N`` ends with `` (deleted)``) or inside a directory named ``export-batching-*`` (the plugin's
  copy of the selection and its spool), each file (``st_dev``, ``st_ino``) once however many processes have it
  open; polled every 20 ms. SQLite's own temporary files (sort spills) are unnamed and count too;
- ``first_progress_s``: seconds from the spawn to the first poll that saw a progress line with a count above 0
  (``export: 36000/200000 posts (18%)``) in the command's standard error, read back from that file (late by a
  poll at most: 20 ms, or 5 ms with ``--sqlite-lock``); None if there was none, or if standard error is not a
  regular file (``stderr_watched``: whether it was), see ProgressWatch;
- ``measure_cpu_s``: the CPU time (user and system) this wrapper spent while the command ran: what the polling
  cost the machine;
- with ``--sqlite-lock DBFILE``: ``lock_s``, ``lock_longest_s``: how long in all, and at most at a stretch, the
  command held a POSIX read lock on DBFILE's SHARED range (bytes 1073741826 to 1073742335, PENDING_BYTE + 2
  and 510 bytes on: SQLite's SHARED lock, which a writer's commit must wait for in rollback-journal mode), from
  ``/proc/locks`` polled every 5 ms (a hold starts at the first poll that sees it and ends at the first that
  does not, or at the exit); ``lock_polls``, how many polls that took. Without it the three are None.
  ``/proc/locks`` names the process (not the thread) that holds a POSIX lock, and the file as
  ``MAJOR:MINOR:INODE`` with the device numbers in hex (``fd:01:1234567``).

Why a wrapper, and why it is kept small: on Linux ``exec`` carries the high-water mark of the address
space it replaces into ``ru_maxrss``, so a command spawned by a big process (the harness) reports at
least that process's peak. Spawned from here instead, ``ru_maxrss`` is at least ``floor_kb`` (a bare
interpreter: the harness runs this file compiled, as a ``.pyc``, with ``-I -S``, since compiling it would peak
higher than running it; it imports nothing beyond ``os``, ``sys``, ``time``, ``select`` and ``stat`` (which
``os`` imports) before the spawn, and spawns with ``os.posix_spawnp``). ``VmHWM`` of the command's own address
space has no such floor; the harness reports ``max(vmhwm_kb, ru_maxrss_kb)``. Neither covers the processes the
command starts: ``pss_peak_kb`` does.

Exit status: the command's (or 128 + signal number); 2 for a usage error.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import time

TYPE_CHECKING = False  # typing is not imported before the spawn (see above); mypy takes this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable

POLL_MS = 20
LOCK_POLL_MS = 5
#: SQLite's SHARED lock (os_unix.c): a read lock on SHARED_SIZE bytes from SHARED_FIRST = PENDING_BYTE + 2.
SHARED_FIRST, SHARED_SIZE = 0x40000000 + 2, 510
#: ru_maxrss is in kB on Linux, in bytes on macOS.
RU_MAXRSS_PER_KB = 1024 if sys.platform == "darwin" else 1
#: The share of one core that reading the tree's proportional set sizes may take (see Sampler).
PSS_SHARE = 0.02
#: The plugin's private directories (export_batching_plugin.spooldir.PREFIX): what is in them is temporary space.
TEMP_DIR = "export-batching-"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
USAGE = "usage: measure.py --report FILE [--sqlite-lock DBFILE] -- COMMAND [ARG...]"


def parse_vmhwm_kb(status_text: str) -> int | None:
    """The ``VmHWM`` value in kB from the text of ``/proc/<pid>/status``, or None when absent.

    >>> parse_vmhwm_kb("Name:\\tpython3\\nVmHWM:\\t   10240 kB\\nVmRSS:\\t 9000 kB\\n")
    10240
    """
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    return None


def read_vmhwm_kb(pid: int | str) -> int | None:
    """``VmHWM`` of a live process in kB; None once it has exited (a zombie has no address space)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return parse_vmhwm_kb(status.read())
    except OSError:
        return None


def file_id(path: str) -> str:
    """How ``/proc/locks`` names the file at ``path``: ``MAJOR:MINOR:INODE``, the device numbers in hex."""
    st = os.stat(path)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def parse_locks(text: str) -> list[tuple[str, str, int, str, int, int]]:
    """The locks held in the text of ``/proc/locks``: ``(class, READ|WRITE, pid, file id, start, end)``.

    Waiters (``->`` lines) hold nothing and are left out; ``EOF`` as the end is -1; a line that does not
    parse is skipped.

    >>> parse_locks("1: POSIX  ADVISORY  READ 4242 fd:01:1234567 1073741826 1073742335\\n")
    [('POSIX', 'READ', 4242, 'fd:01:1234567', 1073741826, 1073742335)]
    """
    locks = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":
            continue
        try:
            end = -1 if fields[7] == "EOF" else int(fields[7])
            locks.append((fields[1], fields[3], int(fields[4]), fields[5], int(fields[6]), end))
        except ValueError:
            continue
    return locks


def holds_shared(text: str, pid: int, file: str) -> bool:
    """Whether ``pid`` holds a POSIX read lock on the SHARED range of ``file`` (a file id), per ``/proc/locks``."""
    last = SHARED_FIRST + SHARED_SIZE - 1
    return any(
        kind == "POSIX" and mode == "READ" and holder == pid and where == file and start <= last
        and (end == -1 or end >= SHARED_FIRST)
        for kind, mode, holder, where, start, end in parse_locks(text)
    )  # fmt: skip


class Holds:
    """Stretches of time during which something was seen held: fed ``(held, now)`` at each poll."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.total = self.longest = 0.0

    def see(self, held: bool, now: float) -> None:
        """A poll at ``now`` saw it held, or not."""
        if held and self.since is None:
            self.since = now
        elif not held and self.since is not None:
            self.total += now - self.since
            self.longest = max(self.longest, now - self.since)
            self.since = None


def is_temporary(target: str) -> bool:
    """Whether a file the command has open (``target``: the ``readlink`` of its ``/proc/<pid>/fd/N``) is temporary
    space: unnamed (deleted, or made with ``O_TMPFILE``), or inside a directory named ``export-batching-*``.

    >>> [is_temporary(t) for t in ("/tmp/x (deleted)", "/tmp/#123 (deleted)", "/tmp/export-batching-ab12cd34/copy",
    ...                            "/out/posts.json", "pipe:[123]", "/memfd:spool (deleted)")]
    [True, True, True, False, False, False]
    """
    if not target.startswith("/") or target.startswith("/memfd:"):
        return False  # pipes, sockets, anon inodes; memfd is memory (in the PSS)
    return target.endswith(" (deleted)") or target.rsplit("/", 1)[-1].startswith("#") or f"/{TEMP_DIR}" in target


def temporary_files(pid: int | str, found: dict[tuple[int, int], int]) -> None:
    """Add to ``found`` the disk space (``st_blocks * 512``) of each regular file that ``pid`` has open and that is
    temporary (see is_temporary), by ``(st_dev, st_ino)``: a file open in several processes counts once."""
    folder = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(folder)
    except OSError:
        return  # gone
    for fd in descriptors:
        try:
            if not is_temporary(os.readlink(f"{folder}/{fd}")):
                continue
            st = os.stat(f"{folder}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if stat.S_ISREG(st.st_mode):
            found[st.st_dev, st.st_ino] = st.st_blocks * 512


def parse_pss_kb(rollup: bytes) -> int | None:
    """The ``Pss`` value in kB from the text of ``/proc/<pid>/smaps_rollup``, or None when absent.

    >>> parse_pss_kb(b"55d0-7ffd ---p 00000000 00:00 0   [rollup]\\nRss:  1696 kB\\nPss:  246 kB\\nPss_Anon: 116 kB\\n")
    246
    """
    at = rollup.find(b"\nPss:")
    fields = rollup[at + 5 : rollup.find(b"\n", at + 5)].split() if at >= 0 else []
    return int(fields[0]) if fields and fields[0].isdigit() else None


def read_pss_kb(pid: int) -> int | None:
    """The proportional set size of a live process in kB; None once it has exited (or without smaps_rollup)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            return parse_pss_kb(rollup.read())
    except OSError:
        return None


def read_rss_kb(pid: int) -> int:
    """The resident set size of a process in kB from ``/proc/<pid>/statm`` (cheap: counters, no page walk); 0 once
    it has exited (a zombie's is 0)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def parse_ppid(stat_text: bytes) -> int | None:
    """The parent pid from the text of ``/proc/<pid>/stat`` (after the command name, which may hold anything).

    >>> parse_ppid(b"4242 (python3 (x) y) S 4241 4242 4200 0 -1")
    4241
    """
    fields = stat_text[stat_text.rfind(b")") + 1 :].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def last_pid() -> bytes:
    """The last pid the kernel gave out (``/proc/loadavg``'s last field; a new thread takes one too)."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            return loadavg.read().rsplit(None, 1)[-1]
    except (OSError, IndexError):
        return b""


class Tree:
    """The command and every process it starts (its descendants), by the parent pid of each process in ``/proc``.

    ``/proc/<pid>/task/*/children`` needs CONFIG_PROC_CHILDREN, which not every kernel has; so each process's
    parent is read once, from ``/proc/<pid>/stat``, when it is first seen, and ``/proc`` is listed again only when
    a pid has been given out since (``/proc/loadavg``): a poll where nothing was started costs one small read. A
    process stays in the tree once seen there, even if its parent exits first (it is then another's child).
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.parents: dict[int, int | None] = {}  # every process seen: its parent when first seen
        self.members = [root]
        self.last = b""

    def pids(self) -> list[int]:
        """The command and its descendants alive at the last listing (the command first)."""
        last = last_pid()
        if last != self.last or not last:
            self.last = last
            self._rescan()
        return self.members

    def _rescan(self) -> None:
        try:
            listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        except OSError:
            return
        for gone in self.parents.keys() - listed:
            del self.parents[gone]
        for pid in sorted(listed - self.parents.keys()):
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat_file:
                    self.parents[pid] = parse_ppid(stat_file.read())
            except OSError:
                continue  # gone meanwhile
        children: dict[int | None, list[int]] = {}
        for pid, parent in self.parents.items():
            children.setdefault(parent, []).append(pid)
        members = [self.root, *(pid for pid in self.members if pid in self.parents and pid != self.root)]
        seen, todo = set(members), list(members)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in seen:
                    seen.add(child)
                    members.append(child)
                    todo.append(child)
        self.members = members


class ProgressWatch:
    """The first progress line with a count above 0 (``export: 36000/200000 posts (18%)``) in what the command
    writes to its standard error, read back from that file while it runs, when it is a regular file (as the
    harness makes it): the command's standard error stays what it was given, with no pipe or thread between.

    The file is opened again for reading (``/proc/self/fd/2``: its own offset, so the command's is left alone);
    ``poll(now)`` reads what was written since the last poll (up to 256 KiB at a time) and remembers ``now`` at
    the first such line. ``close()`` when done.
    """

    CHUNK = 256 << 10

    def __init__(self, fd: int = 2) -> None:
        self.pending = b""
        self.seen_at: float | None = None
        self.reader = -1
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self.offset = os.lseek(fd, 0, os.SEEK_CUR)  # what was there before the command is not its own
                self.reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.reader = -1
        self.watched = self.reader >= 0

    def poll(self, now: float) -> None:
        """Read what was written since the last poll; on the first progress line above 0, remember ``now``."""
        if self.reader < 0:
            return
        try:
            data = os.pread(self.reader, self.CHUNK, self.offset)
        except OSError:
            self.close()
            return
        self.offset += len(data)
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()[-4096:]  # an unfinished line (a progress line is short)
        if any((progress_count(line) or 0) > 0 for line in lines):
            self.seen_at = now
            self.close()

    def close(self) -> None:
        """Stop reading."""
        if self.reader >= 0:
            os.close(self.reader)
            self.reader = -1


def progress_count(line: bytes) -> int | None:
    """The count of a skyarchive progress line (``export: N/T posts (P%)``, as printed when standard error is not a
    terminal), or None for any other line.

    >>> [progress_count(x) for x in (b"export: 36000/200000 posts (18%)", b"export: 0/5 posts (0%)",
    ...                              b"export: copying the selection", b"export: 12 posts", b"WARNING x/y posts")]
    [36000, 0, None, None, None]
    """
    if not line.startswith(b"export: "):
        return None
    count, _, rest = line[8:].partition(b" ")
    done, slash, total = count.partition(b"/")
    return int(done) if slash and done.isdigit() and total.isdigit() and rest.startswith(b"posts") else None


class Sampler:
    """What one poll of the command's process tree finds, kept at its largest over the polls.

    - ``vmhwm_kb``: the command's own ``VmHWM``;
    - ``pss_kb``: the sum of the proportional set sizes of the command and its descendants alive at the poll.
      ``Pss`` of ``/proc/<pid>/smaps_rollup`` is exact but costly: the kernel walks the process's page tables
      (about 1.4 ms for 60 MB here, 17 ms for 800 MB, so 0.2 s for skyarchive's 8 GB at 1M posts). So the
      tree's smaps_rollup are read, all at one poll, whenever a process has started or ended since the last
      reading (a fork shares its parent's pages, an exit leaves its share to the others), and otherwise at most
      PSS_SHARE of the time (after a reading that took ``d`` seconds, the next waits ``d / PSS_SHARE`` from its
      start: every poll for a small tree, every 0.1-0.2 s for the plugin's two processes, every 0.85 s for
      800 MB). At the polls between, each process's PSS is its last reading plus what its RSS
      (``/proc/<pid>/statm``: counters, no walk) gained or lost since: exact for the memory a process allocates
      or frees itself (anonymous memory, private to it), off only by what changed in the pages it shares with
      other processes meanwhile (a shared library's page that another process drops or maps, a forked page
      copied on write), which the next reading sets right. A poll where the summed RSS is no more than the peak
      so far reads nothing (no PSS is above its RSS);
    - ``pss_read_kb``: the largest sum at the polls that read every process's smaps_rollup (exact; at most
      ``pss_kb``);
    - ``temp_kb``: the disk space of the temporary files the tree has open (see temporary_files);
    - ``processes``: the most processes in the tree at one poll (alive: a zombie has no memory).
    """

    def __init__(self, pid: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.pid, self.tree, self.clock = pid, Tree(pid), clock
        self.vmhwm_kb = self.temp_kb = self.processes = self.pss_reads = 0
        self.pss_kb: int | None = None
        self.pss_read_kb: int | None = None
        self.pss_read_s = self.next_pss = 0.0
        self.anchors: dict[int, tuple[int, int]] = {}  # pid: (PSS, RSS) at its last reading
        self.read_pids: set[int] = set()  # the processes alive at the last reading

    def sample(self) -> None:
        """One poll."""
        self.vmhwm_kb = max(self.vmhwm_kb, read_vmhwm_kb(self.pid) or 0)
        alive = {pid: rss for pid in self.tree.pids() if (rss := read_rss_kb(pid))}
        self.processes = max(self.processes, len(alive))
        found: dict[tuple[int, int], int] = {}
        for pid in alive:
            temporary_files(pid, found)
        self.temp_kb = max(self.temp_kb, sum(found.values()) // 1024)
        changed = self.read_pids != alive.keys()  # a process started or ended since the last reading
        if not alive or sum(alive.values()) <= (self.pss_kb or 0):
            return  # this poll cannot raise the peak
        began = self.clock()
        if changed or began >= self.next_pss:
            self.anchors = {pid: (pss, alive[pid]) for pid in alive if (pss := read_pss_kb(pid)) is not None}
            self.read_pids = set(alive)
            took = self.clock() - began
            self.pss_reads, self.pss_read_s = self.pss_reads + 1, self.pss_read_s + took
            self.next_pss = began + took / PSS_SHARE
            exact = True
        else:
            exact = False
        if not self.anchors:
            return  # no smaps_rollup (Linux before 4.14), or every process gone meanwhile
        total = sum(pss + alive[pid] - rss for pid, (pss, rss) in self.anchors.items() if pid in alive)
        self.pss_kb = max(self.pss_kb or 0, total)
        if exact and self.anchors.keys() == alive.keys():
            self.pss_read_kb = max(self.pss_read_kb or 0, total)


def parse_args(argv: list[str]) -> tuple[str, str | None, list[str]]:
    """``(report_path, lock file or None, command)`` from ``--report FILE [--sqlite-lock DBFILE] -- COMMAND...``;
    raises ValueError on bad usage."""
    options: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0] in ("--report", "--sqlite-lock") and len(rest) >= 2 and rest[0] not in options:
        options[rest[0]] = rest[1]
        rest = rest[2:]
    if "--report" not in options or len(rest) < 2 or rest[0] != "--":
        raise ValueError(USAGE)
    return options["--report"], options.get("--sqlite-lock"), rest[1:]


def _wait(
    pid: int, lock_file: str | None, started: float, progress: ProgressWatch
) -> tuple[int, int, dict[str, float | int | None]]:
    """Poll until ``pid`` exits; return ``(wait status, ru_maxrss kB, {what the polls found})``."""
    polls = 0
    holds, sampler = Holds(), Sampler(pid)
    poll_ms = LOCK_POLL_MS if lock_file is not None else POLL_MS
    pidfd_open = getattr(os, "pidfd_open", None)
    try:
        pidfd = pidfd_open(pid) if pidfd_open is not None else -1
    except OSError:
        pidfd = -1
    poller = select.poll()
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    next_sample, cpu = 0.0, os.times()
    try:
        while True:
            now = time.perf_counter()
            if now >= next_sample:
                sampler.sample()
                next_sample = now + POLL_MS / 1000
            if lock_file is not None:
                try:
                    with open("/proc/locks", encoding="ascii", errors="replace") as locks:
                        text = locks.read()
                except OSError:
                    text = ""
                holds.see(holds_shared(text, pid, lock_file), time.perf_counter())
                polls += 1
            progress.poll(time.perf_counter() - started)
            if pidfd >= 0:
                poller.poll(poll_ms)
            else:
                time.sleep(poll_ms / 1000)
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == pid:
                ended = time.perf_counter()
                holds.see(False, ended)
                progress.poll(ended - started)  # what it wrote last
                spent = os.times()
                stats: dict[str, float | int | None] = {
                    "vmhwm_kb": sampler.vmhwm_kb, "pss_peak_kb": sampler.pss_kb,
                    "pss_read_peak_kb": sampler.pss_read_kb, "pss_reads": sampler.pss_reads,
                    "pss_read_s": sampler.pss_read_s, "temp_peak_kb": sampler.temp_kb,
                    "processes_peak": sampler.processes, "first_progress_s": progress.seen_at,
                    "stderr_watched": progress.watched,
                    "measure_cpu_s": spent.user + spent.system - cpu.user - cpu.system,
                }  # fmt: skip
                lock = (holds.total, holds.longest, polls) if lock_file is not None else (None, None, None)
                stats |= dict(zip(("lock_s", "lock_longest_s", "lock_polls"), lock, strict=True))
                return status, usage.ru_maxrss // RU_MAXRSS_PER_KB, stats
    finally:
        progress.close()
        if pidfd >= 0:
            os.close(pidfd)


def run(report_path: str, command: list[str], lock_file: str | None = None) -> int:
    """Spawn ``command``, wait for it (watching ``lock_file``, a file id, if given), write the JSON report;
    return the command's exit code."""
    floor = read_vmhwm_kb("self") or 0
    progress = ProgressWatch()
    started, started_monotonic = time.perf_counter(), time.monotonic()
    pid = os.posix_spawnp(command[0], command, os.environ)
    status, ru_maxrss, stats = _wait(pid, lock_file, started, progress)
    wall, ended_monotonic = time.perf_counter() - started, time.monotonic()
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    import json  # after the spawn: it does not raise the floor

    report = {"wall_s": wall, **stats, "ru_maxrss_kb": ru_maxrss, "floor_kb": floor, "exit_code": code}
    report |= {"started_monotonic": started_monotonic, "ended_monotonic": ended_monotonic}
    with open(report_path, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    return code


def main(argv: list[str]) -> int:
    """Entry point: parse ``argv`` (without the program name) and run the command."""
    try:
        report_path, lock_path, command = parse_args(argv)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        lock_file = file_id(lock_path) if lock_path is not None else None
    except OSError as exc:
        print(f"measure.py: --sqlite-lock: {exc}", file=sys.stderr)
        return 2
    try:
        return run(report_path, command, lock_file)
    except OSError as exc:
        print(f"measure.py: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
