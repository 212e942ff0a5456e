"""Who a rate limit counts against, and limits read from configuration."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from flask import Blueprint, Flask, current_app, g, has_request_context, request
from flask_limiter import Limiter
from flask_limiter.util import get_qualified_name
from limits.storage import RedisStorage, Storage

from redis_urls import redis_client

# RATELIMIT_STORAGE_URI is "<this prefix><REDIS_URL>" (config.py): our storage below.
STORAGE_SCHEME_PREFIX: Final = "maycole+"
_HITS: Final = "_ratelimit_hits"  # flask.g: key -> (count, expires at) of this request
_PRINCIPAL: Final = "_ratelimit_principal"  # flask.g: the verified caller's bucket
_PENDING: Final = "_ratelimit_pending_revocation"  # flask.g: a PendingRevocation


@dataclass
class PendingRevocation:
    """A token whose signature verified but whose revocation is not checked yet.

    The check is folded into the default limit's hit of the caller's windows (one Redis
    round trip for both, blueprints.common.default_limit); `revoked` stays None when no
    such hit ran (a route with limits of its own or exempt, the limiter disabled, Redis
    unreachable), and then the guard checks on its own (blueprints.common.auth), failing
    closed as ever.
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
    is still to be checked: the default limit's hit checks it and counts a revoked token against
    the client address instead, as if it had never verified."""
    setattr(g, _PRINCIPAL, principal)
    setattr(g, _PENDING, unless_revoked)


def pending_revocation() -> PendingRevocation | None:
    """This request's token awaiting (or past) its revocation check in the default limit."""
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

    def __init__(self, uri: str, master_name: str = "", **options: Any) -> None:
        # `master_name` is SentinelWindowStorage's; flask-limiter keeps storage options
        # across init_app calls, so a plain-Redis app built after a Sentinel one gets it too.
        super().__init__(uri.removeprefix(STORAGE_SCHEME_PREFIX), **options)

    def initialize_storage(self, _uri: str) -> None:
        super().initialize_storage(_uri)
        self.lua_incr_expire_ttl = self.get_connection().register_script(
            self.SCRIPT_INCR_EXPIRE_TTL
        )

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, ttl = self.lua_incr_expire_ttl([self.prefixed_key(key)], [expiry, amount])
        if has_request_context():
            g.setdefault(_HITS, {})[key] = (int(count), max(int(ttl), 0) + time.time())
        return int(count)

    def get(self, key: str) -> int:
        seen = _seen(key)
        return seen[0] if seen is not None else int(super().get(key))

    def get_expiry(self, key: str) -> float:
        seen = _seen(key)
        return seen[1] if seen is not None else float(super().get_expiry(key))


class SentinelWindowStorage(RedisWindowStorage):
    """`RedisWindowStorage` on the current master of a Redis behind Sentinel.

    Registered for `maycole+sentinel://`, i.e. a REDIS_URL in kombu's Sentinel form behind
    our prefix, with the master's name in the options (config.py). limits' own
    RedisSentinelStorage would read from replicas (stale counts, and our hit script
    writes) and send the master's password to the sentinels too; here every command,
    the windows' script included, goes to the master the sentinels name, and a
    failover is followed on the next connection.
    """

    STORAGE_SCHEME = [f"{STORAGE_SCHEME_PREFIX}sentinel"]

    def __init__(
        self,
        uri: str,
        master_name: str = "",
        key_prefix: str = RedisStorage.PREFIX,
        wrap_exceptions: bool = False,
        **options: Any,
    ) -> None:
        Storage.__init__(self, uri, wrap_exceptions=wrap_exceptions, **options)
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = self.dependencies["redis"].module
        self.storage = redis_client(uri.removeprefix(STORAGE_SCHEME_PREFIX), master_name, **options)
        self.initialize_storage(uri)


def _seen(key: str) -> tuple[int, float] | None:
    """This request's own hit of `key`: (count after it, when the window ends)."""
    if not has_request_context():
        return None
    hits: dict[str, tuple[int, float]] = g.get(_HITS, {})
    return hits.get(key)


class RouteLimiter(Limiter):
    """flask-limiter for the limits views declare; the default limit is counted by
    blueprints.common.default_limit, which asks `declares_limits` which views to leave to
    this one (a view with limits of its own does not pay the default, as in flask-limiter)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._limited: set[str] = set()  # qualified names of views with limits of their own
        self._exempt: set[str] = set()  # ... and of views exempt from every limit

    def init_app(self, app: Flask) -> None:
        # What a Redis outage does (RATELIMIT_SWALLOW_ERRORS, RATELIMIT_IN_MEMORY_FALLBACK_
        # ENABLED: RATELIMIT_MEMORY_FALLBACK) is this app's to say, as its storage is:
        # flask-limiter keeps the first app's answer for the module's one limiter, and a
        # process that builds a second app (tests, the CLI) would inherit it.
        self._swallow_errors = None
        self._in_memory_fallback_enabled = False
        super().init_app(app)
        # flask-limiter's before_request hook applies default, application-wide and meta
        # limits, none of which this limiter has, while a view's own limits are checked by
        # its decorator: on every request the hook resolved (exemption scopes, blueprint
        # and hint lookups) only to find nothing to count. Its after_request hook stays: it
        # writes the headers of a view's own limits and counts `deduct_when` ones. (A
        # disabled limiter registers no hooks.)
        hooks = app.before_request_funcs.get(None, [])
        if self._check_request_limit in hooks:
            hooks.remove(self._check_request_limit)

    def declares_limits(self, view_name: str) -> bool:
        """Whether the view has limits of its own (only those views need flask-limiter)."""
        return view_name in self._limited

    def is_exempt(self, view_name: str) -> bool:
        return view_name in self._exempt

    def limit(self, *args: Any, **kwargs: Any) -> Any:
        return self._declaring(super().limit(*args, **kwargs))

    def shared_limit(self, *args: Any, **kwargs: Any) -> Any:
        return self._declaring(super().shared_limit(*args, **kwargs))

    def exempt(self, obj: Any = None, **kwargs: Any) -> Any:
        if callable(obj) and not isinstance(obj, Blueprint):
            self._exempt.add(get_qualified_name(obj))
        elif obj is not None:
            raise TypeError("exempt a view, not a blueprint: the default limit is per view")
        return super().exempt(obj, **kwargs) if obj is not None else self._exempting(kwargs)

    def _exempting(self, kwargs: dict[str, Any]) -> Callable[[Any], Any]:
        return lambda view: self.exempt(view, **kwargs)

    def _declaring(self, decorator: Any) -> Callable[[Any], Any]:
        def declare(view: Any) -> Any:
            if isinstance(view, Blueprint):
                raise TypeError("limit views, not blueprints: the default limit is per view")
            self._limited.add(get_qualified_name(view))
            return decorator(view)

        return declare


# Strategy and storage come from config (RATELIMIT_*); no default limit here (see
# RouteLimiter). Limits count per verified user or API key unless a view says otherwise.
limiter = RouteLimiter(key_func=principal_key)
