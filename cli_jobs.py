"""`flask jobs ...`: the dead-letter tools of the admin API, for operators on the box, and
a scheduled job run by hand (a backfill).

Same service functions as the API (so the same rules and audit rows), with no actor and
`{"via": "cli"}` in the audit data. Service errors exit non-zero with their message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from flask.cli import AppGroup

from models import Job
from services.core.errors import ServiceError
from services.jobs import dead_letters, schedule
from services.jobs.queries import list_jobs_admin

jobs_cli = AppGroup(
    "jobs", help="Inspect, replay or discard jobs that failed for good; run a scheduled one."
)


@contextmanager
def _service_errors() -> Iterator[None]:
    """A refused action (404, 409, 422) becomes a one-line error and exit status 1."""
    try:
        yield
    except ServiceError as exc:
        raise click.ClickException(exc.detail) from exc


@jobs_cli.command("dead")
@click.option("--type", "type_", help="Only jobs of this task, e.g. email.send.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="Continue a listing (printed when there is more).")
def dead(type_: str | None, limit: int, cursor: str | None) -> None:
    """List dead letters, newest first."""
    with _service_errors():
        page = list_jobs_admin(status="dead", type_=type_, limit=limit, cursor=cursor)
    if not page.items:
        click.echo(f"no dead jobs{f' of type {type_}' if type_ else ''}")
        return
    for job in page.items:
        died = _when(job.finished_at)
        error = (job.error or "").splitlines()[0][:80] if job.error else "-"
        click.echo(
            f"{job.id}  {job.type}  attempts {job.attempts}/{job.max_attempts}  {died}  {error}"
        )
    if page.next_cursor:
        more = f" --type {type_}" if type_ else ""
        click.echo(f"more: flask jobs dead{more} --limit {limit} --cursor {page.next_cursor}")


@jobs_cli.command("show")
@click.argument("job_id", type=click.UUID)
def show(job_id: uuid.UUID) -> None:
    """Show one job: arguments, attempts, last error and traceback."""
    with _service_errors():
        job = dead_letters.inspect_job(job_id)
    fields: list[tuple[str, Any]] = [
        ("id", job.id), ("type", job.type), ("status", job.status), ("queue", job.queue),
        ("attempts", f"{job.attempts} of {job.max_attempts}"), ("user", job.user_id),
        ("team", job.team_id), ("created", _when(job.created_at)),
        ("started", _when(job.started_at)), ("finished", _when(job.finished_at)),
        ("worker", job.worker), ("request id", job.request_id),
        ("args", json.dumps(job.args, sort_keys=True)),
        ("result", json.dumps(job.result, sort_keys=True) if job.result is not None else None),
        ("error", job.error),
    ]  # fmt: skip
    for name, value in fields:
        click.echo(f"{name + ':':<12}{value if value is not None else '-'}")
    if job.traceback:
        click.echo("traceback:")
        click.echo(job.traceback.rstrip())


@jobs_cli.command("run")
@click.argument("task")
@click.option("--args", "args_json", default="{}", show_default=True,
              help='The job\'s args as a JSON object, e.g. \'{"day": "2026-11-24"}\'.')  # fmt: skip
def run(task: str, args_json: str) -> None:
    """Queue one run of a scheduled job (TASK, e.g. reports.start_daily) now, outside its
    schedule: a backfill. Beat's own periods are left as they are."""
    try:
        kwargs = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from exc
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--args")
    with _service_errors():
        job = schedule.run_by_hand(task, kwargs, via="cli")
    click.echo(f"queued {job.id} ({job.type})")


@jobs_cli.command("retry")
@click.argument("job_id", type=click.UUID)
def retry(job_id: uuid.UUID) -> None:
    """Replay one dead or failed job with a fresh set of attempts."""
    job = _act(dead_letters.retry_job, job_id)
    left = job.max_attempts - job.attempts
    click.echo(f"re-queued {job.id} ({job.type}); it may run {left} more time(s)")


@jobs_cli.command("retry-all")
@click.option("--type", "type_", required=True, help="The task name, e.g. email.send.")
@click.option("--status", type=click.Choice(dead_letters.REPLAYABLE), default="dead")
@click.option(
    "--batch",
    type=click.IntRange(1, dead_letters.RETRY_ALL_MAX),
    default=dead_letters.RETRY_ALL_MAX,
    show_default=True,
    help="Jobs per transaction (each batch is one audit row).",
)
def retry_all(type_: str, status: dead_letters.ReplayableStatus, batch: int) -> None:
    """Replay every dead (or failed) job of one type, in batches."""
    # Jobs that die again while this runs are left alone: no endless replay loop.
    started, total = datetime.now(UTC), 0
    while True:
        with _service_errors():
            outcome = dead_letters.retry_all(
                type_, status=status, limit=batch, finished_before=started, actor_id=None,
                via="cli",
            )  # fmt: skip
        total += len(outcome.job_ids)
        if not outcome.job_ids or not outcome.remaining:
            break
    click.echo(f"re-queued {total} {status} {type_} job(s)")
    if outcome.remaining:
        click.echo(f"{outcome.remaining} left: another action holds them; run again later")


@jobs_cli.command("discard")
@click.argument("job_id", type=click.UUID)
@click.option("--reason", help="Why (kept in the audit log).")
def discard(job_id: uuid.UUID, reason: str | None) -> None:
    """Take a dead job off the dead-letter list; it stays in the ledger as cancelled."""
    job = _act(dead_letters.discard_job, job_id, reason=reason)
    click.echo(f"discarded {job.id} ({job.type}); kept in the ledger as cancelled")


def _act(action: Callable[..., Job], job_id: uuid.UUID, **kwargs: Any) -> Job:
    with _service_errors():
        return action(job_id, actor_id=None, via="cli", **kwargs)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"
