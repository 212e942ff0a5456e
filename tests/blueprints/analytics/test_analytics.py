"""Analytics ingestion over HTTP: batches stored once, all or nothing, by members and keys."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from extensions import db
from models import AnalyticsEvent, User
from tests.factories import PASSWORD, auth_headers, make_team, make_user
from tests.support import problem_body


def url(team_id: uuid.UUID) -> str:
    return f"/api/v1/teams/{team_id}/analytics/events"


def event(index: int, **overrides: Any) -> dict[str, Any]:
    """A valid event (occurred a minute ago) with a few properties."""
    base: dict[str, Any] = {
        "name": "page.view",
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "properties": {"path": f"/p/{index}", "n": index, "tags": ["a", "b"]},
        "dedup_id": f"evt-{index}",
    }
    return {**base, **overrides}


def stored(team_id: uuid.UUID) -> int:
    count = db.session.scalar(
        select(func.count()).select_from(AnalyticsEvent).where(AnalyticsEvent.team_id == team_id)
    )
    return int(count or 0)


def api_key(client: FlaskClient, user: User, scopes: list[str]) -> Mapping[str, str]:
    created = client.post(
        "/api/v1/auth/api-keys",
        json={"name": "events", "scopes": scopes, "current_password": PASSWORD},
        headers=auth_headers(user),
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    return {"X-API-Key": created.get_json()["secret"]}


def test_full_batch_is_stored_once_and_a_resend_is_all_duplicates(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    # Full-size properties on part of the batch exercise the raised body limit too.
    big = {"blob": "x" * 8000}
    batch = [event(i, properties=big) if i % 5 == 0 else event(i) for i in range(1000)]
    # The batch is larger than the app-wide 1 MiB body limit.
    assert len(str(batch)) > 1_048_576

    first = client.post(url(team_id), json={"events": batch}, headers=auth_headers(owner))
    assert first.status_code == 202, first.get_data(as_text=True)
    assert first.get_json() == {"accepted": 1000, "duplicates": 0}
    assert stored(team_id) == 1000

    again = client.post(url(team_id), json={"events": batch}, headers=auth_headers(owner))
    assert again.status_code == 202
    assert again.get_json() == {"accepted": 0, "duplicates": 1000}
    assert stored(team_id) == 1000


def test_duplicates_inside_a_batch_collapse_and_events_without_dedup_id_always_insert(
    client: FlaskClient,
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    batch = [
        event(1), event(1), event(2), event(1),
        event(3, dedup_id=None), event(3, dedup_id=None),
    ]  # fmt: skip
    response = client.post(url(team_id), json={"events": batch}, headers=auth_headers(owner))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json() == {"accepted": 4, "duplicates": 2}
    assert stored(team_id) == 4
    # The same dedup id in another team is that team's own event.
    other = make_team(owner, name="Other")
    response = client.post(url(other), json={"events": [event(1)]}, headers=auth_headers(owner))
    assert response.get_json() == {"accepted": 1, "duplicates": 0}


def test_one_bad_event_refuses_the_whole_batch_naming_its_index(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    batch = [event(i) for i in range(10)]
    batch[7]["occurred_at"] = (datetime.now(UTC) - timedelta(days=91)).isoformat()
    batch[3]["name"] = "Bad Name"
    batch[4]["occurred_at"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    batch[5]["occurred_at"] = "2026-01-01T00:00:00"  # no offset
    batch[6]["properties"] = {"blob": "x" * 9000}
    batch[8]["dedup_id"] = "d" * 101

    body = problem_body(
        client.post(url(team_id), json={"events": batch}, headers=auth_headers(owner)), 422
    )
    errors = body["errors"]
    assert "90 days" in errors["events.7.occurred_at"][0]
    assert "5 minutes" in errors["events.4.occurred_at"][0]
    assert set(errors) == {
        "events.3.name", "events.4.occurred_at", "events.5.occurred_at",
        "events.6.properties", "events.7.occurred_at", "events.8.dedup_id",
    }  # fmt: skip
    assert stored(team_id) == 0


def test_more_than_a_thousand_events_are_refused(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    batch = [event(i, properties={}) for i in range(1001)]
    body = problem_body(
        client.post(url(team_id), json={"events": batch}, headers=auth_headers(owner)), 422
    )
    assert "1000" in body["errors"]["events"][0]
    assert stored(team_id) == 0


def test_api_keys_need_the_ingest_scope_and_a_member_owner(client: FlaskClient) -> None:
    owner, outsider = make_user(), make_user()
    team_id = make_team(owner)

    ingest = api_key(client, owner, ["ingest"])
    sent = client.post(url(team_id), json={"events": [event(1)]}, headers=ingest)
    assert sent.status_code == 202, sent.get_data(as_text=True)
    assert sent.get_json() == {"accepted": 1, "duplicates": 0}

    for scopes in (["read"], ["read", "write"]):
        key = api_key(client, owner, scopes)
        refused = client.post(url(team_id), json={"events": [event(2)]}, headers=key)
        assert "'ingest' scope" in problem_body(refused, 403)["detail"]

    stranger = api_key(client, outsider, ["ingest"])
    hidden = client.post(url(team_id), json={"events": [event(3)]}, headers=stranger)
    assert problem_body(hidden, 404)["detail"] == "No such team."
    assert stored(team_id) == 1


def test_a_viewer_may_not_send_events(client: FlaskClient) -> None:
    owner, viewer = make_user(), make_user()
    team_id = make_team(owner, members=[(viewer, "viewer")])
    refused = client.post(url(team_id), json={"events": [event(1)]}, headers=auth_headers(viewer))
    problem_body(refused, 403)
    assert stored(team_id) == 0
