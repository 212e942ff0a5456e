"""The sealer: links pending audit rows into their team's chain and moves its sealed head.

Requests write audit rows signed but unchained (services/core/audit.py). `seal_pending`
(beat, every AUDIT_SEAL_INTERVAL_SECONDS) and `seal_chain` (before a verification) work one
chain at a time under that chain's advisory lock, so two sealers never fork a chain, in
one short transaction per batch. Rows are chained in id order among those committed when
the sealer looks; a row whose transaction commits later is chained in a later pass. So a
chain's order is `chain_seq`, not the id, and `prev_hash` makes that order tamper-evident.

A pending row whose `entry_mac` does not verify (written by someone without the key, or
changed since) is never chained: it stays pending, is logged, and verification reports it.
"""

from __future__ import annotations

import hmac
import uuid
from types import SimpleNamespace
from typing import Any, Final, cast

from flask import current_app
from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from extensions import db
from logs import get_logger
from models import AuditHead, AuditLog
from services.core.audit import chain_of
from services.core.audit_seal import entry_mac, head_seal, row_mac

log = get_logger(__name__)

SEAL_BATCH: Final = 1000  # rows per chain per transaction

_TABLE = cast(Table, AuditLog.__table__)
_ROWS = _TABLE.c
_TEAMS_PENDING = select(_ROWS.team_id).where(_ROWS.hash.is_(None)).distinct()
# The same lock key every sealer of the chain takes (the chain's name).
_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:chain))")
_HEAD = select(AuditHead.last_hash, AuditHead.row_count).where(AuditHead.chain == bindparam("c"))
_SEAL_ROW = (
    update(_TABLE)
    .where(_ROWS.id == bindparam("row_id"))
    .values(chain_seq=bindparam("seq"), prev_hash=bindparam("prev"), hash=bindparam("mac"))
)


def seal_pending() -> int:
    """Chain every committed pending row, chain by chain; how many rows were chained."""
    teams = db.session.scalars(_TEAMS_PENDING).all()
    db.session.commit()
    return sum(seal_chain(team_id) for team_id in teams)


def seal_chain(team_id: uuid.UUID | None) -> int:
    """Chain the team's committed pending rows (None: the global chain); how many."""
    total = 0
    while True:
        fetched, chained = _seal_batch(team_id)
        total += chained
        if fetched < SEAL_BATCH or chained == 0:
            return total


def _seal_batch(team_id: uuid.UUID | None) -> tuple[int, int]:
    """One transaction: lock the chain, link up to SEAL_BATCH of its pending rows in id
    order, move its sealed head; (rows looked at, rows chained)."""
    ring: dict[str, bytes] = current_app.config["SETTINGS"].audit_key_ring
    signing_id, signing_key = next(iter(ring.items()))
    chain = chain_of(team_id)
    session = db.session
    try:
        session.execute(_LOCK, {"chain": chain})  # statements after it see the last sealing
        head = session.execute(_HEAD, {"c": chain}).first()
        prev_hash, count = (head.last_hash, head.row_count) if head else (None, 0)
        in_chain = _ROWS.team_id == team_id if team_id else _ROWS.team_id.is_(None)
        rows = session.execute(
            select(_TABLE).where(in_chain, _ROWS.hash.is_(None))
            .order_by(_ROWS.id).limit(SEAL_BATCH)
        ).all()  # fmt: skip
        links: list[dict[str, Any]] = []
        last_id = 0
        for row in rows:
            key = ring.get(row.key_id)
            if key is None:  # signed by a newer ring than this process's: its sealer will
                log.warning("audit_row_key_unknown", row_id=row.id, key_id=row.key_id)
                break  # chained after it, never before: the chain keeps the rows' order
            if not signed_by_app(row, key):
                log.error("audit_row_not_signed_by_app", row_id=row.id, chain=chain)
                continue
            count += 1
            mac = row_mac(SimpleNamespace(**{**row._asdict(), "prev_hash": prev_hash}), key)
            links.append({"row_id": row.id, "seq": count, "prev": prev_hash, "mac": mac})
            prev_hash, last_id = mac, row.id
        if links:
            session.execute(_SEAL_ROW, links)
            assert prev_hash is not None
            values = {"last_id": last_id, "last_hash": prev_hash, "row_count": count,
                      "key_id": signing_id,
                      "seal": head_seal(chain, last_id, prev_hash, count, signing_id,
                                        signing_key)}  # fmt: skip
            session.execute(
                insert(AuditHead).values(chain=chain, **values)
                .on_conflict_do_update(index_elements=[AuditHead.chain],
                                       set_={**values, "updated_at": func.now()})
            )  # fmt: skip
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(rows), len(links)


def signed_by_app(row: Any, key: bytes) -> bool:
    """Whether a pending row carries a valid `entry_mac` under `key`."""
    mac = entry_mac(row, key)
    return row.entry_mac is not None and hmac.compare_digest(mac.encode(), row.entry_mac.encode())
