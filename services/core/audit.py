"""The audit trail: append-only rows, HMAC-chained per team, each chain ending at a sealed head.

A request writes its row inside its own transaction (never committed here) with one
INSERT and no lock: the row is signed (`entry_mac`, under the current AUDIT_KEYS key) but
not yet in its chain. The sealer (services/core/audit_chain.py, every
AUDIT_SEAL_INTERVAL_SECONDS and before every verification) links committed rows into their
team's chain in the order it finds them, and moves the chain's sealed head. So no request
waits on another team member's, and the chain is as complete as before, seconds later.

What makes tampering show (services/core/audit_verify.py checks all of it):
- each chained row's `hash` is an HMAC (services/core/audit_seal.py) over its content,
  its id and the previous row's hash, under the AUDIT_KEYS key named by its `key_id`; the
  key is not in the database, so editing a row and recomputing the chain needs the key;
- a pending row is chained only if its `entry_mac` verifies: a row inserted by anyone
  without the key stays pending and is reported, never vouched for;
- the chain's head (`audit_heads`: last id, last hash, row count) moves with each sealing
  and is sealed with the key, so deleting the newest rows leaves a head that points past
  the chain's end;
- triggers refuse DELETE, any UPDATE of a row but its one sealing (content unchanged),
  and any head that does not move forward.

What remains possible, and what would close it (not built):
- a database superuser without the key can disable the triggers, delete the newest rows
  and put back a copy of an older head they saved earlier (its seal is genuine): the
  chain then verifies, shorter. So can one who deletes a chain and its head altogether,
  or a pending row in the seconds before it is sealed.
- a superuser who also holds the key can rewrite anything and seal it again.
Both are closed by a periodic external anchor: publish every head's (last_id, row_count,
seal) to storage the database's administrators cannot rewrite (a write-once bucket, a
transparency log) and check that heads only ever grow against it. Keep the key off the
database host for the same reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from flask import current_app, has_request_context, request
from sqlalchemy import Table, insert

from extensions import db
from logs import current_request_id
from models import AuditLog
from services.core.audit_seal import entry_mac

GLOBAL_CHAIN = "global"  # rows without a team (sign-ins, operator actions)
_INSERT = insert(cast(Table, AuditLog.__table__))


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
) -> None:
    """Write one signed audit row, pending its chain, in the current transaction (one
    INSERT; the sealer chains it once committed). Its id comes from the sequence as ever,
    so ids still follow the order rows were written in (the listing's order)."""
    key_id, key = next(iter(current_app.config["SETTINGS"].audit_key_ring.items()))
    in_request = has_request_context()
    row: dict[str, Any] = {
        "action": action,
        "actor_user_id": actor_id,
        "team_id": team_id,
        "subject_type": subject_type,
        "subject_id": str(subject_id) if subject_id is not None else None,
        "data": data or {},
        "ip": ip or (request.remote_addr if in_request else None),
        "user_agent": (request.headers.get("User-Agent", "")[:500] or None) if in_request else None,
        "request_id": current_request_id(),
        "created_at": datetime.now(UTC),
        "key_id": key_id,
    }
    row["entry_mac"] = entry_mac(SimpleNamespace(**row), key)
    db.write(_INSERT, row)  # after what the row refers to (a team created just now)
