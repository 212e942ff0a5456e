"""The server-side timeouts every database connection runs under, and how they get there.

Without a pooler they travel in each connection's startup packet (`options=-c ...`),
which costs no round trip. A transaction-mode pooler (PgBouncer) refuses startup options
and, even if told to ignore them, would not carry a SET over to the next server
connection; `SET LOCAL` in every transaction would cost a round trip each. So behind one
they are the role's own settings in the database (`ALTER ROLE ... IN DATABASE ... SET`,
written by `flask db timeouts`), which PostgreSQL applies to every new server connection
for nothing, and each process checks them once on its first connection
(`warn_if_different`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from config import Settings
from logs import get_logger

log = get_logger(__name__)

# PostgreSQL's names, in the order the settings list them; each takes milliseconds.
NAMES: Final = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


class Executes(Protocol):
    """A psycopg connection or cursor: what the check and the writer need of one."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    """DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS and DB_IDLE_IN_TRANSACTION_TIMEOUT_MS
    (0 = none)."""

    statement_ms: int = 30_000
    lock_ms: int = 0
    idle_in_transaction_ms: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Timeouts:
        return cls(
            settings.db_statement_timeout_ms,
            settings.db_lock_timeout_ms,
            settings.db_idle_in_transaction_timeout_ms,
        )

    def by_name(self) -> dict[str, int]:
        values = (self.statement_ms, self.lock_ms, self.idle_in_transaction_ms)
        return dict(zip(NAMES, values, strict=True))

    def startup_options(self) -> str:
        """libpq's `options`: each setting for the whole session, sent with the login."""
        return " ".join(f"-c {name}={ms}" for name, ms in self.by_name().items())

    def role_statements(self, database: str) -> list[str]:
        """ALTER ROLE statements giving the connected role these timeouts in `database`
        (a quoted identifier)."""
        return [
            f"ALTER ROLE CURRENT_USER IN DATABASE {database} SET {name} = {int(ms)}"
            for name, ms in self.by_name().items()
        ]


def in_effect(connection: Executes) -> dict[str, int]:
    """The three timeouts this connection runs under, in milliseconds."""
    rows = connection.execute(
        "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(NAMES),)
    ).fetchall()
    return {str(name): int(setting) for name, setting in rows}


def differences(expected: Timeouts, seen: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{name: {"expected": ms, "seen": ms}} for every timeout that is not as configured."""
    return {
        name: {"expected": ms, "seen": seen.get(name, -1)}
        for name, ms in expected.by_name().items()
        if seen.get(name) != ms
    }


def warn_if_different(expected: Timeouts, connection: Any) -> None:
    """Log `database_timeouts_differ` when a new connection (psycopg, outside a
    transaction) runs under other timeouts than the settings say; leave it as found.

    Never raises: a check must not fail the connection the process needs."""
    try:
        try:
            differ = differences(expected, in_effect(connection))
        finally:
            connection.rollback()  # behind a pooler: the server connection goes back now
    except Exception as exc:  # noqa: BLE001 - a failed check is a warning too
        log.warning("database_timeouts_unchecked", error=type(exc).__name__)
        return
    if differ:
        log.warning(
            "database_timeouts_differ",
            timeouts=differ,
            hint="run `flask db timeouts` (new server connections pick the values up)",
        )


def write_to_role(connection: Executes, timeouts: Timeouts) -> tuple[str, str]:
    """Make `timeouts` the connected role's settings in the connected database (autocommit
    connection); return (role, database). Only connections made afterwards use them."""
    role, database, quoted = connection.execute(
        "SELECT current_user, current_database(), quote_ident(current_database())"
    ).fetchone()
    for statement in timeouts.role_statements(quoted):
        connection.execute(statement)
    return str(role), str(database)


def role_settings(connection: Executes) -> list[str]:
    """The connected role's settings in the connected database, as stored (`name=value`)."""
    rows = connection.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s"
        " JOIN pg_database d ON d.oid = s.setdatabase"
        " JOIN pg_roles r ON r.oid = s.setrole"
        " WHERE r.rolname = current_user AND d.datname = current_database()"
    ).fetchall()
    return sorted(str(row[0]) for row in rows)
