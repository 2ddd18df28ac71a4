"""A deterministic synthetic archive: realistic posts, replies, embeds, labels and media files.

``seed_archive`` writes ``posts`` posts of one DID in a single transaction,
newest first in time: 2025-11-01T12:00:00.000Z going backwards by steps of
0-90 s (about 1 post in 15 shares the previous post's ``created_at``, and about
1 in 20 follows an "offline" gap of 2-12 hours, so that even a few hundred
posts span several days). The same ``(posts, did, seed, media_every)`` always
gives the same rows and the same media files: everything comes from one
``random.Random(f"{seed}:{did}")``. Texts mix scripts, emoji, quotes, commas,
newlines and the odd control character, and embeds carry numbers that test
JSON encoders. Rows are generated and inserted 5,000 at a time, so a million
posts need little memory.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import simplejson
import sqlalchemy
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

DEFAULT_DID = "did:plc:q6gjnaw2blty4crticxkmujt"

_Row = dict[str, Any]

_CHUNK = 5_000
_START_MS = 1_761_998_400_000  # 2025-11-01T12:00:00.000Z
_ARCHIVED_AT = "2025-11-02T00:00:00.000Z"
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"
_SORTABLE_PAIRS = [a + b for a in _SORTABLE for b in _SORTABLE]  # 10 bits -> 2 characters
# byte -> lowercase base32 character (256 is a multiple of 32: random bytes give uniform characters)
_B32_CHARS = bytes(b"abcdefghijklmnopqrstuvwxyz234567"[b % 32] for b in range(256))
_DID = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._-]")
_RECENT = 64  # how many recent post URIs replies and quotes may point at
_TIE, _GAP = 1 / 15, 1 / 20  # chance of a created_at tie, of an offline gap
_JPEG_HEAD, _JPEG_TAIL, _PNG_HEAD = b"\xff\xd8\xff\xe0", b"\xff\xd9", b"\x89PNG\r\n\x1a\n"
_CDN = "https://cdn.bsky.app/img"

# fmt: off
_FRAGMENTS = (
    "Just archived my whole timeline.", "Good morning, Bluesky!", "Coffee first, questions later.",
    'She said "no", then "yes", then "maybe".', "apples, pears, plums; and figs", "It's a 'single' quote",
    "Reading a paper on CRDTs; it's surprisingly readable.", "Does anyone know a good ramen place near the station?",
    "Thread 🧵 1/5", "This is fine.", "lol", "new blog post: how I back up my posts, step by step",
    'Config tip: set "retries" to 3; not 30.', "price: $5, €4, ¥600, £3", "<b>not bold</b> & co",
    "C:\\Users\\me\\archive", "first line\nsecond line", "col1\tcol2\tcol3", "zero\u200bwidth space",
    "今日はいい天気ですね。", "東京の桜🌸が満開です", "おはようございます。", "猫がキーボードの上で寝ている😺",
    "مرحبا بالعالم", "السلام عليكم، كيف حالك؟", "صباح الخير يا أصدقاء",
    "Привет, мир!", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "नमस्ते दुनिया", "आज मौसम बहुत अच्छा है।", "안녕하세요, 여러분", "오늘 저녁 뭐 먹지?",
    "👩‍👩‍👧‍👦", "👍🏽", "🧑🏿‍💻 shipping code", "🇯🇵🇫🇷🇧🇷", "🏳️‍🌈", "🏴‍☠️", "🎉🎉🎉", "❤️‍🔥", "👋🏻👋🏼👋🏽👋🏾👋🏿",
    "https://bsky.app/profile/alice.bsky.social", "https://example.com/a?b=1&c=2#frag",
    "https://ja.wikipedia.org/wiki/東京", "http://localhost:8080/path,with,commas",
    "@alice.bsky.social", "@bob.example.com", "@karin.bsky.social", "#caturday", "#BlueskyArchive", "#日本語",
)
_RARE = ("\u2028", "\u2029", "\x07", "\x1b", "\r\n")
_SEPARATORS = (" ", " ", " ", " ", ", ", "; ", "\n", "\n\n", "\t")
_URLS = ("https://example.com/articles/", "https://blog.example.org/2025/", "https://news.example.net/story?id=")
_ASPECTS = ((1000, 750), (750, 1000), (1200, 675), (800, 800), (2000, 1500), (640, 960), (1179, 2556))
_LABELS = ("porn", "sexual", "nudity", "graphic-media", "!warn", "!hide", "spam")
# fmt: on


@dataclass(frozen=True)
class SeedResult:
    posts: int
    media: int


class SeedError(Exception):
    """One-line, user-facing seed failure."""


@lru_cache(maxsize=4096)
def _minute(minutes: int) -> str:
    """'YYYY-MM-DDTHH:MM:' of a minute since the Unix epoch (cached: consecutive posts share minutes)."""
    days, minute = divmod(minutes, 1440)
    return f"{date.fromordinal(_EPOCH_ORDINAL + days).isoformat()}T{minute // 60:02d}:{minute % 60:02d}:"


def _stamp(ms: int) -> str:
    """RFC 3339 UTC with milliseconds and 'Z' from Unix milliseconds: 2025-11-01T12:00:00.000Z."""
    minutes, ms = divmod(ms, 60_000)
    return f"{_minute(minutes)}{ms // 1000:02d}.{ms % 1000:03d}Z"


def _tid_text(value: int) -> str:
    value %= 1 << 63  # posts dated before 1970 (millions of posts back) wrap around instead of failing
    return _SORTABLE[value >> 60] + "".join(
        [_SORTABLE_PAIRS[(value >> shift) & 1023] for shift in (50, 40, 30, 20, 10, 0)]
    )


def _dumps(value: Any) -> str:
    return simplejson.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Generator:
    """The rows and media files of one seed run, from one random stream."""

    def __init__(self, did: str, seed: int, media_every: int, media_dir: Path) -> None:
        self.rng = random.Random(f"{seed}:{did}")
        self.did, self.media_every, self.media_dir = did, media_every, media_dir
        self.folder = did.replace(":", "_")
        self.recent: deque[str] = deque(maxlen=_RECENT)
        self.clock = _START_MS
        self.last_tid = (_START_MS + 1) * 1000 << 10
        self.written: list[Path] = []  # files this run created: removed if the run fails
        self.made_dirs: list[Path] = []  # folders this run created, deepest first
        self.folder_ready = False

    # -- identifiers -------------------------------------------------------
    def b32(self, chars: int) -> str:
        """``chars`` random lowercase base32 characters (the alphabet of CIDs and did:plc)."""
        return self.rng.randbytes(chars).translate(_B32_CHARS).decode("ascii")

    def tid(self, ms: int | None = None) -> str:
        """A record key shaped like an atproto TID; with ``ms``, that of a post created then.

        A TID is microseconds since 1970 and a 10-bit clock id, in 13 base32-sortable
        characters. A post's TID takes ``ms`` plus random microseconds and a random
        clock id, kept strictly decreasing (posts go back in time): never repeated
        within a run, and with 20 random bits per millisecond practically never
        shared across seeds. Inserting in key order also keeps the primary-key index
        fast. Without ``ms``, a random TID (for made-up references).
        """
        if ms is None:
            return _tid_text(self.rng.getrandbits(63))
        value = (ms * 1000 << 10) + self.rng.randrange(1000 << 10)
        self.last_tid = value = min(value, self.last_tid - 1)
        return _tid_text(value)

    def record_ref(self, own_uri: str) -> dict[str, str]:
        rng = self.rng
        if self.recent and rng.random() < 0.5:
            uri = rng.choice(self.recent)
        elif rng.random() < 0.9:
            uri = f"at://did:plc:{self.b32(24)}/app.bsky.feed.post/{self.tid()}"
        else:
            uri = own_uri.rsplit("/", 1)[0] + "/" + self.tid()
        return {"uri": uri, "cid": "bafyrei" + self.b32(52)}

    # -- content -----------------------------------------------------------
    def fragment(self) -> str:
        return self.rng.choice(_RARE) if self.rng.random() < 0.01 else self.rng.choice(_FRAGMENTS)

    def text(self) -> str | None:
        """1-8 fragments joined by separators, at most 300 characters; 1 in 200 None, 1 in 100 empty."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.005:
            return None
        if roll < 0.015:
            return ""
        count = rng.randint(1, 8)
        parts = rng.choices(_FRAGMENTS, k=count)
        if roll > 0.97:
            parts[rng.randrange(count)] = rng.choice(_RARE)
        text = parts[0]
        for separator, part in zip(rng.choices(_SEPARATORS, k=count - 1), parts[1:], strict=False):
            if len(text) + len(separator) + len(part) > 300:
                break
            text += separator + part
        return text

    def meta(self) -> dict[str, Any]:
        """Values that JSON encoders get wrong: long floats, huge ints, -0.0, deep lists."""
        rng = self.rng
        return {
            "score": rng.choice((round(rng.random() * 1000, rng.randint(0, 12)), 0.1, 1e-7, 1.5e300)),
            "big": rng.choice((2**64 + rng.getrandbits(40), -(2**70) - 1, rng.randint(0, 10**6))),
            "neg": rng.choice((-0.0, -0.0, -1.25, 0)),
            "nested": [1, [2, [3]]],
            "unicode": rng.choice(_FRAGMENTS),
        }

    def labels(self) -> str | None:
        rng = self.rng
        if rng.random() >= 0.03:
            return None
        values = rng.sample(_LABELS, 2) if rng.random() < 1 / 3 else [rng.choice(_LABELS)]
        return simplejson.dumps([{"val": value} for value in values])

    # -- media -------------------------------------------------------------
    def write_file(self, rel: str, data: bytes) -> None:
        """Create ``media_dir/rel``; an identical file left by an earlier run is kept as it is."""
        path = self.media_dir / rel
        if not self.folder_ready:
            self.made_dirs = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folder_ready = True
        try:
            stream = open(path, "xb")  # noqa: SIM115 - recorded before writing, so a partial file is removed too
        except FileExistsError:
            if path.read_bytes() != data:
                raise SeedError(f"media file {path} already exists with other content; use another --seed") from None
            return
        self.written.append(path)
        with stream:
            stream.write(data)

    def images(self, uri: str, created: str, media: list[_Row]) -> list[dict[str, Any]]:
        rng = self.rng
        images = []
        for _ in range(rng.choices((1, 2, 3, 4), (6, 2, 1, 1))[0]):  # most posts with images have one
            h = "bafkrei" + self.b32(52)
            width, height = rng.choice(_ASPECTS)
            alt = "" if rng.random() < 0.3 else rng.choice(_FRAGMENTS)
            size = rng.randint(64, 512)
            if rng.random() < 0.2:
                mime, rel = "image/png", f"{self.folder}/{h}.png"
                data = _PNG_HEAD + rng.randbytes(size - len(_PNG_HEAD))
            else:
                mime, rel = "image/jpeg", f"{self.folder}/{h}.jpg"
                data = _JPEG_HEAD + rng.randbytes(size - len(_JPEG_HEAD) - len(_JPEG_TAIL)) + _JPEG_TAIL
            self.write_file(rel, data)
            media.append({
                "hash": h, "post_uri": uri, "mime_type": mime, "file_path": rel, "size_bytes": len(data),
                "width": width, "height": height, "alt_text": alt or None, "created_at": created,
            })  # fmt: skip
            thumb, full = (f"{_CDN}/feed_{kind}/plain/{self.did}/{h}@jpeg" for kind in ("thumbnail", "fullsize"))
            ratio = {"width": width, "height": height}
            images.append({"thumb": thumb, "fullsize": full, "alt": alt, "aspectRatio": ratio})
        return images

    # -- posts -------------------------------------------------------------
    def embed(self, index: int, uri: str, created: str, media: list[_Row]) -> tuple[str | None, dict[str, Any] | None]:
        rng = self.rng
        if self.media_every and index % self.media_every == 0:
            images = self.images(uri, created, media)
            if (index // self.media_every) % 3 == 0:
                return "record_with_media", {"record": self.record_ref(uri), "media": {"images": images}}
            return "images", {"images": images}
        roll = rng.random()
        if roll < 0.08:
            external = {"uri": rng.choice(_URLS) + self.tid(), "title": self.fragment(), "description": self.fragment()}
            if rng.random() < 0.5:
                external["thumb"] = f"{_CDN}/feed_thumbnail/plain/{self.did}/bafkrei{self.b32(52)}@jpeg"
            return "external", {"external": external}
        if roll < 0.14:
            return "record", {"record": self.record_ref(uri)}
        return None, None

    def tick(self) -> int:
        """Step the clock back: a tie, an offline gap of 2-12 h, or 0-90 s (in ms)."""
        roll = self.rng.random()
        if roll >= _TIE:
            step = self.rng.randint(7_200_000, 43_200_000) if roll < _TIE + _GAP else self.rng.randint(0, 90_000)
            self.clock -= step
        return self.clock

    def post(self, index: int, media: list[_Row]) -> _Row:
        rng = self.rng
        clock = self.tick()
        created = _stamp(clock)
        uri = f"at://{self.did}/app.bsky.feed.post/{self.tid(clock)}"
        kind, embed = self.embed(index, uri, created, media)
        if embed is not None and rng.random() < 0.02:
            embed["x_meta"] = self.meta()
        parent = rng.choice(self.recent) if self.recent and rng.random() < 0.25 else None
        row = {
            "uri": uri, "cid": "bafyrei" + self.b32(52), "did": self.did, "text": self.text(),
            "created_at": created, "indexed_at": _stamp(clock + rng.randint(0, 5_000)),
            "has_media": kind in ("images", "record_with_media"),
            "like_count": min(int(rng.paretovariate(1.5)) - 1, 5_000),
            "repost_count": min(int(rng.paretovariate(2.0)) - 1, 1_000),
            "reply_count": min(int(rng.paretovariate(2.5)) - 1, 500),
            "quote_count": min(int(rng.paretovariate(3.0)) - 1, 200),
            "is_reply": parent is not None, "reply_parent": parent, "embed_type": kind,
            "embed_data": None if embed is None else _dumps(embed), "labels": self.labels(),
            "archived_at": _ARCHIVED_AT,
        }  # fmt: skip
        self.recent.append(uri)
        return row

    def chunks(self, posts: int) -> Iterator[tuple[list[_Row], list[_Row]]]:
        """Posts and media rows, ``_CHUNK`` posts at a time (the media files are written as they come)."""
        for start in range(0, posts, _CHUNK):
            media: list[_Row] = []
            yield [self.post(index, media) for index in range(start, min(start + _CHUNK, posts))], media

    def remove_files(self) -> None:
        """Remove the files and then the (empty) folders this run created."""
        for path in self.written:
            path.unlink(missing_ok=True)
        for folder in self.made_dirs:
            try:
                folder.rmdir()
            except OSError:
                break


def seed_archive(
    engine: sqlalchemy.engine.Engine,
    posts_table: sqlalchemy.Table,
    media_table: sqlalchemy.Table,
    *,
    posts: int,
    did: str = DEFAULT_DID,
    seed: int = 0,
    media_every: int = 20,
    media_dir: Path,
) -> SeedResult:
    """Write ``posts`` synthetic posts of ``did`` (and their media) in one transaction.

    The same ``posts``, ``did``, ``seed`` and ``media_every`` always give the
    same rows and files. Every ``media_every``-th post (0: none) has 1-4
    images (mostly one), each a media row and a small real file under
    ``media_dir``. On any
    failure nothing is left behind: the transaction is rolled back and the
    files this run created are removed. Raises SeedError (one line) for bad
    arguments, a seed already in the archive, or a database or file error.

    Example::

        engine = sqlalchemy.create_engine("sqlite:///skyarchive.db")
        Base.metadata.create_all(engine)
        seed_archive(engine, posts_table, media_table, posts=1000, media_dir=Path("media"))
        # -> SeedResult(posts=1000, media=<about 125>)
    """
    if posts < 0:
        raise SeedError(f"--posts must be 0 or more, not {posts}")
    if media_every < 0:
        raise SeedError(f"--media-every must be 0 or more, not {media_every}")
    if not _DID.fullmatch(did):
        raise SeedError(f"not a DID: {did!r} (expected e.g. {DEFAULT_DID})")
    gen = _Generator(did, seed, media_every, Path(media_dir))
    media_rows, done = 0, False
    try:
        with engine.begin() as conn:
            for post_rows, media in gen.chunks(posts):
                conn.execute(posts_table.insert(), post_rows)
                if media:
                    conn.execute(media_table.insert(), media)
                media_rows += len(media)
        done = True
    except IntegrityError:
        raise SeedError(f"the archive already holds posts from seed {seed} for {did}; use another --seed") from None
    except SQLAlchemyError as exc:
        reason = (str(getattr(exc, "orig", None) or exc).splitlines() or ["unknown error"])[0]
        raise SeedError(f"cannot write the archive: {reason}") from None
    except OSError as exc:
        raise SeedError(f"cannot write media file {exc.filename or media_dir}: {exc.strerror or exc}") from None
    finally:
        if not done:
            gen.remove_files()
    return SeedResult(posts=posts, media=media_rows)
