"""Typed settings read from the environment (and `.env`), in one place.

Every other module asks `current_app.config` or a `Settings` instance; nothing else reads
`os.environ`. Production refuses to start with a default or missing secret.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Only for development and tests; production refuses it (see _refuse_default_secrets).
DEV_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105


class Settings(BaseSettings):
    """All configuration of the web app, the workers and beat."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    app_env: Literal["development", "test", "production"] = "development"
    secret_key: str = DEV_SECRET
    jwt_secret_key: str = DEV_SECRET
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/maycole"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Empty means "the same Redis as REDIS_URL"; a RabbitMQ URL works too.
    celery_broker_url: str = ""

    db_pool_size: int = 10
    db_statement_timeout_ms: int = 30_000

    access_token_minutes: int = 15
    refresh_token_days: int = 30
    max_content_length: int = 1_048_576  # bytes; 413 above it
    ratelimit_default: str = "600/minute"
    ratelimit_auth: str = "20/minute"
    ratelimit_enabled: bool = True

    idempotency_ttl_hours: int = 24
    # A request holding a key longer than this is presumed dead (crashed process).
    idempotency_lock_seconds: int = 60

    # Celery reliability knobs (see celeryconfig.py for why each exists).
    broker_visibility_timeout: int = 3600
    task_time_limit: int = 900
    task_max_attempts: int = 5
    retry_backoff_base: float = 2.0  # seconds before the 2nd attempt; doubles each time
    retry_backoff_max: int = 300  # seconds; must stay far below the visibility timeout
    job_heartbeat_seconds: float = 2.0
    job_stale_seconds: int = 30
    relay_interval_seconds: float = 5.0
    relay_min_age_seconds: float = 5.0

    flower_basic_auth: str = ""
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.app_env == "production":
            for name in ("secret_key", "jwt_secret_key"):
                value = getattr(self, name)
                if value == DEV_SECRET or len(value) < 32:
                    raise ValueError(f"{name.upper()} must be set to a strong secret in production")
        if self.retry_backoff_max * 2 > self.broker_visibility_timeout:
            # A retry countdown near the visibility timeout makes Redis redeliver the
            # message while it waits, so the task would run twice (kombu#337).
            raise ValueError("RETRY_BACKOFF_MAX must be under half of BROKER_VISIBILITY_TIMEOUT")
        if self.task_time_limit >= self.broker_visibility_timeout:
            raise ValueError("TASK_TIME_LIMIT must be below BROKER_VISIBILITY_TIMEOUT")
        return self

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    def flask_config(self) -> dict[str, Any]:
        """The Flask/extension config keys derived from these settings."""
        return {
            "SETTINGS": self,
            "TESTING": self.app_env == "test",
            "SECRET_KEY": self.secret_key,
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_ACCESS_TOKEN_EXPIRES": self.access_token_minutes * 60,
            "JWT_REFRESH_TOKEN_EXPIRES": self.refresh_token_days * 86400,
            "JWT_TOKEN_LOCATION": ["headers"],
            "JWT_ERROR_MESSAGE_KEY": "detail",
            "MAX_CONTENT_LENGTH": self.max_content_length,
            "RATELIMIT_ENABLED": self.ratelimit_enabled,
            "RATELIMIT_STORAGE_URI": self.redis_url,
            "RATELIMIT_STRATEGY": "fixed-window",  # O(1) per hit; moving-window is O(limit)
            "RATELIMIT_DEFAULT": self.ratelimit_default,
            "RATELIMIT_HEADERS_ENABLED": True,
            "RATELIMIT_HEADER_LIMIT": "RateLimit-Limit",
            "RATELIMIT_HEADER_REMAINING": "RateLimit-Remaining",
            "RATELIMIT_HEADER_RESET": "RateLimit-Reset",
            # flask-limiter would stamp Retry-After on EVERY limited response (and inflate
            # ours on 503s); it writes here instead and request_hooks keeps it for 429 only.
            "RATELIMIT_HEADER_RETRY_AFTER": "X-RateLimit-Retry-After",
            "RATELIMIT_STORAGE_OPTIONS": {
                "socket_timeout": 1,
                "socket_connect_timeout": 1,
            },
            "RATELIMIT_SWALLOW_ERRORS": True,  # a Redis outage must not take the API down
            "VALIDATION_ERROR_STATUS_CODE": 422,
            "JSON_SORT_KEYS": False,
            "SPEC_FORMAT": "json",
            "INFO": {"description": "Maycole backend API. Errors are RFC 9457 problem+json."},
        }


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (tests use these)."""
    return Settings(**overrides)
