"""In the worker: declare RabbitMQ's dead-letter exchange and queue on every connection.

Our quorum queues dead-letter a message past its delivery limit (celeryconfig.py), which
only happens after deliveries to workers: a worker that declared the dead-letter queue
before consuming guarantees the broker has somewhere to put it (RabbitMQ drops a dead
letter whose exchange does not exist). The reaper drains that queue into our dead
letters (services/jobs/reaper.py). Nothing to do on Redis.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from config import Settings
from integrations.broker_state import declare_dead_letters


class DeadLetterStep(bootsteps.StartStopStep):
    """Consumer bootstep: declare before the consumer takes its first task."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:  # every (re)connection
        declare_dead_letters(c.connection.default_channel)


def install(app: Celery, settings: Settings) -> None:
    """Declare the dead-letter queue in workers of `app`, on RabbitMQ with quorum queues."""
    if settings.broker_is_rabbitmq and settings.broker_quorum_queues:
        app.steps["consumer"].add(DeadLetterStep)
