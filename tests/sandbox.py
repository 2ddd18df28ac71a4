"""Run a command with chosen system calls refused, as a seccomp profile or a sandbox such as gVisor refuses them.

``python tests/sandbox.py --refuse renameat2=EPERM --refuse syncfs=ENOSYS -- skyarchive export ...`` installs
a seccomp filter that makes each listed call fail with its errno, then executes the command, which inherits
the filter (and every process it starts). Any other call is allowed. No root needed: the filter is installed
under ``PR_SET_NO_NEW_PRIVS``, as an unprivileged process may. Linux on x86_64 or aarch64 only.

The filter is a hand-built classic BPF program: load ``seccomp_data.arch``, kill the process if it is not
this machine's (a call through another ABI must not slip past the table); load ``seccomp_data.nr``; for
each refused call, ``SECCOMP_RET_ERRNO | errno``; else ``SECCOMP_RET_ALLOW``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: System call numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: asm-generic/unistd.h).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "flock": 73, "fsync": 74, "fdatasync": 75, "rename": 82, "openat": 257, "renameat": 264,
        "fallocate": 285, "syncfs": 306, "renameat2": 316, "copy_file_range": 326,
    },
    "aarch64": {
        "flock": 32, "renameat": 38, "fallocate": 47, "openat": 56, "fsync": 82, "fdatasync": 83,
        "syncfs": 267, "renameat2": 276, "copy_file_range": 285,
    },
}  # fmt: skip
#: ``AUDIT_ARCH_*`` of each machine, as ``seccomp_data.arch`` holds it.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

_PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS, _SECCOMP_MODE_FILTER = 22, 38, 2
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def machine() -> str:
    """This machine's name in :data:`SYSCALLS`; ValueError where the table has none."""
    name = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    if sys.platform != "linux" or name not in SYSCALLS:
        raise ValueError(f"no system call table for {sys.platform} on {platform.machine()}")
    return name


def program(refused: Mapping[str, int], arch: str) -> list[tuple[int, int, int, int]]:
    """The filter: ``(code, jt, jf, k)`` instructions that refuse each call of ``refused`` with its errno."""
    numbers = SYSCALLS[arch]
    instructions = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 1, 0, AUDIT_ARCH[arch]), (_RET_K, 0, 0, _RET_KILL_PROCESS)]
    instructions.append((_LD_W_ABS, 0, 0, _NR))
    for name, code in refused.items():
        instructions += [(_JEQ_K, 0, 1, numbers[name]), (_RET_K, 0, 0, _RET_ERRNO | code)]
    return [*instructions, (_RET_K, 0, 0, _RET_ALLOW)]


def refuse(refused: Mapping[str, int]) -> None:
    """Install the filter in this process (and so in everything it executes or starts from now on)."""
    instructions = program(refused, machine())
    array = (_Instruction * len(instructions))(*(_Instruction(*i) for i in instructions))
    prog = _Program(len(instructions), array)
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), (_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog))):
        if libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"prctl: {os.strerror(code)}")


def command(refused: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` with ``refused`` (call -> errno name, e.g. ``{"flock": "EPERM"}``)."""
    options = [item for name, code in refused.items() for item in ("--refuse", f"{name}={code}")]
    return [sys.executable, str(Path(__file__).resolve()), *options, "--", *argv]


def _refusal(text: str) -> tuple[str, int]:
    name, _, code = text.partition("=")
    if name not in SYSCALLS[machine()] or not hasattr(errno, code):
        raise argparse.ArgumentTypeError(f"expected CALL=ERRNO, one of {sorted(SYSCALLS[machine()])}: {text!r}")
    return name, getattr(errno, code)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--refuse", action="append", type=_refusal, default=[], metavar="CALL=ERRNO")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    refuse(dict(args.refuse))
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    main()
