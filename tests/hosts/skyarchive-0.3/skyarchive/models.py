"""The archive schema (SQLAlchemy 1.4 declarative, legacy style)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, Text, false
from sqlalchemy import text as sql_text
from sqlalchemy.orm import declarative_base

Base = declarative_base()


class Post(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "posts"

    uri = Column(Text, primary_key=True)
    cid = Column(Text, nullable=False)
    did = Column(Text, nullable=False)
    text = Column(Text)
    created_at = Column(Text, nullable=False)
    indexed_at = Column(Text, nullable=False)
    has_media = Column(Boolean, nullable=False, server_default=false())
    like_count = Column(Integer, nullable=False, server_default=sql_text("0"))
    repost_count = Column(Integer, nullable=False, server_default=sql_text("0"))
    reply_count = Column(Integer, nullable=False, server_default=sql_text("0"))
    quote_count = Column(Integer, nullable=False, server_default=sql_text("0"))
    is_reply = Column(Boolean, nullable=False, server_default=false())
    reply_parent = Column(Text)
    embed_type = Column(Text)
    embed_data = Column(Text)
    labels = Column(Text)
    archived_at = Column(Text, nullable=False)

    __table_args__ = (
        Index("idx_posts_did", "did"),
        Index("idx_posts_created_at", created_at.desc()),
    )


class Media(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "media"

    hash = Column(Text, primary_key=True)
    post_uri = Column(Text, ForeignKey("posts.uri", ondelete="CASCADE"), nullable=False)
    mime_type = Column(Text, nullable=False)
    file_path = Column(Text, nullable=False)
    size_bytes = Column(Integer, nullable=False)
    width = Column(Integer)
    height = Column(Integer)
    alt_text = Column(Text)
    created_at = Column(Text, nullable=False)

    __table_args__ = (Index("idx_media_post_uri", "post_uri"),)


posts_table = Post.__table__
media_table = Media.__table__

#: Post columns in schema order: the key order of posts.json objects.
POST_COLUMNS: tuple[str, ...] = tuple(c.name for c in posts_table.columns)
