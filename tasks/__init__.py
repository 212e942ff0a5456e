"""Celery tasks per domain. Tasks are thin: they take a job id and call services.

Declare them with `services.jobs.runner.job_task`. Add each task module to TASK_MODULES; they are
imported by `register_all()` (from create_app), not here, so that services may import
`services.jobs.outbox` without an import cycle through the task modules.
"""

import importlib

TASK_MODULES = (
    "tasks.accounts",
    "tasks.analytics",
    "tasks.email",
    "tasks.exports",
    "tasks.jobs",
    "tasks.maintenance",
    "tasks.notifications",
    "tasks.payments",
    "tasks.reconciliation",
    "tasks.reports",
    "tasks.subscriptions",
    "tasks.teams",
    "tasks.uploads",
    "tasks.webhooks",
)


def register_all() -> None:
    """Import every task module so each task is registered with `celery_app`."""
    for module in TASK_MODULES:
        importlib.import_module(module)
