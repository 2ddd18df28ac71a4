"""Starting and stopping the export's child process, which runs only the plugin's own code.

``python -m pkg.module`` puts the current directory first on ``sys.path``: a ``random.py`` or ``json.py``
in the folder the user exports from would run in the child. So the child is started isolated
(``python -I``: no current directory or script directory on ``sys.path``, no ``PYTHON*`` variables, no
user site-packages) in ``/``, and the parent hands it the folders its imports come from (the plugin's,
orjson's and simplejson's, as this process found them, so that a plugin put on ``sys.path`` by hand works
too); they are appended after the standard library, so nothing there can shadow it.

The child gets a session (and process group) of its own: Ctrl-C at the terminal does not reach it (the
export stops it itself), and :func:`stop` kills it and anything it started, as one group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger("export_batching_plugin")

#: What the child runs: the handed-over folders appended to ``sys.path``, then the module's ``main(argv)``.
_BOOT = (
    "import sys, json; sys.path += [p for p in json.loads(sys.argv[1]) if p not in sys.path];"
    " from importlib import import_module; sys.exit(import_module(sys.argv[2]).main(sys.argv[3:]))"
)


def import_path() -> list[str]:
    """The folders the child's imports come from, as this process found them (absolute)."""
    import orjson
    import simplejson

    import export_batching_plugin

    folders: list[str] = []
    for module in (export_batching_plugin, orjson, simplejson):
        folder = str(Path(module.__file__ or "").resolve().parent.parent)
        if folder not in folders:
            folders.append(folder)
    return folders


def spawn(module: str, args: Sequence[str], *, pass_fds: Sequence[int], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``module.main(args)`` in an isolated child (see the module's docstring); raises what Popen raises."""
    argv = [sys.executable, "-I", "-c", _BOOT, json.dumps(import_path()), module, *args]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=tuple(pass_fds),
        close_fds=True, cwd="/", start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group (the child and anything it started), then reap the child."""
    with contextlib.suppress(OSError):  # the group is there until the child is reaped, even if it has ended
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
