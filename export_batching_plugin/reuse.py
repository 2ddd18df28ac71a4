"""Media files that cost only what changed: blocks shared by a clone.

- **Clones** (:func:`clone_or_copy`): on a filesystem that shares blocks (btrfs, XFS with reflink, ZFS 2.2+,
  bcachefs), ``FICLONE`` makes a copy that shares the source's blocks: same bytes, an independent file, no data
  written. Elsewhere ``copy_file_range`` (a server-side copy on NFS 4.2, an in-kernel one on ext4), else a
  plain copy. Any refusal (another filesystem, a sandbox's seccomp filter, an old kernel) falls back, per file,
  to the next; a copy then fails only where a plain copy fails.

"""

from __future__ import annotations

import fcntl
import os
import sys

_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_CHUNK = 1 << 20


def clone_or_copy(src: int, dst: int) -> None:
    """Give the empty file ``dst`` the contents of ``src`` (open file descriptors): cloned, else copied."""
    if sys.platform == "linux":
        try:
            fcntl.ioctl(dst, _FICLONE, src)
            return
        except OSError:  # no clones here, another filesystem, refused: copy
            os.ftruncate(dst, 0)  # whatever a clone that failed half-way left
        try:
            while os.copy_file_range(src, dst, _CHUNK):
                pass
        except (OSError, AttributeError):  # refused (a sandbox, another filesystem), or a Python without it
            pass
    while block := os.read(src, _CHUNK):  # what copy_file_range left (also where it stopped short)
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view) :]
