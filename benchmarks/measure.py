"""Run one command and report its wall time and peak RSS: ``python measure.py --report FILE -- CMD...``.

The command inherits this process's stdin, stdout and stderr (the harness points stdout at a file).
The report (JSON, written to FILE after the command ends) holds:

- ``wall_s``: ``time.perf_counter()`` from just before the spawn to the moment the command exits;
- ``vmhwm_kb``: the largest ``VmHWM`` read from ``/proc/<pid>/status`` while it ran (polled every 20 ms,
  and woken at once by a pidfd when it exits, so the poll adds no latency to ``wall_s``);
- ``ru_maxrss_kb``: the command's own ``ru_maxrss``, from ``os.wait4`` (covers the last 20 ms too);
- ``floor_kb``: this wrapper's own ``VmHWM`` when it spawned the command.

Why a wrapper, and why it is kept small: on Linux ``exec`` carries the high-water mark of the address
space it replaces into ``ru_maxrss``, so a command spawned by a big process (the harness) reports at
least that process's peak. Spawned from here instead, ``ru_maxrss`` is at least ``floor_kb`` (a bare
interpreter: the harness runs this file with ``-I -S``, imports nothing beyond ``os``, ``sys``, ``time``
and ``select`` before the spawn, and spawns with ``os.posix_spawnp``). ``VmHWM`` of the command's own
address space has no such floor; the harness reports ``max(vmhwm_kb, ru_maxrss_kb)``.

Exit status: the command's (or 128 + signal number); 2 for a usage error.
"""

from __future__ import annotations

import os
import select
import sys
import time

POLL_MS = 20
#: ru_maxrss is in kB on Linux, in bytes on macOS.
RU_MAXRSS_PER_KB = 1024 if sys.platform == "darwin" else 1
USAGE = "usage: measure.py --report FILE -- COMMAND [ARG...]"


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


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """``(report_path, command)`` from ``--report FILE -- COMMAND...``; raises ValueError on bad usage."""
    if len(argv) < 4 or argv[0] != "--report" or argv[2] != "--":
        raise ValueError(USAGE)
    return argv[1], argv[3:]


def _wait(pid: int) -> tuple[int, int, int]:
    """Poll ``VmHWM`` until ``pid`` exits; return ``(wait status, ru_maxrss kB, peak VmHWM kB)``."""
    peak = 0
    pidfd_open = getattr(os, "pidfd_open", None)
    try:
        pidfd = pidfd_open(pid) if pidfd_open is not None else -1
    except OSError:
        pidfd = -1
    poller = select.poll()
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            peak = max(peak, read_vmhwm_kb(pid) or 0)
            if pidfd >= 0:
                poller.poll(POLL_MS)
            else:
                time.sleep(POLL_MS / 1000)
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == pid:
                return status, usage.ru_maxrss // RU_MAXRSS_PER_KB, peak
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def run(report_path: str, command: list[str]) -> int:
    """Spawn ``command``, wait for it, write the JSON report; return the command's exit code."""
    floor = read_vmhwm_kb("self") or 0
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    status, ru_maxrss, vmhwm = _wait(pid)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    import json  # after the spawn: it does not raise the floor

    report = {"wall_s": wall, "vmhwm_kb": vmhwm, "ru_maxrss_kb": ru_maxrss, "floor_kb": floor, "exit_code": code}
    with open(report_path, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    return code


def main(argv: list[str]) -> int:
    """Entry point: parse ``argv`` (without the program name) and run the command."""
    try:
        report_path, command = parse_args(argv)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return run(report_path, command)
    except OSError as exc:
        print(f"measure.py: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
