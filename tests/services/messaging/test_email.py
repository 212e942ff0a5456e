"""Transactional email end to end: service -> job -> real worker -> real SMTP server."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import pytest
from apiflask import APIFlask

from config import Settings
from extensions import db
from models import Job, TeamInvite, TeamMember, User
from services.core import tokens
from services.jobs import names
from services.jobs.outbox import enqueue
from services.jobs.relay import relay_outbox
from services.messaging.mail import EmailNotApplicable, UnknownTemplate, build_message, queue_email
from tests.factories import make_user
from tests.support import Mailbox, Worker, wait_job


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "the email has no HTML part"
    return str(part.get_content())


def link_token(text: str, settings: Settings, path: str) -> str:
    found = re.search(re.escape(settings.frontend_url + path) + r"([^\s\"<]+)", text)
    assert found, f"no {path} link in:\n{text}"
    return unquote(found.group(1))


def unverified_user(**kwargs: Any) -> User:
    user = make_user(**kwargs)
    user.email_verified_at = None
    db.session.commit()
    return user


def test_verification_email_carries_a_working_link_and_only_ids_in_the_job(
    app: APIFlask, settings: Settings, worker: Worker, mailbox: Mailbox
) -> None:
    user = unverified_user(name="<script>alert(1)</script> Ada")
    job = queue_email("verify_email", user_id=user.id)
    db.session.commit()  # as a service does: the job row commits with the change

    done = wait_job(job.id, "succeeded", describe=worker.describe)
    mail = mailbox.wait_for(user.email, "Confirm your email")
    assert done.result == {"sent": True, "message_id": mail["Message-ID"]}
    assert str(job.id) in mail["Message-ID"]  # a duplicate send is recognisable
    assert mail["From"] == settings.mail_from and mail["Date"]

    text = Mailbox.text_of(mail)
    token = link_token(text, settings, "/verify-email?token=")
    user_id, email_fingerprint = tokens.read_verify_email(token)
    assert user_id == user.id and tokens.matches(email_fingerprint, user.email)
    html = html_of(mail)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Ada" in html and "<script>" not in html
    assert link_token(html, settings, "/verify-email?token=") == token

    # What Flower and the jobs API show: ids only, no address, no token.
    assert done.args == {"template": "verify_email", "user_id": str(user.id)}
    shown = json.dumps(done.args)
    assert "@" not in shown and token not in shown
    assert done.user_id == user.id and done.queue == "email"


def test_password_reset_email_links_to_the_reset_page_and_says_when_it_expires(
    app: APIFlask, settings: Settings, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    job = queue_email("password_reset", user_id=user.id)
    db.session.commit()

    wait_job(job.id, "succeeded", describe=worker.describe)
    text = Mailbox.text_of(mailbox.wait_for(user.email, "Reset your"))
    assert f"expires in {settings.password_reset_token_minutes} minutes" in text
    user_id, _ = tokens.read_password_reset(link_token(text, settings, "/reset-password?token="))
    assert user_id == user.id


def test_email_whose_subject_is_gone_or_done_is_skipped(
    app: APIFlask, worker: Worker, mailbox: Mailbox
) -> None:
    verified = make_user()
    verified.email_verified_at = datetime.now(UTC)
    already = queue_email("verify_email", user_id=verified.id)
    # E.g. an admin replaying an old job after the account was purged.
    vanished = enqueue(
        names.EMAIL_SEND, args={"template": "verify_email", "user_id": str(uuid.uuid4())}
    )
    db.session.commit()

    assert wait_job(vanished.id, "succeeded", describe=worker.describe).result == {
        "skipped": "user not found"
    }
    done = wait_job(already.id, "succeeded", describe=worker.describe)
    assert done.result == {"skipped": "email already verified"}
    assert done.attempts == 1 and mailbox.to(verified.email) == []


def test_undeliverable_address_fails_the_job_at_once(
    app: APIFlask, worker: Worker, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()

    async def refuse(server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == user.email:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    # The test SMTP server (a real aiosmtpd server) now refuses this one mailbox.
    monkeypatch.setattr(mailbox, "handle_RCPT", refuse, raising=False)
    job = queue_email("password_reset", user_id=user.id)
    db.session.commit()

    failed = wait_job(job.id, {"failed", "dead", "succeeded"}, describe=worker.describe)
    assert failed.status == "failed" and failed.attempts == 1  # not retried
    assert "550 5.1.1 no such user" in (failed.error or "")
    assert mailbox.to(user.email) == []


def test_unknown_template_is_refused_when_queued_and_fails_a_queued_job(
    app: APIFlask, worker: Worker
) -> None:
    with pytest.raises(ValueError, match="unknown email template"):
        queue_email("newsletter", user_id=uuid.uuid4())
    with pytest.raises(ValueError, match="takes invite_id"):
        queue_email("team_invite", user_id=uuid.uuid4())
    job = enqueue(names.EMAIL_SEND, args={"template": "newsletter", "user_id": str(uuid.uuid4())})
    db.session.commit()
    failed = wait_job(job.id, {"failed", "dead"}, describe=worker.describe)
    assert failed.status == "failed" and failed.attempts == 1
    assert "unknown email template" in (failed.error or "")


def open_invite(inviter: User) -> TeamInvite:
    member = db.session.query(TeamMember).filter_by(user_id=inviter.id).one()
    invite = TeamInvite(
        team_id=member.team_id,
        email="invitee@example.com",
        role="admin",
        token_hash=uuid.uuid4().hex,
        invited_by_id=inviter.id,
        expires_at=datetime.now(UTC) + timedelta(days=7),
    )
    db.session.add(invite)
    db.session.flush()
    return invite


def test_team_invite_names_inviter_team_and_role_and_links_to_the_invite(
    app: APIFlask, settings: Settings
) -> None:
    inviter = make_user(name="Grace")
    invite = open_invite(inviter)
    job_id = uuid.uuid4()
    mail = build_message("team_invite", {"invite_id": str(invite.id)}, job_id=job_id)

    assert mail["To"] == "invitee@example.com"
    assert mail["Subject"] == "Grace invited you to join Grace's team on Maycole"
    assert mail["Message-ID"].startswith(f"<{job_id}.")
    text = Mailbox.text_of(mail)
    assert "as an admin" in text
    invite_id, nonce = tokens.read_invite(link_token(text, settings, "/invites/"))
    assert invite_id == invite.id and tokens.matches(nonce, invite.token_hash)
    assert "Grace&#39;s team" in html_of(mail)  # escaped in HTML, plain in text

    invite.accepted_at = datetime.now(UTC)
    with pytest.raises(EmailNotApplicable, match="already accepted"):
        build_message("team_invite", {"invite_id": str(invite.id)}, job_id=job_id)
    with pytest.raises(UnknownTemplate):
        build_message("newsletter", {}, job_id=job_id)


def test_password_changed_notice_says_other_sessions_were_signed_out(app: APIFlask) -> None:
    user = make_user(name="Linus")
    mail = build_message("password_changed", {"user_id": str(user.id)}, job_id=uuid.uuid4())
    assert "password was changed" in mail["Subject"]
    for body in (Mailbox.text_of(mail), html_of(mail)):
        assert "Hello Linus" in body and "all other sessions were signed out" in body


def test_a_rerun_after_the_mail_was_handed_over_does_not_mail_again(
    app: APIFlask, worker: Worker, mailbox: Mailbox
) -> None:
    # The job's final commit can be lost after SMTP took the message (PostgreSQL
    # restarting): the job runs again, and the user must not get the email twice.
    user = unverified_user()
    job = queue_email("verify_email", user_id=user.id)
    db.session.commit()
    done = wait_job(job.id, "succeeded", describe=worker.describe)
    attempts, result = done.attempts, dict(done.result or {})
    mailbox.wait_for(user.email, "Confirm your email")

    rerun = db.session.get(Job, job.id)
    assert rerun is not None
    rerun.status, rerun.published_at, rerun.finished_at = "queued", None, None
    db.session.commit()  # as if `succeeded` never landed; the recorded hand-over did
    assert relay_outbox() == 1
    again = wait_job(job.id, "succeeded", describe=worker.describe)
    assert again.attempts == attempts + 1  # it did run again ...
    assert again.result == result
    assert len(mailbox.to(user.email)) == 1  # ... and sent nothing
