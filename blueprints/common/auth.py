"""Authentication at the edge: who is calling, and the guards views declare.

Two credentials: `Authorization: Bearer <access JWT>` (people) and `X-API-Key` (scripts),
never both (400: a request is not half-believed). An API key acts as its owner but only
within its scopes: `read` for GET/HEAD, `write` for everything else, or the explicit scope
a view names (e.g. `ingest`). Operator routes and credential management never accept API
keys.

The credential is verified once per request, in a hook that runs before the rate limiter
(`identify_caller`): the default limit then counts a verified user or key, and whatever
did not verify (a made-up key, a victim's key prefix with a wrong secret, a forged or
expired token, both headers at once) counts against the client address. The guards below
take that verdict instead of verifying again.

An access token's revocation check (Redis) is not done in that hook but folded into the
default rate limit's hit of the caller's windows (blueprints.common.default_limit): one
round trip for both, and a revoked token's hit still counts against the client address.
When no such hit ran (a route with limits of its own or exempt, the limiter off, Redis
unreachable) the guard checks on its own; Redis down is a 503 either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Final, TypeVar, cast, overload

from flask import Flask, g, request
from flask_jwt_extended.exceptions import (
    NoAuthorizationError,
    RevokedTokenError,
    UserLookupError,
)
from werkzeug.exceptions import BadRequest

from blueprints.common import ratelimits
from blueprints.common.bearer import verify_access_token
from blueprints.common.openapi.marks import OPERATORS_MARK, SCOPE_MARK, SECURITY_MARK
from extensions import db
from models import ApiKey, User
from services.core.errors import Forbidden
from services.identity.accounts import confirm_cached_user, user_generation_key
from services.identity.api_keys import authenticate_api_key
from services.identity.sessions import check_token, is_token_revoked, issued_at, revocation_keys

F = TypeVar("F", bound=Callable[..., Any])
API_KEY_HEADER = "X-API-Key"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERDICT: Final = "_caller_verdict"  # flask.g: the Caller, None, or what verifying raised


@dataclass(frozen=True)
class Caller:
    """A verified credential: its user, and the API key if that was the credential."""

    user: User
    api_key: ApiKey | None
    session_id: str | None
    # An access token whose revocation is still to be checked: (its header, its claims).
    unchecked_token: tuple[dict[str, Any], dict[str, Any]] | None = None


def register_authentication(app: Flask) -> None:
    """Verify credentials in a before_request hook; call it before the limiter's init_app,
    so that hook runs first and the default limit can count the verified caller."""
    app.before_request(identify_caller)


def identify_caller() -> None:
    """Verify this request's credential and keep the verdict for the limiter and guards.

    Always a fresh verdict: `g` outlives a request when an app context was pushed around
    several (tests do), and a caller must never be inherited from another request."""
    verdict: Caller | Exception | None
    try:
        verdict = _verify_credential()
    except Exception as exc:  # noqa: BLE001 - raised again by the guard of a view that needs it
        db.session.rollback()  # a lookup that failed half-way leaves nothing behind
        verdict = exc
    setattr(g, _VERDICT, verdict)
    if isinstance(verdict, Caller):
        key = verdict.api_key
        principal = f"key:{key.id}" if key is not None else f"user:{verdict.user.id}"
        pending = None
        if verdict.unchecked_token is not None:
            claims = verdict.unchecked_token[1]
            pending = ratelimits.PendingRevocation(
                principal,
                revocation_keys(claims),
                issued_at(claims),
                user_generation_key(verdict.user.id),
            )
        ratelimits.count_as(principal, unless_revoked=pending)
    else:
        ratelimits.count_as(None)  # unverified or anonymous: the client address


def _verify_credential() -> Caller | None:
    if request.method == "OPTIONS":  # CORS preflights carry no credentials; no view runs
        return None
    api_key = request.headers.get(API_KEY_HEADER, "").strip()
    if api_key and "Authorization" in request.headers:
        raise BadRequest(f"Send one credential, Authorization or {API_KEY_HEADER}, not both.")
    if api_key:
        user, key = authenticate_api_key(api_key)  # a bad key is 401 everywhere
        return Caller(user, key, None)
    if "Authorization" in request.headers:
        try:
            # Signature, expiry and the user, or it raises; revocation: see the module doc.
            header, claims, user = verify_access_token()
        except UserLookupError as exc:
            # Checked first before, so a revoked token of a gone account still says so.
            if is_token_revoked(exc.jwt_data):
                raise RevokedTokenError(exc.jwt_header, exc.jwt_data) from None
            raise
        return Caller(user, None, claims.get("sid"), (header, claims))
    return None


def _settle_revocation(caller: Caller) -> Caller:
    """The caller once its token's revocation and its user row's generation are known (the
    default limit's hit read them, else one MGET now); raises RevokedTokenError (401),
    UserLookupError (401, the account changed and is no longer active) or
    DependencyUnavailable (503, fail closed)."""
    assert caller.unchecked_token is not None
    header, claims = caller.unchecked_token
    pending = ratelimits.pending_revocation()
    if pending is not None and pending.revoked is not None:
        revoked, generation = pending.revoked, pending.generation
    else:
        revoked, generation = check_token(claims, also=user_generation_key(caller.user.id))
    if revoked:
        raise RevokedTokenError(header, claims)
    user = confirm_cached_user(caller.user, generation)
    if user is None:
        raise UserLookupError("The account is no longer active.", header, claims)
    if user is not caller.user:  # read again: what flask-jwt-extended's current_user gives too
        g._jwt_extended_jwt_user = {"loaded_user": user}
    return Caller(user, None, caller.session_id)


def verified_caller() -> Caller:
    """The caller this request's credential proved, or the 400/401/503 verifying it met."""
    if _VERDICT not in g:  # a request the hook did not see (not one of create_app's apps)
        identify_caller()
    verdict = g.get(_VERDICT)
    if isinstance(verdict, Caller) and verdict.unchecked_token is not None:
        try:
            verdict = _settle_revocation(verdict)
        except Exception as exc:  # noqa: BLE001 - kept, so every guard of the request agrees
            db.session.rollback()  # a row read again that failed half-way leaves nothing
            verdict = exc
        setattr(g, _VERDICT, verdict)
    if isinstance(verdict, Exception):
        raise verdict
    if verdict is None:
        raise NoAuthorizationError("Missing Authorization Header")  # -> 401 (jwt_callbacks)
    return cast(Caller, verdict)


def _document_security(
    view: Callable[..., Any], api_keys: bool, scope: str | None = None, operators: bool = False
) -> None:
    # Marks, not APIFlask's `_spec["security"]`: `@bp.doc(...)` rewrites every key of
    # `_spec` it is given (security=None too), so a `doc` above this decorator would
    # document the operation as open. blueprints.common.openapi writes the marks out.
    either: list[Any] = [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    setattr(view, SECURITY_MARK, either if api_keys else [{"BearerAuth": []}])
    setattr(view, SCOPE_MARK, scope)
    setattr(view, OPERATORS_MARK, operators)


def authenticate(*, scope: str | None = None, api_keys: bool = True) -> User:
    """Identify the caller (401 if unknown) and set `g.user`, `g.principal`, `g.session_id`."""
    caller = verified_caller()
    if caller.api_key is not None:
        if not api_keys:
            raise Forbidden("This operation needs a signed-in user, not an API key.")
        needed = scope or ("read" if request.method in READ_METHODS else "write")
        if needed not in caller.api_key.scopes:
            raise Forbidden(f"This API key lacks the '{needed}' scope.")
    g.user, g.api_key, g.session_id = caller.user, caller.api_key, caller.session_id
    g.principal = f"user:{caller.user.id}"
    return caller.user


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

        _document_security(wrapper, api_keys, scope)
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

    _document_security(wrapper, api_keys=False, operators=True)
    return cast(F, wrapper)


def me() -> User:
    """The authenticated user of this request (only inside an auth-guarded view)."""
    return cast(User, g.user)
