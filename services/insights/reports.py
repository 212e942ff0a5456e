"""Scheduled reports: daily and weekly figures emailed to each team's owners and admins
who opted in (notification category `reports`, off by default).

A period is reported once per team, whatever beat does. `schedule_reports` inserts the
period's rows with ON CONFLICT DO NOTHING and queues a `reports.send` job only for the
rows it inserted, in the same transaction: two beats (or a backlog of ticks) make one row
and one job. `send_report` stores the figures once, then mails each recipient not yet in
`delivered_to` and records them one by one, so a redelivered or repeated job mails nobody
twice.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from flask import current_app
from sqlalchemy import Date, Select, String, and_, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert

from config import Settings
from extensions import db
from integrations.mail import Mailer, PermanentMailError
from logs import get_logger
from models import NotificationPreference, Report, Team, TeamMember, User
from services.insights import report_figures
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging.catalog import CATEGORIES
from services.messaging.mail import Attachment, compose_message, unsubscribe_links

log = get_logger(__name__)

CATEGORY: Final = "reports"
ROLES: Final = ("owner", "admin")  # who may receive a team's reports
DAILY: Final = "daily"
WEEKLY: Final = "weekly"
CHART_FILENAME: Final = "chart.png"


@dataclass(frozen=True)
class Period:
    """The UTC days a report covers: [start, end)."""

    kind: str
    start: date
    end: date

    @property
    def interval(self) -> str:
        """The rollup interval of the report's table rows (hours of a day, days of a week)."""
        return "hour" if self.kind == DAILY else "day"

    def bounds(self) -> tuple[datetime, datetime]:
        return _midnight(self.start), _midnight(self.end)

    def label(self) -> str:
        if self.kind == DAILY:
            return f"{self.start:%A %d %B %Y}"
        return f"{self.start:%d %b} to {self.end - timedelta(days=1):%d %b %Y}"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def daily_period(day: date | None = None) -> Period:
    """The report period of `day`, by default yesterday (UTC)."""
    day = day or datetime.now(UTC).date() - timedelta(days=1)
    return Period(DAILY, day, day + timedelta(days=1))


def weekly_period(monday: date | None = None) -> Period:
    """The week (Monday to Monday) starting `monday`, by default the last full week (UTC)."""
    if monday is None:
        today = datetime.now(UTC).date()
        monday = today - timedelta(days=today.weekday() + 7)
    if monday.weekday() != 0:
        raise ValueError(f"a weekly report starts on a Monday, not on {monday:%A}")
    return Period(WEEKLY, monday, monday + timedelta(days=7))


def _recipient_rows() -> Select[uuid.UUID, uuid.UUID, str, str]:
    """(team_id, user_id, email, name) of everyone who gets their teams' reports: owners
    and admins with a live, verified account whose `reports` email preference is on."""
    opted_in = func.coalesce(NotificationPreference.enabled, CATEGORIES[CATEGORY].email_default)
    return (
        select(TeamMember.team_id, User.id, User.email, User.name)
        .join(User, User.id == TeamMember.user_id)
        .outerjoin(
            NotificationPreference,
            and_(
                NotificationPreference.user_id == TeamMember.user_id,
                NotificationPreference.category == CATEGORY,
                NotificationPreference.channel == "email",
            ),
        )
        .where(
            TeamMember.role.in_(ROLES),
            User.deleted_at.is_(None),
            User.is_active.is_(True),
            User.email_verified_at.is_not(None),
            opted_in,
        )
    )


def recipients(team_id: uuid.UUID) -> list[tuple[uuid.UUID, str, str]]:
    """(user_id, email, name) of the team's report recipients right now, by id."""
    rows = db.session.execute(
        _recipient_rows().where(TeamMember.team_id == team_id).order_by(User.id)
    ).tuples()
    return [(user_id, email, name) for _team, user_id, email, name in rows]


def schedule_reports(period: Period) -> int:
    """Create the period's report for every live team with a recipient and queue each new
    one's `reports.send` job; one statement for all teams, one commit. Idempotent: a
    period that already has its row is skipped. Returns how many were queued."""
    teams = _recipient_rows().subquery()
    source = select(
        func.gen_random_uuid(),
        Team.id,
        literal(period.kind, String),
        literal(period.start, Date),
        literal(period.end, Date),
    ).where(Team.deleted_at.is_(None), Team.id.in_(select(teams.c.team_id)))
    created = db.session.execute(
        insert(Report)
        .from_select(["id", "team_id", "kind", "period_start", "period_end"], source,
                     include_defaults=False)
        .on_conflict_do_nothing(index_elements=["team_id", "kind", "period_start"])
        .returning(Report.id, Report.team_id)
    ).all()  # fmt: skip
    jobs = {
        row.id: enqueue(names.REPORTS_SEND, args={"report_id": str(row.id)}, team_id=row.team_id)
        for row in created
    }
    if jobs:
        db.session.flush()  # the job rows first: reports.job_id references them
        db.session.execute(update(Report), [{"id": r, "job_id": j.id} for r, j in jobs.items()])
    db.session.commit()  # rows, jobs and (after this) their messages: all or nothing
    log.info("reports_scheduled", kind=period.kind, period=period.start.isoformat(),
             count=len(jobs))  # fmt: skip
    return len(jobs)


def send_report(report_id: uuid.UUID, mailer: Mailer) -> dict[str, Any]:
    """Email report `report_id` to each current recipient not mailed yet, committing after
    each one; sets `sent_at` at the end (committed by the caller). Safe to run twice."""
    report = db.session.get(Report, report_id)
    if report is None or report.sent_at is not None:
        return {"skipped": "already sent" if report else "report not found"}
    team = db.session.get(Team, report.team_id)
    if team is None or team.deleted_at is not None:
        return {"skipped": "team deleted"}
    period = Period(report.kind, report.period_start, report.period_end)
    if report.figures is None:
        report.figures = report_figures.build_figures(team.id, *period.bounds(), period.interval)
        db.session.commit()  # before the first email: every recipient gets these numbers
    figures: dict[str, Any] = report.figures or {}
    if report_figures.is_quiet(figures):
        # Every owner has a personal team, most of them idle: an all-zero email daily
        # would teach people to ignore (or unsubscribe from) the reports that matter.
        report.sent_at = datetime.now(UTC)
        return {"skipped": "no activity"}
    team_id, team_name = team.id, team.name  # plain values: the commits below expire `team`
    title = f"{team_name}, {period.label()}"
    attachments = [
        Attachment(CHART_FILENAME, "image/png", report_figures.render_chart(figures, title),
                   inline=True),
        Attachment(_csv_filename(team_name, period), "text/csv", report_figures.to_csv(figures)),
    ]  # fmt: skip
    sent = refused = 0
    for user_id, email, name in recipients(team_id):
        # Locked while mailing this one: a second job for the same report waits here, then
        # sees the recipient recorded, instead of mailing them too.
        locked = db.session.scalar(select(Report).where(Report.id == report_id).with_for_update())
        if locked is None or str(user_id) in locked.delivered_to:
            db.session.rollback()
            continue
        context = _context(team_id, team_name, period, figures, user_id, name,
                           attachments[1].filename)  # fmt: skip
        # Stable per report and recipient: a copy sent again after a crash shares the id.
        message_id = uuid.uuid5(report_id, str(user_id))
        try:
            mailer.send(compose_message(f"{period.kind}_report", email, name, context,
                                        job_id=message_id, attachments=attachments))  # fmt: skip
        except PermanentMailError as exc:  # this address refuses mail: no retry can help
            db.session.rollback()
            log.warning("report_refused", report_id=str(report_id), user_id=str(user_id),
                        error=str(exc))  # fmt: skip
            refused += 1
            continue
        locked.delivered_to = [*locked.delivered_to, str(user_id)]  # a new list: tracked
        db.session.commit()
        sent += 1
    report.sent_at = datetime.now(UTC)
    return {"sent": sent, "refused": refused}


def _csv_filename(team_name: str, period: Period) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", team_name.lower()).strip("-")[:40] or "team"
    suffix = "" if period.kind == DAILY else "-week"
    return f"report-{slug}-{period.start.isoformat()}{suffix}.csv"


def _context(
    team_id: uuid.UUID, team_name: str, period: Period, figures: dict[str, Any],
    user_id: uuid.UUID, name: str, csv_filename: str,
) -> dict[str, Any]:  # fmt: skip
    settings: Settings = current_app.config["SETTINGS"]
    frontend = settings.frontend_url.rstrip("/")
    return {
        "name": name,
        "team": team_name,
        "period": period.label(),
        "unit": period.interval,  # what one CSV row covers
        "figures": report_figures.key_figures(figures, period.kind == WEEKLY),
        "top_events": figures.get("top_events", []),
        "chart": CHART_FILENAME,
        "csv_filename": csv_filename,
        "link": f"{frontend}/teams/{team_id}/dashboard",
        "settings_link": f"{frontend}/settings/notifications",
        **unsubscribe_links(user_id, CATEGORY, settings),
    }
