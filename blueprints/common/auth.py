"""Authentication at the edge: who is calling, and the guards views declare."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g
from flask_jwt_extended import current_user, verify_jwt_in_request

from models import User
from services.errors import Forbidden

F = TypeVar("F", bound=Callable[..., Any])
SECURITY = ["BearerAuth"]


def _document_security(view: Callable[..., Any]) -> None:
    # APIFlask reads `_spec["security"]` to mark the operation as authenticated in OpenAPI.
    spec = getattr(view, "_spec", {})
    spec["security"] = SECURITY
    view._spec = spec  # type: ignore[attr-defined]


def auth_required(view: F) -> F:
    """Require a valid access token; sets `g.principal` for idempotency and audit."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        g.principal = f"user:{current_user.id}"
        return view(*args, **kwargs)

    _document_security(wrapper)
    return cast(F, wrapper)


def admin_required(view: F) -> F:
    """Require an operator (`is_admin`); 403 for everyone else."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verify_jwt_in_request()
        if not current_user.is_admin:
            raise Forbidden("This operation is for administrators only.")
        g.principal = f"user:{current_user.id}"
        return view(*args, **kwargs)

    _document_security(wrapper)
    return cast(F, wrapper)


def me() -> User:
    """The authenticated user of this request (only inside an auth-guarded view)."""
    return cast(User, current_user)
