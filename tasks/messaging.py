"""Messaging jobs (queue `notifications`, email on its own queue): transactional email,
rendered from ids at send time and delivered over SMTP, and the notification deliveries
(fan-out to an audience, notification emails, daily digests)."""

from __future__ import annotations

from typing import Any

from integrations.mail import PermanentMailError, get_mailer
from logs import get_logger
from services.jobs import names
from services.jobs.context import JobContext, record_external_effect
from services.jobs.errors import PermanentError
from services.jobs.runner import job_task
from services.messaging import deliveries
from services.messaging.mail import EmailNotApplicable, UnknownTemplate, build_message

log = get_logger(__name__)


@job_task(names.EMAIL_SEND)
def send_email(ctx: JobContext) -> dict[str, Any]:
    """Send the email named by args `template` + `user_id`/`invite_id`, once.

    The hand-over to SMTP is recorded on the job right away (retried through a database
    outage), so a rerun of the job (its final commit failed, its worker died) does not
    mail again; only a worker killed between the hand-over and that record resends, with
    the same Message-ID. SMTP outages retry with backoff (TransientMailError propagates);
    a refusal (5xx) fails the job at once.
    """
    earlier = ctx.earlier_result
    if earlier and earlier.get("sent"):
        log.info("email_already_sent", job_id=str(ctx.job_id))
        return earlier
    template = str(ctx.args.get("template", ""))
    try:
        message = build_message(template, ctx.args, job_id=ctx.job_id)
    except UnknownTemplate as exc:
        raise PermanentError(str(exc)) from exc
    except EmailNotApplicable as skip:
        log.info("email_skipped", job_id=str(ctx.job_id), template=template, reason=skip.reason)
        return {"skipped": skip.reason}
    try:
        get_mailer().send(message)
    except PermanentMailError as exc:
        raise PermanentError(str(exc)) from exc
    result = {"sent": True, "message_id": str(message["Message-ID"])}
    record_external_effect(ctx, result)
    log.info("email_sent", job_id=str(ctx.job_id), template=template)
    return result


# Its rows are unique per (recipient, event_key): a second run writes nothing, so the claim
# may commit with the work (one commit for a one-chunk audience; the runner explains).
@job_task(names.NOTIFICATIONS_FAN_OUT, claim_with_work=True)
def fan_out(ctx: JobContext) -> dict[str, Any]:
    """Notify a whole audience (args: audience, team_id?, template, data, event_key);
    idempotent."""
    return deliveries.fan_out(ctx.args, ctx.progress)


@job_task(names.NOTIFICATIONS_SEND_EMAILS)
def send_emails(ctx: JobContext) -> dict[str, Any]:
    """Email a chunk of notifications (args: notification_ids), each at most once."""
    return deliveries.send_emails(ctx.args["notification_ids"], get_mailer())


@job_task(names.NOTIFICATIONS_SEND_DIGESTS)
def send_digests(ctx: JobContext) -> dict[str, Any]:
    """Email each user (args: user_ids) one summary of their pending notifications."""
    return deliveries.send_digests(ctx.args["user_ids"], get_mailer())


@job_task(names.NOTIFICATIONS_START_DIGESTS)
def start_digests(ctx: JobContext) -> dict[str, Any]:
    """Beat, daily: queue digest jobs for users with pending notifications."""
    return {"users": deliveries.start_digests()}
