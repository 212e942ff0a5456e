"""Realtime events for users, through Redis so any web process can serve any user.

Each user has one Redis Stream, `events:user:{user_id}`. Publishing is an XADD (capped,
and trimmed to the retention window); the SSE endpoint XREADs it with BLOCK. A stream
rather than pub/sub because its entries outlive the moment they were sent: the entry id
is the SSE `id:`, so a client reconnecting with `Last-Event-ID` gets exactly what it
missed during the retention window, from whichever web process it lands on.

Realtime is best-effort: the database stays the truth, `publish` never raises, and a
client told `reset` (events it may have missed are gone) refetches what it shows.

Stream tokens: EventSource cannot send headers, so a signed-in client asks for a short-
lived token (`POST /api/v1/events/token`) and connects with `?token=`. It is signed for
this purpose only (not a JWT: no other route can accept it), expires within a minute,
and is bound to the access token it came from (its id, session and issue time), so
whatever revokes that token (a logout, a password reset) revokes it too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
from flask import current_app
from pydantic_core import to_jsonable_python
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from logs import get_logger
from models import Job
from models.job import FINISHED
from redis_urls import redis_client
from services.core import redis_batch
from services.core.errors import ServiceError

log = get_logger(__name__)

# Event types clients subscribe to (data formats: see the publishers and blueprints/events).
JOB_PROGRESS = "job.progress"
JOB_FINISHED = "job.finished"
NOTIFICATION_CREATED = "notification.created"
# Control events the stream endpoint writes itself (never stored): the first event of
# every connection is one of these, carrying the position the stream starts from.
READY = "ready"
RESET = "reset"

KEY_PREFIX = "events:user:"
# Cap per user whatever the retention: a burst (a bulk import's notifications) cannot
# grow one stream without bound. `~` lets Redis trim whole nodes, which is cheaper.
MAX_EVENTS_PER_USER = 1000
# Idle streams are only trimmed on the next publish, so the key itself expires. Long
# enough that an idle user's reconnect never finds it gone (which would mean `reset`).
_MIN_KEY_TTL_SECONDS = 86_400
_MAX_SEQ = 2**64 - 1  # the largest sequence part of a stream id
_ID_PART_DIGITS = 20  # a stream id is "<ms>-<seq>", both unsigned 64-bit integers


class StreamCapacityExceeded(ServiceError):
    """This process already serves as many streams as it may (the client reconnects)."""

    status, title, type_slug = 503, "Service Unavailable", "stream-capacity"


@dataclass(frozen=True)
class Event:
    """One stored event: its stream id (the SSE `id:`), type and JSON data."""

    id: str
    event: str
    data: dict[str, Any]

    def to_sse(self) -> str:
        """The event as a Server-Sent Events block (compact JSON has no raw newlines)."""
        return f"id: {self.id}\nevent: {self.event}\ndata: {_dumps(self.data)}\n\n"


@dataclass(frozen=True)
class StartPosition:
    """Where a connection starts reading, and whether the client must refetch first."""

    position: str
    reset: bool


def stream_key(user_id: uuid.UUID) -> str:
    return f"{KEY_PREFIX}{user_id}"


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _dumps(data: Any) -> str:
    # pydantic's encoder: UUIDs, ISO-8601 datetimes and models, as the REST API renders them.
    return json.dumps(to_jsonable_python(data), separators=(",", ":"), ensure_ascii=False)


def publish(user_ids: Iterable[uuid.UUID | None], event: str, data: dict[str, Any]) -> None:
    """Append `event` to each user's stream in one round trip (or on the caller's Redis
    batch, see services.core.redis_batch); never raises.

    Call it after the commit that made the event true. A Redis failure is logged and
    the event dropped: clients reconcile from the database (on `reset` or reload).
    """
    targets = list(dict.fromkeys(u for u in user_ids if u is not None))
    if not targets:
        return
    # Best-effort by design (the database is the truth): redis_batch logs a failure. On
    # the caller's Redis batch if there is one (a job's settle: one round trip for all of
    # its Redis writes), else sent at once.
    with redis_batch.writes("realtime_publish_failed", event_type=event) as pipe:
        settings = _settings()
        fields = {"event": event, "data": _dumps(data)}
        # Retention by this host's clock: a skew of seconds against Redis's only moves the
        # trim point by as much (resuming checks what Redis actually kept, not this).
        oldest_kept = int((time.time() - settings.events_retention_seconds) * 1000)
        ttl = max(_MIN_KEY_TTL_SECONDS, 2 * settings.events_retention_seconds)
        for user_id in targets:
            key = stream_key(user_id)
            pipe.xadd(key, fields, maxlen=MAX_EVENTS_PER_USER, approximate=True)  # type: ignore[arg-type]
            # Retention and expiry once per stream and round trip (a job's owner gets
            # `running`, maybe a notification, and `finished` in one): later appends in
            # the same batch are newer than the cut and keep the key's TTL.
            if redis_batch.first_in_batch(("events-upkeep", key)):
                pipe.xtrim(key, minid=oldest_kept, approximate=False)
                pipe.expire(key, ttl)


def publish_job(job: Job) -> None:
    """Tell the job's owner its current state: `job.finished` once final, else `job.progress`.

    `job.finished` is {job_id, type, status, error?, result_url?}; never raises.
    """
    if job.status not in FINISHED:
        publish_job_progress(job.user_id, job.id, job.type, job.progress, job.status)
        return
    data: dict[str, Any] = {"job_id": job.id, "type": job.type, "status": job.status}
    if job.error and job.status != "succeeded":
        data["error"] = job.error
    result = job.result if isinstance(job.result, dict) else {}
    if job.status == "succeeded" and result.get("url"):
        data["result_url"] = result["url"]  # as the REST API's `links.result`
    publish([job.user_id], JOB_FINISHED, data)


def publish_job_progress(
    user_id: uuid.UUID | None, job_id: uuid.UUID, job_type: str, progress: int, status: str
) -> None:
    """`job.progress` {job_id, type, progress, status} to the job's owner (if it has one)."""
    data = {"job_id": job_id, "type": job_type, "progress": progress, "status": status}
    publish([user_id], JOB_PROGRESS, data)


def on_job_progress(
    job_id: uuid.UUID, *, user_id: uuid.UUID | None, job_type: str, progress: int, status: str
) -> None:
    """Receiver of the kernel's `progressed` signal (connected in create_app)."""
    publish_job_progress(user_id, job_id, job_type, progress, status)


# --- reading ---------------------------------------------------------------------------

_reader_clients: dict[tuple[str, str, float], redis_lib.Redis] = {}
_reader_lock = threading.Lock()


def _reader_client(settings: Settings) -> redis_lib.Redis:
    """A pool for reading streams: its socket timeout must outlast an XREAD BLOCK.

    The shared client's 2 s timeout would cut every heartbeat-long wait, so streams
    borrow connections from this pool instead (one per open stream while it waits).
    """
    timeout = settings.events_heartbeat_seconds + 5
    key = (settings.redis_url, settings.redis_sentinel_master, timeout)
    with _reader_lock:
        client = _reader_clients.get(key)
        if client is None:
            client = redis_client(
                settings.redis_url,
                settings.redis_sentinel_master,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=2,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 1),  # a read is safe to repeat once
            )
            _reader_clients[key] = client
        return client


def read(
    user_id: uuid.UUID, last_id: str | None, block_ms: int, *, count: int = 100
) -> list[Event]:
    """Events after `last_id` (None: only those published from now on), oldest first.

    Waits up to `block_ms` for the first one (0: does not wait). Loop with the id of the
    last event received: passing None again would miss what arrived in between.
    """
    client = _reader_client(_settings())
    reply: list[Any] = client.xread(  # type: ignore[assignment]  # sync client, not awaitable
        {stream_key(user_id): last_id or "$"}, count=count, block=block_ms if block_ms > 0 else None
    )
    events: list[Event] = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            try:
                events.append(Event(entry_id, fields["event"], json.loads(fields["data"])))
            except (KeyError, ValueError):
                log.warning("realtime_bad_entry", user_id=str(user_id), entry_id=entry_id)
    return events


def _parse_id(value: str | None) -> tuple[int, int] | None:
    """A stream id as (ms, seq), or None if `value` is not one (ids come from clients)."""
    if not value:
        return None
    ms, sep, seq = value.strip().partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        return None
    if len(ms) > _ID_PART_DIGITS or len(seq) > _ID_PART_DIGITS:
        return None
    return int(ms), int(seq)


def _format_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def _just_before(parts: tuple[int, int]) -> tuple[int, int]:
    """The greatest id below `parts`: reading after it returns the entry `parts` itself."""
    ms, seq = parts
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, _MAX_SEQ) if ms > 0 else (0, 0)


def start_position(user_id: uuid.UUID, last_event_id: str | None) -> StartPosition:
    """Where a new connection reads from, given the client's `Last-Event-ID` (if any).

    Without one: from now on. With one whose successors are all still stored: right
    after it. Otherwise (some were trimmed or expired, or the id is not one of ours):
    from the oldest stored event, with `reset` so the client refetches its state.
    Raises Redis errors (the endpoint answers 503 before streaming starts).
    """
    settings = _settings()
    pipe = _reader_client(settings).pipeline(transaction=False)
    pipe.xinfo_stream(stream_key(user_id))
    pipe.time()
    info, (seconds, micros) = pipe.execute(raise_on_error=False)
    if isinstance(info, redis_lib.ResponseError):  # no such key: nothing stored for this user
        info = None
    elif isinstance(info, Exception):
        raise info
    now = (int(seconds) * 1000 + int(micros) // 1000, 0)  # Redis's clock, which makes the ids
    # The newest id so far; with no stream yet, one just before anything added from now.
    current = _parse_id(_text(info["last-generated-id"])) if info else _just_before(now)
    assert current is not None
    if last_event_id is None:
        return StartPosition(_format_id(current), reset=False)

    last = _parse_id(last_event_id)
    first = _parse_id(_text(info["first-entry"][0])) if info and info.get("first-entry") else None
    if last is not None and not _may_have_lost(last, current, now, info, first, settings):
        return StartPosition(_format_id(last), reset=False)
    oldest = _just_before(first) if first else current
    return StartPosition(_format_id(oldest), reset=True)


def _may_have_lost(
    last: tuple[int, int],
    current: tuple[int, int],
    now: tuple[int, int],
    info: dict[str, Any] | None,
    first: tuple[int, int] | None,
    settings: Settings,
) -> bool:
    """Whether any event after `last` may be gone from the user's stream."""
    if last > current:
        return True  # an id we never issued: the stream was lost (Redis flushed) meanwhile
    key_ttl_ms = max(_MIN_KEY_TTL_SECONDS, 2 * settings.events_retention_seconds) * 1000
    if last[0] < now[0] - key_ttl_ms:
        return True  # the key may have expired (with events in it) and been recreated
    if info is None:
        return False  # no key, and any event after `last` would have kept it alive
    deleted = _parse_id(_text(info.get("max-deleted-entry-id")))  # Redis 7+: XDEL, not trims
    if deleted is not None and last < deleted:
        return True
    added = info.get("entries-added")  # Redis 7+
    if added is not None and int(added) == int(info["length"]):
        return False  # nothing was ever trimmed from this stream
    if first is None:
        return last < current  # everything was trimmed, including what came after `last`
    # Trims take the oldest entries: if an id fits between `last` and the oldest kept, an
    # entry with it may have been trimmed, so the client must refetch. (Without one, the
    # client's own last event is what was trimmed: it was gone longer than the retention.)
    return last < _just_before(first)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
