"""Scheduled reports end to end: beat tick -> real worker -> rollups -> real SMTP server.

Beat is emulated by sending a period of each schedule entry exactly as beat does (the
shared schedule's claim and its job, `expires` included) to the session's real worker.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, insert, select

from extensions import celery_app, db
from models import AnalyticsRollup, Job, Report, User
from services.jobs import names
from services.jobs.outbox import enqueue
from services.jobs.schedule import claim_period
from tests.factories import add_member, auth_headers, make_team, make_user
from tests.support import Mailbox, Worker, wait_job

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREFS = "/api/v1/notifications/preferences"


@dataclass
class Audience:
    team_id: uuid.UUID
    owner: User  # did not opt in
    admin: User  # opted in: the one recipient
    quiet_admin: User  # did not opt in
    member: User  # opted in, but members get no reports
    unverified_admin: User  # opted in, but the address was never confirmed


def opt_in(client: FlaskClient, user: User) -> None:
    changed = client.put(PREFS, json={"preferences": {"reports": {"email": True}}},
                         headers=auth_headers(user))  # fmt: skip
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["preferences"]["reports"]["email"] is True


def audience(client: FlaskClient) -> Audience:
    owner = make_user(name="Olive Owner")
    admin, quiet, member = make_user(name="Ada Admin"), make_user(), make_user()
    unverified = make_user()
    roles = [(admin, "admin"), (quiet, "admin"), (member, "member"), (unverified, "admin")]
    team_id = make_team(owner, "Acme Analytics", roles)
    for user in (admin, member, unverified):
        opt_in(client, user)
    unverified.email_verified_at = None
    db.session.commit()
    return Audience(team_id, owner, admin, quiet, member, unverified)


def add_rollups(team_id: uuid.UUID, rows: list[tuple[str, str, datetime, int]]) -> None:
    """(name, interval, bucket, value) rows, as the aggregation would have written them."""
    db.session.execute(insert(AnalyticsRollup), [
        {"team_id": team_id, "name": name, "interval": interval, "bucket": bucket, "value": value}
        for name, interval, bucket, value in rows
    ])  # fmt: skip
    db.session.commit()


def at(day: date, hour: int = 0) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def beat_tick(entry: str, period: datetime | None = None, **options: Any) -> uuid.UUID | None:
    """Send a period of the schedule entry as beat does: its job, or None if that period
    was sent already. `options` override the entry's (`expires` in seconds)."""
    spec = celery_app.conf.beat_schedule[entry]
    expires = {**spec["options"], **options}["expires"]
    claim = claim_period(entry, spec["task"], period or datetime.now(UTC), expires_in=expires)
    return claim.job_id


def tick_result(job_id: uuid.UUID | None, worker: Worker) -> int:
    """How many reports the tick's job queued, once it finished."""
    assert job_id is not None, "that period was already sent"
    result = wait_job(job_id, "succeeded", describe=worker.describe).result
    assert result is not None
    return int(result["queued"])


def rerun(entry: str) -> uuid.UUID:
    """A run of the entry's task outside the schedule (an admin's replay, a backfill)."""
    job = enqueue(celery_app.conf.beat_schedule[entry]["task"])
    db.session.commit()
    return job.id


def reports() -> list[Report]:
    db.session.rollback()
    return list(db.session.scalars(select(Report).execution_options(populate_existing=True)))


def report_of(team_id: uuid.UUID) -> Report:
    [report] = [r for r in reports() if r.team_id == team_id]
    return report


def wait_sent(worker: Worker) -> list[Report]:
    """Every report, once each one's send job has finished (and its mail is delivered)."""
    rows = reports()
    for row in rows:
        wait_job(row.job_id, "succeeded", describe=worker.describe)
    return reports()


def send_jobs() -> int:
    db.session.rollback()
    return int(db.session.scalar(select(func.count()).where(Job.type == names.REPORTS_SEND)) or 0)


def attachments(message: EmailMessage) -> tuple[EmailMessage, EmailMessage]:
    """(the inline PNG, the attached CSV) of a report email."""
    parts = [p for p in message.walk() if isinstance(p, EmailMessage)]
    images = [p for p in parts if p.get_content_type() == "image/png"]
    files = [p for p in parts if p.get_content_type() == "text/csv"]
    assert len(images) == 1 and len(files) == 1, [p.get_content_type() for p in parts]
    return images[0], files[0]


def lines_of(message: EmailMessage) -> list[str]:
    return Mailbox.text_of(message).splitlines()


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def csv_rows(part: EmailMessage) -> list[dict[str, str]]:
    assert part.get_content_disposition() == "attachment"
    return list(csv.DictReader(io.StringIO(str(part.get_content()))))


def test_daily_report_reaches_opted_in_admins_once_with_chart_and_csv(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    people = audience(client)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    add_rollups(people.team_id, [
        ("builtin.payments.count", "hour", at(yesterday, 9), 2),
        ("builtin.payments.count", "day", at(yesterday), 2),
        ("builtin.payments.revenue.usd", "hour", at(yesterday, 9), 4500),
        ("builtin.payments.revenue.usd", "day", at(yesterday), 4500),
        ("builtin.signups", "hour", at(yesterday, 10), 1),
        ("builtin.signups", "day", at(yesterday), 1),
        ("builtin.active_users", "hour", at(yesterday, 9), 2),
        ("builtin.active_users", "hour", at(yesterday, 10), 1),
        ("builtin.active_users", "day", at(yesterday), 2),  # distinct: not 2 + 1
        ("page_view", "hour", at(yesterday, 9), 30),
        ("page_view", "hour", at(yesterday, 14), 12),
        ("page_view", "day", at(yesterday), 42),
        # Outside the day: today and the day before must not count.
        ("builtin.payments.count", "hour", at(yesterday + timedelta(days=1), 1), 7),
        ("builtin.payments.count", "day", at(yesterday + timedelta(days=1)), 7),
        ("page_view", "day", at(yesterday - timedelta(days=1)), 500),
    ])  # fmt: skip

    # Two beats fire at 06:00: one claims the period, one report per team, one job, one email.
    six = datetime.combine(datetime.now(UTC).date(), time(6), tzinfo=UTC)
    first, second = beat_tick("reports-daily", six), beat_tick("reports-daily", six)
    assert second is None
    queued = tick_result(first, worker)
    # Acme, and the personal teams of the verified users who opted in (admin and member).
    assert queued == len(wait_sent(worker)) == send_jobs() == 3
    report = report_of(people.team_id)
    assert (report.kind, report.period_start) == ("daily", yesterday)
    assert report.period_end == yesterday + timedelta(days=1)
    job = wait_job(report.job_id, "succeeded")
    assert job.args == {"report_id": str(report.id)}  # ids only
    assert job.result == {"sent": 1, "refused": 0} and job.queue == "exports"
    # The personal teams had no activity at all: no all-zero email.
    quiet = [r for r in reports() if r.team_id != people.team_id]
    assert all(r.sent_at and r.delivered_to == [] for r in quiet)

    mail = mailbox.wait_for(people.admin.email, "daily report")
    assert str(mail["Subject"]) == f"Acme Analytics: daily report for {yesterday:%A %d %B %Y}"
    for nobody in (people.owner, people.quiet_admin, people.member, people.unverified_admin):
        assert mailbox.to(nobody.email) == []
    lines = lines_of(mail)
    assert {"Payments: 2", "Revenue: 45.00 USD", "New members: 1", "Active members: 2"} <= set(
        lines
    )
    assert {"Events received: 42", "- page_view: 42", "Jobs failed: 0"} <= set(lines)
    assert "/unsubscribe?token=" in Mailbox.text_of(mail)
    assert "/api/v1/notifications/unsubscribe" in str(mail["List-Unsubscribe"])

    # The chart is inline: the HTML points at the PNG part by its Content-ID.
    image, attached = attachments(mail)
    cid = re.search(r'src="cid:([^"]+)"', html_of(mail))
    assert cid and image["Content-ID"] == f"<{cid.group(1)}>"
    assert image.get_content().startswith(PNG_MAGIC)
    assert attached.get_filename() == f"report-acme-analytics-{yesterday.isoformat()}.csv"
    rows = csv_rows(attached)
    assert [row["bucket"] for row in rows] == [at(yesterday, h).isoformat() for h in range(24)]
    nine, ten, fourteen = rows[9], rows[10], rows[14]
    assert (nine["payments"], nine["revenue_usd_minor"], nine["active_users"]) == ("2", "4500", "2")
    assert (nine["event:page_view"], fourteen["event:page_view"], ten["signups"]) == (
        "30",
        "12",
        "1",
    )
    assert sum(int(row["payments"]) for row in rows) == 2  # today's 7 are not in it

    stored = report_of(people.team_id)
    assert stored.delivered_to == [str(people.admin.id)] and stored.sent_at
    assert stored.figures and stored.figures["totals"]["payments"] == 2

    # Another run for the same day (an admin's replay, a backfill): nothing new.
    assert tick_result(rerun("reports-daily"), worker) == 0
    assert len(reports()) == 3 and send_jobs() == 3
    assert len(mailbox.to(people.admin.email)) == 1

    # The send job delivered again (or replayed by an admin): the report is already sent.
    again = enqueue(names.REPORTS_SEND, args={"report_id": str(report.id)}, team_id=people.team_id)
    db.session.commit()
    assert wait_job(again.id, "succeeded", describe=worker.describe).result == {
        "skipped": "already sent"
    }
    assert len(mailbox.to(people.admin.email)) == 1


def test_an_interrupted_send_mails_only_the_recipients_not_reached_yet(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner, admin = make_user(), make_user()
    team_id = make_team(owner, "Beta", [(admin, "admin")])
    opt_in(client, owner)
    opt_in(client, admin)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    add_rollups(team_id, [("signup_started", "day", at(yesterday), 9),
                          ("signup_started", "hour", at(yesterday, 8), 9)])  # fmt: skip
    # As a job left it when its worker died right after mailing the owner.
    report = Report(team_id=team_id, kind="daily", period_start=yesterday,
                    period_end=yesterday + timedelta(days=1),
                    delivered_to=[str(owner.id)])  # fmt: skip
    db.session.add(report)
    db.session.flush()
    redelivered = enqueue(names.REPORTS_SEND, args={"report_id": str(report.id)}, team_id=team_id)
    db.session.commit()

    done = wait_job(redelivered.id, "succeeded", describe=worker.describe)
    assert done.result == {"sent": 1, "refused": 0}
    assert "- signup_started: 9" in lines_of(mailbox.wait_for(admin.email, "Beta"))
    assert mailbox.to(owner.email) == []  # already had it
    [stored] = reports()
    assert stored.delivered_to == [str(owner.id), str(admin.id)] and stored.sent_at
    assert stored.figures and stored.figures["top_events"] == [["signup_started", 9]]


def test_weekly_summary_totals_last_week(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner = make_user(name="Wendy")
    team_id = make_team(owner, "Gamma")
    opt_in(client, owner)
    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday() + 7)
    week = [monday + timedelta(days=i) for i in range(7)]
    rows = [("builtin.payments.count", "day", at(d), 1) for d in week]
    rows += [("builtin.payments.revenue.eur", "day", at(d), 1000) for d in week]
    rows += [("builtin.active_users", "day", at(d), 5 if d == week[2] else 3) for d in week]
    rows += [("checkout", "day", at(d), 10 * (i + 1)) for i, d in enumerate(week)]
    rows += [("builtin.payments.count", "day", at(monday + timedelta(days=7)), 50),  # this week
             ("builtin.payments.count", "day", at(monday - timedelta(days=1)), 50)]  # fmt: skip
    add_rollups(team_id, rows)

    # Gamma, and Wendy's personal team (idle: no email for it).
    assert tick_result(beat_tick("reports-weekly"), worker) == len(wait_sent(worker)) == 2
    mail = mailbox.wait_for(owner.email, "weekly summary")
    assert str(mail["Subject"]).startswith("Gamma: weekly summary")
    lines = lines_of(mail)
    assert {"Payments: 7", "Revenue: 70.00 EUR", "Active members (busiest day): 5"} <= set(lines)
    assert "- checkout: 280" in lines
    image, attached = attachments(mail)
    assert image.get_content().startswith(PNG_MAGIC)
    assert attached.get_filename() == f"report-gamma-{monday.isoformat()}-week.csv"
    table = csv_rows(attached)
    assert [row["bucket"] for row in table] == [at(d).isoformat() for d in week]
    assert [row["event:checkout"] for row in table] == ["10", "20", "30", "40", "50", "60", "70"]
    assert {row["revenue_eur_minor"] for row in table} == {"1000"}
    report = report_of(team_id)
    assert (report.kind, report.period_start) == ("weekly", monday)
    assert report.period_end == monday + timedelta(days=7)

    assert tick_result(rerun("reports-weekly"), worker) == 0  # once per week
    assert len(reports()) == 2 and len(mailbox.to(owner.email)) == 1

    # The email's unsubscribe link switches reports off (and only reports).
    token = re.search(r"/unsubscribe\?token=([A-Za-z0-9._%-]+)", Mailbox.text_of(mail))
    assert token, Mailbox.text_of(mail)
    done = client.post(f"/api/v1/notifications/unsubscribe?token={token.group(1)}")
    assert done.get_json() == {"unsubscribed": True, "category": "reports"}
    prefs = client.get(PREFS, headers=auth_headers(owner)).get_json()["preferences"]
    assert prefs["reports"]["email"] is False and prefs["payments"]["email"] is True


def test_a_stale_tick_from_a_backlog_is_dropped(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner = make_user()
    make_team(owner, "Delta")
    opt_in(client, owner)
    # Beat queued it long ago and no worker took it before it expired.
    job_id = beat_tick("reports-daily", expires=-3600)
    assert job_id is not None
    assert wait_job(job_id, "succeeded", describe=worker.describe).result == {"expired": True}
    assert reports() == [] and send_jobs() == 0
    assert mailbox.to(owner.email) == []


def test_nobody_opted_in_means_no_report(client: FlaskClient, worker: Worker) -> None:
    owner, admin = make_user(), make_user()
    team_id = make_team(owner, "Epsilon", [(admin, "admin")])
    add_member(team_id, make_user(), "member")
    assert tick_result(beat_tick("reports-daily"), worker) == 0
    assert reports() == [] and send_jobs() == 0
