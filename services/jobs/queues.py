"""The queues, and the queue each task name goes to.

One queue per kind of work, so a slow export can never delay a payment and each pool can
be sized on its own (`celery worker -Q payments`). The job ledger records a job's queue
when it is enqueued (the relay and the queue-depth metric read it), and Celery's router
asks the same function, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

PAYMENTS = "payments"
EMAIL = "email"
NOTIFICATIONS = "notifications"
EXPORTS = "exports"
UPLOADS = "uploads"
ANALYTICS = "analytics"
DEFAULT = "default"
QUEUES = (PAYMENTS, EMAIL, NOTIFICATIONS, EXPORTS, UPLOADS, ANALYTICS, DEFAULT)

# Task names are `domain.verb`; the domain picks the queue.
ROUTES_BY_PREFIX = {
    "payments.": PAYMENTS,
    "subscriptions.": PAYMENTS,
    "webhooks.": PAYMENTS,
    "email.": EMAIL,
    "notifications.": NOTIFICATIONS,
    "exports.": EXPORTS,
    # Reports render a chart and a CSV per team (CPU-bound, all teams at once at 06:00):
    # with the exports, not on `default`, where they would hold up the relay and reaper.
    "reports.": EXPORTS,
    "uploads.": UPLOADS,
    "analytics.": ANALYTICS,
}


def queue_for(task_name: str) -> str:
    """The queue a task name routes to (used by the router and the job ledger)."""
    for prefix, queue in ROUTES_BY_PREFIX.items():
        if task_name.startswith(prefix):
            return queue
    return DEFAULT


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str]:
    return {"queue": queue_for(name)}
