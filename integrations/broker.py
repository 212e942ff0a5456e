"""The broker's Redis, for what the app reads there beside Celery: queue lengths (metrics,
lost-message checks) and the relay's mark key. None when the broker is not Redis."""

from __future__ import annotations

from functools import cache

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from extensions import celery_app

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def broker_redis() -> redis_lib.Redis | None:
    """A client for the broker Celery publishes to (`celery_app.conf.broker_url`, set
    from the app's settings), or None for another kind of broker."""
    url = str(celery_app.conf.broker_url or "")
    return _client(url) if url.startswith(REDIS_SCHEMES) else None


@cache
def _client(url: str) -> redis_lib.Redis:
    # One quick reconnect (a restarted broker leaves a dead pooled connection), then
    # fail fast: the callers run again on the next scrape or tick.
    return redis_lib.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
    )
