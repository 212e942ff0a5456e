"""The broker's Redis, for what the app reads there beside Celery: queue lengths (metrics,
lost-message checks) and the relay's mark key. None when the broker is not Redis.

Behind Sentinel (a `sentinel://` broker URL, its master named in the transport options)
the client follows the current master, so lost-message detection keeps working after a
failover, which is exactly when an asynchronous replica may have lost messages.
"""

from __future__ import annotations

from functools import cache

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from extensions import celery_app
from redis_urls import is_sentinel_url, redis_client

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def broker_redis() -> redis_lib.Redis | None:
    """A client for the broker Celery publishes to (`celery_app.conf.broker_url`, set
    from the app's settings), or None for another kind of broker."""
    url = str(celery_app.conf.broker_url or "")
    if is_sentinel_url(url):
        options = celery_app.conf.broker_transport_options or {}
        return _client(url, str(options.get("master_name") or ""))
    return _client(url) if url.startswith(REDIS_SCHEMES) else None


@cache
def _client(url: str, master_name: str = "") -> redis_lib.Redis:
    # One quick reconnect (a restarted broker leaves a dead pooled connection), then
    # fail fast: the callers run again on the next scrape or tick.
    return redis_client(
        url,
        master_name,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 1),
    )
