"""Authentication at the edge: who is calling, and the guards views declare.

Two credentials: `Authorization: Bearer <access JWT>` (people) and `X-API-Key` (scripts).
An API key acts as its owner but only within its scopes: `read` for GET/HEAD, `write` for
everything else, or the explicit scope a view names (e.g. `ingest`). Operator routes and
credential management never accept API keys.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast, overload

from flask import g, request
from flask_jwt_extended import current_user, get_jwt, verify_jwt_in_request

from blueprints.common.openapi import SECURITY_MARK
from models import User
from services.api_keys import authenticate_api_key
from services.errors import Forbidden

F = TypeVar("F", bound=Callable[..., Any])
API_KEY_HEADER = "X-API-Key"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _document_security(view: Callable[..., Any], api_keys: bool) -> None:
    # A mark, not APIFlask's `_spec["security"]`: `@bp.doc(...)` rewrites every key of
    # `_spec` it is given (security=None too), so a `doc` above this decorator would
    # document the operation as open. blueprints.common.openapi writes the mark out.
    either: list[Any] = [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    setattr(view, SECURITY_MARK, either if api_keys else [{"BearerAuth": []}])


def authenticate(*, scope: str | None = None, api_keys: bool = True) -> User:
    """Identify the caller (401 if unknown) and set `g.user`, `g.principal`, `g.session_id`."""
    key_header = request.headers.get(API_KEY_HEADER)
    if key_header and "Authorization" not in request.headers:
        user, key = authenticate_api_key(key_header.strip())  # a bad key is 401 everywhere
        if not api_keys:
            raise Forbidden("This operation needs a signed-in user, not an API key.")
        needed = scope or ("read" if request.method in _READ_METHODS else "write")
        if needed not in key.scopes:
            raise Forbidden(f"This API key lacks the '{needed}' scope.")
        g.user, g.api_key, g.session_id = user, key, None
    else:
        verify_jwt_in_request()
        g.user, g.api_key, g.session_id = current_user, None, get_jwt().get("sid")
    g.principal = f"user:{g.user.id}"
    return cast(User, g.user)


@overload
def auth_required(view: F) -> F: ...
@overload
def auth_required(*, scope: str | None = None, api_keys: bool = True) -> Callable[[F], F]: ...


def auth_required(
    view: F | None = None, *, scope: str | None = None, api_keys: bool = True
) -> F | Callable[[F], F]:
    """Require a valid access token or (unless `api_keys=False`) an API key with the scope."""

    def decorator(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate(scope=scope, api_keys=api_keys)
            return func(*args, **kwargs)

        _document_security(wrapper, api_keys)
        return cast(F, wrapper)

    return decorator(view) if view is not None else decorator


def admin_required(view: F) -> F:
    """Require an operator (`is_admin`) signed in with a token; 403 for everyone else."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = authenticate(api_keys=False)
        if not user.is_admin:
            raise Forbidden("This operation is for administrators only.")
        return view(*args, **kwargs)

    _document_security(wrapper, api_keys=False)
    return cast(F, wrapper)


def me() -> User:
    """The authenticated user of this request (only inside an auth-guarded view)."""
    return cast(User, g.user)
