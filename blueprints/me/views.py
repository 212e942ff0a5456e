"""HTTP for the signed-in user's own account (API.md "profile")."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from blueprints.auth.views import user_out
from blueprints.common.auth import auth_required, me
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from blueprints.me.schemas import (
    DeletionEnvelope,
    ProfileEnvelope,
    ProfileOut,
    ProfilePatch,
    SettingsBody,
    SettingsPatch,
)
from models import User, UserProfile
from services.identity import profile as profiles

bp = APIBlueprint("me", __name__, url_prefix="/api/v1/me", tag="profile")


def profile_out(user: User, profile: UserProfile) -> ProfileOut:
    return ProfileOut(
        **user_out(user).model_dump(), avatar_file_id=profile.avatar_file_id,
        timezone=profile.timezone, locale=profile.locale,
    )  # fmt: skip


@bp.get("")
@auth_required
@bp.output(ProfileEnvelope)
def get_me() -> ProfileEnvelope:
    """My account and profile."""
    return ProfileEnvelope(user=profile_out(me(), profiles.get_profile(me())))


@bp.patch("")
@auth_required
@bp.input(ProfilePatch, location="json", arg_name="body")
@bp.output(ProfileEnvelope)
def update_me(body: ProfilePatch) -> ProfileEnvelope:
    """Change my name, avatar, time zone or locale."""
    user, profile = profiles.update_profile(me(), body.model_dump(exclude_unset=True))
    return ProfileEnvelope(user=profile_out(user, profile))


@bp.delete("")
@auth_required(api_keys=False)
@bp.output(DeletionEnvelope, status_code=202)
@bp.doc(responses={409: "Still the only owner of a shared team: transfer it first"})
def delete_me() -> Any:
    """Delete my account: signed out now, personal data removed by a job."""
    job = profiles.request_account_deletion(me())
    return accepted(DeletionEnvelope(job=job_out(job)), job.id)


@bp.get("/settings")
@auth_required
@bp.output(SettingsBody)
def get_settings() -> SettingsBody:
    """My settings (free-form keys)."""
    return SettingsBody(settings=profiles.get_settings(me()))


@bp.patch("/settings")
@auth_required
@bp.input(SettingsPatch, location="json", arg_name="body")
@bp.output(SettingsBody)
def update_settings(body: SettingsPatch) -> SettingsBody:
    """Set or (with null) remove settings."""
    return SettingsBody(settings=profiles.update_settings(me(), body.settings))
