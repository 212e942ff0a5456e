"""Account, session and API-key request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, EmailStr, Field

from blueprints.common.schemas import Strict


class RegisterIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=200)


class LoginIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)


class RefreshIn(Strict):
    refresh_token: str = Field(min_length=1, max_length=4096)


class TokenIn(Strict):
    token: str = Field(min_length=1, max_length=2048)


class ForgotPasswordIn(Strict):
    email: EmailStr = Field(max_length=320)


class ResetPasswordIn(Strict):
    token: str = Field(min_length=1, max_length=2048)
    password: str = Field(min_length=1, max_length=256)


class ChangePasswordIn(Strict):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)
    revoke_api_keys: bool = Field(
        False,
        description="Also revoke every API key of the account (other sessions always end).",
    )


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    email_verified: bool
    is_admin: bool
    created_at: datetime


class UserEnvelope(BaseModel):
    user: UserOut


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class Accepted(BaseModel):
    """An acknowledgement that says nothing about whether the account exists."""

    status: Literal["accepted"] = "accepted"
    detail: str


class SessionOut(BaseModel):
    id: uuid.UUID
    device: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    current: bool


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: None = None


class ApiKeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Literal["read", "write", "ingest"]] = Field(min_length=1, max_length=3)
    expires_at: AwareDatetime | None = None
    current_password: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Your password. Required unless you signed in (with your password, not "
        "a refresh) within the last few minutes (API_KEY_FRESH_SIGN_IN_SECONDS, 300).",
    )


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class NewApiKeyOut(BaseModel):
    api_key: ApiKeyOut
    secret: str = Field(description="Shown once; store it now. Send it as X-API-Key.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: None = None
