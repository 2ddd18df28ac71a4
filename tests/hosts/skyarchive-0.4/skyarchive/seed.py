"""A deterministic synthetic archive: realistic posts, replies, embeds, labels, media files.

>>> from sqlalchemy import create_engine
>>> # seed_archive(engine, posts_table, media_table, posts=1000, media_dir=Path("media"))
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simplejson
from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

DEFAULT_DID = "did:plc:q6gjnaw2blty4crticxkmujt"
_B32 = "234567abcdefghijklmnopqrstuvwxyz"
_CHUNK = 5000
_START_MS = 1761998400000  # 2025-11-01T12:00:00.000Z
_DAYS_BEFORE_1970 = 719468

FRAGMENTS = [
    "Just archived my whole timeline.", "Good morning, Bluesky!", 'She said "no", then "yes".',
    "apples, pears, plums; and figs", "line one\nline two", "windows line\r\nending", "tab\tseparated",
    "今日はいい天気ですね。", "東京の桜🌸が満開", "مرحبا بالعالم", "السلام عليكم، كيف حالك؟", "Привет, мир!",
    "Съешь же ещё этих мягких французских булок", "नमस्ते दुनिया", "안녕하세요, 여러분", "Ελληνικά γράμματα",
    "👩‍👩‍👧‍👦 family", "👍🏽 thumbs", "🇯🇵🇫🇷🇧🇷 flags", "🏳️‍🌈 pride", "zero\u200bwidth", "rare\u2028separator",
    "para\u2029graph", "bell\x07char", "https://example.com/a?b=1&c=2", "@alice.bsky.social", "#caturday",
    "emoji only 🎉🎉🎉", "price: $5, €4, ¥600", "back\\slash", "it's a 'single' quote",
]  # fmt: skip
LABELS = [["porn"], ["!warn"], ["spam"], ["!warn", "spam"], ["sexual", "nudity"]]


@dataclass(frozen=True)
class SeedResult:
    posts: int
    media: int


class SeedError(Exception):
    """One-line, user-facing seed failure."""


def _stamp(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, from Unix milliseconds (civil-from-days, no datetime per row)."""
    secs, millis = divmod(ms, 1000)
    days, rem = divmod(secs, 86400)
    z = days + _DAYS_BEFORE_1970
    era, doe = divmod(z, 146097)
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    hour, rem = divmod(rem, 3600)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{rem // 60:02d}:{rem % 60:02d}.{millis:03d}Z"


class _Generator:
    def __init__(self, did: str, seed: int, media_every: int, media_dir: Path) -> None:
        self.rng = random.Random(f"{seed}:{did}")
        self.did, self.media_every, self.media_dir = did, media_every, media_dir
        self.folder = did.replace(":", "_")
        self.recent: deque[str] = deque(maxlen=64)
        self.clock = _START_MS
        self.files: list[Path] = []

    def b32(self, n: int) -> str:
        return "".join(self.rng.choices(_B32, k=n))

    def text(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.005:
            return None
        if roll < 0.015:
            return ""
        return " ".join(self.rng.choices(FRAGMENTS, k=self.rng.randint(1, 6)))[:300]

    def images(self, uri: str, created: str, media: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for _ in range(self.rng.randint(1, 4)):
            h = "bafkrei" + self.b32(52)
            png = self.rng.random() < 0.2
            w, ht = self.rng.choice([(1000, 750), (800, 800), (1200, 675), (640, 960)])
            alt = self.rng.choice(["", *FRAGMENTS[:8]])
            ext = "png" if png else "jpg"
            rel = f"{self.folder}/{h}.{ext}"
            body = self.rng.randbytes(self.rng.randint(56, 500))
            data = (b"\x89PNG\r\n\x1a\n" + body) if png else (b"\xff\xd8\xff\xe0" + body + b"\xff\xd9")
            path = self.media_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as stream:
                stream.write(data)
            self.files.append(path)
            media.append({
                "hash": h, "post_uri": uri, "mime_type": "image/png" if png else "image/jpeg", "file_path": rel,
                "size_bytes": len(data), "width": w, "height": ht, "alt_text": alt or None, "created_at": created,
            })  # fmt: skip
            found.append({
                "thumb": f"https://cdn.bsky.app/img/feed_thumbnail/plain/{self.did}/{h}@jpeg",
                "fullsize": f"https://cdn.bsky.app/img/feed_fullsize/plain/{self.did}/{h}@jpeg",
                "alt": alt, "aspectRatio": {"width": w, "height": ht},
            })  # fmt: skip
        return found

    def meta(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "score": rng.choice([round(rng.random() * 1000, rng.randint(0, 12)), 0.1, 1e-7, 1.5e300]),
            "big": rng.choice([2**64 + rng.randint(0, 999), 7]),
            "neg": rng.choice([-0.0, -1]),
            "nested": [1, [2, [3]]],
            "unicode": rng.choice(FRAGMENTS),
        }

    def embed(self, index: int, uri: str, created: str, media: list[dict[str, Any]]) -> tuple[str | None, Any]:
        rng = self.rng
        record = {"uri": rng.choice(self.recent) if self.recent else uri, "cid": "bafyrei" + self.b32(52)}
        if self.media_every and index % self.media_every == 0:
            images = self.images(uri, created, media)
            if index % (3 * self.media_every) == 0:
                return "record_with_media", {"record": record, "media": {"images": images}}
            return "images", {"images": images}
        roll = rng.random()
        if roll < 0.08:
            external: dict[str, Any] = {"uri": "https://example.com/" + self.b32(8), "title": rng.choice(FRAGMENTS),
                                        "description": rng.choice(FRAGMENTS)}  # fmt: skip
            if rng.random() < 0.5:
                external["thumb"] = (
                    f"https://cdn.bsky.app/img/feed_thumbnail/plain/{self.did}/bafkrei{self.b32(52)}@jpeg"
                )
            return "external", {"external": external}
        if roll < 0.14:
            return "record", {"record": record}
        return None, None

    def post(self, index: int, media: list[dict[str, Any]]) -> dict[str, Any]:
        rng = self.rng
        if rng.random() >= 1 / 15:
            self.clock -= rng.randint(0, 1_200_000)  # up to 20 minutes
        created = _stamp(self.clock)
        uri = f"at://{self.did}/app.bsky.feed.post/{self.b32(13)}"
        kind, data = self.embed(index, uri, created, media)
        if data is not None and rng.random() < 0.02:
            data["x_meta"] = self.meta()
        parent = rng.choice(self.recent) if self.recent and rng.random() < 0.25 else None
        labels = rng.choice(LABELS) if rng.random() < 0.03 else None
        row = {
            "uri": uri, "cid": "bafyrei" + self.b32(52), "did": self.did, "text": self.text(),
            "created_at": created, "indexed_at": _stamp(self.clock + rng.randint(0, 5000)),
            "has_media": kind in ("images", "record_with_media"),
            "like_count": min(int(rng.paretovariate(1.5)) - 1, 5000), "repost_count": int(rng.paretovariate(2.5)) - 1,
            "reply_count": int(rng.paretovariate(3)) - 1, "quote_count": int(rng.paretovariate(4)) - 1,
            "is_reply": parent is not None, "reply_parent": parent, "embed_type": kind,
            "embed_data": None if data is None else simplejson.dumps(data, ensure_ascii=False, separators=(",", ":")),
            "labels": None if labels is None else simplejson.dumps([{"val": v} for v in labels]),
            "archived_at": "2025-11-02T00:00:00.000Z",
        }  # fmt: skip
        self.recent.append(uri)
        return row

    def chunks(self, posts: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        for start in range(0, posts, _CHUNK):
            media: list[dict[str, Any]] = []
            rows = [self.post(i, media) for i in range(start, min(start + _CHUNK, posts))]
            yield rows, media


def seed_archive(
    engine: Engine,
    posts_table: Table,
    media_table: Table,
    *,
    posts: int,
    did: str = DEFAULT_DID,
    seed: int = 0,
    media_every: int = 20,
    media_dir: Path,
) -> SeedResult:
    """Write ``posts`` deterministic posts for ``did`` in one transaction (nothing is left on failure).

    Same arguments, same rows and files. Every ``media_every``-th post has 1-4
    images, each with a media row and a small real file under ``media_dir``.
    """
    if posts < 0:
        raise SeedError(f"--posts must be 0 or more, not {posts}")
    if media_every < 0:
        raise SeedError(f"--media-every must be 0 or more, not {media_every}")
    gen = _Generator(did, seed, media_every, media_dir)
    media_count = 0
    try:
        with engine.begin() as conn:
            for rows, media in gen.chunks(posts):
                if rows:
                    conn.execute(posts_table.insert(), rows)
                if media:
                    conn.execute(media_table.insert(), media)
                media_count += len(media)
    except (IntegrityError, FileExistsError):
        _remove(gen.files)
        raise SeedError(f"the archive already holds posts from seed {seed} for {did}; use another --seed") from None
    except BaseException:
        _remove(gen.files)
        raise
    return SeedResult(posts=posts, media=media_count)


def _remove(files: list[Path]) -> None:
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
