"""Stock items per team and their ledger of quantity changes.

An item's quantity only ever changes through `adjust` (or the opening stock given when
the item is created), and every change writes one `inventory_adjustments` row in the
same transaction, so the ledger's deltas always sum to the quantity. `adjust` applies
the change with ONE conditional `UPDATE ... SET quantity = quantity + :delta WHERE
quantity + :delta BETWEEN 0 AND MAX_QUANTITY RETURNING ...`: PostgreSQL's row lock
serialises concurrent adjustments of an item, none is lost, and none can take the
quantity below zero or, adjustment after adjustment, past what BIGINT holds.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from psycopg.errors import UniqueViolation
from sqlalchemy import Select, or_, select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import InventoryAdjustment, InventoryItem, User
from services.core.audit import record_audit
from services.core.errors import Conflict, NotFound, ValidationFailed
from services.core.pagination import Page, paginate
from services.insights import dashboard, search
from services.messaging.notifications import notify_team

# Fields PATCH may change; quantity is not one of them (only adjustments move it).
EDITABLE = ("name", "description", "unit_price", "currency", "low_stock_threshold", "archived")
LOW_STOCK_ROLES = ("owner", "admin")
SEARCH_TYPE = "inventory"
# Quantities, prices and single changes up to 10^12: a typo of a few zeros is refused, and
# no sum of changes comes near BIGINT's 9.2 * 10^18 (which would be a 500 at the UPDATE).
MAX_QUANTITY = 1_000_000_000_000


def _currency(code: str) -> str:
    code = code.upper()
    if code not in current_app.config["SETTINGS"].currency_allow_list:
        raise ValidationFailed(
            "This currency is not accepted.", errors={"currency": ["Not an accepted currency."]}
        )
    return code


def create_item(
    user: User,
    team_id: uuid.UUID,
    *,
    sku: str,
    name: str,
    description: str | None,
    quantity: int,
    unit_price: int,
    currency: str,
    low_stock_threshold: int,
) -> InventoryItem:
    """Create an item (its opening stock, if any, is the first ledger row). One transaction."""
    item = InventoryItem(
        id=uuid.uuid4(), team_id=team_id, sku=sku, name=name, description=description,
        quantity=quantity, unit_price=unit_price, currency=_currency(currency),
        low_stock_threshold=low_stock_threshold, archived=False,
    )  # fmt: skip
    db.session.add(item)
    try:
        db.session.flush()
    except IntegrityError as exc:
        db.session.rollback()
        if isinstance(exc.orig, UniqueViolation):
            raise Conflict(f"An item with SKU {sku!r} already exists in this team.") from None
        raise
    if quantity:
        opening = InventoryAdjustment(
            id=uuid.uuid4(), item_id=item.id, team_id=team_id, actor_id=user.id,
            delta=quantity, quantity_after=quantity, reason="opening stock",
        )  # fmt: skip
        db.session.add(opening)
    record_audit("inventory.created", actor_id=user.id, team_id=team_id, subject_type="inventory",
                 subject_id=item.id, data={"sku": sku, "quantity": quantity})  # fmt: skip
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    _index(item)
    db.session.commit()
    return item


def _index(item: InventoryItem) -> None:
    """The item's search document (title: name; body: SKU and description)."""
    body = "\n".join(part for part in (item.sku, item.description) if part)
    search.index_document(item.team_id, SEARCH_TYPE, item.id, item.name, body)


def get_item(team_id: uuid.UUID, item_id: uuid.UUID) -> InventoryItem:
    """One of the team's items (404 for another team's)."""
    item = db.session.get(InventoryItem, item_id)
    if item is None or item.team_id != team_id:
        raise NotFound("No such inventory item.")
    return item


def _locked_item(team_id: uuid.UUID, item_id: uuid.UUID) -> InventoryItem:
    item = db.session.scalar(
        select(InventoryItem)
        .where(InventoryItem.id == item_id, InventoryItem.team_id == team_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if item is None:
        raise NotFound("No such inventory item.")
    return item


def list_items(
    team_id: uuid.UUID, *, q: str | None, archived: bool | None, limit: int, cursor: str | None
) -> Page[InventoryItem]:
    """The team's items, newest first; `q` matches inside the SKU or the name."""
    query: Select[InventoryItem] = select(InventoryItem).where(InventoryItem.team_id == team_id)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                InventoryItem.sku.ilike(pattern, escape="\\"),
                InventoryItem.name.ilike(pattern, escape="\\"),
            )
        )
    if archived is not None:
        query = query.where(InventoryItem.archived.is_(archived))
    return paginate(query, InventoryItem, limit, cursor)


def update_item(
    user: User, team_id: uuid.UUID, item_id: uuid.UUID, changes: dict[str, Any]
) -> InventoryItem:
    """Change an item's editable fields (under its row lock). One transaction."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:  # the schema refuses them first; this guards other callers
        raise ValidationFailed(
            "These fields cannot be changed.", errors={f: ["Not editable."] for f in unknown}
        )
    item = _locked_item(team_id, item_id)
    if "currency" in changes:
        changes["currency"] = _currency(changes["currency"])
    diff = {}
    for field, value in changes.items():
        if getattr(item, field) != value:
            diff[field] = {"from": getattr(item, field), "to": value}
            setattr(item, field, value)
    if diff:
        record_audit("inventory.updated", actor_id=user.id, team_id=team_id,
                     subject_type="inventory", subject_id=item.id, data=diff)  # fmt: skip
        _index(item)
    db.session.commit()
    return item


def delete_item(user: User, team_id: uuid.UUID, item_id: uuid.UUID) -> None:
    """Delete an item and its ledger. One transaction."""
    item = _locked_item(team_id, item_id)
    record_audit("inventory.deleted", actor_id=user.id, team_id=team_id, subject_type="inventory",
                 subject_id=item.id, data={"sku": item.sku, "quantity": item.quantity})  # fmt: skip
    db.session.delete(item)
    search.remove_document(SEARCH_TYPE, item.id)
    db.session.commit()


def adjust(
    user: User, team_id: uuid.UUID, item_id: uuid.UUID, *, delta: int, reason: str | None
) -> tuple[InventoryItem, InventoryAdjustment]:
    """Apply one stock change atomically, write its ledger row, audit it, and notify the
    team's owners and admins when it takes the quantity down through the low-stock
    threshold. Never below zero (409). One transaction."""
    if delta == 0:
        raise ValidationFailed("A change of zero changes nothing.", errors={"delta": ["Non-zero."]})
    row = db.session.execute(
        update(InventoryItem)
        .where(
            InventoryItem.id == item_id,
            InventoryItem.team_id == team_id,
            InventoryItem.quantity + delta >= 0,
            InventoryItem.quantity + delta <= MAX_QUANTITY,
        )
        .values(quantity=InventoryItem.quantity + delta, version=InventoryItem.version + 1)
        .returning(InventoryItem.quantity, InventoryItem.low_stock_threshold)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        db.session.rollback()
        current = get_item(team_id, item_id)  # 404 for a missing item
        detail = (
            f"Only {current.quantity} in stock; a change of {delta} would go below zero."
            if delta < 0
            else f"{current.quantity} in stock; a change of {delta} would exceed {MAX_QUANTITY}."
        )
        raise Conflict(detail, extra={"quantity": current.quantity})
    quantity_after, threshold = int(row.quantity), int(row.low_stock_threshold)
    dashboard.invalidate(team_id)  # a Core UPDATE: the flush listener does not see it
    adjustment = InventoryAdjustment(
        id=uuid.uuid4(), item_id=item_id, team_id=team_id, actor_id=user.id, delta=delta,
        quantity_after=quantity_after, reason=reason,
    )  # fmt: skip
    db.session.add(adjustment)
    item = db.session.scalar(
        select(InventoryItem)
        .where(InventoryItem.id == item_id)
        .execution_options(populate_existing=True)
    )
    assert item is not None
    before = quantity_after - delta
    if before > threshold >= quantity_after:
        notify_team(
            team_id,
            "inventory_low_stock",
            {"team_id": str(team_id), "item_id": str(item.id), "sku": item.sku,
             "name": item.name, "quantity": quantity_after, "threshold": threshold},
            event_key=f"low_stock:{item.id}:{adjustment.id}",
            roles=list(LOW_STOCK_ROLES),
        )  # fmt: skip
    record_audit(
        "inventory.adjusted", actor_id=user.id, team_id=team_id, subject_type="inventory",
        subject_id=item.id,
        data={"delta": delta, "quantity": {"from": before, "to": quantity_after},
              "reason": reason, "adjustment_id": str(adjustment.id)},
    )  # fmt: skip
    db.session.commit()
    return item, adjustment


def list_adjustments(
    team_id: uuid.UUID, item_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[InventoryAdjustment]:
    """An item's ledger, newest first."""
    get_item(team_id, item_id)
    query: Select[InventoryAdjustment] = select(InventoryAdjustment).where(
        InventoryAdjustment.item_id == item_id
    )
    return paginate(query, InventoryAdjustment, limit, cursor)
