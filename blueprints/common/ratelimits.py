"""Who a rate limit counts against, and limits read from configuration."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from flask import current_app, g, has_request_context, request
from flask_limiter import Limiter
from limits.storage import RedisStorage

# RATELIMIT_STORAGE_URI is "<this prefix><REDIS_URL>" (config.py): our storage below.
STORAGE_SCHEME_PREFIX: Final = "maycole+"
_HITS: Final = "_ratelimit_hits"  # flask.g: key -> (count, expires at) of this request
_PRINCIPAL: Final = "_ratelimit_principal"  # flask.g: the verified caller's bucket
_PENDING: Final = "_ratelimit_pending_revocation"  # flask.g: a PendingRevocation


@dataclass
class PendingRevocation:
    """A token whose signature verified but whose revocation is not checked yet.

    The check is folded into the limiter's first hit of the caller's bucket (one Redis
    round trip for both, `RedisWindowStorage.incr`); `revoked` stays None when no such hit
    ran (an exempt route, the limiter disabled or failed over to memory), and then the
    guard checks on its own (blueprints.common.auth), failing closed as ever.
    """

    principal: str  # the bucket if the token stands: "user:<id>"
    keys: list[str]  # services.identity.sessions.revocation_keys: jti, user cutoff, [sid]
    issued_at: float  # the token's iat, compared with the user's cutoff
    generation_key: str  # the user row's generation (services.identity.accounts), read along
    revoked: bool | None = None
    generation: bytes | None = None  # its value, once read


def client_ip() -> str:
    # remote_addr is the socket peer, or the X-Forwarded-For hop ProxyFix was told to trust.
    return f"ip:{request.remote_addr or 'unknown'}"


def principal_key() -> str:
    """The default limit's key: the verified user or API key, else the client address.

    Only a credential that verified names a bucket (`count_as`, called by
    blueprints.common.auth before the limiter runs). Keyed on what a request merely
    claims, an attacker would choose the bucket: a fresh one per request (a made-up
    `X-API-Key` prefix beside a valid token) or a victim's (the victim's key prefix with
    a wrong secret, throttling the victim's integration).
    """
    pending: PendingRevocation | None = g.get(_PENDING)
    if pending is not None and pending.revoked:
        return client_ip()  # a revoked token proves nothing: the address pays
    return str(g.get(_PRINCIPAL) or client_ip())


def count_as(principal: str | None, *, unless_revoked: PendingRevocation | None = None) -> None:
    """Count this request's default limit against a principal whose credential verified
    (None: against the client address). With `unless_revoked`, the credential's revocation
    is still to be checked: the limiter's hit checks it and counts a revoked token against
    the client address instead, as if it had never verified."""
    setattr(g, _PRINCIPAL, principal)
    setattr(g, _PENDING, unless_revoked)


def pending_revocation() -> PendingRevocation | None:
    """This request's token awaiting (or past) the revocation check folded into the limiter."""
    return g.get(_PENDING) if has_request_context() else None


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


class RedisWindowStorage(RedisStorage):
    """Rate-limit storage on Redis whose hit also answers the window's statistics.

    flask-limiter hits a fixed-window limit with one round trip (INCRBY, plus EXPIRE in
    a new window) and then, for the RateLimit-Remaining and -Reset headers every
    response carries, reads the same counter back with a GET and a TTL: three round
    trips per request where one suffices. Here the hit's script returns the count and
    the TTL together, and the limiter's reads of that key later in the same request are
    answered from them (kept in `flask.g`, so never across requests). Everything else
    (other keys, reads outside a request, reset, clear) goes to Redis as before.

    Registered for `maycole+redis://`, `maycole+rediss://`, `maycole+redis+unix://` and
    `maycole+unix://`, i.e. the REDIS_URL behind our prefix.
    """

    STORAGE_SCHEME = [
        f"{STORAGE_SCHEME_PREFIX}{scheme}" for scheme in ("redis", "rediss", "redis+unix", "unix")
    ]
    # limits' incr_expire.lua, returning the key's TTL (seconds) with the count.
    SCRIPT_INCR_EXPIRE_TTL = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""
    # The same hit, with the token's revocation check of
    # services.identity.sessions.is_token_revoked folded in (the same rule: its jti or its
    # session blocked, or issued at or before its user's cutoff). A revoked token's hit
    # goes to the client address's counter (KEYS[2]) instead of the user's (KEYS[1]).
    # KEYS[3] = the user's generation key (returned, for the user cache); KEYS[4..] = jti
    # key, user cutoff key, [session key]; ARGV[3] = the token's iat.
    SCRIPT_HIT_UNLESS_REVOKED = b"""
local revoked = 0
if redis.call("exists", KEYS[4]) == 1 or (KEYS[6] and redis.call("exists", KEYS[6]) == 1) then
    revoked = 1
else
    local cutoff = redis.call("get", KEYS[5])
    if cutoff and tonumber(ARGV[3]) <= tonumber(cutoff) then
        revoked = 1
    end
end
local key = KEYS[1 + revoked]
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", key, amount)
if tonumber(current) == amount then
    redis.call("expire", key, ARGV[1])
end
return {current, redis.call("ttl", key), revoked, redis.call("get", KEYS[3])}
"""

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix(STORAGE_SCHEME_PREFIX), **options)

    def initialize_storage(self, _uri: str) -> None:
        super().initialize_storage(_uri)
        self.lua_incr_expire_ttl = self.get_connection().register_script(
            self.SCRIPT_INCR_EXPIRE_TTL
        )
        self.lua_hit_unless_revoked = self.get_connection().register_script(
            self.SCRIPT_HIT_UNLESS_REVOKED
        )

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        pending = pending_revocation()
        segment = f"/{pending.principal}/" if pending is not None else ""
        if pending is None or pending.revoked is not None or segment not in key:
            count, ttl = self.lua_incr_expire_ttl([self.prefixed_key(key)], [expiry, amount])
        else:
            # The caller's bucket: key_for() puts key_func()'s value between slashes.
            address = key.replace(segment, f"/{client_ip()}/", 1)
            count, ttl, revoked, generation = self.lua_hit_unless_revoked(
                [
                    self.prefixed_key(key),
                    self.prefixed_key(address),
                    pending.generation_key,
                    *pending.keys,
                ],
                [expiry, amount, repr(pending.issued_at)],
            )
            # A failure above (Redis down) leaves it None: the guard then checks alone.
            pending.generation = generation
            pending.revoked = bool(int(revoked))
        if has_request_context():
            g.setdefault(_HITS, {})[key] = (int(count), max(int(ttl), 0) + time.time())
        return int(count)

    def get(self, key: str) -> int:
        seen = _seen(key)
        return seen[0] if seen is not None else int(super().get(key))

    def get_expiry(self, key: str) -> float:
        seen = _seen(key)
        return seen[1] if seen is not None else float(super().get_expiry(key))


def _seen(key: str) -> tuple[int, float] | None:
    """This request's own hit of `key`: (count after it, when the window ends)."""
    if not has_request_context():
        return None
    hits: dict[str, tuple[int, float]] = g.get(_HITS, {})
    return hits.get(key)


# Strategy and storage come from config (RATELIMIT_*). The default limit is read from each
# app's Settings per request (an app built with other settings gets its own), and counts
# per verified user or API key, per address for everyone else.
limiter = Limiter(key_func=principal_key, default_limits=[configured("ratelimit_default")])
