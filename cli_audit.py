"""`flask audit ...`: check every audit chain offline, and rotate the chain's key.

The checks are the service's (services/core/audit_verify.py), page after page to each chain's
sealed head; a broken chain makes the command exit non-zero, so it can run from cron.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup

from config import parse_audit_keys
from services.core.audit import GLOBAL_CHAIN
from services.core.audit_verify import ChainReport, list_chains, verify_chain

audit_cli = AppGroup("audit", help="The audit chain: verify it offline, rotate its key.")


@audit_cli.command("verify")
@click.option("--team", help=f"Only this team's chain (a team id, or '{GLOBAL_CHAIN}').")
@click.option("--page", type=click.IntRange(1, 100_000), default=10_000, show_default=True,
              help="Rows per transaction.")  # fmt: skip
def verify(team: str | None, page: int) -> None:
    """Check every audit chain from its first row to its sealed head; exit 1 if one is broken."""
    chains = [_team_option(team)] if team else list_chains()
    broken = 0
    for team_id in chains:
        report, rows = _check_whole_chain(team_id, page)
        name = f"team {team_id}" if team_id else f"{GLOBAL_CHAIN} chain"
        if report.complete:
            click.echo(f"{name}: intact, {rows} rows")
            continue
        broken += 1
        where = f" at row {report.first_bad_id}" if report.first_bad_id else ""
        click.echo(f"{name}: BROKEN{where} after {rows} good rows: {report.reason}")
    click.echo(f"{len(chains)} chain(s) checked, {broken} broken")
    if broken:
        raise SystemExit(1)


@audit_cli.command("rotate-key")
@click.option("--id", "key_id", help="The new key's id (default: k<today>).")
def rotate_key(key_id: str | None) -> None:
    """Make a new audit key and print how to install it; nothing is stored or re-signed."""
    ring: dict[str, bytes] = current_app.config["SETTINGS"].audit_key_ring
    key_id = key_id or f"k{datetime.now(UTC):%Y%m%d}"
    if key_id in ring:
        raise click.ClickException(f"AUDIT_KEYS already has a key '{key_id}'; pass --id")
    entry = f"{key_id}:{secrets.token_urlsafe(32)}"
    try:
        parse_audit_keys(entry)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    current = ",".join(f"{name}:..." for name in ring)
    click.echo(f"New audit key '{key_id}' (shown once, stored nowhere):\n  {entry}\n")
    click.echo(
        "1. Append it to AUDIT_KEYS on every web, worker and beat process and restart them,\n"
        "   so that every process can verify what it will sign:\n"
        f"     AUDIT_KEYS={current},{entry}\n"
        "2. Then move it to the front and restart again; from then on it signs:\n"
        f"     AUDIT_KEYS={entry},{current}\n"
        "Keep the old keys listed (the '...' stand for their secrets): the rows and heads\n"
        "they signed are verified with them and never re-signed."
    )


def _check_whole_chain(team_id: uuid.UUID | None, page: int) -> tuple[ChainReport, int]:
    rows, cursor = 0, None
    while True:
        report = verify_chain(team_id, cursor=cursor, max_rows=page)
        rows += report.rows_checked
        if report.next_cursor is None:
            return report, rows
        cursor = report.next_cursor


def _team_option(value: str) -> uuid.UUID | None:
    if value == GLOBAL_CHAIN:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise click.BadParameter(f"a team id or '{GLOBAL_CHAIN}'", param_hint="--team") from exc
