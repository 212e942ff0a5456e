"""How many event streams each user has open, counted across every web process (Redis).

Each open stream holds a lease in its user's sorted set `events:streams:user:{id}`: the
member is the stream's id, the score when the lease runs out (Redis's clock, in ms). A
stream renews its lease whenever it re-checks its credential and gives it back when it
ends. A process that dies without ending its streams leaves leases that run out by
themselves `lease_seconds` after their last renewal, so a crash never locks a user out
for long. Taking and renewing are Lua scripts: one round trip each, and two processes can
never both take a user's last free lease.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from config import Settings
from extensions import redis
from logs import get_logger
from services.core.errors import ServiceError

log = get_logger(__name__)
KEY_PREFIX = "events:streams:user:"

# KEYS[1] the user's set; ARGV: cap, lease ms, stream id. Returns -1 when the lease was
# taken, else the ms until the oldest lease runs out (when a slot may free up).
_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return tonumber(oldest[2]) - now_ms
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"""
# KEYS[1] the user's set; ARGV: lease ms, stream id. Returns 1 if renewed, 0 if the lease
# was gone (it ran out and another stream's take dropped it).
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
    return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class TooManyStreams(ServiceError):
    """The user already has as many streams open as they may (they close one, or wait)."""

    status, title, type_slug = 429, "Too Many Requests", "too-many-streams"


def credential_check_seconds(settings: Settings) -> float:
    """How often an open stream re-checks its credential (and renews its lease)."""
    return min(settings.events_credential_check_seconds, settings.events_heartbeat_seconds)


def lease_seconds(settings: Settings) -> float:
    """How long a lease lasts without renewal: three missed checks, plus slack for a slow
    Redis round trip, before a crashed process's stream stops counting."""
    return 3 * credential_check_seconds(settings) + 2


@dataclass(frozen=True)
class StreamLease:
    user_id: uuid.UUID
    stream_id: str
    lease_ms: int

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.user_id}"

    def renew(self) -> bool:
        """Extend the lease; False if it was lost (the stream should end). Raises RedisError."""
        script = redis.client.register_script(_RENEW)
        return bool(script(keys=[self.key], args=[self.lease_ms, self.stream_id]))

    def release(self) -> None:
        """Give the lease back; never raises (an unreleased lease runs out by itself)."""
        try:
            redis.client.zrem(self.key, self.stream_id)
        except Exception as exc:  # noqa: BLE001 - runs on close; the lease expires anyway
            log.warning("stream_lease_release_failed", error=type(exc).__name__)


def take(user_id: uuid.UUID, settings: Settings) -> StreamLease:
    """A lease for one more stream of the user, or 429 with Retry-After. Raises RedisError."""
    lease = StreamLease(user_id, uuid.uuid4().hex, int(lease_seconds(settings) * 1000))
    script = redis.client.register_script(_TAKE)
    cap = settings.events_max_streams_per_user
    wait_ms = int(script(keys=[lease.key], args=[cap, lease.lease_ms, lease.stream_id]))  # type: ignore[arg-type]
    if wait_ms >= 0:
        raise TooManyStreams(
            f"You already have {cap} event streams open; close one (or wait) and reconnect.",
            headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))},
        )
    return lease
