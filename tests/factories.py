"""Small builders for test data, going through the real services."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from flask_jwt_extended import create_access_token

from models import User
from services import accounts

PASSWORD = "correct horse battery staple"
_seq = itertools.count(1)


def make_user(*, email: str | None = None, admin: bool = False, name: str = "Test User") -> User:
    email = email or f"user{next(_seq)}@example.com"
    return accounts.create_user(email, PASSWORD, name, is_admin=admin)


def auth_headers(user: User) -> Mapping[str, str]:
    """An Authorization header with a fresh access token for `user`."""
    return {"Authorization": f"Bearer {create_access_token(identity=str(user.id))}"}
