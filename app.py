"""The application factory: the whole system wired in one screen."""

from __future__ import annotations

from typing import Any

from apiflask import APIFlask
from celery import Task

import celeryconfig
import cli
import tasks  # noqa: F401 - importing it registers every task with celery_app
from blueprints import (
    analytics,
    auth,
    dashboard,
    docs,
    events,
    exports,
    inventory,
    jobs,
    me,
    notifications,
    ops,
    payments,
    search,
    storage_local,
    subscriptions,
    teams,
    uploads,
)
from blueprints.common.auth import register_authentication
from blueprints.common.default_limit import register_default_limit
from blueprints.common.jwt_callbacks import register_jwt_callbacks
from blueprints.common.openapi import register_openapi
from blueprints.common.problems import register_error_handlers
from blueprints.common.ratelimits import limiter
from blueprints.common.request_hooks import register_request_hooks
from blueprints.common.security import register_security
from config import Settings, load_settings
from extensions import celery_app, db, jwt, redis
from logs import configure_logging
from services.insights import dashboard as dashboard_service
from services.jobs import signals as job_signals
from services.messaging import notifications as notification_service
from services.messaging import realtime


def create_app(settings: Settings | None = None, **overrides: Any) -> APIFlask:
    """Build the web app (and configure Celery) from settings or the environment."""
    settings = settings or load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    # /docs is ours (blueprints/docs): APIFlask's page loads Swagger UI from a CDN.
    app = APIFlask(
        __name__, title="Maycole API", version="1.0.0", docs_path=None, spec_path="/openapi.json"
    )
    app.config.update(settings.flask_config())
    app.security_schemes = {
        "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }

    register_request_hooks(app)  # first: its after_request hook must run after the limiter's
    register_security(app, settings)
    register_authentication(app)  # before the limits: they count the verified caller
    register_default_limit(app)
    register_extensions(app)
    register_error_handlers(app)
    register_blueprints(app)
    register_openapi(app)
    init_celery(app, settings)
    connect_job_signals()
    cli.register(app)
    return app


def connect_job_signals() -> None:
    """Who reacts when a job moves: the kernel announces, the domains listen.

    Connecting twice is harmless (blinker keeps one connection per receiver).
    """
    job_signals.status_changed.connect(realtime.publish_job)
    job_signals.progressed.connect(realtime.on_job_progress)
    job_signals.row_changed.connect(dashboard_service.on_job_row_changed)
    job_signals.failed_for_good.connect(notification_service.notify_job_failed)


def register_extensions(app: APIFlask) -> None:
    db.init_app(app)
    redis.init_app(app)
    jwt.init_app(app)
    register_jwt_callbacks(jwt)
    limiter.init_app(app)


def register_blueprints(app: APIFlask) -> None:
    for module in (
        ops, auth, me, jobs, teams, subscriptions, payments, notifications, events, exports,
        inventory, analytics, search, dashboard,
    ):  # fmt: skip
        app.register_blueprint(module.bp)
    app.register_blueprint(jobs.admin_bp)
    app.register_blueprint(uploads.bp)
    app.register_blueprint(storage_local.bp)
    app.register_blueprint(payments.webhooks_bp)
    app.register_blueprint(teams.invites_bp)
    app.register_blueprint(subscriptions.plans_bp)
    app.register_blueprint(docs.bp)


def init_celery(app: APIFlask, settings: Settings) -> None:
    """Configure the shared Celery app; every task runs inside this Flask app's context."""

    class AppContextTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    _drop_broker_connections()
    celery_app.conf.update(celeryconfig.build(settings))
    celery_app.Task = AppContextTask
    celery_app.set_default()
    app.extensions["celery"] = celery_app


def _drop_broker_connections() -> None:
    """Forget pooled broker connections made under earlier settings (a re-created app),
    and the queues and routes built from them (on RabbitMQ the queues carry arguments and
    exchange types a Redis broker's do not)."""
    celery_app.close()
    amqp = celery_app.__dict__.pop("amqp", None)
    if amqp is not None:  # close() skips this pool when the app pool was never used
        amqp._producer_pool = None
