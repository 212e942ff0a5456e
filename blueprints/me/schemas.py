"""The signed-in user's profile and settings."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import BaseModel, Field, field_validator, model_validator

from blueprints.auth.schemas import UserOut
from blueprints.common.schemas import NotNull, Strict
from blueprints.jobs.schemas import JobOut


class ProfileOut(UserOut):
    avatar_file_id: uuid.UUID | None
    timezone: str
    locale: str


class ProfileEnvelope(BaseModel):
    user: ProfileOut


class ProfilePatch(Strict):
    """Only these fields can change here: email, role, admin and verification cannot."""

    name: NotNull[Annotated[str, Field(min_length=1, max_length=200)]] = None
    avatar_file_id: uuid.UUID | None = Field(None, description="null removes the avatar.")
    timezone: NotNull[Annotated[str, Field(max_length=64)]] = None
    locale: NotNull[Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$")]] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ProfilePatch:
        for name in ("name", "timezone", "locale"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null.")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in available_timezones():
            raise ValueError("Unknown IANA time zone, e.g. Europe/Paris.")
        return value


class SettingsBody(BaseModel):
    settings: dict[str, Any]


class SettingsPatch(Strict):
    settings: dict[str, Any] = Field(description="Keys to set; null removes a key.")

    @field_validator("settings")
    @classmethod
    def _sane_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not (1 <= len(key) <= 100) or not key.replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"Invalid key {key!r}: letters, digits, '.', '_' only.")
        if len(str(value)) > 16_384:
            raise ValueError("Settings are limited to 16 KiB.")
        return value


class DeletionEnvelope(BaseModel):
    job: JobOut
