"""What a scheduled report says: its figures (from the rollups), its CSV and its chart.

Everything is derived from the rollups through `services.insights.rollups`, never from raw events,
and is stored once on the report (`figures`) before the first email goes out: every
recipient, including one mailed by a retry hours later, gets the same numbers.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.insights import rollups
from services.messaging.mail import format_money

TOP_EVENTS: Final = 5  # client events with a column of their own (the busiest ones)
CHARTED_EVENTS: Final = 3  # of those, how many the chart draws


@dataclass(frozen=True)
class Column:
    metric: str
    label: str  # the CSV header


# Always in a report, in this order (revenue columns, one per currency, follow payments).
BUILTIN_COLUMNS: Final = (
    Column(rollups.PAYMENTS_COUNT, "payments"),
    Column(rollups.SIGNUPS, "signups"),
    Column(rollups.ACTIVE_USERS, "active_users"),
    Column(rollups.JOBS_RUN, "jobs_run"),
    Column(rollups.JOBS_FAILED, "jobs_failed"),
)
# Drawn on the chart: counts of similar size (revenue and jobs would dwarf them).
CHARTED_LABELS: Final = ("payments", "signups", "active_users")


def build_figures(
    team_id: uuid.UUID, start: datetime, end: datetime, interval: str
) -> dict[str, Any]:
    """The team's key figures over [start, end) and one table row per `interval` bucket
    (JSON-ready: stored on the report as is)."""
    totals = rollups.totals(team_id, start, end)
    revenue = {
        name.removeprefix(rollups.REVENUE_PREFIX): value
        for name, value in sorted(totals.items())
        if name.startswith(rollups.REVENUE_PREFIX)
    }
    events = {n: v for n, v in totals.items() if not n.startswith(rollups.BUILTIN_PREFIX)}
    top_events = sorted(events.items(), key=lambda item: (-item[1], item[0]))[:TOP_EVENTS]
    columns = [
        BUILTIN_COLUMNS[0],
        *(Column(rollups.revenue_metric(c), f"revenue_{c}_minor") for c in revenue),
        *BUILTIN_COLUMNS[1:],
        *(Column(name, f"event:{name}") for name, _ in top_events),
    ]
    series = [rollups.series(team_id, c.metric, start, end, interval) for c in columns]
    rows = [
        [points[0].bucket.isoformat(), *(p.value for p in points)]
        for points in zip(*series, strict=True)
    ]
    return {
        "interval": interval,
        "totals": {c.label: totals.get(c.metric, 0) for c in BUILTIN_COLUMNS},
        "events_total": sum(events.values()),
        "revenue": revenue,  # currency -> minor units
        "top_events": [[name, value] for name, value in top_events],
        "columns": ["bucket", *(c.label for c in columns)],
        "rows": rows,
    }


def is_quiet(figures: dict[str, Any]) -> bool:
    """Nothing at all happened (no rollup counted anything): not worth an email."""
    return not any(figures["totals"].values()) and not figures["events_total"]


def key_figures(figures: dict[str, Any], weekly: bool) -> list[tuple[str, str]]:
    """(label, value) lines for the email, money formatted in its currency."""
    totals: dict[str, int] = figures["totals"]
    revenue = [format_money(v, c) for c, v in figures["revenue"].items()] or ["none"]
    # Distinct users do not add up across days: a week shows its busiest day.
    active = "Active members (busiest day)" if weekly else "Active members"
    return [
        ("Payments", f"{totals['payments']:,}"),
        ("Revenue", ", ".join(revenue)),
        ("New members", f"{totals['signups']:,}"),
        (active, f"{totals['active_users']:,}"),
        ("Events received", f"{figures['events_total']:,}"),
        ("Jobs run", f"{totals['jobs_run']:,}"),
        ("Jobs failed", f"{totals['jobs_failed']:,}"),
    ]


def to_csv(figures: dict[str, Any]) -> bytes:
    """The table as CSV: a header, then one row per bucket (UTC start, ISO 8601).
    Amounts are integer minor units, as in the payments export."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(figures["columns"])
    writer.writerows(figures["rows"])
    return buffer.getvalue().encode()


def render_chart(figures: dict[str, Any], title: str) -> bytes:
    """A small PNG line chart of the main counts per bucket (plus the busiest events)."""
    # Imported here: only report jobs need matplotlib (slow to import, memory-hungry), so
    # web processes and other workers never load it. `Figure` without pyplot keeps no
    # global state (thread-safe, nothing to close) and renders with Agg.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns: list[str] = figures["columns"]
    charted = [*CHARTED_LABELS, *(c for c in columns if c.startswith("event:"))][
        : len(CHARTED_LABELS) + CHARTED_EVENTS
    ]
    rows: list[list[Any]] = figures["rows"]
    hourly = figures["interval"] == "hour"
    ticks = [_tick_label(row[0], hourly) for row in rows]

    figure = Figure(figsize=(6, 2.8), dpi=100, layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(rows)))
    peak = 0
    for label in charted:
        values = [row[columns.index(label)] for row in rows]
        peak = max(peak, *values)
        axes.plot(positions, values, marker=".", linewidth=1.5,
                  label=label.removeprefix("event:").replace("_", " "))  # fmt: skip
    step = 3 if hourly else 1
    axes.set_xticks(positions[::step], ticks[::step], fontsize=7)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_ylim(0, max(peak, 1) * 1.05)  # from zero, and a quiet day is still a chart
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 ticks
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", linewidth=0.4, alpha=0.5)
    # Below the axes: inside, it would hide the busiest hours.
    figure.legend(fontsize=7, frameon=False, loc="outside lower center", ncols=len(charted))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _tick_label(bucket: str, hourly: bool) -> str:
    moment = datetime.fromisoformat(bucket)
    return moment.strftime("%H:00") if hourly else moment.strftime("%a %d")
