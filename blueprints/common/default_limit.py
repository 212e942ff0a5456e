"""The default rate limit, which every route without limits of its own pays.

It is the one rate limit on the hot path (a job's status, the dashboard, every write), so
it costs one Redis round trip and little else. flask-limiter did the same job at about a
sixth of a read's CPU: on every request it resolved the route's limits again (exemption
scopes, blueprint and hint lookups, the configured limit string parsed anew) before its
own round trip. The default limit is the same for every route and known at start-up, so
it is parsed once here, and whether a route pays it is decided once per endpoint.
flask-limiter keeps the limits that views declare (`@limiter.limit`: login, registration,
team creation, ...), on routes that then do not pay the default, as before.

What a caller sees is unchanged: fixed windows per verified principal (user or API key,
else the client address, `ratelimits.principal_key`) and per route, counted in the same
Redis keys as flask-limiter's (so `limiter.reset()` clears them); RateLimit-Limit,
-Remaining and -Reset (seconds) on every response of such a route; a problem+json 429
with Retry-After once a window is spent.

An access token's revocation check rides in the same script (see `ratelimits.
PendingRevocation`): a revoked token's hit counts against the client address. If Redis
cannot be reached, the request is answered 503 (production: a limit counted per process
is no limit across N processes), or with RATELIMIT_MEMORY_FALLBACK (development, test)
counted in this process's memory, as flask-limiter's fallback does; either way Redis is
tried again after REDIS_RETRY_SECONDS, and the revocation check is left to the guard,
which fails closed (503).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Final

from flask import Flask, Response, current_app, g, request
from flask_limiter.util import get_qualified_name
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from werkzeug.exceptions import TooManyRequests

from blueprints.common import ratelimits
from extensions import redis
from logs import get_logger

EXTENSION: Final = "maycole_default_limit"  # app.extensions: this app's DefaultLimit
_WINDOWS: Final = "_default_limit_windows"  # flask.g: this request's (limit, count, reset in)
# After Redis failed, count in memory for this long before trying it again: a dead Redis
# must not cost every request a connection attempt.
REDIS_RETRY_SECONDS: Final = 1.0
KEY_PREFIX: Final = "LIMITS:"  # limits' RedisStorage prefix: limiter.reset() clears ours too
log = get_logger("ratelimit")

# Counts one hit in each of the limit's windows (KEYS[1..n], ARGV[3..] their lengths) and
# returns {revoked, generation, count 1, ttl 1, ..., count n, ttl n}. With a token whose
# revocation is pending, KEYS[n+1..2n] are the same windows of the client address and
# KEYS[2n+1..] the user's generation key, then services.identity.sessions.revocation_keys
# (jti, user cutoff, [session]); ARGV[2] is the token's iat. The rule is is_token_revoked's:
# the jti or the session blocked, or issued at or before the user's cutoff; a revoked
# token's hits go to the address's windows, as if it had never verified.
_HIT: Final = """
local n = tonumber(ARGV[1])
local revoked, generation = 0, false
if #KEYS > n then
    local at = 2 * n
    generation = redis.call("get", KEYS[at + 1])
    if redis.call("exists", KEYS[at + 2]) == 1
        or (KEYS[at + 4] and redis.call("exists", KEYS[at + 4]) == 1) then
        revoked = 1
    else
        local cutoff = redis.call("get", KEYS[at + 3])
        if cutoff and tonumber(ARGV[2]) <= tonumber(cutoff) then
            revoked = 1
        end
    end
end
local out = {revoked, generation}
for i = 1, n do
    local key = KEYS[i + revoked * n]
    local count = redis.call("incr", key)
    if count == 1 then
        redis.call("expire", key, ARGV[2 + i])
    end
    out[#out + 1] = count
    out[#out + 1] = redis.call("ttl", key)
end
return out
"""


@dataclass
class DefaultLimit:
    """One app's default limit: its windows, and which of its endpoints pay it."""

    limits: list[RateLimitItem]
    enabled: bool
    memory_fallback: bool  # while Redis is down: count here (True) or answer 503 (False)
    _covers: dict[str, bool] = field(default_factory=dict)  # endpoint: pays the default
    _memory: FixedWindowRateLimiter = field(
        default_factory=lambda: FixedWindowRateLimiter(MemoryStorage())
    )
    _redis_down_until: float = 0.0
    _script: Script | None = None  # _HIT, sent by its digest (EVALSHA) once Redis knows it
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def covers(self, endpoint: str | None) -> bool:
        """Whether a request to `endpoint` pays the default limit: not a 404, not static
        files, not a view with limits of its own or exempt."""
        if not self.enabled or endpoint is None:
            return False
        covered = self._covers.get(endpoint)
        if covered is None:
            view = current_app.view_functions.get(endpoint)
            covered = (
                view is not None
                and endpoint.rsplit(".", 1)[-1] != "static"
                and not ratelimits.limiter.declares_limits(get_qualified_name(view))
                and not ratelimits.limiter.is_exempt(get_qualified_name(view))
            )
            self._covers[endpoint] = covered
        return covered

    def hit(self, endpoint: str) -> list[tuple[RateLimitItem, int, int]]:
        """Count this request: (limit, count after it, seconds until its window resets)."""
        principal = ratelimits.principal_key()
        if time.monotonic() >= self._redis_down_until:
            try:
                return self._hit_redis(principal, endpoint)
            except Exception as exc:  # any failure: 503 or per process (module doc)
                with self._lock:
                    self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                log.warning("rate_limit_storage_unavailable", error=type(exc).__name__)
                if not self.memory_fallback:
                    raise RedisConnectionError("rate-limit storage unavailable") from exc
        elif not self.memory_fallback:
            raise RedisConnectionError("rate-limit storage unavailable (retrying shortly)")
        return self._hit_memory(principal, endpoint)

    def _hit_redis(self, principal: str, endpoint: str) -> list[tuple[RateLimitItem, int, int]]:
        keys = [KEY_PREFIX + item.key_for(principal, endpoint) for item in self.limits]
        args: list[str | int] = [len(self.limits), ""]
        pending = ratelimits.pending_revocation()
        if pending is not None and pending.revoked is None and principal == pending.principal:
            address = ratelimits.client_ip()
            keys += [KEY_PREFIX + item.key_for(address, endpoint) for item in self.limits]
            keys += [pending.generation_key, *pending.keys]
            args[1] = repr(pending.issued_at)
        else:
            pending = None
        args += [item.get_expiry() for item in self.limits]
        client = redis.client
        if self._script is None:
            self._script = client.register_script(_HIT)
        revoked, generation, *windows = self._script(keys, args, client=client)
        if pending is not None:
            pending.revoked, pending.generation = bool(revoked), generation
        return [
            (item, int(windows[2 * i]), max(int(windows[2 * i + 1]), 1))
            for i, item in enumerate(self.limits)
        ]

    def _hit_memory(self, principal: str, endpoint: str) -> list[tuple[RateLimitItem, int, int]]:
        hits = []
        for item in self.limits:
            self._memory.hit(item, principal, endpoint)
            reset_at, remaining = self._memory.get_window_stats(item, principal, endpoint)
            hits.append((item, item.amount - remaining, max(int(reset_at - time.time()), 1)))
        return hits


def register_default_limit(app: Flask) -> None:
    """Count the default limit in a before_request hook registered after the caller is
    identified (blueprints.common.auth), so it counts the verified caller."""
    settings = app.config["SETTINGS"]
    default = DefaultLimit(
        list(parse_many(settings.ratelimit_default)),
        settings.ratelimit_enabled,
        settings.ratelimit_memory_fallback,
    )
    app.extensions[EXTENSION] = default
    app.before_request(_count)
    app.after_request(_headers)


def _count() -> None:
    default: DefaultLimit = current_app.extensions[EXTENSION]
    endpoint = request.endpoint
    if not default.covers(endpoint):
        return
    assert endpoint is not None
    windows = default.hit(endpoint)
    setattr(g, _WINDOWS, windows)
    spent = [(item, reset) for item, count, reset in windows if count > item.amount]
    if spent:
        item, reset = max(spent, key=lambda pair: pair[1])
        raise TooManyRequests(str(item), retry_after=reset)


def _headers(response: Response) -> Response:
    windows: list[tuple[RateLimitItem, int, int]] | None = g.pop(_WINDOWS, None)
    if windows:
        # The window closest to running out speaks for all of them.
        item, count, reset = min(windows, key=lambda w: (w[0].amount - w[1], -w[2]))
        headers = response.headers
        headers["RateLimit-Limit"] = str(item.amount)
        headers["RateLimit-Remaining"] = str(max(item.amount - count, 0))
        headers["RateLimit-Reset"] = str(reset)
    return response
