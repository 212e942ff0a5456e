"""How a job's body says what went wrong, and what the runner does about it."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (bad input, a declined card): the job fails at once."""


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached to claim a job (restart, failover, network)."""


class JobCancelled(Exception):
    """Raised from `JobContext.progress` when a user asked to cancel the job."""
