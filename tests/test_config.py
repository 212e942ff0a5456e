"""Settings refuse configurations that would be unsafe in production or lose work."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from celeryconfig import QUEUES, build, queue_for
from config import DEV_SECRET, Settings, load_settings
from tests.support.settings import PRODUCTION_REQUIRED

STRONG = PRODUCTION_REQUIRED


def environment_only(**values: Any) -> Settings:
    """Settings from the process environment and `values` alone (no `.env` file)."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy's environment before anyone set APP_ENV or a secret."""
    for name in ("APP_ENV", "SECRET_KEY", "JWT_SECRET_KEY", "METRICS_TOKEN", "AUDIT_KEYS",
                 "PUBLIC_API_URL", "PORT", "BIND", "CORS_ORIGINS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_without_app_env_nothing_starts_without_real_secrets(bare_environment: None) -> None:
    with pytest.raises(ValidationError, match="APP_ENV") as refused:
        environment_only()
    # The message says what to set.
    assert "SECRET_KEY" in str(refused.value) and "JWT_SECRET_KEY" in str(refused.value)
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        environment_only(secret_key=DEV_SECRET, jwt_secret_key="j" * 40, metrics_token="m" * 32)
    assert environment_only(**STRONG).app_env == "production"


def test_development_and_test_take_the_development_secret_only_when_they_say_so(
    bare_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in ("development", "test"):
        monkeypatch.setenv("APP_ENV", env)
        settings = environment_only()
        assert settings.app_env == env and settings.jwt_secret_key == DEV_SECRET


def test_production_refuses_default_secrets() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        load_settings(**STRONG | {"app_env": "production", "secret_key": DEV_SECRET})
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        load_settings(**STRONG | {"app_env": "production", "jwt_secret_key": DEV_SECRET})


def test_production_refuses_one_secret_for_both_purposes() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        load_settings(**STRONG | {"app_env": "production", "jwt_secret_key": "s" * 40})


def test_production_refuses_to_start_without_a_metrics_token() -> None:
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        load_settings(**STRONG | {"app_env": "production", "metrics_token": ""})
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        load_settings(**STRONG | {"app_env": "production", "metrics_token": "short"})


def test_production_accepts_strong_secrets() -> None:
    settings = load_settings(app_env="production", **STRONG)
    assert settings.app_env == "production"


def test_retry_delay_must_stay_below_the_visibility_timeout() -> None:
    # A countdown near the visibility timeout makes Redis redeliver it: the task runs twice.
    with pytest.raises(ValidationError, match="RETRY_BACKOFF_MAX"):
        load_settings(broker_visibility_timeout=600, retry_backoff_max=400)


def test_sent_jobs_are_marked_well_within_the_relay_age() -> None:
    # The outbox's marker flushes every OUTBOX_MARK_INTERVAL_SECONDS; a long interval
    # would leave sent rows unmarked when the relay looks for unsent ones.
    for bad in (0, 1.5):
        with pytest.raises(ValidationError, match="outbox_mark_interval_seconds"):
            load_settings(outbox_mark_interval_seconds=bad)
    assert load_settings().outbox_mark_interval_seconds <= 1


def test_publishing_sends_no_task_sent_event_unless_asked() -> None:
    # One broker message per enqueued job, not two; workers still send Flower's events.
    assert build(load_settings())["task_send_sent_event"] is False
    assert build(load_settings())["worker_send_task_events"] is True
    assert build(load_settings(celery_task_sent_events=True))["task_send_sent_event"] is True


def test_celery_is_configured_for_at_least_once_delivery() -> None:
    conf = build(load_settings())
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_ignore_result"] and conf["result_backend"] is None
    assert conf["task_time_limit"] < conf["broker_transport_options"]["visibility_timeout"]
    assert conf["broker_transport_options"]["socket_connect_timeout"] <= 2
    assert {q.name for q in conf["task_queues"]} == set(QUEUES)
    assert {"jobs-relay", "jobs-reap", "idempotency-cleanup"} <= set(conf["beat_schedule"])


def test_tasks_route_by_domain_prefix() -> None:
    assert queue_for("payments.charge") == "payments"
    assert queue_for("exports.build") == "exports"
    assert queue_for("maintenance.ping") == "default"


def test_env_example_documents_every_setting() -> None:
    import re
    from pathlib import Path

    from config import Settings

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert missing == set(), f".env.example lacks {sorted(missing)}"


def test_the_deploy_guide_names_only_settings_that_exist() -> None:
    """docs/deploy.md is what an operator copies into production: a renamed or removed
    setting there would be silently ignored on their hosts."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    known = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (root / ".env.example").read_text(), re.M))
    guide = (root / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+|APP_ENV)`", guide))
    assert "DB_POOLER" in named and "STORAGE_BACKEND" in named  # the guide's table was read
    assert named - known == set(), f"docs/deploy.md names unknown settings {sorted(named - known)}"


def test_production_refuses_one_hosts_disk_for_files() -> None:
    with pytest.raises(ValidationError, match="STORAGE_BACKEND=s3 and S3_BUCKET"):
        load_settings(**STRONG | {"app_env": "production", "storage_backend": "local"})
    assert load_settings(app_env="development").storage_backend == "local"
    # The default is local storage: production must choose object storage by name.
    with pytest.raises(ValidationError, match="STORAGE_BACKEND=local"):
        load_settings(
            **{k: v for k, v in STRONG.items() if k != "storage_backend"}, app_env="production"
        )


def test_production_refuses_rate_limits_counted_per_process() -> None:
    with pytest.raises(ValidationError, match="RATELIMIT_MEMORY_FALLBACK=true"):
        load_settings(**STRONG | {"app_env": "production", "ratelimit_memory_fallback": True})
    production = load_settings(**STRONG | {"app_env": "production"})
    assert production.ratelimit_memory_fallback is False
    assert production.flask_config()["RATELIMIT_SWALLOW_ERRORS"] is False
    # Development and test keep serving (and limiting, per process) without Redis.
    assert load_settings(app_env="development").ratelimit_memory_fallback is True


def test_production_refuses_a_short_jwt_secret() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        load_settings(**STRONG | {"app_env": "production", "jwt_secret_key": "short-secret"})


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"PORT": "18000"}, "http://127.0.0.1:18000"),
        ({"PORT": "18000", "BIND": "127.0.0.1:18001"}, "http://127.0.0.1:18001"),
        ({"BIND": "0.0.0.0:9000"}, "http://127.0.0.1:9000"),
        ({"BIND": "[::]:9000"}, "http://127.0.0.1:9000"),
        ({"BIND": "[::1]:9000"}, "http://[::1]:9000"),
        ({"BIND": "localhost:9000"}, "http://localhost:9000"),
        ({"BIND": "unix:/run/maycole.sock", "PORT": "18000"}, "http://127.0.0.1:18000"),
        ({"PORT": "18000", "PUBLIC_API_URL": "https://api.example.com"}, "https://api.example.com"),
    ],
)
def test_development_links_follow_the_port_the_api_listens_on(
    bare_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    expected: str,
) -> None:
    """`PORT=18000 make run` hands out upload and download links on 18000, not 8000."""
    for env in ("development", "test"):
        monkeypatch.setenv("APP_ENV", env)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        assert environment_only().public_api_url == expected


def test_gunicorn_binds_bind_or_loopback_on_port(
    bare_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("PORT", "18000")
    assert environment_only().web_bind == "127.0.0.1:18000"
    monkeypatch.setenv("BIND", "0.0.0.0:9000")
    assert environment_only().web_bind == "0.0.0.0:9000"


def test_production_needs_its_public_address_spelled_out(
    bare_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy the bind address is never the public one: no guessing in production."""
    monkeypatch.setenv("PORT", "18000")
    without = {k: v for k, v in STRONG.items() if k != "public_api_url"}
    with pytest.raises(ValidationError, match="PUBLIC_API_URL"):
        environment_only(**without)
    assert environment_only(**STRONG).public_api_url == "https://api.example.com"
    with pytest.raises(ValidationError, match="absolute http"):
        environment_only(**STRONG | {"public_api_url": "api.example.com"})


def test_cors_defaults_to_frontend_dev_servers_in_development_only() -> None:
    development = load_settings(app_env="development")
    assert {"http://localhost:5173", "http://127.0.0.1:3000", "http://localhost:4200",
            "http://localhost:8080"} <= set(development.cors_origin_list)  # fmt: skip
    assert all(o.startswith(("http://localhost:", "http://127.0.0.1:"))
               for o in development.cors_origin_list)  # fmt: skip
    chosen = load_settings(app_env="development", cors_origins="https://app.example.com, ")
    assert chosen.cors_origin_list == ["https://app.example.com"]
    assert load_settings(app_env="test").cors_origin_list == []
    assert load_settings(**STRONG | {"app_env": "production"}).cors_origin_list == []
