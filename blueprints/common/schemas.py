"""Schemas shared by every area: list queries and pages, gateway amounts and ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

T = TypeVar("T")

# The payment gateway (Stripe) takes at most eight digits of minor units ($999,999.99,
# ¥99,999,999): a larger amount is refused here instead of failing in the charge job.
GATEWAY_MAX_AMOUNT = 99_999_999
# Money to charge or refund: positive integer minor units (strict: no 10.5, "10" or true).
GatewayAmount = Annotated[int, Field(gt=0, le=GATEWAY_MAX_AMOUNT, strict=True)]
# A gateway object id (pm_card_visa, pm_1Nx...): it ends up in the gateway's URL paths,
# so it is a plain token, never a URL or a path.
GatewayId = Annotated[str, Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_]+$")]

# A PATCH field that may be left out (None in the model: keep the stored value) but is
# never null on the wire (its column is NOT NULL, and the model's validator refuses null):
# the document shows the type alone, neither nullable nor with a default.
if TYPE_CHECKING:  # to mypy it is the Optional the model holds
    NotNull: TypeAlias = T | None
else:
    NotNull = T | SkipJsonSchema[None]


class Strict(BaseModel):
    """Request bodies reject unknown fields, so typos fail loudly (422)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=512)
