"""Best-effort Redis writes batched into one round trip: what is queued arrives once, and a
failure is logged as each writer's own warning, never raised."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis as redis_lib
import redis.client
import redis.connection

from extensions import redis as redis_ext
from scripts.devservices import free_port
from services.core import redis_batch


@contextmanager
def round_trips() -> Iterator[list[int]]:
    """Counts what this process sends to Redis (one entry per command or pipeline)."""
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)  # type: ignore[no-untyped-call]

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.levelname == "WARNING"]


def test_writes_outside_a_batch_are_sent_at_once(app: object) -> None:
    client = redis_ext.client
    client.delete("batch:a")
    with round_trips() as sent, redis_batch.writes("a_failed") as pipe:
        pipe.incr("batch:a")
        pipe.incr("batch:a")
    assert client.get("batch:a") == b"2"
    assert len(sent) == 1


def test_a_batch_sends_every_writers_commands_once_in_one_round_trip(app: object) -> None:
    client = redis_ext.client
    client.delete("batch:a", "batch:b")
    with round_trips() as sent:
        with redis_batch.batch():
            with redis_batch.writes("a_failed") as pipe:
                pipe.incr("batch:a")
            # Nested: the outer batch sends.
            with redis_batch.batch(), redis_batch.writes("b_failed") as pipe:
                pipe.incr("batch:b")
            assert client.get("batch:a") is None  # nothing sent before the batch ends
            sent.clear()
        assert len(sent) == 1
    assert (client.get("batch:a"), client.get("batch:b")) == (b"1", b"1")


@contextmanager
def commands_sent() -> Iterator[list[str]]:
    """The names of the commands this process sends in pipelines meanwhile."""
    names: list[str] = []
    original = redis.client.Pipeline.execute

    def recording(self: Any, raise_on_error: bool = True) -> Any:
        names.extend(str(args[0]).upper() for args, _options in self.command_stack)
        return original(self, raise_on_error)

    redis.client.Pipeline.execute = recording  # type: ignore[method-assign]
    try:
        yield names
    finally:
        redis.client.Pipeline.execute = original  # type: ignore[method-assign]


def test_upkeep_one_batch_needs_once_is_queued_once(app: object) -> None:
    client = redis_ext.client
    client.delete("batch:a")
    with commands_sent() as names, redis_batch.batch():
        for _ in range(3):
            with redis_batch.writes("a_failed") as pipe:
                pipe.incr("batch:a")
                if redis_batch.first_in_batch(("upkeep", "batch:a")):
                    pipe.expire("batch:a", 60)
    assert names == ["INCRBY", "EXPIRE", "INCRBY", "INCRBY"]  # redis-py sends INCR so
    ttl: int = client.ttl("batch:a")  # type: ignore[assignment]
    assert client.get("batch:a") == b"3" and 0 < ttl <= 60
    assert redis_batch.first_in_batch(("upkeep", "batch:a"))  # outside a batch: always


def test_a_failing_part_logs_its_own_warning_and_the_others_still_apply(
    app: object, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_ext.client
    client.delete("batch:a")
    client.set("batch:text", "not a number")
    with redis_batch.batch():
        with redis_batch.writes("text_failed", key="batch:text") as pipe:
            pipe.incr("batch:text")  # WRONGTYPE-like error: not an integer
        with redis_batch.writes("a_failed") as pipe:
            pipe.incr("batch:a")
    assert client.get("batch:a") == b"1"
    logged = warnings(caplog)
    assert [(w["event"], w.get("key")) for w in logged] == [("text_failed", "batch:text")]
    assert logged[0]["error"] == "ResponseError"


def test_a_writer_that_raises_drops_only_its_own_commands(
    app: object, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_ext.client
    client.delete("batch:a", "batch:b")
    with redis_batch.batch():
        with redis_batch.writes("a_failed") as pipe:
            pipe.incr("batch:a")
        with redis_batch.writes("b_failed") as pipe:
            pipe.incr("batch:b")
            raise ValueError("cannot encode the event")
    assert (client.get("batch:a"), client.get("batch:b")) == (b"1", None)
    assert [(w["event"], w["error"]) for w in warnings(caplog)] == [("b_failed", "ValueError")]


def test_redis_down_loses_the_writes_with_each_writers_warning_and_raises_nothing(
    app: object, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = redis_lib.Redis(port=free_port(), socket_connect_timeout=0.5)
    monkeypatch.setattr(redis_ext, "_client", down)
    with redis_batch.batch():
        with redis_batch.writes("a_failed", team_id="t1") as pipe:
            pipe.incr("batch:a")
        with redis_batch.writes("b_failed") as pipe:
            pipe.incr("batch:b")
    with redis_batch.writes("c_failed") as pipe:  # and alone, outside a batch
        pipe.incr("batch:c")
    assert [w["event"] for w in warnings(caplog)] == ["a_failed", "b_failed", "c_failed"]
    assert warnings(caplog)[0]["team_id"] == "t1"
