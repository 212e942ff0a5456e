"""The sealer: pending audit rows chained in the order it finds them, per team, once."""

from __future__ import annotations

import uuid

from apiflask import APIFlask
from sqlalchemy import select

from extensions import db
from models import AuditHead, AuditLog
from services.core.audit import chain_of, record_audit
from services.core.audit_chain import seal_pending
from services.core.audit_verify import verify_chain
from tests.factories import make_team, make_user


def chain(team_id: uuid.UUID | None) -> list[AuditLog]:
    in_chain = AuditLog.team_id == team_id if team_id else AuditLog.team_id.is_(None)
    db.session.expire_all()
    return list(db.session.scalars(select(AuditLog).where(in_chain).order_by(AuditLog.id)))


def test_requests_rows_wait_pending_until_the_sealer_chains_every_team(app: APIFlask) -> None:
    owner = make_user()
    teams = [make_team(owner), make_team(owner)]
    seal_pending()  # what the factories wrote
    for i in range(3):
        for team_id in (*teams, None):
            record_audit("inventory.adjusted", actor_id=owner.id, team_id=team_id, data={"i": i})
    db.session.commit()
    assert all(row.hash is None for team_id in teams for row in chain(team_id)[-3:])

    assert seal_pending() >= 9
    for team_id in (*teams, None):
        rows = chain(team_id)
        assert [row.chain_seq for row in rows] == list(range(1, len(rows) + 1))
        assert [row.prev_hash for row in rows[1:]] == [row.hash for row in rows[:-1]]
        head = db.session.get(AuditHead, chain_of(team_id), populate_existing=True)
        assert head is not None
        assert (head.last_id, head.last_hash, head.row_count) == (
            rows[-1].id,
            rows[-1].hash,
            len(rows),
        )
        assert verify_chain(team_id).complete

    assert seal_pending() == 0  # nothing is chained twice
    record_audit("inventory.adjusted", actor_id=owner.id, team_id=teams[0], data={"i": 9})
    db.session.commit()
    assert seal_pending() == 1
    *_, before, latest = chain(teams[0])
    assert before.chain_seq is not None
    assert (latest.chain_seq, latest.prev_hash) == (before.chain_seq + 1, before.hash)
