"""GET /metrics as Prometheus reads it, and the alert rules and dashboard built on it."""

from __future__ import annotations

import http.client
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from config import Settings
from extensions import db, redis
from models import Payment
from services.jobs.metrics import BEAT_LAST_TICK_KEY
from tests.factories import auth_headers, make_team, make_user
from tests.support import ROOT, PrivateStacks, WebServer, Worker, wait_job

pytestmark = pytest.mark.worker

# Every family the issue asks for, by its exposed sample name.
REQUIRED = {
    "maycole_http_requests_total",
    "maycole_http_request_duration_seconds_bucket",
    "maycole_rate_limit_rejections_total",
    "maycole_dashboard_cache_hit_ratio",
    "maycole_queue_depth",
    "maycole_queue_oldest_message_age_seconds",
    "maycole_task_runs_total",
    "maycole_task_runtime_seconds_bucket",
    "maycole_jobs",
    "maycole_dead_letters",
    "maycole_outbox_backlog",
    "maycole_circuit_breaker_state",
    "maycole_beat_last_tick_timestamp_seconds",
    "maycole_users",
    "maycole_transactions_today",
    "maycole_revenue_today_minor",
}


def scrape(client: FlaskClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def limited_client(private_stack: PrivateStacks) -> FlaskClient:
    """A client of an app whose login allows one attempt a minute (to see a 429)."""
    return private_stack(ratelimit_login="1/minute", ratelimit_login_failures="1/minute").client()


def test_metrics_has_every_family_with_live_values_after_a_job(
    client: FlaskClient, worker: Worker, limited_client: FlaskClient
) -> None:
    admin = make_user(admin=True)
    team_id = make_team(admin)
    db.session.add(Payment(team_id=team_id, amount=1234, currency="EUR", status="succeeded",
                           succeeded_at=datetime.now(UTC)))  # fmt: skip
    db.session.commit()
    response = client.post("/api/v1/admin/jobs/ping", json={}, headers=auth_headers(admin))
    wait_job(response.get_json()["job"]["id"], "succeeded")
    for _ in range(2):
        client.get(f"/api/v1/teams/{team_id}/dashboard", headers=auth_headers(admin))
    credentials = {"email": "nobody@example.com", "password": "wrong password"}
    statuses = [limited_client.post("/api/v1/auth/login", json=credentials).status_code
                for _ in range(2)]  # fmt: skip
    assert statuses[-1] == 429
    redis.client.set(BEAT_LAST_TICK_KEY, f"{time.time():.3f}")  # what a leading beat writes

    samples = scrape(client)
    assert REQUIRED <= {s.name for s in samples}
    assert value(samples, "maycole_task_runs_total", task="maintenance.ping",
                 outcome="succeeded") >= 1  # fmt: skip
    assert value(samples, "maycole_task_runtime_seconds_count", task="maintenance.ping") >= 1
    assert value(samples, "maycole_http_requests_total", route="/api/v1/admin/jobs/ping",
                 status="202") >= 1  # fmt: skip
    assert value(samples, "maycole_rate_limit_rejections_total",
                 route="/api/v1/auth/login") >= 1  # fmt: skip
    assert value(samples, "maycole_dashboard_cache_hit_ratio") > 0
    assert value(samples, "maycole_users") >= 1
    assert value(samples, "maycole_transactions_today", currency="EUR") >= 1
    assert value(samples, "maycole_revenue_today_minor", currency="EUR") >= 1234
    assert value(samples, "maycole_beat_last_tick_timestamp_seconds") > 0
    # Every source was readable at this scrape.
    assert all(s.value == 1 for s in samples if s.name == "maycole_metrics_source_up")


def test_a_failing_job_is_counted_as_failed_and_retried(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    before = value(scrape(client), "maycole_task_runs_total", task="maintenance.ping",
                   outcome="retried")  # fmt: skip
    response = client.post(
        "/api/v1/admin/jobs/ping", json={"fail_attempts": 1}, headers=auth_headers(admin)
    )
    wait_job(response.get_json()["job"]["id"], "succeeded")
    samples = scrape(client)
    retried = value(samples, "maycole_task_runs_total", task="maintenance.ping", outcome="retried")
    assert retried == before + 1
    assert value(samples, "maycole_task_runs_total", task="maintenance.ping",
                 outcome="failed") >= 1  # fmt: skip


def exported_names(client: FlaskClient) -> set[str]:
    names = {s.name for s in scrape(client)}
    # A family's sample names, whether or not this scrape happened to have samples.
    return names | REQUIRED | {n.removesuffix("_bucket") + "_count" for n in REQUIRED}


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bmaycole_[a-z_]+\b", expr))


def test_alert_rules_are_well_formed_and_use_exported_metrics(client: FlaskClient) -> None:
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    known = exported_names(client)
    alerts: list[dict[str, Any]] = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "MaycoleDeadLettersGrowing", "MaycoleQueueOldestMessageOld", "MaycoleOutboxBacklog",
        "MaycoleCircuitBreakerOpen", "MaycoleBeatSilent", "MaycoleHighErrorRate",
    }  # fmt: skip
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert set(alert) >= {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert referenced(alert["expr"]) and referenced(alert["expr"]) <= known, alert["expr"]
        assert alert["expr"].count("(") == alert["expr"].count(")")
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert f"{{#{anchor}}}" in runbook or _heading_anchor(runbook, anchor), anchor


def _heading_anchor(markdown: str, anchor: str) -> bool:
    """Whether a heading of `markdown` gets GitHub's anchor `anchor`."""
    for line in markdown.splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            if slug == anchor:
                return True
    return False


def test_grafana_dashboard_queries_exported_metrics(client: FlaskClient) -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    known = exported_names(client)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    for expr in exprs:
        assert referenced(expr) and referenced(expr) <= known, expr
    covered = set().union(*(referenced(e) for e in exprs))
    assert {"maycole_dead_letters", "maycole_queue_depth", "maycole_task_runs_total"} <= covered


def test_under_gunicorn_metrics_sum_every_web_worker(settings: Settings) -> None:
    """Two gunicorn workers answer requests; /metrics (from either) counts all of them."""
    server = WebServer("metrics", settings, workers=2)

    def healthz_count() -> float:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        return value(samples, "maycole_http_requests_total", route="/healthz", status="200")

    server.start()
    try:
        before = healthz_count()
        for _ in range(20):
            assert server.request("GET", "/healthz")[0] == 200
        after = [healthz_count() for _ in range(4)]  # whichever worker answers the scrape
    finally:
        server.stop()
    assert after == [before + 20] * 4
