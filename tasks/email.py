"""Transactional email: render from ids at send time and deliver over SMTP."""

from __future__ import annotations

from typing import Any

from integrations.mail import PermanentMailError, get_mailer
from logs import get_logger
from services.mail import EmailNotApplicable, UnknownTemplate, build_message
from tasks.base import JobContext, PermanentError, job_task

log = get_logger(__name__)


@job_task("email.send")
def send_email(ctx: JobContext) -> dict[str, Any]:
    """Send the email named by args `template` + `user_id`/`invite_id`; at-least-once.

    A redelivery after a crash between sending and recording success sends again, with
    the same Message-ID. SMTP outages retry with backoff (TransientMailError propagates);
    a refusal (5xx) fails the job at once.
    """
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
    log.info("email_sent", job_id=str(ctx.job_id), template=template)
    return {"sent": True, "message_id": str(message["Message-ID"])}
