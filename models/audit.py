"""The append-only audit trail, HMAC-chained per team, and each chain's sealed head."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, text
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps


class AuditLog(Timestamps, Base):
    """One audited action. Inserted signed but pending (`hash` NULL); the sealer then
    links it into its chain once. A trigger refuses every other UPDATE, and DELETE
    (migrations 9c4d2e7a51b3, 5a0de1c2b7f4)."""

    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_team_created", "team_id", "created_at"),
        Index("ix_audit_logs_subject", "subject_type", "subject_id"),
        # Analytics built-ins: every team's actors in a time window (active users).
        Index("ix_audit_logs_created", "created_at"),
        # One chain in order (verify's pages, the listing's id cursor).
        Index("ix_audit_logs_team_id_id", "team_id", "id"),
        # One chain in its order (verify's pages).
        Index("ix_audit_logs_team_chain_seq", "team_id", "chain_seq"),
        # What the sealer has still to chain.
        Index("ix_audit_logs_pending", "id", postgresql_where=text("hash IS NULL")),
        # A copy of a genuine pending row carries the same MAC: refused.
        Index("uq_audit_logs_entry_mac", "entry_mac", unique=True),
    )

    # A sequence, so ids follow the order rows were written in; the chain's order is
    # `chain_seq` (the sealer's), which a long transaction's row can differ from.
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    action: Mapped[str] = mapped_column(String(100))
    subject_type: Mapped[str | None] = mapped_column(String(50))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(String(500))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # The AUDIT_KEYS id whose key made `entry_mac` and `hash` (HMACs, services/core/audit_seal.py).
    key_id: Mapped[str] = mapped_column(String(16))
    # Set by the request: the row's content signed, so the sealer chains only rows written
    # by a holder of the key (NULL on rows from before the sealer).
    entry_mac: Mapped[str | None] = mapped_column(String(64))
    # Set once by the sealer: the row's place in its chain (1, 2, ...), the previous row's
    # hash and its own, which covers its content and that link.
    chain_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Timestamps, Base):
    """Where one chain ends, sealed with an audit key: deleting the newest rows shows.

    Written in the same transaction as every append; a trigger refuses DELETE and any
    UPDATE that does not move the head forward.
    """

    __tablename__ = "audit_heads"

    # The team's id as text, or "global" for rows without a team (services.core.audit.chain_of).
    chain: Mapped[str] = mapped_column(String(36), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(16))
    seal: Mapped[str] = mapped_column(String(64))
