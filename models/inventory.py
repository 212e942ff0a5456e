"""Stock items per team."""

from __future__ import annotations

import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, non_negative


class InventoryItem(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "inventory"
    __table_args__ = (
        UniqueConstraint("team_id", "sku"),
        non_negative("quantity"),
        non_negative("unit_price"),
        non_negative("low_stock_threshold"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    unit_price: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str] = mapped_column(String(3), default="USD", server_default="USD")
    low_stock_threshold: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    archived: Mapped[bool] = mapped_column(default=False, server_default="false")
    # Optimistic concurrency: every update bumps it (SQLAlchemy's version_id_col).
    version: Mapped[int] = mapped_column(default=1, server_default="1")

    __mapper_args__ = {"version_id_col": version}


class InventoryAdjustment(UUIDPrimaryKey, Timestamps, Base):
    """The stock ledger: one row per applied change of an item's quantity."""

    __tablename__ = "inventory_adjustments"
    __table_args__ = (
        CheckConstraint("delta <> 0", name="delta_not_zero"),
        non_negative("quantity_after"),
        Index("ix_inventory_adjustments_item_created", "item_id", "created_at"),
    )

    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("inventory.id", ondelete="CASCADE"))
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    delta: Mapped[int] = mapped_column(BigInteger)
    quantity_after: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
