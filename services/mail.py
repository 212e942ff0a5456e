"""Transactional email: queue it by id in the caller's transaction, build it at send time.

Job arguments hold ids only (Flower and the jobs API show them): the address, the name
and the signed token are read and minted by the worker when it builds the message, so
a link is never older than its email and a queued job reveals nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from flask import current_app
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from config import Settings
from extensions import db
from integrations.mail import sender_domain
from models import Job, Team, TeamInvite, User
from services import tokens
from tasks.dispatch import enqueue

PRODUCT = "Maycole"
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
# Each email and what its job argument names: a user or a team invite.
TEMPLATES: dict[str, Literal["user", "invite"]] = {
    "verify_email": "user",
    "password_reset": "user",
    "password_changed": "user",
    "team_invite": "invite",
}


class UnknownTemplate(ValueError):
    """No email template has this name."""


class EmailNotApplicable(Exception):
    """The email no longer makes sense (user gone, already verified, invite closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def queue_email(
    template: str, *, user_id: uuid.UUID | None = None, invite_id: uuid.UUID | None = None
) -> Job:
    """Record an `email.send` job in the current transaction (sent after the caller commits)."""
    kind = _kind(template)
    subject_id = user_id if kind == "user" else invite_id
    other_id = invite_id if kind == "user" else user_id
    if subject_id is None or other_id is not None:
        raise ValueError(f"email {template!r} takes {kind}_id (and only that)")
    args = {"template": template, f"{kind}_id": str(subject_id)}
    settings = current_app.config["SETTINGS"]
    return enqueue(
        "email.send", args=args, user_id=user_id, max_attempts=settings.email_max_attempts
    )


def build_message(template: str, args: Mapping[str, Any], *, job_id: uuid.UUID) -> EmailMessage:
    """Load the recipient by id, mint its link and render the email; may raise
    `EmailNotApplicable` (nothing to send) or `UnknownTemplate`."""
    settings: Settings = current_app.config["SETTINGS"]
    kind = _kind(template)
    if kind == "user":
        address, name, context = _user_context(template, _id(args, "user_id"), settings)
    else:
        address, name, context = _invite_context(_id(args, "invite_id"), settings)
    context["product"] = PRODUCT
    subject = " ".join(_render(f"{template}.subject.txt", context).split())
    context["subject"] = subject

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.mail_from
    # Whitespace collapsed: a name is user input and must not be able to break the header.
    message["To"] = formataddr((" ".join(name.split()), address))
    message["Date"] = format_datetime(datetime.now(UTC))
    # Stable per job: if a crash makes the worker send twice, both copies share this id
    # (mail clients thread or de-duplicate them, and operators can match them up).
    message["Message-ID"] = f"<{job_id}.{template}@{sender_domain(settings.mail_from)}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
    message.set_content(_render(f"{template}.txt", context))
    message.add_alternative(_render(f"{template}.html", context), subtype="html")
    return message


def _kind(template: str) -> Literal["user", "invite"]:
    try:
        return TEMPLATES[template]
    except KeyError:
        raise UnknownTemplate(f"unknown email template {template!r}") from None


def _id(args: Mapping[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(args[key]))
    except (KeyError, ValueError):
        raise EmailNotApplicable(f"{key} missing or malformed") from None


def _link(settings: Settings, path: str) -> str:
    return f"{settings.frontend_url.rstrip('/')}{path}"


def _user_context(
    template: str, user_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, Any]]:
    user = db.session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise EmailNotApplicable("user not found")
    context: dict[str, Any] = {"name": user.name}
    if template == "password_changed":
        # A security notice goes out even to a disabled account: it may be the attack.
        context["link"] = _link(settings, "/")
        return user.email, user.name, context
    if not user.is_active:
        raise EmailNotApplicable("user is deactivated")
    if template == "verify_email":
        if user.email_verified_at is not None:
            raise EmailNotApplicable("email already verified")
        token = tokens.mint_verify_email(user)
        context["link"] = _link(settings, f"/verify-email?token={quote(token)}")
        context["valid_hours"] = settings.verify_email_token_hours
    else:  # password_reset
        token = tokens.mint_password_reset(user)
        context["link"] = _link(settings, f"/reset-password?token={quote(token)}")
        context["valid_minutes"] = settings.password_reset_token_minutes
    return user.email, user.name, context


def _invite_context(invite_id: uuid.UUID, settings: Settings) -> tuple[str, str, dict[str, Any]]:
    invite = db.session.get(TeamInvite, invite_id)
    if invite is None:
        raise EmailNotApplicable("invite not found")
    if invite.accepted_at is not None:
        raise EmailNotApplicable("invite already accepted")
    if invite.revoked_at is not None:
        raise EmailNotApplicable("invite revoked")
    if invite.expires_at <= datetime.now(UTC):
        raise EmailNotApplicable("invite expired")
    team = db.session.get(Team, invite.team_id)
    if team is None or team.deleted_at is not None:
        raise EmailNotApplicable("team deleted")
    inviter = db.session.get(User, invite.invited_by_id) if invite.invited_by_id else None
    context: dict[str, Any] = {
        "inviter": inviter.name if inviter else f"An admin of {team.name}",
        "team": team.name,
        "role": invite.role,
        "role_article": "an" if invite.role[0] in "aeiou" else "a",
        "expires_on": invite.expires_at.strftime("%d %B %Y"),
        "link": _link(settings, f"/invites/{quote(tokens.mint_invite(invite))}"),
    }
    return invite.email, "", context


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        # HTML parts escape every value (a name like "<script>" shows as text); text parts
        # and subjects are plain text and must not contain HTML entities.
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,  # a missing value is a bug, not an empty string in a mail
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _render(name: str, context: Mapping[str, Any]) -> str:
    return _environment().get_template(f"email/{name}").render(context)
