"""Account request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, EmailStr, Field

from blueprints.common.schemas import Strict


class RegisterIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=10, max_length=256)
    name: str = Field(min_length=1, max_length=200)


class LoginIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)


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
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int
