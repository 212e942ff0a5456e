"""HTTP for accounts, sessions and API keys (API.md "auth")."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import Response, g, request
from flask_jwt_extended import get_jwt

from blueprints.auth.schemas import (
    Accepted,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    ChangePasswordIn,
    ForgotPasswordIn,
    LoginIn,
    NewApiKeyOut,
    RefreshIn,
    RegisterIn,
    ResetPasswordIn,
    SessionList,
    SessionOut,
    TokenIn,
    TokensOut,
    UserEnvelope,
    UserOut,
)
from blueprints.common.auth import auth_required, me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import operation_doc
from blueprints.common.ratelimits import client_ip, configured, email_key, limiter, principal_key
from models import ApiKey, User, UserSession
from services.identity import accounts, api_keys, sessions
from services.identity.sessions import TokenPair

bp = APIBlueprint("auth", __name__, url_prefix="/api/v1/auth", tag="auth")


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id, email=user.email, name=user.name, is_admin=user.is_admin,
        email_verified=user.email_verified_at is not None, created_at=user.created_at,
    )  # fmt: skip


def tokens_out(pair: TokenPair) -> TokensOut:
    return TokensOut(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


def _client() -> dict[str, str | None]:
    return {"ip": request.remote_addr, "user_agent": request.headers.get("User-Agent")}


def _account_and_address() -> str:
    """Login failures count per target account and client address together."""
    return f"{email_key()}:{client_ip()}"


def _refused(response: Response) -> bool:
    """Deduct from failure limits only when the credentials were wrong, never on success."""
    return response.status_code == 401


def _rejected_input(response: Response) -> bool:
    # A wrong current password is a 422; so is any other invalid body, which costs
    # an honest client nothing it would notice.
    return response.status_code == 422


def _known_device() -> bool:
    """The login comes from an address and browser that signed in to the account before."""
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email.strip():
        return False
    return accounts.is_known_device(email, **_client())


@bp.post("/register")
@operation_doc(operation_id="register_account")
@limiter.limit(configured("ratelimit_register"), key_func=client_ip)
@bp.input(RegisterIn, location="json", arg_name="body")
@idempotent()
@bp.output(
    Accepted,
    status_code=202,
    description="Accepted; the same answer for a new address and one that has an account",
)
def register(body: RegisterIn) -> Accepted:
    """Sign up. The answer is the same whether or not the address has an account already.

    A new address gets an account (and its personal team) and a verification link; the
    owner of an address that has one is emailed instead (sign in, or reset the password)
    and nothing changes. Either way, the next step is in that mailbox.
    """
    accounts.register_user(str(body.email), body.password, body.name)
    return Accepted(detail="Check the inbox of this address to continue.")


@bp.post("/verify-email")
@limiter.limit(configured("ratelimit_register"), key_func=client_ip)
@bp.input(TokenIn, location="json", arg_name="body")
@bp.output(UserEnvelope)
def verify_email(body: TokenIn) -> UserEnvelope:
    """Confirm the email address with the token from the emailed link."""
    return UserEnvelope(user=user_out(accounts.verify_email(body.token)))


@bp.post("/verify-email/resend")
@auth_required(api_keys=False)
@limiter.limit(configured("ratelimit_forgot_password_per_email"))
@bp.output(Accepted, status_code=202)
@bp.doc(responses={409: "The email address is already verified"})
def resend_verification() -> Accepted:
    """Email a new verification link to the signed-in user."""
    accounts.resend_verification(me())
    return Accepted(detail="A new verification link is on its way.")


@bp.post("/login")
@operation_doc(operation_id="log_in")
@limiter.limit(configured("ratelimit_login"), key_func=client_ip)
# Failures only (flask-limiter checks the limit before the view and counts the attempt
# after it, when it failed): strictly per account and address; loosely per account from
# every address, except for the devices the account signed in from before.
@limiter.limit(
    configured("ratelimit_login_failures"), key_func=_account_and_address, deduct_when=_refused
)
@limiter.limit(
    configured("ratelimit_login_failures_per_account"),
    key_func=email_key,
    deduct_when=_refused,
    exempt_when=_known_device,
)
@bp.input(LoginIn, location="json", arg_name="body")
@bp.output(TokensOut)
@bp.doc(responses={401: "Email or password is incorrect"})
def login(body: LoginIn) -> TokensOut:
    """Exchange email and password for an access and a refresh token.

    Failed attempts are limited per account and address (429 with Retry-After), and more
    loosely per account from all addresses, which never blocks a device that signed in to
    the account before.
    """
    return tokens_out(accounts.log_in(str(body.email), body.password, **_client()))


@bp.post("/refresh")
@operation_doc(operation_id="refresh_tokens")
@limiter.limit(configured("ratelimit_login"), key_func=client_ip)
@bp.input(RefreshIn, location="json", arg_name="body")
@bp.output(TokensOut)
@bp.doc(responses={401: "The refresh token is invalid, expired, spent or its session ended"})
def refresh(body: RefreshIn) -> TokensOut:
    """Rotate a refresh token: a new pair; the old refresh token is now spent."""
    return tokens_out(sessions.rotate_refresh_token(body.refresh_token, **_client()))


@bp.post("/logout")
@operation_doc(operation_id="log_out")
@auth_required(api_keys=False)
@bp.output({}, status_code=204)
def logout() -> tuple[str, int]:
    """End this session: its refresh and access tokens stop working at once."""
    sessions.end_session(me(), uuid.UUID(g.session_id), reason="logout")
    return "", 204


@bp.post("/password/forgot")
@limiter.limit(configured("ratelimit_forgot_password"), key_func=client_ip)
@limiter.limit(configured("ratelimit_forgot_password_per_email"), key_func=email_key)
@bp.input(ForgotPasswordIn, location="json", arg_name="body")
@bp.output(Accepted, status_code=202)
def forgot_password(body: ForgotPasswordIn) -> Accepted:
    """Email a reset link if the account exists (the answer is the same either way)."""
    accounts.forgot_password(str(body.email))
    return Accepted(detail="If an account exists for this address, a reset link is on its way.")


@bp.post("/password/reset")
@limiter.limit(configured("ratelimit_forgot_password"), key_func=client_ip)
@bp.input(ResetPasswordIn, location="json", arg_name="body")
@bp.output({}, status_code=204)
def reset_password(body: ResetPasswordIn) -> tuple[str, int]:
    """Set a new password with the emailed token and revoke every credential of the account.

    Every session (and refresh token), every access and stream token and every API key
    stops working at once; sign in again with the new password.
    """
    accounts.reset_password(body.token, body.password)
    return "", 204


@bp.post("/password/change")
@auth_required(api_keys=False)
@limiter.limit(
    configured("ratelimit_password_confirm_failures"),
    key_func=principal_key,
    deduct_when=_rejected_input,
)
@bp.input(ChangePasswordIn, location="json", arg_name="body")
@bp.output({}, status_code=204)
def change_password(body: ChangePasswordIn) -> tuple[str, int]:
    """Change the password; every other session is signed out, and with
    `revoke_api_keys: true` every API key is revoked too."""
    session_id = uuid.UUID(g.session_id) if g.session_id else None
    accounts.change_password(
        me(), body.current_password, body.new_password, session_id=session_id,
        revoke_api_keys=body.revoke_api_keys,
    )  # fmt: skip
    return "", 204


def session_out(session: UserSession) -> SessionOut:
    return SessionOut(
        id=session.id, device=session.device, ip=str(session.ip) if session.ip else None,
        user_agent=session.user_agent, created_at=session.created_at,
        last_used_at=session.last_used_at, expires_at=session.expires_at,
        current=str(session.id) == g.get("session_id"),
    )  # fmt: skip


@bp.get("/sessions")
@auth_required(api_keys=False)
@bp.output(SessionList)
def list_sessions() -> SessionList:
    """My signed-in devices."""
    return SessionList(items=[session_out(s) for s in sessions.list_sessions(me())])


@bp.delete("/sessions/<uuid:session_id>")
@auth_required(api_keys=False)
@bp.output({}, status_code=204)
def end_session(session_id: uuid.UUID) -> tuple[str, int]:
    """Sign out one device."""
    sessions.end_session(me(), session_id, reason="revoked")
    return "", 204


def api_key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
        created_at=key.created_at, last_used_at=key.last_used_at, expires_at=key.expires_at,
    )  # fmt: skip


@bp.get("/api-keys")
@auth_required(api_keys=False)
@bp.output(ApiKeyList)
def list_api_keys() -> ApiKeyList:
    """My active API keys (secrets are never shown again)."""
    return ApiKeyList(items=[api_key_out(k) for k in api_keys.list_api_keys(me())])


@bp.post("/api-keys")
@auth_required(api_keys=False)
@limiter.limit(
    configured("ratelimit_password_confirm_failures"),
    key_func=principal_key,
    deduct_when=_rejected_input,
)
@bp.input(ApiKeyIn, location="json", arg_name="body")
@bp.output(NewApiKeyOut, status_code=201)
@bp.doc(
    responses={
        403: "The email address is not verified, or neither `current_password` nor a recent "
        "sign-in proves the password (or an API key or a role was used)",
        422: "Invalid body, or `current_password` is incorrect",
    }
)
def create_api_key(body: ApiKeyIn) -> Any:
    """Create an API key; the response holds its secret, once.

    Needs a verified email address and a fresh proof of the password: `current_password`,
    or a sign-in of the last few minutes (a refreshed token does not count as one). The
    owner gets a security email about the new key at once. Deliberately not idempotent:
    replaying would mean storing the secret.
    """
    auth_time = get_jwt().get("auth_time")
    created = api_keys.create_api_key(
        me(), name=body.name, scopes=list(body.scopes), expires_at=body.expires_at,
        current_password=body.current_password,
        signed_in_at=float(auth_time) if isinstance(auth_time, int | float) else None,
    )  # fmt: skip
    return NewApiKeyOut(api_key=api_key_out(created.key), secret=created.secret)


@bp.delete("/api-keys/<uuid:key_id>")
@auth_required(api_keys=False)
@bp.output({}, status_code=204)
def revoke_api_key(key_id: uuid.UUID) -> tuple[str, int]:
    """Revoke an API key."""
    api_keys.revoke_api_key(me(), key_id)
    return "", 204
