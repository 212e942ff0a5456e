"""HTTP for stock items and their adjustments (API.md "inventory")."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import url_for

from blueprints.common.auth import me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import header_ref, operation_doc
from blueprints.common.schemas import ListQuery
from blueprints.common.teams import team_permission
from blueprints.inventory.schemas import (
    AdjustmentIn,
    AdjustmentOut,
    AdjustmentPage,
    AdjustmentResult,
    ItemEnvelope,
    ItemIn,
    ItemListQuery,
    ItemOut,
    ItemPage,
    ItemPatch,
)
from models import InventoryAdjustment, InventoryItem
from services.inventory import items as inventory

bp = APIBlueprint("inventory", __name__, url_prefix="/api/v1/teams", tag="inventory")


def item_out(item: InventoryItem) -> ItemOut:
    return ItemOut.model_validate(item, from_attributes=True)


def adjustment_out(adjustment: InventoryAdjustment) -> AdjustmentOut:
    return AdjustmentOut.model_validate(adjustment, from_attributes=True)


@bp.get("/<uuid:team_id>/inventory")
@team_permission("inventory.read")
@bp.input(ItemListQuery, location="query", arg_name="query")
@bp.output(ItemPage)
def list_items(team_id: uuid.UUID, query: ItemListQuery) -> ItemPage:
    """The team's stock items, newest first (filters: q in SKU or name, archived)."""
    page = inventory.list_items(
        team_id, q=query.q, archived=query.archived, limit=query.limit, cursor=query.cursor
    )
    return ItemPage(items=[item_out(i) for i in page.items], next_cursor=page.next_cursor)


@bp.post("/<uuid:team_id>/inventory")
@team_permission("inventory.write")
@bp.input(ItemIn, location="json", arg_name="body")
@idempotent()
@bp.output(ItemEnvelope, status_code=201)
@bp.doc(responses={409: "An item with this SKU already exists in the team"})
@operation_doc(responses={201: {"headers": {"Location": header_ref("Location")}}})
def create_item(team_id: uuid.UUID, body: ItemIn) -> Any:
    """Add a stock item (SKUs are unique per team: a duplicate is 409)."""
    item = inventory.create_item(me(), team_id, **body.model_dump())
    location = url_for("inventory.get_item", team_id=team_id, item_id=item.id)
    return ItemEnvelope(item=item_out(item)), 201, {"Location": location}


@bp.get("/<uuid:team_id>/inventory/<uuid:item_id>")
@team_permission("inventory.read")
@bp.output(ItemEnvelope)
def get_item(team_id: uuid.UUID, item_id: uuid.UUID) -> ItemEnvelope:
    """One stock item."""
    return ItemEnvelope(item=item_out(inventory.get_item(team_id, item_id)))


@bp.patch("/<uuid:team_id>/inventory/<uuid:item_id>")
@team_permission("inventory.write")
@bp.input(ItemPatch, location="json", arg_name="body")
@bp.output(ItemEnvelope)
def update_item(team_id: uuid.UUID, item_id: uuid.UUID, body: ItemPatch) -> ItemEnvelope:
    """Edit an item's details; its quantity changes only through adjustments."""
    changes = body.model_dump(exclude_unset=True)
    item = inventory.update_item(me(), team_id, item_id, changes)
    return ItemEnvelope(item=item_out(item))


@bp.delete("/<uuid:team_id>/inventory/<uuid:item_id>")
@team_permission("inventory.delete")
@bp.output({}, status_code=204)
def delete_item(team_id: uuid.UUID, item_id: uuid.UUID) -> tuple[str, int]:
    """Delete an item and its ledger."""
    inventory.delete_item(me(), team_id, item_id)
    return "", 204


@bp.post("/<uuid:team_id>/inventory/<uuid:item_id>/adjustments")
@operation_doc(operation_id="adjust_stock")
@team_permission("inventory.write")
@bp.input(AdjustmentIn, location="json", arg_name="body")
@idempotent()
@bp.output(AdjustmentResult, status_code=201)
@bp.doc(responses={409: "The quantity would fall below zero"})
def adjust(team_id: uuid.UUID, item_id: uuid.UUID, body: AdjustmentIn) -> AdjustmentResult:
    """Change the quantity by `delta` (never below zero: 409), with its ledger row."""
    item, adjustment = inventory.adjust(
        me(), team_id, item_id, delta=body.delta, reason=body.reason
    )
    return AdjustmentResult(item=item_out(item), adjustment=adjustment_out(adjustment))


@bp.get("/<uuid:team_id>/inventory/<uuid:item_id>/adjustments")
@team_permission("inventory.read")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(AdjustmentPage)
def list_adjustments(team_id: uuid.UUID, item_id: uuid.UUID, query: ListQuery) -> AdjustmentPage:
    """An item's stock ledger, newest first."""
    page = inventory.list_adjustments(team_id, item_id, limit=query.limit, cursor=query.cursor)
    return AdjustmentPage(
        items=[adjustment_out(a) for a in page.items], next_cursor=page.next_cursor
    )
