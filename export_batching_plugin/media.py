"""Media files of the selection, copied batch by batch.

One streamed query lists the selection's media rows in export order (the
posts' order, then hash), the same order the host copies them in; after each
batch of posts, the rows of that batch's posts are taken from the stream and
their files copied with the host's own ``copy_media_file``: same names, same
refusal of paths outside ``media_dir``, same handling of missing files and
repeated names. Nothing is kept across batches but one row read ahead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from skyarchive.export import POST_ORDER, ExportRequest, copy_media_file, selection_criteria
from skyarchive.models import media_table, posts_table
from sqlalchemy import select
from sqlalchemy.engine import Connection

log = logging.getLogger("export_batching_plugin")


class MediaCopier:
    """Copies the media of each batch of posts into ``dest`` as the batches go by."""

    def __init__(self, conn: Connection, request: ExportRequest, *, media_root: Path, dest: Path) -> None:
        stmt = (
            select(*media_table.columns)
            .join(posts_table, media_table.c.post_uri == posts_table.c.uri)
            .where(*selection_criteria(request))
            .order_by(*POST_ORDER, media_table.c.hash)
        )
        self._result = conn.execution_options(stream_results=True).execute(stmt)
        self._rows: Iterator[Any] = iter(self._result)
        self._ahead: Any = next(self._rows, None)
        self._root = media_root.resolve()
        self._dest = dest
        self.copied = self.skipped = 0

    def copy_for(self, posts: Sequence[Any]) -> None:
        """Copy the files of the media rows that belong to ``posts`` (one batch, in export order)."""
        uris = {post[0] for post in posts}  # rows in schema order: uri first
        while self._ahead is not None and self._ahead.post_uri in uris:
            if copy_media_file(self._ahead, self._root, self._dest):
                self.copied += 1
            else:
                self.skipped += 1
            self._ahead = next(self._rows, None)

    def finish(self) -> None:
        """Check that every media row of the selection was matched to a batch."""
        left = 0
        while self._ahead is not None:
            left += 1
            self._ahead = next(self._rows, None)
        if left:
            log.warning("export_batching: %d media rows did not follow their posts' order and were not copied", left)

    def close(self) -> None:
        """Release the media stream's cursor (before the snapshot ends, also after a failure)."""
        self._result.close()
