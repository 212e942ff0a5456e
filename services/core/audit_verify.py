"""Checking an audit chain against its keys and its sealed head, a bounded page at a time.

A verification first has the sealer chain the team's pending rows (services/core/
audit_chain.py), so it checks everything committed before it; a row still pending after
that was not signed by the app, and is reported.

A page checks at most `max_rows` rows (AUDIT_VERIFY_MAX_ROWS) and, if the chain goes on,
hands back a cursor signed with the audit key: where it stopped, the hash to link onto and
the rows counted so far. Following the cursors to the end therefore checks every link from
the chain's first row to its sealed head, and a caller cannot skip ahead with a made-up
cursor. Each page reads the head and the rows from one snapshot (REPEATABLE READ), so an
append committing meanwhile is neither a missing tail nor a row past the head.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any, cast

from flask import current_app
from sqlalchemy import String, func, or_, select
from sqlalchemy import cast as cast_

from extensions import db
from models import AuditHead, AuditLog
from services.core.audit import GLOBAL_CHAIN, chain_of
from services.core.audit_chain import seal_chain, signed_by_app
from services.core.audit_seal import SignedRow, head_seal, open_cursor, row_mac, sign_cursor
from services.core.errors import ValidationFailed


@dataclass(frozen=True)
class ChainReport:
    """`intact`: no break in what was checked so far (this page and the cursor's past).
    `complete`: the check reached the sealed head, so the whole chain is intact."""

    intact: bool
    rows_checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    complete: bool = False
    next_cursor: str | None = None


@dataclass(frozen=True)
class _Position:
    after_seq: int  # the place in the chain of the last row checked (0: none yet)
    prev_hash: str | None  # its hash, which the next row must link to
    count: int  # rows checked since the chain's first


def verify_chain(
    team_id: uuid.UUID | None, *, cursor: str | None = None, max_rows: int | None = None
) -> ChainReport:
    """Seal the chain's pending rows, then check the next page of it (from its start, or
    from `cursor`); changes nothing else."""
    settings = current_app.config["SETTINGS"]
    ring: dict[str, bytes] = settings.audit_key_ring
    chain = chain_of(team_id)
    start = _open(cursor, chain, ring) if cursor else _Position(0, None, 0)
    # The caller's reads so far (a request's guard) end here, so that the sealing and then
    # the page below run in transactions of their own; nothing was written before.
    db.session.commit()
    seal_chain(team_id)
    db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    report = _check_page(team_id, chain, start, max_rows or settings.audit_verify_max_rows, ring)
    db.session.commit()  # ends the snapshot
    return report


def _check_page(
    team_id: uuid.UUID | None, chain: str, start: _Position, budget: int, ring: dict[str, bytes]
) -> ChainReport:
    head = db.session.get(AuditHead, chain, populate_existing=True)
    if head is not None and (problem := _head_problem(head, ring)):
        return ChainReport(False, 0, None, problem)
    in_chain = AuditLog.team_id == team_id if team_id else AuditLog.team_id.is_(None)
    table = AuditLog.__table__
    # The chained rows in their order; a row with a hash but no place (written behind the
    # sealer's back) sorts last and is reported as past the head.
    rows = db.session.execute(
        select(table)
        .where(in_chain, AuditLog.hash.is_not(None),
               or_(AuditLog.chain_seq > start.after_seq, AuditLog.chain_seq.is_(None)))
        .order_by(AuditLog.chain_seq.asc().nulls_last(), AuditLog.id)
        .limit(budget + 1)
    ).all()  # fmt: skip
    seq, last_id, prev_hash, count, checked = start.after_seq, 0, start.prev_hash, start.count, 0
    for row in rows[:budget]:
        if problem := _row_problem(cast(SignedRow, row), row, prev_hash, head, ring):
            return ChainReport(False, checked, row.id, problem)
        seq, last_id, prev_hash = row.chain_seq, row.id, row.hash
        count, checked = count + 1, checked + 1
    if len(rows) > budget:
        payload = {"chain": chain, "after": seq, "prev": prev_hash, "count": count}
        signing_key = next(iter(ring.values()))
        return ChainReport(True, checked, next_cursor=sign_cursor(payload, signing_key))
    if problem := _end_problem(head, last_id, prev_hash, count):
        return ChainReport(False, checked, None, problem)
    if forged := _unsigned_pending(in_chain, ring):
        return ChainReport(False, checked, forged, "the row was not written by the app: it is "
                           "pending with a signature that does not verify")  # fmt: skip
    return ChainReport(True, checked, complete=True)


def _unsigned_pending(in_chain: Any, ring: dict[str, bytes]) -> int | None:
    """The first row the sealer left pending (sealed just before): none, or a forgery."""
    pending = db.session.execute(
        select(AuditLog.__table__).where(in_chain, AuditLog.hash.is_(None))
        .order_by(AuditLog.id).limit(1000)
    ).all()  # fmt: skip
    for row in pending:
        key = ring.get(row.key_id)
        if key is None or not signed_by_app(row, key):
            return int(row.id)
    return None


def _head_problem(head: AuditHead, ring: dict[str, bytes]) -> str | None:
    key = ring.get(head.key_id)
    if key is None:
        return f"the chain's head is signed with key '{head.key_id}', which AUDIT_KEYS lacks"
    seal = head_seal(head.chain, head.last_id, head.last_hash, head.row_count, head.key_id, key)
    if not _same(seal, head.seal):
        return "the chain's sealed head was changed"
    return None


def _row_problem(
    row: SignedRow, stored: Any, prev_hash: str | None, head: AuditHead | None,
    ring: dict[str, bytes],
) -> str | None:  # fmt: skip
    if head is None:
        return "the chain has rows but no sealed head: the head was deleted"
    if stored.chain_seq is None or stored.chain_seq > head.row_count:
        # Every sealing moves the head in its own transaction: this row was not chained
        # by the application (or the head was set back).
        return "the row lies past the chain's sealed head: it was not appended by the app"
    if row.prev_hash != prev_hash:
        return "the link to the previous row is broken: rows were removed or reordered"
    key = ring.get(row.key_id)
    if key is None:
        return f"the row is signed with key '{row.key_id}', which AUDIT_KEYS lacks"
    if not _same(row_mac(row, key), stored.hash):
        return "the row's content was changed (its signature does not match)"
    return None


def _end_problem(head: AuditHead | None, last_id: int, last_hash: str | None,
                 count: int) -> str | None:  # fmt: skip
    if head is None:
        return None if count == 0 else "the chain's sealed head was deleted"
    if count < head.row_count:
        return (
            f"the newest rows are missing: the chain ends at row {last_id or 'none'} "
            f"but its sealed head at row {head.last_id}"
        )
    if (last_hash, count) != (head.last_hash, head.row_count):
        return f"the chain holds {count} rows but its sealed head counts {head.row_count}"
    return None


def _same(mac: str, stored: str | None) -> bool:
    # Bytes: compare_digest refuses non-ASCII text, and a tampered column may hold any.
    return hmac.compare_digest(mac.encode(), (stored or "").encode())


def _open(cursor: str, chain: str, ring: dict[str, bytes]) -> _Position:
    payload: dict[str, Any] | None = open_cursor(cursor, ring)
    if payload is None or payload.get("chain") != chain:
        raise ValidationFailed(
            "The cursor is not valid.",
            errors={"cursor": ["Use a next_cursor from this team's previous verify answer."]},
        )
    return _Position(int(payload["after"]), payload["prev"], int(payload["count"]))


def list_chains() -> list[uuid.UUID | None]:
    """Every chain that has a head or rows (None: the global chain), for offline checks."""
    names = db.session.scalars(
        select(AuditHead.chain).union(
            select(func.coalesce(cast_(AuditLog.team_id, String), GLOBAL_CHAIN)).distinct()
        )
    ).all()
    return sorted((None if n == GLOBAL_CHAIN else uuid.UUID(n) for n in names), key=str)
