"""Who a rate limit counts against, and limits read from configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from flask import current_app, request
from flask_jwt_extended import decode_token


def client_ip() -> str:
    # remote_addr is the socket peer, or the X-Forwarded-For hop ProxyFix was told to trust.
    return f"ip:{request.remote_addr or 'unknown'}"


def principal_key() -> str:
    """The default limit's key: the signed-in user or API key, else the client address."""
    api_key = request.headers.get("X-API-Key", "")
    if api_key.startswith("mk_") and api_key.count("_") >= 2:
        return f"key:{api_key.split('_', 2)[1]}"
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        try:
            return f"user:{decode_token(authorization[7:], allow_expired=True)['sub']}"
        except Exception:  # noqa: BLE001, S110 - an unusable token is limited by address
            pass
    return client_ip()


def email_key() -> str:
    """Per-account limits (login, forgot-password) whatever address the attempts come from."""
    body = request.get_json(silent=True)
    email = str(body.get("email", "")) if isinstance(body, dict) else ""
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def configured(setting: str) -> Callable[[], str]:
    """A limit string taken from Settings at request time (limits are configuration)."""

    def limit() -> str:
        return str(getattr(current_app.config["SETTINGS"], setting))

    return limit
