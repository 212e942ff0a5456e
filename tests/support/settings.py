"""Settings for the test run, and the same settings as a subprocess's environment."""

from __future__ import annotations

import os
from typing import Any

from config import Settings, load_settings

# Fast clocks so retry/heartbeat/relay behaviour is observable in seconds.
TEST_OVERRIDES: dict[str, Any] = {
    "app_env": "test",
    "task_max_attempts": 3,
    "retry_backoff_base": 0.2,
    "retry_backoff_max": 2,
    "job_heartbeat_seconds": 0.5,
    "job_stale_seconds": 5,
    "relay_min_age_seconds": 0,
    # Tests aggregate one team several times in a row; the cooldown has its own test.
    "analytics_aggregate_cooldown_seconds": 0,
    "log_json": True,
}


# What every production deploy must set (config.Settings refuses production without it):
# real secrets, a metrics token, an audit key, its public address and object storage.
PRODUCTION_REQUIRED: dict[str, Any] = {
    "secret_key": "s" * 40,
    "jwt_secret_key": "j" * 40,
    "metrics_token": "m" * 32,
    "audit_keys": "k1:" + "a" * 40,
    "public_api_url": "https://api.example.com",
    "storage_backend": "s3",
}


def make_settings(**overrides: Any) -> Settings:
    """Settings for the test run: DATABASE_URL/REDIS_URL come from `make test`."""
    return load_settings(**{**TEST_OVERRIDES, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for worker subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_"))}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
