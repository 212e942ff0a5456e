"""Structured JSON logs with the request id bound, for the web app and the workers alike.

Some URLs carry secrets: the invitation token in `/api/v1/invites/<token>/accept` and
`/decline`, and `token=` query parameters (event-stream tokens, one-click unsubscribe
links, local storage downloads, the frontend's verify and reset links in a Referer).
Logs are read by more people, kept longer and shipped further than the database, so
every line we write, and gunicorn's (gunicorn.conf.py), shows them as `[redacted]`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

REDACTED = "[redacted]"
# A team's invitation routes (/teams/<id>/invites/<invite id>) hold ids, not secrets.
_SECRET_IN_URL = re.compile(
    r"(?P<team>/teams/[^/\s]+)?(?P<invites>/invites/)[^/?#\s\"'\\]+"
    r"|(?P<param>[?&]token=)[^&#\s\"'\\]+"
)


def redact_secrets(text: str) -> str:
    """`text` with the secrets of the URLs in it replaced by `[redacted]`."""
    if "/invites/" not in text and "token=" not in text:
        return text  # nearly every line: one scan, no regex
    return _SECRET_IN_URL.sub(_redact, text)


def _redact(match: re.Match[str]) -> str:
    if match["param"]:
        return match["param"] + REDACTED
    if match["team"]:
        return match[0]
    return match["invites"] + REDACTED


class RedactSecrets(logging.Filter):
    """For loggers whose lines we do not render ourselves (gunicorn's access and error
    logs): the message, with its arguments filled in, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _redact_line(_logger: Any, _method: str, line: Any) -> Any:
    """The last step of rendering: whatever a line quotes (a library's message, an
    exception's text), no URL secret leaves the process."""
    return redact_secrets(line) if isinstance(line, str) else line


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route stdlib and structlog records through one JSON renderer on stderr."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # Level first: a call below the level is dropped before the processors run (the
        # stdlib logger would drop it only after them: a timestamp formatted for nothing).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
                _redact_line,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def bind_request_id(request_id: str | None) -> None:
    structlog.contextvars.clear_contextvars()
    if request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id)


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


get_logger = structlog.get_logger
