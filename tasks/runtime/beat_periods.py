"""When the periods of a beat entry start: the boundaries beats claim (services/jobs/schedule.py).

A period is named by its start, which every beat computes alike from the schedule alone:
- a crontab's: each time it matches (crontab(minute=2): every hour at :02:00);
- an interval's (a number of seconds, a timedelta): each multiple of it since the Unix
  epoch, in UTC (3600.0: every hour at :00:00). Celery counts intervals from each beat's
  own start instead, which two beats never agree on.
Other schedules (solar) are refused: there is no boundary to claim.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.schedules import BaseSchedule, crontab, schedule

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check(entry_schedule: BaseSchedule) -> None:
    """Refuse a schedule whose periods cannot be named (raises ValueError)."""
    if isinstance(entry_schedule, crontab):
        return
    if isinstance(entry_schedule, schedule) and entry_schedule.run_every > timedelta(0):
        return
    raise ValueError(f"a shared beat entry needs a crontab or an interval, not {entry_schedule!r}")


def latest_start(entry_schedule: BaseSchedule, after: datetime, now: datetime) -> datetime | None:
    """The start of the latest period that began after `after` and by `now`, if any.

    Periods missed in between (every beat down for hours) are not returned one by one:
    like Celery, a late beat sends the latest period once, not each one it missed."""
    if isinstance(entry_schedule, crontab):
        start = _next_match(entry_schedule, after)
        if start > now:
            return None
        while (following := _next_match(entry_schedule, start)) <= now:
            start = following
        return start
    step = _step(entry_schedule)
    start = _EPOCH + ((now - _EPOCH) // step) * step
    return start if start > after else None


def next_start(entry_schedule: BaseSchedule, now: datetime) -> datetime:
    """The start of the first period after `now`."""
    if isinstance(entry_schedule, crontab):
        return _next_match(entry_schedule, now)
    step = _step(entry_schedule)
    return _EPOCH + ((now - _EPOCH) // step + 1) * step


def _next_match(cron: crontab, after: datetime) -> datetime:
    """The crontab's first match strictly after `after` (Celery's own arithmetic)."""
    start, delta, _ = cron.remaining_delta(after)
    return (start + delta).astimezone(UTC)  # type: ignore[no-any-return]


def _step(entry_schedule: BaseSchedule) -> timedelta:
    if not isinstance(entry_schedule, schedule):
        raise ValueError(f"not a crontab or an interval: {entry_schedule!r}")
    return entry_schedule.run_every  # type: ignore[no-any-return]
