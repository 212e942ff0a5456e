"""Team, member, invitation and audit-log request and response bodies.

Request bodies are `Strict`: a field that is not listed here (team_id, is_personal,
deleted_at, is_admin, a role where none is asked for...) is a 422, never silently set.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from blueprints.common.schemas import ListQuery, NotNull, Strict
from blueprints.jobs.schemas import JobOut

Role = Literal["owner", "admin", "member", "viewer"]
InviteRole = Literal["admin", "member", "viewer"]  # owners are made by transfer, not invite


class TeamIn(Strict):
    name: str = Field(min_length=1, max_length=200)


class TeamPatch(Strict):
    name: NotNull[Annotated[str, Field(min_length=1, max_length=200)]] = None

    @field_validator("name")
    @classmethod
    def _not_null(cls, value: str | None) -> str:
        if value is None:  # only reached when the client sent null explicitly
            raise ValueError("A team needs a name.")
        return value

    @model_validator(mode="after")
    def _something_to_change(self) -> TeamPatch:
        if not self.model_fields_set:
            raise ValueError("Send at least one field to change.")
        return self


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    is_personal: bool
    role: Role  # the caller's role
    created_at: datetime


class TeamEnvelope(BaseModel):
    team: TeamOut


class TeamPage(BaseModel):
    items: list[TeamOut]
    next_cursor: str | None


class TeamDeletionEnvelope(BaseModel):
    job: JobOut


class MemberOut(BaseModel):
    user_id: uuid.UUID
    name: str
    email: str
    role: Role
    joined_at: datetime


class MemberEnvelope(BaseModel):
    member: MemberOut


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None


class RoleIn(Strict):
    role: Role


class TransferIn(Strict):
    user_id: uuid.UUID


class InviteIn(Strict):
    email: EmailStr = Field(max_length=320)
    role: InviteRole = "member"


class InviteOut(BaseModel):
    id: uuid.UUID
    email: str
    role: InviteRole
    status: Literal["pending", "expired", "accepted", "revoked"]
    expires_at: datetime
    invited_by_id: uuid.UUID | None
    created_at: datetime


class InviteEnvelope(BaseModel):
    invite: InviteOut


class InvitePage(BaseModel):
    items: list[InviteOut]
    next_cursor: str | None


class AuditLogQuery(ListQuery):
    model_config = ConfigDict(populate_by_name=True)

    action: str | None = Field(None, max_length=100)
    actor_id: uuid.UUID | None = None
    from_: datetime | None = Field(None, alias="from")
    to: datetime | None = None


class AuditLogOut(BaseModel):
    id: int
    action: str
    actor_id: uuid.UUID | None
    subject_type: str | None
    subject_id: str | None
    data: dict[str, Any]
    ip: str | None
    request_id: str | None
    created_at: datetime


class AuditLogPage(BaseModel):
    items: list[AuditLogOut]
    next_cursor: str | None


class ChainVerifyQuery(BaseModel):
    cursor: str | None = Field(
        None, max_length=512, description="The next_cursor of the previous answer, to go on."
    )


class ChainReportOut(BaseModel):
    intact: bool = Field(
        description="No break in the rows checked so far (this answer and the earlier pages)."
    )
    rows_checked: int = Field(
        description="Rows checked by this answer (AUDIT_VERIFY_MAX_ROWS at most)."
    )
    first_bad_id: int | None
    reason: str | None
    complete: bool = Field(
        description="The check reached the chain's sealed head: the whole trail is intact."
    )
    next_cursor: str | None = Field(
        description="More rows to check: send it back as ?cursor= (null when done)."
    )
