"""What the hostile-input tests send and check: a world with one of everything, the main
mutating route of each area with a body it accepts, and helpers that prove nothing was
written when a request is refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from extensions import db
from models import Base, User
from tests.factories import PASSWORD
from tests.support import problem_body

NOW = datetime.now(UTC).isoformat()  # events must be recent


@dataclass(frozen=True)
class World:
    """A team with one of everything the routes below act on, and its owner's headers."""

    user: User
    team_id: uuid.UUID
    item_id: uuid.UUID
    payment_id: uuid.UUID
    headers: Mapping[str, str]


# The main mutating route of each area, and a body it accepts.
ROUTES: dict[str, tuple[str, str]] = {
    "register": ("POST", "/api/v1/auth/register"),
    "api_key": ("POST", "/api/v1/auth/api-keys"),
    "team_create": ("POST", "/api/v1/teams"),
    "team_update": ("PATCH", "/api/v1/teams/{team}"),
    "invite": ("POST", "/api/v1/teams/{team}/invites"),
    "item_create": ("POST", "/api/v1/teams/{team}/inventory"),
    "item_update": ("PATCH", "/api/v1/teams/{team}/inventory/{item}"),
    "adjustment": ("POST", "/api/v1/teams/{team}/inventory/{item}/adjustments"),
    "payment": ("POST", "/api/v1/teams/{team}/payments"),
    "refund": ("POST", "/api/v1/teams/{team}/payments/{payment}/refunds"),
    "subscribe": ("POST", "/api/v1/teams/{team}/subscription"),
    "upload": ("POST", "/api/v1/teams/{team}/uploads"),
    "export": ("POST", "/api/v1/teams/{team}/exports"),
    "events": ("POST", "/api/v1/teams/{team}/analytics/events"),
    "preferences": ("PUT", "/api/v1/notifications/preferences"),
    "settings": ("PATCH", "/api/v1/me/settings"),
    "profile": ("PATCH", "/api/v1/me"),
}
VALID: dict[str, dict[str, Any]] = {
    "register": {"email": "new@example.com", "password": PASSWORD, "name": "New"},
    "api_key": {"name": "ci", "scopes": ["read"], "current_password": PASSWORD},
    "team_create": {"name": "Beta"},
    "team_update": {"name": "Renamed"},
    "invite": {"email": "friend@example.com", "role": "member"},
    "item_create": {"sku": "SKU-2", "name": "Gadget", "description": "Blue", "quantity": 3,
                    "unit_price": 250, "currency": "USD"},
    "item_update": {"name": "Widget 2", "description": "Red", "unit_price": 600},
    "adjustment": {"delta": -1, "reason": "sold"},
    "payment": {"amount": 1999, "currency": "USD", "description": "Order 1",
                "payment_method": "pm_card_visa"},
    "refund": {"amount": 100, "reason": "damaged"},
    "subscribe": {"plan": "pro", "payment_method": "pm_card_visa"},
    "upload": {"filename": "photo.png", "content_type": "image/png", "size": 1024},
    "export": {"resource": "inventory", "format": "csv"},
    "events": {"events": [{"name": "signup", "occurred_at": NOW}]},
    "preferences": {"preferences": {"inventory": {"email": False}}},
    "settings": {"settings": {"theme": "dark"}},
    "profile": {"name": "Renamed User"},
}  # fmt: skip
# (route, field) for every free-text field of the main create and update bodies.
TEXT_FIELDS = [
    ("register", "name"), ("register", "email"), ("api_key", "name"),
    ("team_create", "name"), ("team_update", "name"), ("invite", "email"),
    ("item_create", "sku"), ("item_create", "name"), ("item_create", "description"),
    ("item_update", "name"), ("item_update", "description"), ("adjustment", "reason"),
    ("payment", "description"), ("refund", "reason"), ("upload", "filename"),
    ("profile", "name"),
]  # fmt: skip


def send(
    client: FlaskClient,
    world: World,
    route: str,
    *,
    body: Any = None,
    raw: bytes | str | None = None,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> TestResponse:
    """One request to `route` as the team's owner (a fresh Idempotency-Key on a POST)."""
    method, template = ROUTES[route]
    path = template.format(team=world.team_id, item=world.item_id, payment=world.payment_id)
    all_headers = {**world.headers, **(headers or {})}
    if method == "POST":
        all_headers.setdefault("Idempotency-Key", str(uuid.uuid4()))
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return client.open(
        path, method=method, data=data, content_type=content_type, headers=all_headers, **kwargs
    )


def with_field(route: str, field: str, value: Any) -> dict[str, Any]:
    """The route's valid body with one field replaced (and a fresh SKU for a new item)."""
    body = {**VALID[route], field: value}
    if route == "item_create" and field != "sku":
        body["sku"] = f"SKU-{uuid.uuid4().hex[:8]}"
    return body


def table_counts() -> dict[str, int]:
    """The number of rows in every table, as committed right now."""
    db.session.rollback()
    tables = [t.name for t in Base.metadata.sorted_tables]
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
    return dict(db.session.execute(text(sql)).mappings().one())


@contextmanager
def nothing_written() -> Iterator[None]:
    before = table_counts()
    yield
    after = table_counts()
    assert after == before, {t: (before[t], after[t]) for t in before if before[t] != after[t]}


def refused(response: TestResponse, *statuses: int) -> dict[str, Any]:
    """A problem+json answer with one of `statuses`, small and without internals."""
    assert response.status_code in statuses, response.get_data(as_text=True)[:2000]
    body = problem_body(response, response.status_code)
    assert "Traceback" not in response.get_data(as_text=True)
    # No amplification: the answer to a huge request is not huge itself.
    assert len(response.get_data()) < 64 * 1024
    return body


def every_one_refused(
    cases: Iterable[Any], attempt: Callable[[Any], TestResponse], *statuses: int
) -> None:
    """Each case refused with one of `statuses` as problem+json, and nothing written by any:
    all are tried, so a failure lists every case that got through."""
    wrong: dict[str, str] = {}
    with nothing_written():
        for case in cases:
            response = attempt(case)
            try:
                refused(response, *statuses)
            except AssertionError:
                wrong[repr(case)[:80]] = response.get_data(as_text=True)[:300]
    assert wrong == {}
