"""Run side effects only once the current transaction has committed.

For effects outside the database that must not announce what might still roll back
(realtime events). Job messages have their own outbox (services.jobs.outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from extensions import db
from logs import get_logger

log = get_logger(__name__)
_KEY = "maycole.after_commit"


def after_commit(
    callback: Callable[[], None], *, key: Hashable | None = None, session: Session | None = None
) -> None:
    """Call `callback` after the transaction of `session` (default: the current session)
    commits, never on rollback. With `key`, only the first callback registered under that
    key in a transaction runs (one effect per key and commit, however often it is asked)."""
    target = session if session is not None else db.session()
    callbacks: dict[Hashable, Callable[[], None]] = target.info.setdefault(_KEY, {})
    callbacks.setdefault(key if key is not None else object(), callback)


@event.listens_for(Session, "after_commit")
def _run(session: Session) -> None:
    for callback in session.info.pop(_KEY, {}).values():
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - the commit stands; an effect is best-effort
            log.warning("after_commit_failed", error=type(exc).__name__)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_KEY, None)
