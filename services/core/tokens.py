"""Signed, expiring, single-purpose tokens for links sent by email.

Nothing secret is stored or queued: the email task mints the token from ids at send time
(so job arguments stay ids only), and each token is bound to state that changes once it
is used, which makes it single-use without a token table:
- email verification: bound to the address (and useless once verified);
- password reset: bound to a fingerprint of the current password hash;
- team invite: bound to the invite's current nonce (a resend rotates it).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from models import TeamInvite, User
from services.core.errors import ValidationFailed

VERIFY_EMAIL = "verify-email"
PASSWORD_RESET = "password-reset"
TEAM_INVITE = "team-invite"
UNSUBSCRIBE = "unsubscribe"
UNSUBSCRIBE_DAYS = 60


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    # The purpose is the salt: a token minted for one purpose never validates for another.
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"maycole.{purpose}")


def _fingerprint(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()[:20]


def _load(purpose: str, token: str, max_age_seconds: int) -> dict[str, Any]:
    try:
        payload = _serializer(purpose).loads(token, max_age=max_age_seconds)
    except SignatureExpired:
        raise _invalid("This link has expired; ask for a new one.") from None
    except BadSignature:
        raise _invalid("This link is not valid.") from None
    if not isinstance(payload, dict):
        raise _invalid("This link is not valid.")
    return payload


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(message, errors={"token": [message]})


def mint_verify_email(user: User) -> str:
    return _serializer(VERIFY_EMAIL).dumps({"uid": str(user.id), "email": _fingerprint(user.email)})


def read_verify_email(token: str) -> tuple[uuid.UUID, str]:
    """(user id, email fingerprint) from a verification token, or 422."""
    hours = current_app.config["SETTINGS"].verify_email_token_hours
    payload = _load(VERIFY_EMAIL, token, hours * 3600)
    return uuid.UUID(payload["uid"]), str(payload["email"])


def mint_password_reset(user: User) -> str:
    payload = {"uid": str(user.id), "pw": _fingerprint(user.password_hash)}
    return _serializer(PASSWORD_RESET).dumps(payload)


def read_password_reset(token: str) -> tuple[uuid.UUID, str]:
    """(user id, password fingerprint) from a reset token, or 422."""
    minutes = current_app.config["SETTINGS"].password_reset_token_minutes
    payload = _load(PASSWORD_RESET, token, minutes * 60)
    return uuid.UUID(payload["uid"]), str(payload["pw"])


def mint_invite(invite: TeamInvite) -> str:
    payload = {"iid": str(invite.id), "n": _fingerprint(invite.token_hash)}
    return _serializer(TEAM_INVITE).dumps(payload)


def read_invite(token: str) -> tuple[uuid.UUID, str]:
    """(invite id, nonce fingerprint) from an invite token, or 422 (expiry: the invite's)."""
    days = current_app.config["SETTINGS"].invite_days
    payload = _load(TEAM_INVITE, token, days * 86400)
    return uuid.UUID(payload["iid"]), str(payload["n"])


def matches(fingerprint: str, value: str | None) -> bool:
    """Whether a token's fingerprint still matches the current state it was bound to."""
    return hmac.compare_digest(fingerprint, _fingerprint(value))


def mint_unsubscribe(user_id: uuid.UUID, category: str, preference_state: str) -> str:
    """A link that turns one category's email off for one user, bound to the preference's
    current state (so it works once: using it changes that state)."""
    payload = {"uid": str(user_id), "c": category, "s": _fingerprint(preference_state)}
    return _serializer(UNSUBSCRIBE).dumps(payload)


def read_unsubscribe(token: str) -> tuple[uuid.UUID, str, str]:
    """(user id, category, state fingerprint) from an unsubscribe token, or 422."""
    payload = _load(UNSUBSCRIBE, token, UNSUBSCRIBE_DAYS * 86400)
    return uuid.UUID(payload["uid"]), str(payload["c"]), str(payload["s"])
