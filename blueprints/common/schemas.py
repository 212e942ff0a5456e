"""Schemas shared by every area: list queries and pages, gateway amounts and ids."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

T = TypeVar("T")

# The payment gateway (Stripe) takes at most eight digits of minor units ($999,999.99,
# ¥99,999,999): a larger amount is refused here instead of failing in the charge job.
GATEWAY_MAX_AMOUNT = 99_999_999
# Money to charge or refund: positive integer minor units (strict: no 10.5, "10" or true).
GatewayAmount = Annotated[int, Field(gt=0, le=GATEWAY_MAX_AMOUNT, strict=True)]
# A gateway object id (pm_card_visa, pm_1Nx...): it ends up in the gateway's URL paths,
# so it is a plain token, never a URL or a path.
GatewayId = Annotated[str, Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_]+$")]


class _NeverNull:
    """Leaves `null` out of a field's JSON schema; validation stays the Optional's (errors
    keep the field's own name as their key, unlike a union's per-branch ones)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        choices = [c for c in json_schema.get("anyOf", []) if c != {"type": "null"}]
        if len(choices) != 1:
            return json_schema
        return {**choices[0], **{k: v for k, v in json_schema.items() if k != "anyOf"}}


# A PATCH field that may be left out (None in the model: keep the stored value) but is
# never null on the wire (its column is NOT NULL, and the model's validator refuses null):
# the document shows the type alone, neither nullable nor with a default.
NotNull = Annotated[T | None, _NeverNull()]


class Strict(BaseModel):
    """Request bodies reject unknown fields, so typos fail loudly (422)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=512)
