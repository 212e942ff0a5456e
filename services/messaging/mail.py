"""Transactional email: queue it by id in the caller's transaction, build it at send time.

Job arguments hold ids only (Flower and the jobs API show them): the address, the name
and the signed token are read and minted by the worker when it builds the message, so
a link is never older than its email and a queued job reveals nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import current_app
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select

from config import Settings
from extensions import db
from integrations.mail import sender_domain
from models import Job, Notification, Payment, Team, TeamInvite, TeamMember, User
from services.core import permissions, plans, tokens
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging.notifications import unsubscribe_token

PRODUCT = "Maycole"
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates"
# Each email and what its job argument names: `<kind>_id` (a user, an invite, a payment).
TEMPLATES: dict[str, str] = {
    "verify_email": "user",
    "password_reset": "user",
    "password_changed": "user",
    "account_exists": "user",  # someone tried to sign up with a taken address
    "team_invite": "invite",
    "payment_receipt": "payment",
    "dunning": "member",  # a team member who manages the subscription
    "notification": "notification",
    "digest": "user",
}


class UnknownTemplate(ValueError):
    """No email template has this name."""


class EmailNotApplicable(Exception):
    """The email no longer makes sense (user gone, already verified, invite closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def queue_email(template: str, **ids: uuid.UUID) -> Job:
    """Record an `email.send` job in the current transaction (sent after the caller commits).

    Pass exactly the id the template's kind names, e.g. `user_id=` or `payment_id=`.
    """
    key = f"{_kind(template)}_id"
    if set(ids) != {key} or ids[key] is None:
        raise ValueError(f"email {template!r} takes {key} (and only that)")
    args = {"template": template, key: str(ids[key])}
    settings = current_app.config["SETTINGS"]
    return enqueue(
        names.EMAIL_SEND,
        args=args,
        user_id=ids.get("user_id"),
        max_attempts=settings.email_max_attempts,
    )


def build_message(template: str, args: Mapping[str, Any], *, job_id: uuid.UUID) -> EmailMessage:
    """Load the recipient by id, mint its link and render the email; may raise
    `EmailNotApplicable` (nothing to send) or `UnknownTemplate`."""
    settings: Settings = current_app.config["SETTINGS"]
    kind = _kind(template)
    address, name, context = _CONTEXTS[kind](template, _id(args, f"{kind}_id"), settings)
    return compose_message(template, address, name, context, job_id=job_id)


@dataclass(frozen=True)
class Attachment:
    """A file in an email: attached, or `inline` (an image the HTML shows by `cid:`)."""

    filename: str
    content_type: str  # e.g. "text/csv", "image/png"
    data: bytes = field(repr=False)
    inline: bool = False


def compose_message(
    template: str,
    address: str,
    name: str,
    context: dict[str, Any],
    *,
    job_id: uuid.UUID,
    attachments: Sequence[Attachment] = (),
) -> EmailMessage:
    """Render `template` for one recipient from a ready context (for senders that load
    their own data, like reports). Inline images are reachable in the HTML template as
    `cid:{{ cids[filename] }}`; the structure is mixed[alternative[text,
    related[html, images]], attachments], which every mail client understands."""
    settings: Settings = current_app.config["SETTINGS"]
    domain = sender_domain(settings.mail_from)
    inline = [a for a in attachments if a.inline]
    # Derived from the job id, like the Message-ID: stable if the worker has to send again.
    context["cids"] = {a.filename: f"{i}.{job_id}@{domain}" for i, a in enumerate(inline)}
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
    message["Message-ID"] = f"<{job_id}.{template}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
    if context.get("unsubscribe_api"):
        # RFC 8058 one-click unsubscribe: mail clients POST here without opening a page.
        message["List-Unsubscribe"] = f"<{context['unsubscribe_api']}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(_render(f"{template}.txt", context))
    message.add_alternative(_render(f"{template}.html", context), subtype="html")
    html = message.get_body(preferencelist=("html",))
    if inline and html is not None:
        for part in inline:
            maintype, _, subtype = part.content_type.partition("/")
            cid = f"<{context['cids'][part.filename]}>"
            html.add_related(part.data, maintype, subtype, cid=cid, filename=part.filename,
                             disposition="inline")  # fmt: skip
    for part in attachments:
        if not part.inline:
            maintype, _, subtype = part.content_type.partition("/")
            # Text attachments are UTF-8; naming the charset lets clients decode them.
            params = {"charset": "utf-8"} if maintype == "text" else {}
            message.add_attachment(part.data, maintype, subtype, filename=part.filename,
                                   params=params)  # fmt: skip
    return message


def _kind(template: str) -> str:
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
    if template == "account_exists":
        context["link"] = _link(settings, "/")
        return user.email, user.name, context
    if template == "digest":
        context.update(_digest_context(user, settings))
        return user.email, user.name, context
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


def _invite_context(
    template: str, invite_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, Any]]:
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


def _payment_context(
    template: str, payment_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, Any]]:
    payment = db.session.get(Payment, payment_id)
    if payment is None or payment.status != "succeeded":
        raise EmailNotApplicable("payment not found or not succeeded")
    payer = db.session.get(User, payment.created_by_id) if payment.created_by_id else None
    if payer is None or payer.deleted_at is not None or not payer.is_active:
        raise EmailNotApplicable("nobody to send the receipt to")
    team = db.session.get(Team, payment.team_id)
    context: dict[str, Any] = {
        "name": payer.name,
        "team": team.name if team else "",
        "amount": format_money(payment.amount, payment.currency),
        "description": payment.description or "Payment",
        "reference": str(payment.id),
        "paid_on": (payment.succeeded_at or payment.updated_at).strftime("%d %B %Y"),
        "link": _link(settings, f"/teams/{payment.team_id}/payments/{payment.id}"),
    }
    return payer.email, payer.name, context


# Currencies without minor units (ISO-4217 exponent 0); every other one has two.
_ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"})


def format_money(amount: int, currency: str) -> str:
    """Integer minor units as text, e.g. 123456 USD -> "1,234.56 USD" (no floats)."""
    if currency.upper() in _ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    whole, cents = divmod(amount, 100)
    return f"{whole:,}.{cents:02d} {currency.upper()}"


def _member_context(
    template: str, member_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, Any]]:
    """Dunning: the member is still allowed to fix billing and the payment is still late."""
    member = db.session.get(TeamMember, member_id)
    if member is None or not permissions.allows(member.role, "subscription.manage"):
        raise EmailNotApplicable("no longer a member who manages the subscription")
    user = db.session.get(User, member.user_id)
    team = db.session.get(Team, member.team_id)
    if user is None or user.deleted_at is not None or not user.is_active:
        raise EmailNotApplicable("user not found")
    if team is None or team.deleted_at is not None:
        raise EmailNotApplicable("team deleted")
    subscription = plans.live_subscription(team.id)
    if subscription is None or subscription.status != "past_due":
        raise EmailNotApplicable("the subscription is no longer past due")
    plan = plans.PLANS.get(subscription.plan, plans.PLANS[plans.FREE])
    context: dict[str, Any] = {
        "name": user.name,
        "team": team.name,
        "plan": plan.display_name,
        "amount": format_money(plan.amount, plan.currency),
        "link": _link(settings, f"/teams/{team.id}/billing"),
    }
    return user.email, user.name, context


_ContextBuilder = Callable[[str, uuid.UUID, Settings], tuple[str, str, dict[str, Any]]]


def _notification_context(
    template: str, notification_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, Any]]:
    row = db.session.get(Notification, notification_id)
    user = db.session.get(User, row.user_id) if row else None
    if row is None or user is None or user.deleted_at is not None or not user.is_active:
        raise EmailNotApplicable("notification or recipient gone")
    context: dict[str, Any] = {
        "name": user.name, "title": row.title, "body": row.body or "",
        "link": _link(settings, str(row.data.get("link") or "/")),
    }  # fmt: skip
    context.update(unsubscribe_links(user.id, row.category, settings))
    return user.email, user.name, context


def unsubscribe_links(user_id: uuid.UUID, category: str, settings: Settings) -> dict[str, Any]:
    """The `unsubscribe` page link and one-click `unsubscribe_api` URL for a category's
    email (both None for security notices); `compose_message` turns the latter into
    the List-Unsubscribe headers."""

    token = unsubscribe_token(user_id, category)
    if token is None:  # security notices cannot be switched off
        return {"unsubscribe": None, "unsubscribe_api": None}
    return {
        "unsubscribe": _link(settings, f"/unsubscribe?token={quote(token)}"),
        "unsubscribe_api": f"{settings.public_api_url.rstrip('/')}"
        f"/api/v1/notifications/unsubscribe?token={quote(token)}",
    }


def _digest_context(user: User, settings: Settings) -> dict[str, Any]:
    rows = db.session.scalars(
        select(Notification).where(Notification.user_id == user.id, Notification.digest_pending)
        .order_by(Notification.created_at).limit(200)
    ).all()  # fmt: skip
    if not rows:
        raise EmailNotApplicable("nothing to summarise")
    return {
        "items": [{"title": r.title, "body": r.body or "",
                   "link": _link(settings, str(r.data.get("link") or "/"))} for r in rows],
        "count": len(rows),
        "settings_link": _link(settings, "/settings/notifications"),
    }  # fmt: skip


_CONTEXTS: dict[str, _ContextBuilder] = {
    "notification": _notification_context,
    "user": _user_context,
    "invite": _invite_context,
    "payment": _payment_context,
    "member": _member_context,
}


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
