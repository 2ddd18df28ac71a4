"""A slow output disk, simulated at the system-call level: ``python -m benchmarks.slowdisk --prefix DIR
--per-call-ms 50 [--per-mib-ms 10] -- COMMAND...``.

Why at the system-call level: the claim to measure is that an export does not keep the archive locked while its
output disk is slow, for the host's exporter and for the plugin alike. A slow disk must then slow every process
that writes the export (Python code, C extensions, the child processes they start) the same way, and nothing
else: not the database, not the spool files in /tmp, not stdout. A small C library loaded with ``LD_PRELOAD``
does that: it interposes on the libc functions that write to a file descriptor (``write``, ``writev``, the
``pwrite`` and ``pwritev`` families, ``sendfile``, ``copy_file_range``), and before forwarding a call whose
descriptor refers to a file under the prefix (``readlink`` of ``/proc/self/fd/N``, on every call, so a reused
descriptor is never misjudged) it sleeps ``per_call + bytes * per_mib / MiB`` (``clock_nanosleep``: the thread
sleeps, as it would in the kernel, and uses no CPU).

What it does not see: glibc's stdio (``fwrite``, ``fprintf``) writes through libc-internal calls, which no
preloaded library can interpose on, so a C program that writes with stdio (the sqlite3 and psql command-line
tools, whose stdout the benchmark points at a file) is not slowed; neither are stores into an ``mmap``-ed file
nor a statically linked program. ``fsync`` and ``close`` are not slowed either: the cost is charged per write.
Python's file objects, ``os.write``, ``os.writev``, ``os.pwrite``, ``os.pwritev`` (``pwrite64`` and
``pwritev64v2`` in libc) and ``shutil`` copies all go through interposed calls. Linux only (``/proc/self/fd``).

The library is compiled once per version of its source (the file name holds its hash) into a cache folder,
``$TMPDIR/export-batching-slowdisk/`` by default, and reused from there.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The shim. Async-signal-safe on the write path (CPython's C signal handler calls write() on its wakeup fd):
#: no malloc, no stdio, no locks there; everything it needs is set up by the constructor.
SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SLOWDISK_MIB 1048576.0
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 27))
#define SLOWDISK_HAVE_V2 1 /* pwritev2 (2.26) and copy_file_range (2.27) */
#endif

static char prefix[4096];
static size_t prefix_len;
static int enabled;
static double per_call_ns, per_mib_ns;
static int initialised;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_sendfile)(int, int, off_t *, size_t);
static ssize_t (*real_sendfile64)(int, int, off64_t *, size_t);
#ifdef SLOWDISK_HAVE_V2
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off64_t, int);
static ssize_t (*real_copy_file_range)(int, off64_t *, int, off64_t *, size_t, unsigned int);
#endif

static double env_number(const char *name) {
    const char *text = getenv(name);
    double value = text ? strtod(text, NULL) : 0.0;
    return value > 0.0 ? value : 0.0;
}

__attribute__((constructor)) static void slowdisk_init(void) {
    if (initialised) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = dlsym(RTLD_NEXT, "pwritev64");
    real_sendfile = dlsym(RTLD_NEXT, "sendfile");
    real_sendfile64 = dlsym(RTLD_NEXT, "sendfile64");
#ifdef SLOWDISK_HAVE_V2
    real_pwritev2 = dlsym(RTLD_NEXT, "pwritev2");
    real_pwritev64v2 = dlsym(RTLD_NEXT, "pwritev64v2");
    real_copy_file_range = dlsym(RTLD_NEXT, "copy_file_range");
#endif
    const char *p = getenv("SLOWDISK_PREFIX");
    size_t n = p ? strlen(p) : 0;
    if (n > 0 && p[0] == '/' && n < sizeof prefix) {
        while (n > 0 && p[n - 1] == '/') n--; /* "/" becomes "": every absolute path */
        memcpy(prefix, p, n);
        prefix[n] = '\0';
        prefix_len = n;
        per_call_ns = env_number("SLOWDISK_PER_CALL_US") * 1000.0;
        per_mib_ns = env_number("SLOWDISK_PER_MIB_US") * 1000.0;
        enabled = per_call_ns > 0.0 || per_mib_ns > 0.0;
    }
    initialised = 1;
}

/* Whether fd is a file under the prefix: a path component match, so /out matches /out/a but not /outside. */
static int under_prefix(int fd) {
    char link[32] = "/proc/self/fd/", digits[16], target[4096];
    size_t at = strlen(link), k = 0;
    unsigned int v = (unsigned int)fd;
    do { digits[k++] = (char)('0' + v % 10); v /= 10; } while (v > 0);
    while (k > 0) link[at++] = digits[--k];
    link[at] = '\0';
    ssize_t n = readlink(link, target, sizeof target);
    if (n < (ssize_t)prefix_len || n == (ssize_t)sizeof target) return 0;
    if (memcmp(target, prefix, prefix_len) != 0) return 0;
    return n == (ssize_t)prefix_len || target[prefix_len] == '/';
}

/* Sleep `ns` when fd is a file under the prefix; errno is left as the caller set it. */
static void slow_down(int fd, double ns) {
    if (!initialised) slowdisk_init(); /* a write from another library's constructor, before ours ran */
    if (!enabled || fd < 0 || ns <= 0.0) return;
    int saved = errno;
    if (under_prefix(fd)) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        long long total = (long long)until.tv_nsec + (long long)ns;
        until.tv_sec += (time_t)(total / 1000000000LL);
        until.tv_nsec = (long)(total % 1000000000LL);
        /* An interrupted sleep resumes: a write to a disk is not cut short by a signal. */
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {}
    }
    errno = saved;
}

/* Before a write of `bytes`: the per-call cost and the per-MiB cost. */
static void throttle(int fd, size_t bytes) {
    if (!initialised) slowdisk_init();
    slow_down(fd, per_call_ns + (double)bytes * per_mib_ns / SLOWDISK_MIB);
}

/* After a copy that moved `bytes`: the per-MiB cost alone. */
static void throttle_bytes(int fd, size_t bytes) {
    if (!initialised) slowdisk_init();
    slow_down(fd, (double)bytes * per_mib_ns / SLOWDISK_MIB);
}

static size_t iov_bytes(const struct iovec *iov, int count) {
    size_t total = 0;
    for (int i = 0; i < count && iov; i++) total += iov[i].iov_len;
    return total;
}

#define FORWARD(real, ...) \
    do { if (!(real)) { errno = ENOSYS; return -1; } return (real)(__VA_ARGS__); } while (0)

ssize_t write(int fd, const void *buf, size_t count) {
    throttle(fd, count);
    FORWARD(real_write, fd, buf, count);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    throttle(fd, iov_bytes(iov, iovcnt));
    FORWARD(real_writev, fd, iov, iovcnt);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    throttle(fd, count);
    FORWARD(real_pwrite, fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    throttle(fd, count);
    FORWARD(real_pwrite64, fd, buf, count, offset);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    throttle(fd, iov_bytes(iov, iovcnt));
    FORWARD(real_pwritev, fd, iov, iovcnt, offset);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off64_t offset) {
    throttle(fd, iov_bytes(iov, iovcnt));
    FORWARD(real_pwritev64, fd, iov, iovcnt, offset);
}

/* sendfile and copy_file_range are asked for up to `count` bytes (shutil asks for max(size, 8 MiB), then once
 * more to see the end): the per-MiB part is charged after the call, on the bytes it moved. */
#define FORWARD_COPY(fd, real, ...) \
    do { \
        if (!(real)) { errno = ENOSYS; return -1; } \
        throttle(fd, 0); /* the per-call cost */ \
        ssize_t moved = (real)(__VA_ARGS__); \
        if (moved > 0) throttle_bytes(fd, (size_t)moved); \
        return moved; \
    } while (0)

ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
    FORWARD_COPY(out_fd, real_sendfile, out_fd, in_fd, offset, count);
}

ssize_t sendfile64(int out_fd, int in_fd, off64_t *offset, size_t count) {
    FORWARD_COPY(out_fd, real_sendfile64, out_fd, in_fd, offset, count);
}

#ifdef SLOWDISK_HAVE_V2
ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    throttle(fd, iov_bytes(iov, iovcnt));
    FORWARD(real_pwritev2, fd, iov, iovcnt, offset, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off64_t offset, int flags) {
    throttle(fd, iov_bytes(iov, iovcnt));
    FORWARD(real_pwritev64v2, fd, iov, iovcnt, offset, flags);
}

ssize_t copy_file_range(int fd_in, off64_t *off_in, int fd_out, off64_t *off_out, size_t len, unsigned int flags) {
    FORWARD_COPY(fd_out, real_copy_file_range, fd_in, off_in, fd_out, off_out, len, flags);
}
#endif
"""

#: Without -D_FILE_OFFSET_BITS=64: the shim defines pwrite and pwrite64 (etc.) each under its own name.
GCC_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
LIBS = ("-ldl",)
#: The environment variables the shim reads.
PREFIX_VAR, PER_CALL_VAR, PER_MIB_VAR = "SLOWDISK_PREFIX", "SLOWDISK_PER_CALL_US", "SLOWDISK_PER_MIB_US"
#: The self-test of available(): one write of a child Python under the prefix must take at least this long.
PROBE_MS = 50.0
PROBE = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
started = time.perf_counter()
os.write(fd, b"probe")
print(time.perf_counter() - started)
"""


class SlowDiskError(Exception):
    """The shim cannot be built or used here (no gcc, not Linux, a compile error): the reason, for a skip."""


def default_cache() -> Path:
    """``$TMPDIR/export-batching-slowdisk``: outside the work tree, shared by every run on the machine."""
    return Path(tempfile.gettempdir()) / "export-batching-slowdisk"


def library_name() -> str:
    """``slowdisk-<hash>.so``: the hash covers the source and the flags, so a changed shim is rebuilt."""
    digest = hashlib.sha256("\0".join((SOURCE, *GCC_FLAGS, *LIBS)).encode()).hexdigest()[:16]
    return f"slowdisk-{digest}.so"


def library(cache: Path | None = None) -> Path:
    """The compiled shim in ``cache``, built first when missing; raises SlowDiskError saying why it cannot be.

    Built in a scratch folder and renamed into place, so two processes building at once never load half a file.
    """
    if not sys.platform.startswith("linux"):
        raise SlowDiskError(f"the slow-disk shim needs Linux (/proc/self/fd, LD_PRELOAD), not {sys.platform}")
    folder = (cache or default_cache()).resolve()
    built = folder / library_name()
    if built.is_file():
        return built
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SlowDiskError("gcc is not on PATH: the slow-disk shim cannot be compiled")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as scratch:
        source, partial = Path(scratch) / "slowdisk.c", Path(scratch) / built.name
        source.write_text(SOURCE, encoding="utf-8")
        command = [gcc, *GCC_FLAGS, "-o", str(partial), str(source), *LIBS]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SlowDiskError(f"gcc failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(partial, built)
    return built


def _microseconds(name: str, ms: float) -> str:
    """``ms`` as whole microseconds for the shim's environment; raises ValueError unless finite and >= 0."""
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {ms!r}")
    return str(round(ms * 1000))


def throttle_env(
    prefix: Path,
    *,
    per_call_ms: float,
    per_mib_ms: float = 0.0,
    cache: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables to add to a child's environment so that its writes under ``prefix`` are slowed.

    ``LD_PRELOAD`` is the shim appended to the one in ``environ`` (default: ours), so other preloaded
    libraries stay. The prefix is resolved (symbolic links too) because the shim compares it with the
    kernel's name of each descriptor's file, which is always the resolved one. Builds the shim if needed.
    """
    so = str(library(cache))
    if any(separator in so for separator in " :"):  # ld.so splits LD_PRELOAD at spaces and colons
        raise SlowDiskError(f"the shim's path cannot go in LD_PRELOAD (a space or a colon): {so}")
    current = (os.environ if environ is None else environ).get("LD_PRELOAD", "")
    entries = [entry for entry in current.replace(" ", ":").split(":") if entry and entry != so]
    return {
        "LD_PRELOAD": ":".join([*entries, so]),
        PREFIX_VAR: str(Path(prefix).resolve()),
        PER_CALL_VAR: _microseconds("per_call_ms", per_call_ms),
        PER_MIB_VAR: _microseconds("per_mib_ms", per_mib_ms),
    }


@functools.cache
def _self_test(so: str) -> str | None:
    """Whether a child Python's write under a prefix takes >= PROBE_MS with the shim preloaded (once per shim)."""
    with tempfile.TemporaryDirectory(prefix="slowdisk-probe-") as scratch:
        env = {**os.environ, **throttle_env(Path(scratch), per_call_ms=PROBE_MS, cache=Path(so).parent)}
        command = [sys.executable, "-I", "-S", "-c", PROBE, str(Path(scratch) / "probe")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or done.stderr.strip():
        return f"the slow-disk shim does not load: {(done.stderr.strip() or f'exit {done.returncode}')[-500:]}"
    took = float(done.stdout.strip() or "0")
    if took < PROBE_MS / 1000 * 0.9:
        return f"the slow-disk shim loads but does not slow writes ({took * 1000:.1f} ms for a {PROBE_MS:g} ms write)"
    return None


def available(cache: Path | None = None) -> str | None:
    """None when the shim is built (or buildable) and slows a real write; else the reason, for a skip."""
    try:
        so = library(cache)
    except (SlowDiskError, OSError) as exc:
        return str(exc)
    return _self_test(str(so))


@dataclass(frozen=True)
class Options:
    """The CLI's arguments: the throttle and the command to run under it."""

    prefix: Path
    per_call_ms: float
    per_mib_ms: float
    cache: Path | None
    command: tuple[str, ...]


def parse_args(argv: Sequence[str]) -> Options:
    """Options from ``--prefix DIR --per-call-ms MS [--per-mib-ms MS] [--cache DIR] -- COMMAND...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slowdisk", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, required=True, help="slow down writes to files under this folder")
    parser.add_argument("--per-call-ms", type=float, required=True, help="sleep this long before each write call")
    parser.add_argument("--per-mib-ms", type=float, default=0.0, help="and this long per MiB written")
    parser.add_argument("--cache", type=Path, default=None, help=f"where the shim is built (default {default_cache()})")
    parser.add_argument("command", nargs="+", help="the command to run (after --)")
    args = parser.parse_args(list(argv))
    return Options(args.prefix, args.per_call_ms, args.per_mib_ms, args.cache, tuple(args.command))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command under the throttle in place of this process (exec), so its exit status is the command's."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        extra = throttle_env(
            options.prefix, per_call_ms=options.per_call_ms, per_mib_ms=options.per_mib_ms, cache=options.cache
        )
    except (SlowDiskError, ValueError) as exc:
        print(f"slowdisk: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    try:
        os.execvpe(options.command[0], list(options.command), {**os.environ, **extra})
    except OSError as exc:
        print(f"slowdisk: cannot run {options.command[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main())
