"""Circuit breakers whose state lives in Redis, so every worker and web process agrees.

`breaker("smtp")` guards one outside dependency: after `breaker_fail_max` consecutive
failures it opens and calls fail fast with `pybreaker.CircuitBreakerError` (no connection
attempt) until `breaker_reset_seconds` have passed; then one trial call decides.

If Redis itself is unreachable the breaker keeps working on in-process memory (and tries
Redis again after the reset period): a Redis outage must not also take email down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

import pybreaker
import redis as redis_lib
from flask import current_app
from redis.exceptions import RedisError
from redis.sentinel import SentinelConnectionPool

from extensions import redis
from logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# pybreaker logs every Redis error with a full traceback (several per guarded call);
# we report the switch to memory once instead, so its own logger is muted.
_pybreaker_redis_log = logging.getLogger(f"{__name__}.pybreaker_redis")
_pybreaker_redis_log.addHandler(logging.NullHandler())
_pybreaker_redis_log.propagate = False


class _WatchedRedis:
    """The Redis client as pybreaker sees it, noting (per thread) when a command failed.

    `CircuitRedisStorage` swallows Redis errors and answers "closed, 0 failures", which
    would silently disable the breaker during an outage; this lets us notice instead.
    """

    def __init__(self, client: redis_lib.Redis) -> None:
        self._client = client
        self._local = threading.local()

    @property
    def failed(self) -> bool:
        return bool(getattr(self._local, "failed", False))

    @failed.setter
    def failed(self, value: bool) -> None:
        self._local.failed = value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RedisError:
                self.failed = True
                raise

        return call


class FallbackStorage(pybreaker.CircuitBreakerStorage):
    """Breaker state in Redis; in this process's memory while Redis is unreachable."""

    def __init__(self, name: str, client: redis_lib.Redis, retry_seconds: float) -> None:
        super().__init__("redis-with-memory-fallback")
        self.breaker_name = name
        self._redis = _WatchedRedis(_bytes_client(client))
        self._retry_seconds = retry_seconds
        self._shared: pybreaker.CircuitRedisStorage | None = None
        self._memory = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def uses_redis(self) -> bool:
        """Whether the state is currently shared through Redis (False: memory fallback)."""
        return self._shared is not None

    def _connect(self) -> pybreaker.CircuitRedisStorage | None:
        if self._shared is not None or time.monotonic() < self._retry_at:
            return self._shared
        with self._lock:
            if self._shared is None and time.monotonic() >= self._retry_at:
                try:
                    # Its constructor writes the initial keys and lets Redis errors through.
                    shared = pybreaker.CircuitRedisStorage(
                        pybreaker.STATE_CLOSED,
                        cast(redis_lib.Redis, self._redis),
                        namespace=f"breaker:{self.breaker_name}",
                    )
                except RedisError as exc:
                    self._fall_back(exc)
                else:
                    shared.logger = _pybreaker_redis_log
                    self._shared = shared
                    if self._retry_at:  # we had fallen back: say that sharing resumed
                        log.info("breaker_redis_restored", breaker=self.breaker_name)
        return self._shared

    def _fall_back(self, exc: BaseException | None = None) -> None:
        self._shared = None
        self._retry_at = time.monotonic() + self._retry_seconds
        log.warning(
            "breaker_redis_unavailable",
            breaker=self.breaker_name,
            error=type(exc).__name__ if exc else "RedisError",
            retry_in_seconds=self._retry_seconds,
            detail="circuit state kept in this process's memory meanwhile",
        )

    def _use(self, op: Callable[[pybreaker.CircuitBreakerStorage], T]) -> T:
        shared = self._connect()
        if shared is not None:
            self._redis.failed = False
            try:
                value = op(shared)
            except RedisError as exc:
                self._fall_back(exc)
            else:
                if not self._redis.failed:
                    return value
                self._fall_back()
        return op(self._memory)

    @property
    def state(self) -> str:
        return self._use(lambda s: s.state)

    @state.setter
    def state(self, state: str) -> None:
        self._use(lambda s: setattr(s, "state", state))

    def increment_counter(self) -> None:
        self._use(lambda s: s.increment_counter())

    def reset_counter(self) -> None:
        self._use(lambda s: s.reset_counter())

    def increment_success_counter(self) -> None:
        self._use(lambda s: s.increment_success_counter())

    def reset_success_counter(self) -> None:
        self._use(lambda s: s.reset_success_counter())

    @property
    def counter(self) -> int:
        return self._use(lambda s: s.counter)

    @property
    def success_counter(self) -> int:
        return self._use(lambda s: s.success_counter)

    @property
    def opened_at(self) -> datetime | None:
        return self._use(lambda s: s.opened_at)

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._use(lambda s: setattr(s, "opened_at", now))


def _bytes_client(client: redis_lib.Redis) -> redis_lib.Redis:
    """`client`, or a twin on the same server that returns bytes.

    pybreaker's Redis storage calls `.decode()` on what it reads, so it breaks on a client
    made with `decode_responses=True`.
    """
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    if isinstance(pool, SentinelConnectionPool):  # the same master, found the same way
        twin = SentinelConnectionPool(  # type: ignore[no-untyped-call]  # untyped in redis-py
            pool.service_name, pool.sentinel_manager, is_master=pool.is_master, **kwargs
        )
        return redis_lib.Redis(connection_pool=twin)
    return redis_lib.Redis(
        connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs)
    )


def build_breaker(
    name: str,
    *,
    client: redis_lib.Redis,
    fail_max: int,
    reset_seconds: float,
    storage: FallbackStorage | None = None,
) -> pybreaker.CircuitBreaker:
    """A new breaker object for `name` whose state is shared through `client`'s Redis."""
    storage = storage or FallbackStorage(name, client, retry_seconds=reset_seconds)
    return pybreaker.CircuitBreaker(
        fail_max=fail_max, reset_timeout=reset_seconds, state_storage=storage, name=name
    )


_storages: dict[str, tuple[redis_lib.Redis, FallbackStorage]] = {}
_storages_lock = threading.Lock()
_per_thread = threading.local()


def breaker(name: str) -> pybreaker.CircuitBreaker:
    """The circuit breaker for dependency `name` (e.g. "smtp", "stripe"), from settings."""
    client = redis.client
    settings = current_app.config["SETTINGS"]
    with _storages_lock:
        cached = _storages.get(name)
        if cached is None or cached[0] is not client:  # a re-created app has a new client
            cached = (client, FallbackStorage(name, client, settings.breaker_reset_seconds))
            _storages[name] = cached
    storage = cached[1]
    # One breaker object per thread over the process-wide storage: pybreaker holds the
    # breaker's lock for the whole guarded call, so a shared object would serialise
    # every call of a threaded web worker. The state itself is the storage's.
    mine: dict[str, tuple[FallbackStorage, pybreaker.CircuitBreaker]]
    mine = _per_thread.__dict__.setdefault("breakers", {})
    found = mine.get(name)
    if found is None or found[0] is not storage:
        cb = build_breaker(
            name,
            client=client,
            fail_max=settings.breaker_fail_max,
            reset_seconds=settings.breaker_reset_seconds,
            storage=storage,
        )
        found = mine[name] = (storage, cb)
    return found[1]
