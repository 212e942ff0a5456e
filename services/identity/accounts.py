"""Accounts: registration, email verification, sign-in, passwords and operator creation."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from flask import current_app
from sqlalchemy import event, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from extensions import db, redis
from logs import get_logger
from models import Team, TeamMember, User, UserProfile
from services.core import tokens
from services.core.audit import record_audit
from services.core.commit_hooks import after_commit
from services.core.errors import Conflict, Unauthorized, ValidationFailed
from services.identity import api_keys, sessions
from services.identity.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from services.identity.sessions import TokenPair
from services.insights import search
from services.messaging.mail import queue_email
from services.messaging.notifications import notify

log = get_logger(__name__)
# One "someone tried to sign up with your address" email per account and hour at most:
# anyone can send the address to /register, so it must not become a way to spam its owner.
_SIGNUP_NOTICE = "auth:signup-notice:"
_SIGNUP_NOTICE_SECONDS = 3600


def find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def _add_user(email: str, password: str, name: str, *, is_admin: bool = False) -> User:
    """Stage a user with their personal team and profile (no commit)."""
    check_password_policy(password, email=email, name=name)
    if find_user_by_email(email) is not None:
        raise Conflict("An account with this email already exists.")
    return _stage_user(email, password, name, is_admin=is_admin)


def _stage_user(email: str, password: str, name: str, *, is_admin: bool) -> User:
    user = User(
        id=uuid.uuid4(), email=email.strip(), name=name, password_hash=hash_password(password),
        is_admin=is_admin,
    )  # fmt: skip
    team = Team(id=uuid.uuid4(), name=f"{name}'s team", is_personal=True, created_by_id=user.id)
    # No ORM relationships, so flush in foreign-key order ourselves.
    db.session.add(user)
    db.session.flush()
    db.session.add(team)
    db.session.flush()
    member = TeamMember(id=uuid.uuid4(), team_id=team.id, user_id=user.id, role="owner")
    db.session.add_all([member, UserProfile(user_id=user.id)])
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    search.index_document(team.id, "member", member.id, user.name, user.email)
    record_audit("user.registered", actor_id=user.id, team_id=team.id, subject_type="user",
                 subject_id=user.id)  # fmt: skip
    return user


def register_user(email: str, password: str, name: str) -> None:
    """Sign up, without telling the caller whether the address already has an account.

    A new address gets the account, its personal team and a verification link; an address
    that has one gets an email telling its owner (sign in, or reset the password) and
    nothing else changes. Both spend a password hash, so neither answers sooner. The
    password policy is checked first for both: a refusal must not depend on the address
    either. One transaction.
    """
    check_password_policy(password, email=email, name=name)
    existing = find_user_by_email(email)
    if existing is not None:
        hash_password(password)  # as long as a real sign-up takes
        _tell_owner_of_signup_attempt(existing)
        db.session.commit()
        return
    user = _stage_user(email, password, name, is_admin=False)
    queue_email("verify_email", user_id=user.id)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent registration with the same email won the unique index: from here
        # on this is a sign-up for an address that has an account.
        db.session.rollback()
        existing = find_user_by_email(email)
        if existing is None:
            raise
        _tell_owner_of_signup_attempt(existing)
        db.session.commit()


def _tell_owner_of_signup_attempt(user: User) -> None:
    """Queue the "someone tried to sign up with your address" email (the caller commits)."""
    try:
        first = redis.client.set(
            _SIGNUP_NOTICE + str(user.id), "1", nx=True, ex=_SIGNUP_NOTICE_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - a 503 here would tell the address is taken
        log.warning("signup_notice_throttle_unavailable", error=type(exc).__name__)
        first = True
    if first:
        queue_email("account_exists", user_id=user.id)
    record_audit("auth.signup_existing_address", actor_id=None, subject_type="user",
                 subject_id=user.id, data={"notified": bool(first)})  # fmt: skip


def create_user(email: str, password: str, name: str, *, is_admin: bool) -> User:
    """Create an account from the CLI (operators; the address counts as verified)."""
    user = _add_user(email, password, name, is_admin=is_admin)
    user.email_verified_at = datetime.now(UTC)
    db.session.commit()
    return user


def resend_verification(user: User) -> None:
    """Email a fresh verification link (no-op once verified). One transaction."""
    if user.email_verified_at is not None:
        raise Conflict("This email address is already verified.")
    queue_email("verify_email", user_id=user.id)
    db.session.commit()


def verify_email(token: str) -> User:
    """Mark the address in a verification link as verified. One transaction."""
    user_id, email_fingerprint = tokens.read_verify_email(token)
    user = db.session.get(User, user_id, with_for_update=True)
    if (
        user is None
        or user.deleted_at is not None
        or not tokens.matches(email_fingerprint, user.email)
    ):
        raise ValidationFailed("This link is not valid.", errors={"token": ["Not valid."]})
    if user.email_verified_at is None:
        user.email_verified_at = datetime.now(UTC)
        record_audit(
            "user.email_verified", actor_id=user.id, subject_type="user", subject_id=user.id
        )
    db.session.commit()
    return user


def log_in(email: str, password: str, *, ip: str | None, user_agent: str | None) -> TokenPair:
    """Verify credentials and open a session (refresh-token family). One transaction."""
    user = find_user_by_email(email)
    # verify_password spends a hash's time even for unknown emails (no account probing).
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.is_active or user.deleted_at is not None:
        db.session.rollback()
        record_audit(
            "auth.login_failed",
            actor_id=user.id if user else None,
            subject_type="user" if user else None,
            subject_id=user.id if user else None,
            # Unknown addresses are kept as a digest: failures are evidence, not a mailing list.
            data={}
            if user
            else {"email_sha256": hashlib.sha256(email.lower().encode()).hexdigest()},
            ip=ip,
        )
        db.session.commit()
        raise Unauthorized("Email or password is incorrect.")
    # Lock the row and make sure the password just verified is still the account's: a
    # reset committed meanwhile (which revokes every session it can see) must not be
    # followed by a session opened with the old password.
    verified_hash = user.password_hash
    db.session.refresh(user, with_for_update=True)
    if user.password_hash != verified_hash:
        db.session.rollback()
        raise Unauthorized("Email or password is incorrect.")
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = datetime.now(UTC)
    if not sessions.seen_before(user, ip=ip, user_agent=user_agent):
        device = sessions.device_name(user_agent) or "an unknown device"
        data = {"device": device, "ip": ip or "an unknown address"}
        notify([user.id], "new_login", data, event_key=f"login:{uuid.uuid4()}")
    pair = sessions.open_session(user, ip=ip, user_agent=user_agent)
    record_audit("auth.login_succeeded", actor_id=user.id, subject_type="session",
                 subject_id=pair.session_id, ip=ip)  # fmt: skip
    db.session.commit()
    return pair


def forgot_password(email: str) -> None:
    """Email a reset link if the account exists; the caller never learns which. One transaction."""
    user = find_user_by_email(email)
    if user is not None and user.is_active and user.deleted_at is None:
        queue_email("password_reset", user_id=user.id)
        record_audit("auth.password_reset_requested", actor_id=user.id, subject_type="user",
                     subject_id=user.id)  # fmt: skip
        db.session.commit()


def reset_password(token: str, new_password: str) -> None:
    """Set a new password from a reset link and revoke every credential of the account:
    sessions (refresh families), access and stream tokens, API keys. One transaction.

    Recovery means someone else may hold the account's credentials (one who signed up
    with the address first, or stole a token): none of them may survive it.
    """
    user_id, password_fingerprint = tokens.read_password_reset(token)
    user = db.session.get(User, user_id, with_for_update=True)
    if (
        user is None
        or user.deleted_at is not None
        or not tokens.matches(password_fingerprint, user.password_hash)
    ):
        raise ValidationFailed("This link was already used or is not valid.",
                               errors={"token": ["Ask for a new reset link."]})  # fmt: skip
    _set_password(
        user, new_password, keep_session=None, revoke_api_keys=True, action="user.password_reset"
    )
    # Tokens without a session too (the sessions' own are blocked with them above).
    sessions.revoke_user_tokens(user.id)
    # Whoever could read the mailbox has now proven it: the address is verified too.
    user.email_verified_at = user.email_verified_at or datetime.now(UTC)
    db.session.commit()


def change_password(
    user: User,
    current_password: str,
    new_password: str,
    *,
    session_id: uuid.UUID | None,
    revoke_api_keys: bool = False,
) -> None:
    """Change the password (knowing the current one); every other session ends, and the
    API keys too if the user asks. One transaction."""
    if not verify_password(user.password_hash, current_password):
        raise ValidationFailed("The current password is incorrect.",
                               errors={"current_password": ["Incorrect."]})  # fmt: skip
    _set_password(user, new_password, keep_session=session_id, revoke_api_keys=revoke_api_keys,
                  action="user.password_changed")  # fmt: skip
    db.session.commit()


def _set_password(
    user: User, password: str, *, keep_session: uuid.UUID | None, revoke_api_keys: bool,
    action: str,
) -> None:  # fmt: skip
    check_password_policy(password, email=user.email, name=user.name)
    user.password_hash = hash_password(password)
    ended = sessions.revoke_all_sessions(
        user, except_session=keep_session, reason="password_changed"
    )
    keys = api_keys.revoke_all_api_keys(user) if revoke_api_keys else 0
    record_audit(action, actor_id=user.id, subject_type="user", subject_id=user.id,
                 data={"sessions_revoked": ended, "api_keys_revoked": keys})  # fmt: skip
    queue_email("password_changed", user_id=user.id)
    # In the app too; email=False because the dedicated email above says it better.
    notify([user.id], "password_changed", {}, event_key=f"password:{uuid.uuid4()}", email=False)


def is_known_device(email: str, *, ip: str | None, user_agent: str | None) -> bool:
    """Whether the account behind `email` signed in from this address and browser lately
    (its owner's device, then: failed logins from elsewhere must not lock it out)."""
    user = find_user_by_email(email)
    return user is not None and sessions.seen_before(user, ip=ip, user_agent=user_agent)


# The token's user, cached per process -------------------------------------------------
#
# Every authenticated request needs its user row (is_active, is_admin, the columns views
# read). A process keeps the columns of an active user for USER_CACHE_SECONDS and builds a
# session-bound User from them instead of a SELECT. A change to a user row (any flushed
# change: deactivation, deletion, password, email, admin flag, sign-in time) sets the user's
# generation key in Redis after its commit; each request reads that key in the same round
# trip as its token's revocation check (blueprints.common.auth) and reloads the row if it
# moved since the columns were cached. So a change is seen by the next request in every
# process; the one gap is a change committed between a request's read of the row and its
# Redis check, which a process can serve for at most USER_CACHE_SECONDS.
_GENERATION: Final = "auth:user:gen:"
_GENERATION_SECONDS: Final = 86_400  # far longer than any cache entry lives
_UNCHECKED: Final = object()  # an entry no request has compared with the generation yet
_COLUMNS: Final = tuple(attr.key for attr in User.__mapper__.column_attrs)
_ENTRY: Final = "maycole.user_cache_entry"  # InstanceState.info: the entry a User came from


@dataclass
class _Cached:
    columns: dict[str, Any]
    until: float  # time.monotonic()
    generation: object  # bytes | None as read from Redis, or _UNCHECKED


_cache: dict[uuid.UUID, _Cached] = {}
_cache_lock = threading.Lock()


def user_generation_key(user_id: uuid.UUID | str) -> str:
    """The Redis key that changes whenever the user's row does (read with the token check)."""
    return _GENERATION + str(user_id)


def load_active_user(user_id: str, *, attach: bool = True) -> User | None:
    """The user behind a token, or None if gone or disabled (the token then fails).

    From this process's cache when it holds the user (see above); the caller then confirms
    the entry with `confirm_cached_user` once it has read the user's generation key. With
    `attach=False` (a request that only reads: GET, HEAD) a cached user is not added to the
    session, whose transaction and teardown that would cost: it is a detached User that
    reads like a loaded one, and the moment one of its columns is set it joins the current
    session (`_join_session_on_change`), so no change to it can be lost."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        return None
    seconds = float(current_app.config["SETTINGS"].user_cache_seconds)
    # A request's session usually does not exist yet; asking its identity map would
    # create one (and its teardown) only to find it empty.
    in_session = db.session.registry.has() and identity_key(User, uid) in db.session.identity_map
    if seconds > 0 and not in_session:
        with _cache_lock:
            entry = _cache.get(uid)
        if entry is not None and entry.until > time.monotonic():
            return _from_cache(entry, attach)
    user = db.session.get(User, uid)
    if user is None or not user.is_active or user.deleted_at is not None:
        _forget_user(uid)
        return None
    if seconds > 0 and _ENTRY not in inspect(user).info:
        columns = {name: getattr(user, name) for name in _COLUMNS}
        entry = _Cached(columns, time.monotonic() + seconds, _UNCHECKED)
        with _cache_lock:
            _cache[uid] = entry
        inspect(user).info[_ENTRY] = entry
    return user


def _from_cache(entry: _Cached, attach: bool) -> User:
    """A User built from cached columns without SQL, as if just loaded (no pending
    changes), added to the current session if `attach`. Its columns go straight into the
    instance's dict, as the ORM's loader puts them: the constructor would send each
    through attribute instrumentation (and its events) for nothing."""
    user: User = User.__mapper__.class_manager.new_instance()
    user.__dict__.update(entry.columns)
    make_transient_to_detached(user)
    inspect(user).info[_ENTRY] = entry
    if attach:
        db.session.add(user)
    return user


def _join_session_on_change(target: User, value: Any, _old: Any, _initiator: Any) -> Any:
    # A detached user from the cache (a read request's) being changed: into the session it
    # goes, before the change, which then flushes as an UPDATE like any loaded row's.
    state = inspect(target)
    if state.detached and _ENTRY in state.info:
        db.session.add(target)
    return value


for _column in _COLUMNS:
    event.listen(getattr(User, _column), "set", _join_session_on_change, retval=True)


def confirm_cached_user(user: User, generation: bytes | None) -> User | None:
    """The user to trust once this request has read its generation key: `user` itself if
    the cached columns are still current, else the row read again (None if the account is
    no longer active)."""
    entry: _Cached | None = inspect(user).info.get(_ENTRY)
    if entry is None:
        return user  # not cached (off, or the session already held the row)
    with _cache_lock:
        if entry.generation is _UNCHECKED or entry.generation == generation:
            entry.generation = generation  # read after the row: see the race above
            return user
        if _cache.get(user.id) is entry:
            del _cache[user.id]
    if not inspect(user).detached:
        db.session.expunge(user)
    return load_active_user(str(user.id))


def _forget_user(user_id: uuid.UUID) -> None:
    with _cache_lock:
        _cache.pop(user_id, None)


def _user_changed(user_id: uuid.UUID) -> None:
    """After a commit that changed the row: this process forgets it, every other process
    sees the new generation on its next request for this user."""
    _forget_user(user_id)
    try:
        redis.client.set(user_generation_key(user_id), uuid.uuid4().hex, ex=_GENERATION_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the commit stands; the cache expires anyway
        log.warning("user_generation_unavailable", error=type(exc).__name__)


@event.listens_for(Session, "after_flush")
def _note_changed_users(session: Session, _context: Any) -> None:
    # dirty and deleted still list what this flush wrote. A Core UPDATE/DELETE of users
    # would not show here; none exists (user rows change through the ORM only).
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, User):
            callback = functools.partial(_user_changed, obj.id)
            after_commit(callback, key=("user_changed", obj.id), session=session)
