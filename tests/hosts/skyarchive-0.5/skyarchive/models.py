"""The archive schema (SQLAlchemy 2.x typed declarative mapping)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, false, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Post(Base):
    __tablename__ = "posts"

    uri: Mapped[str] = mapped_column(primary_key=True)
    cid: Mapped[str]
    did: Mapped[str]
    text: Mapped[str | None]
    created_at: Mapped[str]
    indexed_at: Mapped[str]
    has_media: Mapped[bool] = mapped_column(server_default=false())
    like_count: Mapped[int] = mapped_column(server_default=text("0"))
    repost_count: Mapped[int] = mapped_column(server_default=text("0"))
    reply_count: Mapped[int] = mapped_column(server_default=text("0"))
    quote_count: Mapped[int] = mapped_column(server_default=text("0"))
    is_reply: Mapped[bool] = mapped_column(server_default=false())
    reply_parent: Mapped[str | None]
    embed_type: Mapped[str | None]
    embed_data: Mapped[str | None]
    labels: Mapped[str | None]
    archived_at: Mapped[str]

    __table_args__ = (Index("idx_posts_did", "did"),)


class Media(Base):
    __tablename__ = "media"

    hash: Mapped[str] = mapped_column(primary_key=True)
    post_uri: Mapped[str] = mapped_column(ForeignKey("posts.uri", ondelete="CASCADE"))
    mime_type: Mapped[str]
    file_path: Mapped[str]
    size_bytes: Mapped[int]
    width: Mapped[int | None]
    height: Mapped[int | None]
    alt_text: Mapped[str | None]
    created_at: Mapped[str]

    __table_args__ = (Index("idx_media_post_uri", "post_uri"),)


Index("idx_posts_created_at", Post.created_at.desc())

posts_table = Post.__table__
media_table = Media.__table__

#: Post columns in schema order: the key order of posts.json objects.
POST_COLUMNS: tuple[str, ...] = tuple(c.name for c in posts_table.columns)
