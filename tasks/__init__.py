"""Celery tasks per domain. Importing this package registers every task with `celery_app`.

Tasks are thin: they take a job id, and call services. Declare them with `tasks.base.job_task`.
"""

from tasks import jobs, maintenance

__all__ = ["jobs", "maintenance"]
