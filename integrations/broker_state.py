"""What the job kernel reads from the broker itself, whichever broker carries the tasks.

Two facts, behind one small interface (`BrokerState`):
- how many messages wait in a queue: the `maycole_queue_depth` metric, and the relay's
  rule that a job is re-sent only when its queue is empty;
- whether the broker still holds what it held: the relay's mark, for lost-message
  detection after a broker loses its data.

On Redis (`broker_redis()`, the one place the Redis side gets its client) the depth is
LLEN of the queue's list and the mark is a key: with `noeviction` only a broker that lost
its data can be without it.

On RabbitMQ the depth is a passive `queue.declare`'s message_count (ready messages; the
unacknowledged ones a worker holds are not waiting, as on Redis), and the mark is a probe
message: a durable queue of the task queues' type (quorum by default, so it lives on the
cluster, not on one node) holding one persistent message that no one consumes. A node
that restarts with its data keeps both; a broker that lost its data (a new node, a wiped
data directory, a recreated vhost) has neither, exactly when it lost every task message
too. Reading the mark is a passive declare, so checking never creates it: only
`set_mark` does, after the relay has put the waiting jobs back in the outbox.

`broker_state()` is None for any other broker; the checks that need it are skipped there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis as redis_lib
from amqp.basic_message import Message
from amqp.exceptions import NotFound
from kombu.connection import Connection

from extensions import celery_app
from integrations.broker import broker_redis

# The mark's name: a Redis key, or a RabbitMQ queue (names may hold a colon in both).
MARK_NAME: Final = "maycole:broker-mark"
AMQP_SCHEMES: Final = ("amqp://", "amqps://", "pyamqp://")
# RabbitMQ: where our quorum queues dead-letter a message past its delivery limit
# (celeryconfig.py), and the queue behind it that `dead_letters()` drains.
DEAD_LETTER_EXCHANGE: Final = "maycole.dead-letters"
DEAD_LETTER_QUEUE: Final = "maycole.dead-letters"


class BrokerUnavailable(Exception):
    """The broker could not be read (down, restarting, unreachable)."""


@dataclass(frozen=True)
class DeadLetter:
    """A task message the broker gave up on: its task id (our job id) and why."""

    task_id: str
    reason: str


class BrokerState(Protocol):
    """The broker as the job kernel sees it."""

    def depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue (0 for a queue the broker does not have)."""

    def has_mark(self) -> bool:
        """Whether the mark `set_mark` left is still there."""

    def set_mark(self) -> None:
        """Leave the mark (idempotent)."""

    def dead_letters(self, limit: int) -> AbstractContextManager[list[DeadLetter]]:
        """Up to `limit` dead-lettered task messages, removed from the broker only when the
        block exits without an error (so what the caller failed to record comes back)."""


def broker_state() -> BrokerState | None:
    """The view of the broker Celery publishes to, or None for a kind we cannot read."""
    url = str(celery_app.conf.broker_url or "")
    if url.startswith(AMQP_SCHEMES):
        return AmqpBrokerState()
    client = broker_redis()
    return RedisBrokerState(client) if client is not None else None


class RedisBrokerState:
    """Kombu's Redis transport: a queue is a list; the mark a key."""

    def __init__(self, client: redis_lib.Redis) -> None:
        self.client = client

    def depths(self, queues: Sequence[str]) -> dict[str, int]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            return {q: int(n) for q, n in zip(queues, pipe.execute(), strict=True)}
        except redis_lib.RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def has_mark(self) -> bool:
        try:
            return bool(self.client.exists(MARK_NAME))
        except redis_lib.RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def set_mark(self) -> None:
        try:
            self.client.set(MARK_NAME, str(time.time()))
        except redis_lib.RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def dead_letters(self, limit: int) -> AbstractContextManager[list[DeadLetter]]:
        return nullcontext([])  # Redis has no delivery limit: nothing is dead-lettered


class AmqpBrokerState:
    """RabbitMQ: passive declares for depths and the mark, one short connection per call
    (a scrape or a relay pass, seconds apart; nothing to keep alive in between)."""

    def depths(self, queues: Sequence[str]) -> dict[str, int]:
        with _connection() as conn:
            return {queue: _ready(conn, queue) for queue in queues}

    def has_mark(self) -> bool:
        with _connection() as conn:
            return _ready(conn, MARK_NAME) > 0

    def set_mark(self) -> None:
        with _connection() as conn:
            channel: Any = conn.channel()  # type: ignore[no-untyped-call]
            # At most one message: two relays marking at once still leave one.
            channel.queue_declare(
                queue=MARK_NAME, durable=True, auto_delete=False, arguments=_mark_arguments()
            )
            # Persistent, to the default exchange (routed by queue name); confirmed when
            # the broker's settings ask for publisher confirms.
            channel.basic_publish(
                Message(str(time.time()), delivery_mode=2), exchange="", routing_key=MARK_NAME
            )
            channel.close()

    @contextmanager
    def dead_letters(self, limit: int) -> Iterator[list[DeadLetter]]:
        # Workers declare them too, before they consume (tasks/runtime/dead_letters.py).
        with _connection() as conn:
            channel: Any = conn.channel()  # type: ignore[no-untyped-call]
            declare_dead_letters(channel)
            messages: list[Any] = []
            while len(messages) < limit:
                message = channel.basic_get(queue=DEAD_LETTER_QUEUE, no_ack=False)
                if message is None:
                    break
                messages.append(message)
            yield [_dead_letter(m) for m in messages]
            if messages:
                channel.basic_ack(messages[-1].delivery_tag, multiple=True)
            channel.close()


def declare_dead_letters(channel: Any) -> None:
    """Declare the dead-letter exchange and its queue on this channel (idempotent)."""
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, "fanout", durable=True, auto_delete=False)
    channel.queue_declare(
        queue=DEAD_LETTER_QUEUE,
        durable=True,
        auto_delete=False,
        arguments={"x-queue-type": _queue_type()},
    )
    channel.queue_bind(queue=DEAD_LETTER_QUEUE, exchange=DEAD_LETTER_EXCHANGE, routing_key="")


def _dead_letter(message: Any) -> DeadLetter:
    headers = message.headers or {}
    # Celery's message protocol 2: the task id is a header (and the correlation id).
    task_id = headers.get("id") or message.properties.get("correlation_id") or ""
    deaths = headers.get("x-death") or [{}]
    reason = headers.get("x-first-death-reason") or deaths[0].get("reason") or "unknown"
    return DeadLetter(str(task_id), _text(reason))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextmanager
def _connection() -> Iterator[Connection]:
    """A connection with the app's broker settings (timeouts, publisher confirms)."""
    conn = celery_app.connection_for_write()
    try:
        conn.connect()
        yield conn
    except (OSError, *conn.connection_errors) as exc:
        # Not channel errors (a refused declare): those are our mistakes, and must show.
        raise BrokerUnavailable(str(exc)) from exc
    finally:
        conn.release()


def _ready(conn: Connection, queue: str) -> int:
    """Ready messages in `queue` by a passive declare (never creates it); 0 if absent."""
    channel: Any = conn.channel()  # type: ignore[no-untyped-call]
    try:
        ok = channel.queue_declare(queue=queue, passive=True)
    except NotFound:  # the broker closed this channel; the connection stays usable
        return 0
    channel.close()
    return int(ok.message_count)


def _mark_arguments() -> dict[str, Any]:
    return {"x-queue-type": _queue_type(), "x-max-length": 1}


def _queue_type() -> str:
    """The type of the task queues (celeryconfig.py): quorum, or classic."""
    for queue in celery_app.conf.task_queues or ():
        return str((queue.queue_arguments or {}).get("x-queue-type", "classic"))
    return "classic"
