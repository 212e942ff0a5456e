"""Entry point for `celery -A make_celery:celery_app worker|beat|flower`."""

from __future__ import annotations

from celery.signals import worker_process_init

from app import create_app
from extensions import celery_app, db
from tasks.runtime import beat_scheduler, dead_letters, worker_drain, worker_health

flask_app = create_app()
# Workers: SIGTERM drains within a grace period; a heartbeat proves they still consume.
worker_drain.install(flask_app.config["SETTINGS"])
worker_health.install(celery_app, flask_app.config["SETTINGS"])
# RabbitMQ: the queue our quorum queues dead-letter into exists before a worker consumes.
dead_letters.install(celery_app, flask_app.config["SETTINGS"])
# Beat: its shared schedule is in this app's database (tasks/runtime/beat_scheduler.py).
beat_scheduler.install(flask_app)


@worker_process_init.connect
def _reset_pool_after_fork(**_kwargs: object) -> None:
    # A forked pool child must not share the parent's PostgreSQL sockets.
    db.reset_after_fork()


__all__ = ["celery_app", "flask_app"]
