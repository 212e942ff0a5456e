"""Celery tasks per domain: thin shells that take ids and call a service.

One module per domain of services/ (identity, teams, billing, messaging, files, insights)
plus jobs, the job kernel's own housekeeping. Declare tasks with
`services.jobs.runner.job_task`; the task names live in services/jobs/names.py. Importing
this package imports every task module, which registers each task with the shared
`celery_app` (app.py does it); nothing below the edge imports tasks. The worker and beat
runtime (scheduler, drain, heartbeat) is in tasks/runtime/.
"""

from __future__ import annotations

from tasks import billing, files, identity, insights, jobs, messaging, teams

__all__ = ["billing", "files", "identity", "insights", "jobs", "messaging", "teams"]
