"""Run side effects only once the current transaction has committed.

For effects outside the database that must not announce what might still roll back
(realtime events). Job messages have their own outbox (tasks.dispatch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from extensions import db
from logs import get_logger

log = get_logger(__name__)
_KEY = "maycole.after_commit"


def after_commit(callback: Callable[[], None]) -> None:
    """Call `callback` after the current session's transaction commits (never on rollback)."""
    db.session().info.setdefault(_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run(session: Session) -> None:
    for callback in session.info.pop(_KEY, []):
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - the commit stands; an effect is best-effort
            log.warning("after_commit_failed", error=type(exc).__name__)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_KEY, None)
