"""The audit trail: append-only rows, HMAC-chained per team, each chain ending at a sealed head.

Rows are written inside the caller's transaction (never committed here). Appends to one
team's chain are serialised by a transaction-scoped advisory lock, so two concurrent
writers can never fork the chain; other teams are not blocked.

What makes tampering show (services/core/audit_verify.py checks all of it):
- each row's `hash` is an HMAC (services/core/audit_seal.py) over its content, its id and the
  previous row's hash, under the AUDIT_KEYS key named by its `key_id`; the key is not in
  the database, so editing a row and recomputing the chain needs the key;
- the chain's head (`audit_heads`: last id, last hash, row count) moves in the same
  transaction as each append and is sealed with the key, so deleting the newest rows
  leaves a head that points past the chain's end;
- triggers refuse UPDATE and DELETE of rows and any head that does not move forward.

What remains possible, and what would close it (not built):
- a database superuser without the key can disable the triggers, delete the newest rows
  and put back a copy of an older head they saved earlier (its seal is genuine): the
  chain then verifies, shorter. So can one who deletes a chain and its head altogether.
- a superuser who also holds the key can rewrite anything and seal it again.
Both are closed by a periodic external anchor: publish every head's (last_id, row_count,
seal) to storage the database's administrators cannot rewrite (a write-once bucket, a
transparency log) and check that heads only ever grow against it. Keep the key off the
database host for the same reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import current_app, has_request_context, request
from sqlalchemy import func, text
from sqlalchemy.dialects.postgresql import insert

from extensions import db
from logs import current_request_id
from models import AuditHead, AuditLog
from services.core.audit_seal import head_seal, row_mac

GLOBAL_CHAIN = "global"  # rows without a team (sign-ins, operator actions)

# The chain's head and the next row id in one round trip, read once the chain's lock is
# held (so the head is the one the last append committed). The id is taken here because
# the row's MAC covers it; ids are per-chain increasing because they are drawn under the lock.
_HEAD_AND_NEXT_ID = text(
    "SELECT nextval(pg_get_serial_sequence('audit_logs', 'id')), h.last_hash, h.row_count "
    "FROM (SELECT 1) AS one LEFT JOIN audit_heads AS h ON h.chain = :chain"
)


def chain_of(team_id: uuid.UUID | None) -> str:
    """The name of the chain a team's rows belong to (also its lock and head key)."""
    return str(team_id) if team_id else GLOBAL_CHAIN


def record_audit(
    action: str,
    *,
    actor_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    subject_type: str | None = None,
    subject_id: object = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditLog:
    """Append one signed audit row to its team's chain and move the chain's sealed head,
    in the current transaction (four round trips: lock, head, row, head)."""
    session = db.session
    chain = chain_of(team_id)
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:chain))"), {"chain": chain})
    next_id, prev_hash, row_count = session.execute(_HEAD_AND_NEXT_ID, {"chain": chain}).one()
    key_id, key = next(iter(current_app.config["SETTINGS"].audit_key_ring.items()))
    in_request = has_request_context()
    entry = AuditLog(
        id=next_id,
        action=action,
        actor_user_id=actor_id,
        team_id=team_id,
        subject_type=subject_type,
        subject_id=str(subject_id) if subject_id is not None else None,
        data=data or {},
        ip=ip or (request.remote_addr if in_request else None),
        user_agent=(request.headers.get("User-Agent", "")[:500] or None) if in_request else None,
        request_id=current_request_id(),
        created_at=datetime.now(UTC),
        key_id=key_id,
        prev_hash=prev_hash,
    )
    entry.hash = row_mac(entry, key)
    session.add(entry)
    session.flush()  # the row is final now (id and MAC); its head comes next
    count = (row_count or 0) + 1
    seal = head_seal(chain, next_id, entry.hash, count, key_id, key)
    values = {"last_id": next_id, "last_hash": entry.hash, "row_count": count,
              "key_id": key_id, "seal": seal}  # fmt: skip
    session.execute(
        insert(AuditHead)
        .values(chain=chain, **values)
        .on_conflict_do_update(index_elements=[AuditHead.chain],
                               set_={**values, "updated_at": func.now()})
    )  # fmt: skip
    return entry
