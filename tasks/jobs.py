"""Beat's housekeeping: the job ledger's (the outbox relay and the reaper, services/jobs/),
the audit chain's sealer, the pipeline's end-to-end probe, and periodic clean-up.

The relay, the reaper and the sealer run every few seconds: they send no task events, so
Flower's task history holds the business tasks only (README "Flower")."""

from __future__ import annotations

import time
from typing import Any

from services.core import idempotency
from services.core.audit import record_audit
from services.core.audit_chain import seal_pending
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.reaper import bury_dead_lettered, reap_orphans
from services.jobs.relay import relay_outbox, requeue_unclaimed
from services.jobs.runner import job_task, periodic_task


@periodic_task(names.JOBS_RELAY, task_events=False)
def relay() -> int:
    """Beat, every few seconds: publish the outbox backlog (see `relay_outbox`)."""
    return relay_outbox()


@periodic_task(names.JOBS_REAP, task_events=False)
def reap() -> int:
    """Beat, every 10 s: bury the jobs the broker dead-lettered (first, so none of them is
    reaped and sent again), then recover jobs of dead workers and jobs whose message was
    lost (`bury_dead_lettered`, `reap_orphans`, `requeue_unclaimed`)."""
    return bury_dead_lettered() + reap_orphans() + requeue_unclaimed()


@periodic_task(names.AUDIT_SEAL, task_events=False)
def seal_audit() -> int:
    """Beat, every few seconds: link pending audit rows into their chains (`seal_pending`;
    safe beside another sealer: each chain is sealed under its lock)."""
    return seal_pending()


class TransientPingError(Exception):
    """A deliberate, retryable failure (to exercise the retry path)."""


@job_task(names.MAINTENANCE_PING)
def ping(ctx: JobContext) -> dict[str, Any]:
    """Prove the pipeline end to end; idempotent (its audit row commits with `succeeded`).

    Args: `sleep_seconds` (work to simulate, with progress), `fail_attempts` (fail this
    many attempts first, to exercise retries).
    """
    sleep_seconds = float(ctx.args.get("sleep_seconds", 0))
    steps = max(1, int(sleep_seconds * 4))
    for step in range(steps):
        if sleep_seconds:
            time.sleep(sleep_seconds / steps)
        ctx.progress(int(100 * (step + 1) / steps))
    if ctx.attempt <= int(ctx.args.get("fail_attempts", 0)):
        raise TransientPingError(f"deliberate failure on attempt {ctx.attempt}")
    record_audit(
        "maintenance.pinged",
        actor_id=ctx.user_id,
        subject_type="job",
        subject_id=ctx.job_id,
        data={"attempt": ctx.attempt},
    )
    return {"pong": True, "attempt": ctx.attempt}


@job_task(names.MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS)
def cleanup_idempotency_keys(ctx: JobContext) -> dict[str, Any]:
    """Beat, hourly: delete Idempotency-Key records past their replay window."""
    return {"deleted": idempotency.delete_expired()}
