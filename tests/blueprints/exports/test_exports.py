"""Exports end to end: the API, a real worker on a broker of our own, real storage (the
local backend under a temporary directory), and a measured memory bound for big exports."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from config import Settings
from extensions import db
from integrations.storage import ObjectStorage
from integrations.storage_backends import build_storage
from models import AuditLog, Export, Notification, Payment
from services.files.export_formats import CONTENT_TYPES
from services.files.export_job import cleanup_expired
from tests.factories import auth_headers, make_team, make_user, personal_team
from tests.support import (
    LOGS,
    PrivateStack,
    PrivateStacks,
    fetch_job,
    problem_body,
    running_worker,
    wait_job,
)

MEMORY_ROWS = 200_000
MEMORY_BUDGET_MB = 50


@pytest.fixture
def env_stack(private_stack: PrivateStacks, tmp_path: Path) -> PrivateStack:
    """An app with storage under tmp_path and a broker of our own, so only the worker a
    test starts (or none) consumes its export jobs."""
    keep = (
        "database_url",
        "redis_url",
        "redis_sentinel_master",
        "smtp_url",
        "stripe_api_base",
        "stripe_secret_key",
    )
    return private_stack(keep=keep, broker=True, storage_local_dir=str(tmp_path / "storage"))


@pytest.fixture
def env(env_stack: PrivateStack) -> Settings:
    return env_stack.settings


def request_export(client: FlaskClient, team_id: uuid.UUID, headers: Any, **body: Any) -> Any:
    return client.post(f"/api/v1/teams/{team_id}/exports", json=body, headers=headers)


def export_row(export_id: str) -> Export:
    db.session.rollback()
    row = db.session.scalar(
        select(Export).where(Export.id == uuid.UUID(export_id))
        .execution_options(populate_existing=True)
    )  # fmt: skip
    assert row is not None
    return row


def stored_bytes(storage: ObjectStorage, key: str | None) -> bytes:
    assert key is not None
    return b"".join(storage.read(key))


def add_payments(team_id: uuid.UUID, user_id: uuid.UUID, count: int) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    db.session.add_all(
        Payment(
            id=uuid.uuid4(), team_id=team_id, created_by_id=user_id, amount=100 + i,
            currency="USD", status="succeeded" if i % 3 else "failed",
            description=f"Order {i}" if i % 5 else "=HYPERLINK(\"x\")",
            created_at=start + timedelta(seconds=i),
        )
        for i in range(count)
    )  # fmt: skip
    db.session.commit()


def test_payments_export_in_every_format_matches_the_api(
    client: FlaskClient, env: Settings, env_stack: PrivateStack
) -> None:
    user = make_user()
    user_id, team_id, headers = user.id, personal_team(user), auth_headers(user)
    add_payments(team_id, user_id, 25)
    accepted = {
        fmt: request_export(client, team_id, headers, resource="payments", format=fmt)
        for fmt in ("csv", "jsonl", "xlsx")
    }
    for response in accepted.values():
        assert response.status_code == 202, response.get_data(as_text=True)
        body = response.get_json()
        assert response.headers["Location"] == f"/api/v1/jobs/{body['job']['id']}"
        assert body["export"]["status"] == "queued"

    with running_worker(env, LOGS / "exports-worker.log", concurrency=1) as worker:
        for response in accepted.values():
            wait_job(response.get_json()["job"]["id"], "succeeded", describe=worker.describe)

    storage = build_storage(env)
    listed = client.get(f"/api/v1/teams/{team_id}/payments?limit=200", headers=headers)
    api_rows = listed.get_json()["items"]
    assert len(api_rows) == 25

    files = {}
    for fmt, response in accepted.items():
        export_id = response.get_json()["export"]["id"]
        shown = client.get(f"/api/v1/teams/{team_id}/exports/{export_id}", headers=headers)
        export = shown.get_json()["export"]
        assert export["status"] == "ready" and export["row_count"] == 25
        assert shown.get_json()["job"]["status"] == "succeeded"
        download = client.get(export["links"]["download"], headers=headers)
        assert download.status_code == 302 and download.headers["Location"]
        row = export_row(export_id)
        assert row.storage_key == f"teams/{team_id}/exports/{export_id}.{fmt}"
        data = stored_bytes(storage, row.storage_key)
        assert hashlib.sha256(data).hexdigest() == export["sha256"] == row.sha256
        assert len(data) == export["size"]
        # The presigned link serves the file with its type, charset (CSV) named once.
        served = env_stack.client().get(download.headers["Location"])
        assert served.status_code == 200, served.get_data(as_text=True)
        assert served.headers["Content-Type"] == CONTENT_TYPES[fmt]
        assert served.data == data
        files[fmt] = data

    # CSV: a header and the API's rows in the API's order; formulas are defused.
    lines = files["csv"].decode().splitlines()
    assert lines[0].startswith("id,created_at,amount,")
    assert [line.split(",")[0] for line in lines[1:]] == [p["id"] for p in api_rows]
    assert [int(line.split(",")[2]) for line in lines[1:]] == [p["amount"] for p in api_rows]
    assert "'=HYPERLINK" in files["csv"].decode()
    # JSON lines: one object per payment, the same values as the API.
    objects = [json.loads(line) for line in files["jsonl"].decode().splitlines()]
    assert [(o["id"], o["amount"], o["status"]) for o in objects] == [
        (p["id"], p["amount"], p["status"]) for p in api_rows
    ]
    # xlsx: a real workbook (a zip with the workbook part) holding header + 25 rows.
    with zipfile.ZipFile(io.BytesIO(files["xlsx"])) as book:
        assert "xl/workbook.xml" in book.namelist()
        sheet = book.read("xl/worksheets/sheet1.xml").decode()
    assert len(re.findall(r"<row ", sheet)) == 26

    # The requester was told, with the link to the download.
    notes = list(db.session.scalars(select(Notification).where(Notification.user_id == user_id)))
    ready_notes = [n for n in notes if n.title == "Your payments export is ready"]
    assert len(ready_notes) == 3, [n.title for n in notes]
    links = {n.data["link"] for n in ready_notes}
    assert links == {
        f"/api/v1/teams/{team_id}/exports/{r.get_json()['export']['id']}/download"
        for r in accepted.values()
    }
    listed_exports = client.get(f"/api/v1/teams/{team_id}/exports", headers=headers).get_json()
    assert [e["id"] for e in listed_exports["items"]] == [
        r.get_json()["export"]["id"] for r in reversed(accepted.values())
    ]

    # Retention: the daily clean-up deletes the object, keeps the row; download says 410.
    csv_id = accepted["csv"].get_json()["export"]["id"]
    row = export_row(csv_id)
    key = row.storage_key
    row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    db.session.commit()
    assert cleanup_expired(storage) == 1
    assert storage.head(key or "") is None and export_row(csv_id).storage_key is None
    gone = client.get(f"/api/v1/teams/{team_id}/exports/{csv_id}/download", headers=headers)
    problem_body(gone, 410)
    actions = set(db.session.scalars(select(AuditLog.action).where(AuditLog.team_id == team_id)))
    assert {"export.requested", "export.ready", "export.expired"} <= actions


def test_download_waits_for_the_job_and_access_is_checked(
    client: FlaskClient, env: Settings
) -> None:
    owner, viewer, outsider, member = make_user(), make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(viewer, "viewer"), (member, "member")])
    headers = auth_headers(owner)
    add_payments(team_id, owner.id, 3)
    body = request_export(client, team_id, headers, resource="payments", format="csv").get_json()
    download = f"/api/v1/teams/{team_id}/exports/{body['export']['id']}/download"

    waiting = client.get(download, headers=headers)  # no worker yet: the job is queued
    problem_body(waiting, 409)
    assert waiting.headers["Retry-After"] == "5"
    problem_body(client.get(download, headers=auth_headers(outsider)), 404)
    audit = request_export(client, team_id, auth_headers(viewer), resource="audit_logs")
    problem_body(audit, 403)
    # A member may export payments but not the audit log (admins only).
    problem_body(request_export(client, team_id, auth_headers(member), resource="audit_logs"), 403)
    # A member's export that they lose access to before it runs fails, with a clear error.
    doomed = request_export(client, team_id, auth_headers(member), resource="payments").get_json()
    db.session.execute(
        text("UPDATE team_members SET role = 'viewer' WHERE team_id = :t AND user_id = :u"),
        {"t": team_id, "u": member.id},
    )
    db.session.commit()

    with running_worker(env, LOGS / "exports-wait-worker.log", concurrency=1) as worker:
        wait_job(body["job"]["id"], "succeeded", describe=worker.describe)
        failed = wait_job(doomed["job"]["id"], "failed", describe=worker.describe)
    ready = client.get(download, headers=headers)
    assert ready.status_code == 302 and ready.headers["Cache-Control"] == "no-store"
    assert "may no longer read" in (failed.error or "")
    assert export_row(doomed["export"]["id"]).storage_key is None
    doomed_download = f"/api/v1/teams/{team_id}/exports/{doomed['export']['id']}/download"
    assert (
        "may no longer read"
        in problem_body(client.get(doomed_download, headers=headers), 409)["detail"]
    )
    # Permission is checked at download time too: the demoted member is refused now.
    problem_body(client.get(download, headers=auth_headers(member)), 403)
    actions = set(db.session.scalars(select(AuditLog.action).where(AuditLog.team_id == team_id)))
    assert {"export.requested", "export.ready", "export.failed"} <= actions


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far (kB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def test_a_big_export_streams_in_bounded_memory(client: FlaskClient, env: Settings) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    warm_team = make_team(user, "Warm-up")
    # One statement, generated by PostgreSQL: 200k events in a second or two.
    db.session.execute(
        text(
            "INSERT INTO analytics_events (team_id, name, occurred_at, properties, dedup_id) "
            "SELECT :team, 'page_view', now() - make_interval(secs => g), "
            "jsonb_build_object('page', '/p/' || (g % 500), 'i', g), 'd' || g "
            "FROM generate_series(1, :n) AS g"
        ),
        [{"team": team_id, "n": MEMORY_ROWS}, {"team": warm_team, "n": 50}],
    )
    db.session.commit()

    with running_worker(env, LOGS / "exports-memory-worker.log", concurrency=1) as worker:
        # Warm-up: the same code path on a tiny export, so imports and pools are loaded.
        warm = request_export(client, warm_team, headers, resource="analytics").get_json()
        warm_job = wait_job(warm["job"]["id"], "succeeded", describe=worker.describe)
        assert warm_job.worker is not None
        pid = int(warm_job.worker.rpartition(":")[2])
        before = _peak_rss_kb(pid)

        big = request_export(client, team_id, headers, resource="analytics").get_json()
        done = wait_job(big["job"]["id"], "succeeded", timeout=60, describe=worker.describe)
        assert done.worker == warm_job.worker  # the same pool child ran both
        after = _peak_rss_kb(pid)

    growth_mb = (after - before) / 1024
    row = export_row(big["export"]["id"])
    print(
        f"\nexport of {MEMORY_ROWS} rows: worker child peak RSS {before / 1024:.1f} MB -> "
        f"{after / 1024:.1f} MB (growth {growth_mb:.1f} MB), file {row.size} bytes, "
        f"job {(done.finished_at - done.started_at).total_seconds():.1f} s"  # type: ignore[operator]
    )
    assert growth_mb < MEMORY_BUDGET_MB
    assert row.row_count == MEMORY_ROWS
    digest, lines = hashlib.sha256(), 0
    for chunk in build_storage(env).read(row.storage_key or ""):
        digest.update(chunk)
        lines += chunk.count(b"\n")
    assert lines == MEMORY_ROWS + 1  # the header and one line per event
    assert digest.hexdigest() == row.sha256
    assert fetch_job(big["job"]["id"]).result == {
        "export_id": big["export"]["id"], "row_count": MEMORY_ROWS, "size": row.size,
        "sha256": row.sha256, "url": f"/api/v1/teams/{team_id}/exports/{row.id}/download",
    }  # fmt: skip
