"""DATABASE_REPLICA_URL: the reads that tolerate lag (the dashboard's team figures, search,
metric series, an export's rows) run on the replica's connections, in READ ONLY
transactions, and no write ever does; without a replica everything reads the primary.

The "replica" is the test database itself under another application_name: what is
proven is which engine each statement went through, not replication.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, make_url, text
from sqlalchemy.exc import DBAPIError

from config import Settings
from extensions import db
from integrations.storage_local import LocalStorage
from models import Export
from services.files import export_job
from tests.factories import auth_headers, team_of_every_role
from tests.support import PrivateStacks

REPLICA_APP = "maycole-replica"


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement SQLAlchemy sends through `engine` meanwhile."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _replica_url(settings: Settings) -> str:
    url = make_url(settings.database_url).update_query_dict({"application_name": REPLICA_APP})
    return url.render_as_string(hide_password=False)


def _reads_and_a_write(client: FlaskClient, team: dict[str, Any]) -> None:
    """A write (an inventory item), then the dashboard, search and a metric series."""
    headers, base = auth_headers(team["users"]["owner"]), f"/api/v1/teams/{team['id']}"
    item = {"sku": "BOLT-10", "name": "Blue bolt", "low_stock_threshold": 5}
    created = client.post(f"{base}/inventory", headers=headers, json=item)
    assert created.status_code == 201, created.get_data(as_text=True)
    board = client.get(f"{base}/dashboard", headers=headers)
    assert board.status_code == 200 and board.headers["X-Cache"] == "miss"
    assert board.get_json()["low_stock"]["count"] == 1
    found = client.get(f"{base}/search", headers=headers, query_string={"q": "blue"})
    assert [hit["title"] for hit in found.get_json()["items"]] == ["Blue bolt"]
    now = datetime.now(UTC)
    series = client.get(f"{base}/analytics/metrics", headers=headers, query_string={
        "name": "builtin.signups", "from": (now - timedelta(hours=2)).isoformat(),
        "to": now.isoformat(), "interval": "hour"})  # fmt: skip
    assert series.status_code == 200, series.get_data(as_text=True)


def _export_events(team_id: uuid.UUID, user_id: uuid.UUID, tmp_path: Path) -> int:
    """Build a JSON-lines export of the team's analytics events here, as its job does."""
    db.session.execute(
        text("INSERT INTO analytics_events (team_id, name, occurred_at, properties)"
             " SELECT :team, 'page.view', now(), CAST(:props AS jsonb) FROM generate_series(1, 3)"),
        {"team": team_id, "props": json.dumps({"page": "/"})},
    )  # fmt: skip
    export = Export(id=uuid.uuid4(), team_id=team_id, requested_by_id=user_id,
                    resource="analytics", format="jsonl", filters={})  # fmt: skip
    db.session.add(export)
    db.session.commit()
    storage = LocalStorage(tmp_path, secret_key="s" * 32, base_url="http://localhost")
    report = export_job.build(export.id, storage, lambda _percent: None)
    db.session.commit()
    assert report is not None
    return report.row_count


def _touches(seen: list[str], *tables: str) -> list[str]:
    return [s for s in seen if any(f"FROM {table}" in s for table in tables)]


def _writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s.split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]


def test_lag_tolerant_reads_go_to_the_replica_and_writes_never_do(
    private_stack: PrivateStacks, settings: Settings, tmp_path: Path
) -> None:
    stack = private_stack(keep="all", database_replica_url=_replica_url(settings))
    replica = db.replica
    assert replica is not None and replica.url.query["application_name"] == REPLICA_APP
    team = team_of_every_role()
    owner = team["users"]["owner"]

    with statements(db.engine) as primary, statements(replica) as on_replica:
        _reads_and_a_write(stack.client(), team)
        assert _export_events(team["id"], owner.id, tmp_path) == 3

    # The dashboard's money and stock, search, the rollups and the export's rows.
    for table in ("payments", "inventory", "search_index", "analytics_rollups",
                  "analytics_events"):  # fmt: skip
        assert _touches(on_replica, table), f"{table} was not read on the replica"
    assert _touches(primary, "payments", "search_index", "analytics_rollups",
                    "analytics_events") == []  # fmt: skip
    # Writes went to the primary only: the item, its search document, the export's row.
    assert _writes(on_replica) == []
    assert any(s.startswith("INSERT INTO inventory ") for s in primary)
    assert any(s.startswith("INSERT INTO search_index") for s in primary)


def test_the_replicas_transactions_are_read_only(
    private_stack: PrivateStacks, settings: Settings
) -> None:
    private_stack(keep="all", database_replica_url=_replica_url(settings))
    with db.replica_reads():
        assert db.session.scalar(text("SHOW transaction_read_only")) == "on"
        assert db.session.scalar(text("SELECT current_setting('application_name')")) == REPLICA_APP
        # A write that slips into the block fails loudly instead of landing there.
        with pytest.raises(DBAPIError, match="read-only transaction"):
            db.session.execute(text("INSERT INTO teams (id, name) VALUES (gen_random_uuid(), 'x')"))
    db.session.rollback()
    assert db.session.scalar(text("SHOW transaction_read_only")) == "off"  # the primary


def test_without_a_replica_every_read_is_on_the_primary(
    client: FlaskClient, settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_replica_url == "" and db.replica is None
    team = team_of_every_role()
    with statements(db.engine) as primary:
        _reads_and_a_write(client, team)
        assert _export_events(team["id"], team["users"]["owner"].id, tmp_path) == 3
    for table in ("payments", "inventory", "search_index", "analytics_rollups",
                  "analytics_events"):  # fmt: skip
        assert _touches(primary, table), f"{table} was not read on the primary"
