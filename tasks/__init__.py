"""Celery tasks per domain: thin shells that take ids and call a service.

Declare them with `services.jobs.runner.job_task`; the task names live in
services/jobs/names.py. Importing this package imports every task module, which
registers each task with the shared `celery_app` (app.py does it); nothing below the
edge imports tasks. The worker and beat runtime (scheduler, drain, heartbeat) is in
tasks/runtime/.
"""

from __future__ import annotations

from tasks import (
    accounts,
    analytics,
    email,
    exports,
    jobs,
    maintenance,
    notifications,
    payments,
    reconciliation,
    reports,
    subscriptions,
    teams,
    uploads,
    webhooks,
)

__all__ = [
    "accounts",
    "analytics",
    "email",
    "exports",
    "jobs",
    "maintenance",
    "notifications",
    "payments",
    "reconciliation",
    "reports",
    "subscriptions",
    "teams",
    "uploads",
    "webhooks",
]
