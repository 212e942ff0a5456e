"""What the kernel announces about a job's life; the domains that care connect in create_app.

The kernel sits beneath every domain and imports none of them, yet three react when a
job moves: the owner's realtime stream, the team's dashboard and the owner's inbox. So
the kernel only announces, and `app.connect_job_signals` says who listens. A process
that never built the app (a one-off script) simply has no listeners.

Each signal's sender is the `Job` row (or its id for progress), and each says when it
is sent relative to the transaction, which is what a receiver must know.
"""

from __future__ import annotations

import uuid

from blinker import Namespace

from models import Job

_signals = Namespace()

# In the caller's transaction, before its commit: the row was changed by an UPDATE
# statement, which the ORM's flush listeners cannot see (receivers schedule their own
# after-commit effects, e.g. a dashboard cache bump).
row_changed = _signals.signal("job-row-changed")
# After the commit: the job's status is now what `job.status` says (running, retrying,
# or final). Receivers must not raise; they run in the request or the worker.
status_changed = _signals.signal("job-status-changed")
# After progress was committed: kwargs user_id, job_type, progress, status.
progressed = _signals.signal("job-progressed")
# In the caller's transaction: the job failed for good (failed or dead). Receivers add
# rows to the same transaction (the owner's notification), so both commit or neither.
failed_for_good = _signals.signal("job-failed-for-good")


def announce_status(job: Job) -> None:
    """`status_changed`, for an after-commit hook (which wants a callable returning None)."""
    status_changed.send(job)


def announce_progress(
    user_id: uuid.UUID | None, job_id: uuid.UUID, job_type: str, progress: int, status: str
) -> None:
    """`progressed`, with its arguments spelt out."""
    progressed.send(job_id, user_id=user_id, job_type=job_type, progress=progress, status=status)
