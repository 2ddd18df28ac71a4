"""The command line: ``skyarchive [--config FILE] [--db URL] init | seed | export``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import NoReturn

import pluggy
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .config import AppConfig, load_config
from .errors import SkyarchiveError, UsageError
from .export import (
    ExportJob,
    ExportRequest,
    ExportResult,
    Progress,
    describe_os_error,
    ensure_archive,
    export_dir_for,
    export_in_memory,
)
from .models import Base, media_table, posts_table
from .plugins import load_plugins
from .progress import ConsoleProgress
from .seed import DEFAULT_DID, SeedError, seed_archive

log = logging.getLogger("skyarchive.cli")

_TIMESTAMP_HELP = "or an RFC 3339 timestamp with an offset, e.g. 2025-11-01T12:00:00Z"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, without breaking dates and timestamps at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skyarchive", description="A local-first archive of Bluesky posts.")
    parser.add_argument("--version", action="version", version=f"skyarchive {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: $SKYARCHIVE_CONFIG or ./skyarchive.toml)"
    )
    parser.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (overrides database_url)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("init", help="create the archive's tables and folders")
    seed = sub.add_parser("seed", help="write a deterministic synthetic archive")
    seed.add_argument("--posts", type=int, required=True, metavar="N")
    seed.add_argument("--did", default=DEFAULT_DID)
    seed.add_argument("--seed", type=int, default=0, metavar="S")
    seed.add_argument("--media-every", type=int, default=20, metavar="K", help="every K-th post has images (0: none)")
    export = sub.add_parser(
        "export",
        help="export one owner's posts",
        description="Export one owner's posts, newest first, into <exports>/<did>/<timestamp>/;"
        " the last line printed is that folder.",
        formatter_class=_HelpFormatter,
    )
    export.add_argument("--did", required=True, help="the DID of the archive owner whose posts to export")
    export.add_argument(
        "--format",
        required=True,
        metavar="json|csv|jsonl",
        help="json: posts.json, a JSON array; csv: posts.csv, UTF-8 with BOM; jsonl: posts.jsonl, one JSON post a line",
    )
    export.add_argument(
        "--since",
        metavar="DATE",
        help=f"only posts created at or after DATE: YYYY-MM-DD (from the start of that day, UTC) {_TIMESTAMP_HELP}",
    )
    export.add_argument(
        "--until",
        metavar="DATE",
        help=f"only posts created at or before DATE: YYYY-MM-DD (covers the whole day, UTC) {_TIMESTAMP_HELP}",
    )
    export.add_argument("--media", action="store_true", help="also copy the posts' media files into media/")
    export.add_argument("--out", metavar="DIR", help="the exports folder to write into (default: exports_dir)")
    return parser


def _cmd_init(args: argparse.Namespace, config: AppConfig, pm: pluggy.PluginManager, engine: Engine) -> None:
    Base.metadata.create_all(engine)
    config.media_dir.mkdir(parents=True, exist_ok=True)
    config.exports_dir.mkdir(parents=True, exist_ok=True)
    print(f"initialised archive at {engine.url.render_as_string(hide_password=True)}")


def _cmd_seed(args: argparse.Namespace, config: AppConfig, pm: pluggy.PluginManager, engine: Engine) -> None:
    Base.metadata.create_all(engine)
    try:
        result = seed_archive(
            engine, posts_table, media_table,
            posts=args.posts, did=args.did, seed=args.seed, media_every=args.media_every, media_dir=config.media_dir,
        )  # fmt: skip
    except SeedError as exc:
        raise UsageError(str(exc)) from None
    print(f"seeded {result.posts} posts and {result.media} media files for {args.did}")


def _date_range(request: ExportRequest) -> str:
    """The request's date range in words: ``any date``, ``from A to B``, ``from A``, ``until B``."""
    if request.since and request.until:
        return f"from {request.since} to {request.until}"
    if request.since:
        return f"from {request.since}"
    if request.until:
        return f"until {request.until}"
    return "any date"


def run_export(job: ExportJob, pm: pluggy.PluginManager) -> ExportResult:
    """Let a plugin take the export, else run the host's own exporter; keeps the job's status.

    An export that selected no posts is still written, with a warning naming
    the DID and the date range, whichever exporter ran.
    """
    job.status = "running"
    progress = Progress(job)
    try:
        result = pm.hook.skyarchive_export(job=job, progress=progress)
        if result is None:
            result = export_in_memory(job, progress)
    except BaseException as exc:
        job.mark_failed(str(exc) or type(exc).__name__)
        raise
    job.status = "done"
    if result.post_count == 0:
        log.warning(
            "no posts of %s (%s) were selected: the export is empty; check --did and --since/--until",
            job.request.did,
            _date_range(job.request),
        )
    return result  # type: ignore[no-any-return]


def _cmd_export(args: argparse.Namespace, config: AppConfig, pm: pluggy.PluginManager, engine: Engine) -> None:
    request = ExportRequest.create(
        did=args.did, format=args.format, since=args.since, until=args.until, media=args.media
    )
    ensure_archive(engine)
    started = datetime.now(timezone.utc)
    export_dir = export_dir_for(Path(args.out) if args.out else config.exports_dir, request.did, started)
    if export_dir.exists() or export_dir.is_symlink():
        raise SkyarchiveError(f"export directory already exists: {export_dir}")
    display = ConsoleProgress()
    job = ExportJob(
        request=request, config=config, engine=engine, export_dir=export_dir, started_at=started, listeners=[display]
    )
    # While the bar is shown, log records go through tqdm.write so that they do not garble it.
    with logging_redirect_tqdm() if display.is_terminal else contextlib.nullcontext():
        try:
            result = run_export(job, pm)
        finally:
            display.close()
    print(f"exported {result.post_count} posts and {result.media_count} media files")
    print(result.export_dir.resolve())


COMMANDS: dict[str, Callable[[argparse.Namespace, AppConfig, pluggy.PluginManager, Engine], None]] = {
    "init": _cmd_init,
    "seed": _cmd_seed,
    "export": _cmd_export,
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt("terminated")


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("skyarchive: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        config = load_config(args.config, db_url=args.db)
        pm = load_plugins(config)
        try:
            engine = create_engine(config.database_url)
        except ImportError as exc:
            raise UsageError(
                f"database driver not installed for {config.database_url.split(':', 1)[0]}: {exc}"
            ) from None
        try:
            COMMANDS[args.command](args, config, pm, engine)
        finally:
            engine.dispose()
    except SkyarchiveError as exc:
        print(f"skyarchive: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except SQLAlchemyError as exc:
        print(f"skyarchive: error: database error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"skyarchive: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("skyarchive: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"skyarchive: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        root.removeHandler(handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
