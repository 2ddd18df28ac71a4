"""Never worse than skyarchive alone, in any sandbox (issue 20): first, the sandbox itself.

Seccomp profiles, gVisor and other sandboxes refuse system calls that skyarchive alone never makes:
``renameat2`` (EPERM), ``syncfs`` (EPERM, ENOSYS), ``flock`` (EPERM, EACCES). :mod:`tests.sandbox` runs a
command inside a real seccomp filter that refuses them; here it is checked to do just that.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import sandbox

PROBE = r"""
import ctypes, errno, fcntl, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.mkdir("a")

def outcome(call, *args):
    try:
        if call(*args) not in (0, None):
            raise OSError(ctypes.get_errno(), "")
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"

print(json.dumps({
    "flock": outcome(fcntl.flock, fd, fcntl.LOCK_EX),
    "syncfs": outcome(libc.syncfs, fd),
    "renameat2": outcome(libc.renameat2, -100, b"a", -100, b"b", 1),
    "fsync": outcome(os.fsync, fd),
}))
"""


def _sandbox_problem() -> str | None:
    try:
        sandbox.machine()
    except ValueError as exc:
        return str(exc)
    done = subprocess.run(
        sandbox.command({"flock": "EACCES"}, [sys.executable, "-c", "import os; os.setsid()"]),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return None if done.returncode == 0 else f"cannot install a seccomp filter here: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def filters() -> None:
    """A seccomp filter can be installed here (Linux, x86_64 or aarch64); CI must have one."""
    reason = _sandbox_problem()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"seccomp filters are required under CI: {reason}")
        pytest.skip(reason)


# -- the sandbox itself ------------------------------------------------------------------------------


@pytest.mark.usefixtures("filters")
@pytest.mark.parametrize(
    "refused", [{"renameat2": "EPERM"}, {"syncfs": "ENOSYS", "flock": "EACCES"}, {"fsync": "EIO"}], ids=str
)
def test_a_refused_call_fails_with_its_errno_and_others_work(tmp_path: Path, refused: dict[str, str]) -> None:
    done = subprocess.run(
        sandbox.command(refused, ["sh", "-c", 'exec "$0" -c "$1"', sys.executable, PROBE]),  # in a grandchild
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results == {call: refused.get(call, "ok") for call in results}
    assert (tmp_path / "b").is_dir() != ("renameat2" in refused)


def test_the_filter_program() -> None:
    """Arch checked first (a foreign one killed), then each refused number, then allow."""
    code = sandbox.program({"syncfs": errno.ENOSYS}, "aarch64")
    assert code == [
        (0x20, 0, 0, 4), (0x15, 1, 0, 0xC00000B7), (0x06, 0, 0, 0x80000000),
        (0x20, 0, 0, 0), (0x15, 0, 1, 267), (0x06, 0, 0, 0x00050000 | errno.ENOSYS),
        (0x06, 0, 0, 0x7FFF0000),
    ]  # fmt: skip
