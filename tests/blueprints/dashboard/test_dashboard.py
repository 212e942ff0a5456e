"""The team dashboard: what it shows per role, its Redis cache (hits, explicit invalidation
by inventory changes over HTTP and by a real payment through the worker and localstripe,
per-user unread counts never shared, Redis down) and the /metrics exposition of it."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

from config import Settings
from extensions import db, redis
from models import User
from scripts.devservices import RedisServer
from services.insights import dashboard
from services.messaging import notifications
from tests.factories import PASSWORD, auth_headers, give_plan, team_of_every_role
from tests.support import PrivateStacks, Worker, problem_body, wait_for, wait_job

METRICS_TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def team() -> dict[str, Any]:
    """A team with an owner, an admin, a member and a viewer, plus an outsider."""
    return team_of_every_role()


def _get(client: FlaskClient, team: dict[str, Any], who: str, **kw: Any) -> TestResponse:
    return client.get(
        f"/api/v1/teams/{team['id']}/dashboard", headers=auth_headers(team["users"][who]), **kw
    )


def _board(client: FlaskClient, team: dict[str, Any], who: str = "owner") -> dict[str, Any]:
    """The dashboard body, with the X-Cache header under "_cache"."""
    response = _get(client, team, who)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = cast(dict[str, Any], response.get_json())
    return {**body, "_cache": response.headers["X-Cache"]}


def _counters() -> tuple[int, int]:
    hits, misses = cast(
        list[bytes | None], redis.client.mget(dashboard.HITS_KEY, dashboard.MISSES_KEY)
    )
    return int(hits or 0), int(misses or 0)


def _without_cache_marks(board: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in board.items() if k != "_cache"}


def _item(client: FlaskClient, team: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/teams/{team['id']}/inventory",
        json={"sku": "BOLT-10", "name": "Bolt", **body},
        headers=auth_headers(team["users"]["member"]),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return cast(dict[str, Any], response.get_json()["item"])


def test_a_second_read_comes_from_the_cache_and_is_counted(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    hits, misses = _counters()
    first = _board(client, team)
    assert first["_cache"] == "miss"
    assert first["team_id"] == str(team["id"])
    assert first["members"] == 4
    assert first["revenue"] == {"today": [], "month": []} and first["transactions_today"] == 0
    assert first["subscription"] == {
        "plan": "free",
        "status": None,
        "cancel_at_period_end": False,
        "current_period_end": None,
    }
    assert first["low_stock"] == {"count": 0, "items": []}
    assert first["recent_jobs"] == [] and first["unread_notifications"] == 0

    second = _board(client, team)
    assert second["_cache"] == "hit"
    assert _without_cache_marks(second) == _without_cache_marks(first)
    assert _counters() == (hits + 1, misses + 1)


def _adjust(client: FlaskClient, team: dict[str, Any], item: dict[str, Any], delta: int) -> None:
    response = client.post(
        f"/api/v1/teams/{team['id']}/inventory/{item['id']}/adjustments",
        json={"delta": delta, "reason": "sold"},
        headers=auth_headers(team["users"]["member"]),
    )
    assert response.status_code == 201, response.get_data(as_text=True)


def test_inventory_changes_over_http_invalidate_the_cache(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    item = _item(client, team, quantity=10, low_stock_threshold=3)
    assert _board(client, team)["_cache"] == "miss"
    assert _board(client, team)["low_stock"]["count"] == 0  # a hit: nothing changed

    _adjust(client, team, item, -8)  # down through the threshold
    after = _board(client, team)
    assert after["_cache"] == "miss"
    shown = {"id": item["id"], "sku": "BOLT-10", "name": "Bolt", "quantity": 2,
             "low_stock_threshold": 3}  # fmt: skip
    assert after["low_stock"] == {"count": 1, "items": [shown]}
    # Cached again. Eventually, not at once: crossing the threshold queued a low-stock
    # notice, and the session's worker (running if an earlier test started it) settling
    # that job rightly invalidates the board once more.
    wait_for(lambda: _board(client, team)["_cache"] == "hit", timeout=10)

    # Already low: no notice, no job, only the conditional UPDATE and its ledger row.
    _adjust(client, team, item, -1)
    lower = _board(client, team)
    assert lower["_cache"] == "miss"
    assert lower["low_stock"] == {"count": 1, "items": [shown | {"quantity": 1}]}

    archived = client.patch(
        f"/api/v1/teams/{team['id']}/inventory/{item['id']}",
        json={"archived": True},
        headers=auth_headers(team["users"]["member"]),
    )
    assert archived.status_code == 200
    hidden = _board(client, team)
    assert hidden["_cache"] == "miss" and hidden["low_stock"] == {"count": 0, "items": []}


@pytest.mark.worker
def test_a_payment_that_succeeds_through_the_worker_shows_at_once(
    client: FlaskClient, team: dict[str, Any], worker: Worker
) -> None:
    _board(client, team, "member")
    assert _board(client, team, "member")["_cache"] == "hit"

    paid = client.post(
        f"/api/v1/teams/{team['id']}/payments",
        json={"amount": 1250, "currency": "usd", "description": "Order 7",
              "payment_method": "pm_card_visa"},
        headers={**auth_headers(team["users"]["member"]), "Idempotency-Key": "dash-order-7"},
    )  # fmt: skip
    assert paid.status_code == 202, paid.get_data(as_text=True)
    job_id = paid.get_json()["job"]["id"]
    wait_job(job_id, "succeeded", describe=worker.describe)

    # The worker bumps the generation right after its commit; well within the 60 s TTL,
    # the first read that shows the payment is a fresh computation, not an expiry.
    board = wait_for(
        lambda: (b := _board(client, team, "member"))["transactions_today"] == 1 and b, 10
    )
    assert board["_cache"] == "miss"
    usd = [{"currency": "USD", "amount": 1250, "count": 1}]
    assert board["revenue"] == {"today": usd, "month": usd}
    assert board["recent_jobs"][0] | {"created_at": None} == {
        "id": job_id, "type": "payments.charge", "status": "succeeded", "progress": 100,
        "created_at": None,
    }  # fmt: skip
    assert board["unread_notifications"] == 1  # "payment succeeded", for the payer only
    assert _board(client, team, "owner")["unread_notifications"] == 0


def test_a_viewer_sees_no_money_even_from_a_cache_filled_by_a_member(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    give_plan(team["id"], "pro")
    viewer = _board(client, team, "viewer")
    assert viewer["_cache"] == "miss"
    assert viewer["revenue"] is None and viewer["transactions_today"] is None
    assert viewer["subscription"] is None
    assert viewer["members"] == 4 and viewer["low_stock"] == {"count": 0, "items": []}

    member = _board(client, team, "member")
    assert member["_cache"] == "hit"  # the same team-wide entry, with the money in it
    assert member["revenue"] == {"today": [], "month": []}
    assert member["subscription"]["plan"] == "pro"
    assert member["subscription"]["status"] == "active"
    again = _board(client, team, "viewer")
    assert again["_cache"] == "hit" and again["revenue"] is None


def test_outsiders_get_404_and_anonymous_callers_401(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    _board(client, team)  # a cached dashboard must not change the answer
    outsider = problem_body(_get(client, team, "outsider"), 404)
    assert outsider["detail"] == "No such team."
    problem_body(client.get(f"/api/v1/teams/{team['id']}/dashboard"), 401)
    missing = problem_body(
        client.get(
            f"/api/v1/teams/{uuid.uuid4()}/dashboard", headers=auth_headers(team["users"]["owner"])
        ),
        404,
    )
    assert missing["detail"] == "No such team."


def _notify(user: User, team_id: uuid.UUID, n: int) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    for i in range(n):
        ids += notifications.notify(
            [user.id], "inventory_low_stock",
            {"team_id": str(team_id), "item_id": str(uuid.uuid4()), "sku": f"S-{i}",
             "name": "Thing", "quantity": 1, "threshold": 2},
            event_key=f"dash-test:{uuid.uuid4()}", team_id=team_id, email=False,
        )  # fmt: skip
    db.session.commit()
    return ids


def test_unread_counts_are_per_user_and_never_shared_through_the_cache(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    owner_notes = _notify(team["users"]["owner"], team["id"], 2)
    _notify(team["users"]["admin"], team["id"], 1)

    owner = _board(client, team, "owner")
    assert (owner["_cache"], owner["unread_notifications"]) == ("miss", 2)
    admin = _board(client, team, "admin")
    assert (admin["_cache"], admin["unread_notifications"]) == ("hit", 1)
    member = _board(client, team, "member")
    assert (member["_cache"], member["unread_notifications"]) == ("hit", 0)

    read = client.post(
        f"/api/v1/notifications/{owner_notes[0]}/read", headers=auth_headers(team["users"]["owner"])
    )
    assert read.status_code == 200, read.get_data(as_text=True)
    owner = _board(client, team, "owner")
    assert (owner["_cache"], owner["unread_notifications"]) == ("hit", 1)  # live, not cached


@pytest.fixture
def redis_outage(settings: Settings, private_stack: PrivateStacks) -> tuple[APIFlask, RedisServer]:
    """An app whose cache Redis (REDIS_URL) is a throwaway server the test can stop; the
    broker stays on the session's Redis."""
    server = private_stack.redis()
    app = private_stack(
        keep="all", redis_url=server.url(0), celery_broker_url=settings.broker_url
    ).app
    return app, server


def test_with_redis_down_the_dashboard_is_computed_uncached(
    team: dict[str, Any], redis_outage: tuple[APIFlask, RedisServer]
) -> None:
    app, server = redis_outage
    client = app.test_client()
    created = client.post(
        "/api/v1/auth/api-keys",
        json={"name": "wallboard", "scopes": ["read"], "current_password": PASSWORD},
        headers=auth_headers(team["users"]["owner"]),
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    key = {"X-API-Key": created.get_json()["secret"]}  # API keys do not need Redis
    _item(client, team, quantity=0, low_stock_threshold=1)
    server.stop()

    for _ in range(2):
        response = client.get(f"/api/v1/teams/{team['id']}/dashboard", headers=key)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.headers["X-Cache"] == "miss"
        assert response.get_json()["low_stock"]["count"] == 1


def _metrics(client: FlaskClient, **kw: Any) -> dict[str, dict[str, float]]:
    """{family: {sample name + labels: value}} of a /metrics answer."""
    response = client.get("/metrics", **kw)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    families = text_string_to_metric_families(response.get_data(as_text=True))
    return {
        family.name: {
            s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for s in family.samples
        }
        for family in families
    }


def test_metrics_show_the_dashboard_cache_hit_ratio(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    _board(client, team)
    _board(client, team)
    hits, misses = _counters()
    assert hits and misses

    exported = _metrics(client)
    requests = exported["maycole_dashboard_cache_requests"]
    assert requests["maycole_dashboard_cache_requests_total{result=hit}"] == hits
    assert requests["maycole_dashboard_cache_requests_total{result=miss}"] == misses
    ratio = exported["maycole_dashboard_cache_hit_ratio"]["maycole_dashboard_cache_hit_ratio"]
    assert ratio == pytest.approx(hits / (hits + misses)) and 0 < ratio < 1
    up = exported["maycole_metrics_source_up"]
    assert up["maycole_metrics_source_up{source=dashboard_cache}"] == 1

    # Without a token only loopback callers are answered; others see no such page.
    elsewhere = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    problem_body(elsewhere, 404)


def test_metrics_with_a_token_refuse_a_wrong_one(
    settings: Settings, private_stack: PrivateStacks
) -> None:
    app = private_stack(keep="all", metrics_token=METRICS_TOKEN).app
    client = app.test_client()
    remote = {"REMOTE_ADDR": "203.0.113.9"}  # the token, not the address, decides now

    problem_body(client.get("/metrics", environ_base=remote), 401)
    wrong = client.get("/metrics", environ_base=remote,
                       headers={"Authorization": f"Bearer {METRICS_TOKEN}x"})  # fmt: skip
    assert problem_body(wrong, 401)["detail"] == "A valid metrics token is required."
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    good = _metrics(
        client, environ_base=remote, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert "maycole_dashboard_cache_requests" in good
