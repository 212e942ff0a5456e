"""Turning a service's decision into a Celery message without ever losing it.

`enqueue` writes the `jobs` row in the caller's transaction (the outbox). When that
transaction commits, the message is published (task id = job id) and the row marked
published. If the broker is down, the row stays unpublished and the relay
(`jobs.relay`) publishes it later. If the transaction rolls back, nothing is sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import event, update
from sqlalchemy.orm import Session, SessionTransaction

from extensions import celery_app, db
from logs import current_request_id, get_logger
from models import Job
from services.jobs.queues import queue_for

log = get_logger(__name__)
_PENDING = "maycole.pending_messages"
_COMMITTED = "maycole.committed_messages"  # to publish once the connection is released


@dataclass(frozen=True)
class Message:
    """What to send for one job once its row is committed."""

    job_id: uuid.UUID
    task_name: str
    queue: str
    request_id: str | None
    countdown: float = 0.0


def enqueue(
    task_name: str,
    *,
    args: dict[str, Any] | None = None,
    user_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Record a job in the current transaction; its message is sent after commit."""
    if task_name not in celery_app.tasks:
        raise LookupError(f"unknown task {task_name!r}")
    settings = current_app.config["SETTINGS"]
    job = Job(
        id=uuid.uuid4(),
        type=task_name,
        queue=queue_for(task_name),
        status="queued",
        args=args or {},
        user_id=user_id,
        team_id=team_id,
        max_attempts=max_attempts or settings.task_max_attempts,
        request_id=current_request_id(),
        run_after=datetime.now(UTC),
    )
    db.session.add(job)
    send_after_commit(db.session(), job)
    return job


def send_after_commit(session: Session, job: Job, countdown: float = 0.0) -> None:
    """Queue the job's message to be published when `session` commits."""
    message = Message(job.id, job.type, job.queue, job.request_id, countdown)
    session.info.setdefault(_PENDING, []).append(message)


def publish(messages: list[Message], *, mark: bool = True) -> list[uuid.UUID]:
    """Send messages to the broker and return the sent job ids. Never raises.

    With `mark`, the sent rows are marked published in a transaction of their own (the
    caller's has committed). Stops at the first failure: with the broker down every
    send would wait its timeout.
    """
    sent: list[uuid.UUID] = []
    for message in messages:
        try:
            celery_app.send_task(
                message.task_name,
                args=[str(message.job_id)],
                task_id=str(message.job_id),
                queue=message.queue,
                countdown=message.countdown or None,
                headers={"request_id": message.request_id},
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves it to the relay
            log.warning("publish_failed", job_id=str(message.job_id), error=type(exc).__name__)
            break
        sent.append(message.job_id)
    if sent and mark:
        _mark_published(sent)
    return sent


def _mark_published(job_ids: list[uuid.UUID]) -> None:
    try:
        with db.engine.begin() as conn:
            conn.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.published_at.is_(None))
                .values(published_at=datetime.now(UTC))
            )
    except Exception as exc:  # noqa: BLE001 - the relay re-sends; tasks are idempotent
        log.warning("mark_published_failed", count=len(job_ids), error=type(exc).__name__)


@event.listens_for(Session, "after_commit")
def _commit_pending(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint: the outer transaction may still roll back
        return
    messages = session.info.pop(_PENDING, None)
    if messages:
        session.info.setdefault(_COMMITTED, []).extend(messages)


@event.listens_for(Session, "after_transaction_end")
def _publish_committed(session: Session, transaction: SessionTransaction) -> None:
    # Published here, not in after_commit: SQLAlchemy runs after_commit while the session
    # still holds its (committed) connection, and marking the rows published takes a
    # second one. With every thread of a busy web process holding one connection and
    # waiting for another, the pool ran dry and requests stalled for its 5 s timeout. Here
    # the session's connection is back in the pool.
    if transaction.parent is None:
        messages = session.info.pop(_COMMITTED, None)
        if messages:
            publish(messages)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction rolled back
        session.info.pop(_PENDING, None)
