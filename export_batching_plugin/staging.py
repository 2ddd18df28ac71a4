"""Staging: the export is written beside its final place, then renamed into it.

A reader never sees a half-written export under the final name, and on any
failure the staging directory is removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skyarchive.errors import SkyarchiveError

STAGING_MARK = ".staging-"


def staging_dir_for(export_dir: Path) -> Path:
    """``<parent>/.<name>.staging-<pid>``: hidden, same filesystem, owned by this process."""
    return export_dir.parent / f".{export_dir.name}{STAGING_MARK}{os.getpid()}"


@contextmanager
def staged(export_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging directory; publish it as ``export_dir`` when the block succeeds."""
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir_for(export_dir)
    staging.mkdir()
    try:
        yield staging
        if export_dir.exists() or export_dir.is_symlink():
            raise SkyarchiveError(f"export directory already exists: {export_dir}")
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
