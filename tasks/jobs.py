"""Beat's housekeeping of the job ledger: the outbox relay and the reaper (services/jobs/)."""

from __future__ import annotations

from services.jobs import names
from services.jobs.reaper import reap_orphans
from services.jobs.relay import relay_outbox, requeue_unclaimed
from services.jobs.runner import periodic_task


@periodic_task(names.JOBS_RELAY)
def relay() -> int:
    """Beat, every few seconds: publish the outbox backlog (see `relay_outbox`)."""
    return relay_outbox()


@periodic_task(names.JOBS_REAP)
def reap() -> int:
    """Beat, every 10 s: recover jobs of dead workers and jobs whose message was lost
    (see `reap_orphans` and `requeue_unclaimed`)."""
    return reap_orphans() + requeue_unclaimed()
