"""Stock item and adjustment bodies (money in integer minor units plus an ISO-4217 currency)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from blueprints.common.schemas import ListQuery, NotNull, Strict
from services.inventory.items import MAX_QUANTITY


class ItemIn(Strict):
    sku: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=5000)
    quantity: int = Field(0, ge=0, le=MAX_QUANTITY, strict=True, description="Opening stock.")
    unit_price: int = Field(0, ge=0, le=MAX_QUANTITY, strict=True, description="Minor units.")
    currency: str = Field("USD", pattern=r"^[A-Za-z]{3}$", description="ISO-4217, e.g. USD.")
    low_stock_threshold: int = Field(0, ge=0, le=MAX_QUANTITY, strict=True)


class ItemPatch(Strict):
    """Editable fields; `quantity` is not one (adjust stock through /adjustments)."""

    name: NotNull[Annotated[str, Field(min_length=1, max_length=200)]] = None
    description: str | None = Field(None, max_length=5000, description="null clears it.")
    unit_price: NotNull[Annotated[int, Field(ge=0, le=MAX_QUANTITY, strict=True)]] = None
    currency: NotNull[Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]] = None
    low_stock_threshold: NotNull[Annotated[int, Field(ge=0, le=MAX_QUANTITY, strict=True)]] = None
    archived: NotNull[bool] = None

    @field_validator("name", "unit_price", "currency", "low_stock_threshold", "archived")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Only reached when the client sent null explicitly (an omitted field is skipped);
        # these columns are NOT NULL, so null used to fail the UPDATE with a 500.
        if value is None:
            raise ValueError("Cannot be null; omit the field to leave it unchanged.")
        return value


class AdjustmentIn(Strict):
    delta: int = Field(
        ge=-MAX_QUANTITY, le=MAX_QUANTITY, strict=True, description="Non-zero change of quantity."
    )
    reason: str | None = Field(None, max_length=500)


class ItemOut(BaseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    sku: str
    name: str
    description: str | None
    quantity: int
    unit_price: int
    currency: str
    low_stock_threshold: int
    archived: bool
    version: int
    created_at: datetime
    updated_at: datetime


class ItemEnvelope(BaseModel):
    item: ItemOut


class ItemPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class ItemListQuery(ListQuery):
    q: str | None = Field(None, max_length=100, description="Inside the SKU or the name.")
    archived: bool | None = Field(None, description="Only archived (true) or active (false).")


class AdjustmentOut(BaseModel):
    id: uuid.UUID
    item_id: uuid.UUID
    actor_id: uuid.UUID | None
    delta: int
    quantity_after: int
    reason: str | None
    created_at: datetime


class AdjustmentResult(BaseModel):
    item: ItemOut
    adjustment: AdjustmentOut


class AdjustmentPage(BaseModel):
    items: list[AdjustmentOut]
    next_cursor: str | None
