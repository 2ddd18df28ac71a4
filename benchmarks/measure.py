"""Run one command and report its wall time, peak RSS, spool and SQLite lock:
``python measure.py --report FILE [--sqlite-lock DBFILE] -- CMD...``.

The command inherits this process's stdin, stdout, stderr and environment (the harness points stdout at a
file). The report (JSON, written to FILE after the command ends) holds:

- ``wall_s``: ``time.perf_counter()`` from just before the spawn to the moment the command exits;
  ``started_monotonic``, ``ended_monotonic``: the same two moments as ``time.monotonic()`` (CLOCK_MONOTONIC,
  which every process on Linux shares: the harness lays the archiver's attempts over them);
- ``vmhwm_kb``: the largest ``VmHWM`` read from ``/proc/<pid>/status`` while it ran (polled every 20 ms,
  and woken at once by a pidfd when it exits, so the poll adds no latency to ``wall_s``);
- ``ru_maxrss_kb``: the command's own ``ru_maxrss``, from ``os.wait4`` (covers the last 20 ms too);
- ``floor_kb``: this wrapper's own ``VmHWM`` when it spawned the command;
- ``spool_peak_kb``: the most disk space held at once by the command's open files that have no name (deleted,
  or made with ``O_TMPFILE``: ``readlink`` of ``/proc/<pid>/fd/N`` ends with `` (deleted)``), the sum of their
  ``st_blocks * 512``, polled every 20 ms; such as the plugin's spool file (and SQLite's own temporary files);
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
higher than running it; it imports nothing beyond ``os``, ``sys``, ``time`` and ``select`` before the spawn,
and spawns with ``os.posix_spawnp``). ``VmHWM`` of the command's own
address space has no such floor; the harness reports ``max(vmhwm_kb, ru_maxrss_kb)``.

Exit status: the command's (or 128 + signal number); 2 for a usage error.
"""

from __future__ import annotations

import os
import select
import sys
import time

POLL_MS = 20
LOCK_POLL_MS = 5
#: SQLite's SHARED lock (os_unix.c): a read lock on SHARED_SIZE bytes from SHARED_FIRST = PENDING_BYTE + 2.
SHARED_FIRST, SHARED_SIZE = 0x40000000 + 2, 510
#: ru_maxrss is in kB on Linux, in bytes on macOS.
RU_MAXRSS_PER_KB = 1024 if sys.platform == "darwin" else 1
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


def spool_bytes(pid: int | str) -> int:
    """Disk space (``st_blocks * 512``) of the files ``pid`` has open that have no name (deleted, O_TMPFILE)."""
    folder = f"/proc/{pid}/fd"
    seen: dict[tuple[int, int], int] = {}
    try:
        descriptors = os.listdir(folder)
    except OSError:
        return 0
    for fd in descriptors:
        try:
            target = os.readlink(f"{folder}/{fd}")
            if not target.startswith("/") or target.startswith("/memfd:"):
                continue  # pipes, sockets, anon inodes; memfd is memory
            if not (target.endswith(" (deleted)") or target.rsplit("/", 1)[-1].startswith("#")):
                continue
            st = os.stat(f"{folder}/{fd}")
        except OSError:
            continue  # closed meanwhile
        seen[st.st_dev, st.st_ino] = st.st_blocks * 512
    return sum(seen.values())


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


def _wait(pid: int, lock_file: str | None) -> tuple[int, int, dict[str, float | int | None]]:
    """Poll until ``pid`` exits; return ``(wait status, ru_maxrss kB, {peak VmHWM, spool peak, lock stats})``."""
    peak = spool = polls = 0
    holds = Holds()
    poll_ms = LOCK_POLL_MS if lock_file is not None else POLL_MS
    pidfd_open = getattr(os, "pidfd_open", None)
    try:
        pidfd = pidfd_open(pid) if pidfd_open is not None else -1
    except OSError:
        pidfd = -1
    poller = select.poll()
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    next_sample = 0.0
    try:
        while True:
            now = time.perf_counter()
            if now >= next_sample:
                peak = max(peak, read_vmhwm_kb(pid) or 0)
                spool = max(spool, spool_bytes(pid))
                next_sample = now + POLL_MS / 1000
            if lock_file is not None:
                try:
                    with open("/proc/locks", encoding="ascii", errors="replace") as locks:
                        text = locks.read()
                except OSError:
                    text = ""
                holds.see(holds_shared(text, pid, lock_file), time.perf_counter())
                polls += 1
            if pidfd >= 0:
                poller.poll(poll_ms)
            else:
                time.sleep(poll_ms / 1000)
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == pid:
                holds.see(False, time.perf_counter())
                stats: dict[str, float | int | None] = {"vmhwm_kb": peak, "spool_peak_kb": spool // 1024}
                lock = (holds.total, holds.longest, polls) if lock_file is not None else (None, None, None)
                stats |= dict(zip(("lock_s", "lock_longest_s", "lock_polls"), lock, strict=True))
                return status, usage.ru_maxrss // RU_MAXRSS_PER_KB, stats
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def run(report_path: str, command: list[str], lock_file: str | None = None) -> int:
    """Spawn ``command``, wait for it (watching ``lock_file``, a file id, if given), write the JSON report;
    return the command's exit code."""
    floor = read_vmhwm_kb("self") or 0
    started, started_monotonic = time.perf_counter(), time.monotonic()
    pid = os.posix_spawnp(command[0], command, os.environ)
    status, ru_maxrss, stats = _wait(pid, lock_file)
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
