"""Redis behind Sentinel: one URL form for every client that builds a Redis connection.

The form is kombu's, so the same REDIS_URL serves the Celery broker unchanged:
``sentinel://[[user]:password@]host:port[/db];sentinel://host2:port2;...``, one entry per
sentinel, the credentials and the database number taken from the first entry (as kombu
does) and meant for the master; the sentinels themselves are asked without them. The
master's name is a setting of its own (REDIS_SENTINEL_MASTER), because kombu reads it
from the transport options rather than the URL.

`redis_client` returns a client whose connections go to whichever server the sentinels
name as master when the connection is made: after a failover a broken connection
reconnects to the promoted replica, so the callers' own retry (one quick one) and their
next request or tick find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SCHEME: Final = "sentinel://"
DEFAULT_SENTINEL_PORT: Final = 26379


def _sentinel_kwargs() -> dict[str, Any]:
    # Asking a sentinel which server is master: a dead sentinel must cost a second, not
    # the ~10 s of redis-py's default retry with backoff; the next sentinel is asked.
    return {"socket_timeout": 1, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `sentinel://...;sentinel://...` URL."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None

    def master_kwargs(self) -> dict[str, Any]:
        """Connection settings for the master (database and credentials)."""
        auth = {"username": self.username, "password": self.password}
        return {"db": self.db, **{k: v for k, v in auth.items() if v}}


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse kombu's sentinel URL form; ValueError says what is wrong with it."""
    entries = [entry.strip() for entry in url.split(";") if entry.strip()]
    if not entries:
        raise ValueError("a Sentinel URL names at least one sentinel://host:port")
    sentinels: list[tuple[str, int]] = []
    for entry in entries:
        parts = urlsplit(entry)
        if parts.scheme.lower() != "sentinel" or not parts.hostname:
            raise ValueError(
                f"each entry of a Sentinel URL must be sentinel://host:port, not {entry!r}"
            )
        sentinels.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
    first = urlsplit(entries[0])
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"a Sentinel URL's path is a database number, not {path!r}")
    return SentinelURL(
        sentinels=tuple(sentinels),
        db=int(path or 0),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def redis_client(url: str, master_name: str = "", **options: Any) -> redis_lib.Redis:
    """A `redis.Redis` for `url`: plain Redis URLs as `Redis.from_url(url, **options)`, a
    Sentinel URL as the current master of `master_name` with the same options."""
    if not is_sentinel_url(url):
        return redis_lib.Redis.from_url(url, **options)
    if not master_name:
        raise ValueError("a Sentinel URL needs the master's name (REDIS_SENTINEL_MASTER)")
    target = parse_sentinel_url(url)
    # redis-py's sentinel module has no type annotations
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs())  # type: ignore[no-untyped-call]
    master = sentinel.master_for(master_name, **target.master_kwargs(), **options)  # type: ignore[no-untyped-call]
    return cast(redis_lib.Redis, master)
