"""One full-text document per searchable resource, maintained by the owning service."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey


class SearchDocument(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "search_index"
    __table_args__ = (
        UniqueConstraint("subject_type", "subject_id"),
        Index("ix_search_index_document", "document", postgresql_using="gin"),
        Index("ix_search_index_team_type", "team_id", "subject_type"),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    subject_type: Mapped[str] = mapped_column(String(50))
    subject_id: Mapped[uuid.UUID]
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str | None] = mapped_column(Text)
    document: Mapped[str] = mapped_column(TSVECTOR)
