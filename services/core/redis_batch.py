"""Best-effort Redis writes that can share one round trip.

Several layers write to Redis after a commit, each best-effort (a failure is logged and
the write dropped, never raised): the dashboard's generation bump, realtime events, task
metrics. Sent one after another they cost a round trip each, and a job's claim or settle
makes three or four of them. Inside `batch()` they queue on one pipeline instead, which
is sent once when the batch ends; outside one, `writes()` sends at once, as before.

A writer says what to log if its part fails (`writes("realtime_publish_failed", ...)`),
so a batch that fails logs each of its parts' own warnings, as separate sends would.
Batches are per thread and task (a ContextVar): one job's batch never takes another
thread's writes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline

from extensions import redis
from logs import get_logger

log = get_logger(__name__)


@dataclass
class _Part:
    """One writer's commands in a pipeline: where they start and end, and what to log."""

    failure_event: str
    fields: dict[str, Any]
    start: int
    end: int = -1


@dataclass
class _Batch:
    pipe: Pipeline | None = None
    parts: list[_Part] = field(default_factory=list)
    once: set[Hashable] = field(default_factory=set)  # see first_in_batch

    def pipeline(self) -> Pipeline:
        if self.pipe is None:
            self.pipe = redis.client.pipeline(transaction=False)
        return self.pipe


_current: ContextVar[_Batch | None] = ContextVar("redis_batch", default=None)


@contextmanager
def batch() -> Iterator[None]:
    """Queue the `writes()` made inside on one pipeline, sent once when the block ends
    (also when it raises: what was queued came from commits that stand). Nested: the
    outer batch sends everything."""
    if _current.get() is not None:
        yield
        return
    pending = _Batch()
    token = _current.set(pending)
    try:
        yield
    finally:
        _current.reset(token)
        _send(pending)


@contextmanager
def writes(failure_event: str, **fields: Any) -> Iterator[Pipeline]:
    """A pipeline to queue best-effort writes on; never raises.

    In a batch: the batch's pipeline, sent when the batch ends. Otherwise a pipeline of
    its own, sent when the block ends. If the block raises, or sending its commands
    fails, `failure_event` is logged as a warning with `fields` and the error's type,
    and the block's commands are dropped.
    """
    pending = _current.get()
    own = pending is None
    current = _Batch() if pending is None else pending
    pipe = current.pipeline()
    part = _Part(failure_event, fields, start=len(pipe.command_stack))
    try:
        yield pipe
    except Exception as exc:  # noqa: BLE001 - best-effort by design; the caller goes on
        del pipe.command_stack[part.start :]  # none of this block's commands are sent
        log.warning(failure_event, **fields, error=type(exc).__name__)
        return
    part.end = len(pipe.command_stack)
    if part.end > part.start:
        current.parts.append(part)
    if own:
        _send(current)


def first_in_batch(key: Hashable) -> bool:
    """False if `key` was already claimed in the current batch, else True (always outside
    a batch): for upkeep that one round trip needs once however many writers ask, such
    as trimming a stream that a job's settle appends three events to."""
    pending = _current.get()
    if pending is None:
        return True
    if key in pending.once:
        return False
    pending.once.add(key)
    return True


def _send(pending: _Batch) -> None:
    pipe = pending.pipe
    if pipe is None or not pending.parts:
        return
    try:
        results = pipe.execute(raise_on_error=False)
    except Exception as exc:  # noqa: BLE001 - the connection failed: every part is lost
        for part in pending.parts:
            log.warning(part.failure_event, **part.fields, error=type(exc).__name__)
        return
    finally:
        pipe.reset()
    for part in pending.parts:
        errors = [r for r in results[part.start : part.end] if isinstance(r, Exception)]
        if errors:
            log.warning(part.failure_event, **part.fields, error=type(errors[0]).__name__)
