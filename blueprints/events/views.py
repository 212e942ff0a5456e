"""HTTP for realtime events: the Server-Sent Events stream and its short-lived tokens.

Every check (credentials, revocation, the user's and the process's stream caps, Redis
reachable) happens before the first byte, so failures are ordinary problem+json answers;
once the 200 is sent, trouble ends the stream with a `retry:` hint and the client resumes
with Last-Event-ID. An open stream re-checks its credential on a timer, busy or idle.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

from apiflask import APIBlueprint
from flask import Response, current_app, request, stream_with_context
from flask_jwt_extended import get_jwt
from redis.exceptions import RedisError

from blueprints.common.auth import auth_required, authenticate, me
from blueprints.common.openapi import operation_doc
from blueprints.common.ratelimits import configured, limiter, principal_key
from blueprints.events.schemas import StreamQuery, StreamTokenOut
from config import Settings
from extensions import db
from logs import get_logger
from services.core.errors import ServiceError
from services.identity import stream_tokens
from services.messaging import realtime, stream_leases

bp = APIBlueprint("events", __name__, url_prefix="/api/v1/events", tag="events")
log = get_logger(__name__)

_STREAM_DOC = {
    200: {
        "description": "`text/event-stream`. The first event is `ready` (or `reset`: refetch "
        "your state, events may have been missed) carrying the position as its id; then "
        "`job.progress`, `job.finished` and `notification.created` events, `: keepalive` "
        "comments while idle, and a `retry:` hint when the server ends the stream.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    401: "Missing, invalid, expired or revoked credentials.",
    429: "Too many stream connections, or this user already has as many streams open as "
    "allowed (close one; see Retry-After).",
    503: "This server is at its stream capacity, or Redis is unavailable (see Retry-After).",
}
# A client reconnects this long after a stream ends (randomised: a deploy that ends many
# streams at once must not bring them all back in the same second).
_RECONNECT_MS = (1000, 4000)


class _StreamSlots:
    """Counts this process's open streams, so they can never take every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.open >= limit:
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


_slots = _StreamSlots()


def _stream_rate_key() -> str:
    """Count stream (re)connects per user, also when the user comes with `?token=`."""
    token = request.args.get("token")
    if token and "Authorization" not in request.headers:
        user_id = stream_tokens.stream_token_user(token)
        if user_id:
            return f"user:{user_id}"
    return principal_key()


@bp.post("/token")
@auth_required(api_keys=False)
@bp.output(StreamTokenOut)
def create_stream_token() -> StreamTokenOut:
    """A token for `GET /events/stream?token=` (for EventSource), valid for a minute at most.

    Deliberately not idempotent: a replay would have to store the token. It works on the
    stream endpoint only, and stops working with the access token it was minted with.
    """
    claims = get_jwt()
    minted = stream_tokens.mint_stream_token(
        me().id,
        session_id=claims.get("sid"),
        access_jti=claims["jti"],
        access_expires_at=int(claims["exp"]),
        access_issued_at=float(claims.get("iat", 0)),
    )
    return StreamTokenOut(token=minted.token, expires_in=minted.expires_in)


@bp.get("/stream")
@operation_doc(operation_id="stream_events")
@limiter.limit(configured("ratelimit_events_stream"), key_func=_stream_rate_key)
@bp.input(StreamQuery, location="query", arg_name="query")
@bp.doc(
    security=["BearerAuth"],
    responses=_STREAM_DOC,  # type: ignore[arg-type]
)
def stream(query: StreamQuery) -> Response:
    """My job progress and new notifications, as Server-Sent Events.

    Authenticate with `Authorization: Bearer` or, from EventSource, `?token=` (from
    `POST /events/token`). Resume with the `Last-Event-ID` header (EventSource sends it
    on reconnects) or `?last_event_id=`; events of the last few minutes are replayed.
    Streams end after a few minutes; EventSource reconnects by itself (a stream token
    is short-lived, so then fetch a new one and pass the last id you saw).
    """
    credential = _authenticate_stream(query.token)
    settings: Settings = current_app.config["SETTINGS"]
    last_event_id = request.headers.get("Last-Event-ID") or query.last_event_id
    start = realtime.start_position(credential.user_id, last_event_id)
    lease = stream_leases.take(credential.user_id, settings)  # the user's cap: 429
    if not _slots.take(settings.events_max_streams_per_process):
        lease.release()
        log.warning("events_stream_capacity", limit=settings.events_max_streams_per_process)
        raise realtime.StreamCapacityExceeded(
            "This server cannot take another event stream now; reconnect shortly.",
            headers={"Retry-After": str(random.randint(2, 10))},
        )
    # A stream holds no database connection (or snapshot) for its minutes: give it back.
    db.session.remove()
    response = Response(
        stream_with_context(_event_stream(credential, lease, start, settings)),
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each event on, do not buffer
        },
    )
    # The server closes the response however the stream ends (even if never iterated).
    response.call_on_close(_once(lambda: _give_back(lease)))
    return response


def _give_back(lease: stream_leases.StreamLease) -> None:
    _slots.give_back()
    lease.release()


def _authenticate_stream(token: str | None) -> stream_tokens.StreamCredential:
    """The caller's credential: an access token in the header, else a stream token."""
    if token and "Authorization" not in request.headers:
        _user, credential = stream_tokens.authenticate_stream_token(token)
        return credential
    # API keys are for scripts calling the REST API, not for browsers' streams.
    user = authenticate(api_keys=False)
    claims = get_jwt()
    return stream_tokens.StreamCredential(
        user_id=user.id,
        jti=claims.get("jti"),
        session_id=claims.get("sid"),
        expires_at=float(claims["exp"]),
        issued_at=float(claims.get("iat", 0)),
    )


def _event_stream(
    credential: stream_tokens.StreamCredential,
    lease: stream_leases.StreamLease,
    start: realtime.StartPosition,
    settings: Settings,
) -> Iterator[str]:
    """Yield SSE text until the time limit, a revoked credential, a lost lease, or a Redis
    failure."""
    began = time.monotonic()
    # Jittered so streams opened together (after a deploy) do not all reconnect together;
    # never past the credential's expiry, which the reconnect then re-checks.
    lifetime = settings.events_max_stream_seconds * random.uniform(0.9, 1.0)
    lifetime = min(lifetime, max(0.0, credential.expires_at - time.time()))
    deadline = began + lifetime
    heartbeat = settings.events_heartbeat_seconds
    # On a timer, not only when idle: a busy stream would otherwise outlive a logout (or
    # a password reset) until its time limit.
    check_every = stream_leases.credential_check_seconds(settings)
    opening = realtime.Event(start.position, realtime.RESET if start.reset else realtime.READY, {})
    sent, reason = 0, "time_limit"
    yield f"retry: {random.randint(*_RECONNECT_MS)}\n{opening.to_sse()}"
    position, last_write, next_check = start.position, time.monotonic(), began + check_every
    try:
        while (now := time.monotonic()) < deadline:
            wait = min(deadline, next_check, last_write + heartbeat) - now
            events = realtime.read(credential.user_id, position, max(1, int(wait * 1000)))
            for event in events:
                yield event.to_sse()
                position, sent, last_write = event.id, sent + 1, time.monotonic()
            now = time.monotonic()
            if now >= next_check:
                if not credential.is_valid():
                    reason = "credential_ended"
                    break
                if not lease.renew():
                    reason = "lease_lost"  # stopped counting against the user's cap
                    break
                next_check = now + check_every
            if now - last_write >= heartbeat:
                # Idle for a heartbeat: prove to proxies (and ourselves) the client is there.
                yield ": keepalive\n\n"
                last_write = now
    except GeneratorExit:
        reason = "client_gone"  # the server closed us: the client disconnected
        raise
    except (RedisError, ServiceError) as exc:
        reason = "redis_unavailable"
        log.warning("events_stream_interrupted", error=type(exc).__name__)
    finally:
        log.info(
            "events_stream_closed",
            user_id=str(credential.user_id),
            seconds=round(time.monotonic() - began, 1),
            events=sent,
            reason=reason,
        )
    yield f"retry: {random.randint(*_RECONNECT_MS)}\n\n"


def _once(callback: Callable[[], None]) -> Callable[[], None]:
    """`callback`, guarded to run at most once (close() may be called more than once)."""
    pending = threading.Lock()

    def run() -> None:
        if pending.acquire(blocking=False):  # atomic: only the first caller gets it
            callback()

    return run
