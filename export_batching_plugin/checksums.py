"""SHA256SUMS: a checksum of every file of an export, in the format ``sha256sum`` writes and reads.

Each line is ``<64 hex digits>  <path relative to the export directory>``.
A path holding a backslash, a newline or a carriage return is written the way
GNU ``sha256sum`` (coreutils 9) writes it: those characters escaped as
``\\\\``, ``\\n`` and ``\\r``, and the line prefixed with a backslash, so that
``sha256sum -c SHA256SUMS`` finds the file again.

The posts file is hashed as it is written, by its one writer (:class:`.worker.Writer`); it is never read
again.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

SUMS_NAME = "SHA256SUMS"
_BLOCK = 1 << 20


def sums_line(hexdigest: str, path: str) -> bytes:
    """One line of SHA256SUMS, as GNU sha256sum writes it (see the module's docstring)."""
    name = os.fsencode(path)
    escaped = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    prefix = b"\\" if escaped != name else b""
    return prefix + hexdigest.encode("ascii") + b"  " + escaped + b"\n"


def stream_digest(stream: IO[bytes]) -> str:
    """The hex sha256 of what is left to read in ``stream``, read in blocks."""
    digest = hashlib.sha256()
    while block := stream.read(_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The hex sha256 of a file."""
    with open(path, "rb") as stream:
        return stream_digest(stream)


def write_sums(path: Path, *entries: Iterable[tuple[str, str]]) -> None:
    """Write SHA256SUMS (exclusively) from ``(hexdigest, relative path)`` pairs, in their order."""
    with open(path, "xb") as stream:
        for hexdigest, name in itertools.chain(*entries):
            stream.write(sums_line(hexdigest, name))
