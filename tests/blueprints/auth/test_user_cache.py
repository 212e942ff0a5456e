"""The token's user row, cached per process for USER_CACHE_SECONDS: no SELECT per request,
yet a change to the account is seen by the very next request, in this process and in others
(the user's generation key in Redis, read with the token's revocation check)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select

from blueprints.common.ratelimits import limiter
from extensions import db
from models import User
from services.identity import accounts
from tests.factories import auth_headers, make_user
from tests.support import problem_body


@pytest.fixture
def user_selects() -> Iterator[list[str]]:
    """The SQL statements that read the users table, as they run."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM users" in statement:
            seen.append(statement)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _get(client: FlaskClient, path: str, headers: Any) -> Any:
    db.session.expunge_all()  # as in production: each request starts with an empty session
    return client.get(path, headers=headers)


def test_the_user_row_is_read_once_then_served_from_the_cache(
    client: FlaskClient, user_selects: list[str]
) -> None:
    headers = dict(auth_headers(make_user(name="Cached Carol")))
    user_selects.clear()
    assert _get(client, "/api/v1/jobs", headers).status_code == 200
    assert len(user_selects) == 1  # the token's user, read once
    for _ in range(3):
        assert _get(client, "/api/v1/jobs", headers).status_code == 200
    me = _get(client, "/api/v1/me", headers)
    assert me.status_code == 200 and "Cached Carol" in me.get_data(as_text=True)
    assert len(user_selects) == 1, user_selects[-1]  # never again while cached


def test_a_change_through_the_cached_user_is_saved_and_seen(client: FlaskClient) -> None:
    headers = dict(auth_headers(make_user(name="Before")))
    assert _get(client, "/api/v1/jobs", headers).status_code == 200  # now cached
    db.session.expunge_all()
    patched = client.patch("/api/v1/me", headers=headers, json={"name": "After"})
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert "After" in _get(client, "/api/v1/me", headers).get_data(as_text=True)
    db.session.expunge_all()
    assert db.session.scalar(select(User.name).where(User.name == "After")) == "After"


def test_a_deactivation_elsewhere_is_seen_by_the_next_request_here(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process deactivates the account: this process still holds the row in its
    cache (restored below), and only the generation key in Redis tells it."""
    user = make_user()
    headers = dict(auth_headers(user))
    assert _get(client, "/api/v1/jobs", headers).status_code == 200
    held = copy.deepcopy(accounts._cache)
    assert user.id in held

    target = db.session.get(User, user.id)
    assert target is not None
    target.is_active = False
    db.session.commit()
    accounts._cache.update(held)  # this process never saw the commit

    body = problem_body(_get(client, "/api/v1/jobs", headers), 401)
    assert "not active" in body["detail"]
    # And with the limiter off (the guard reads the generation on its own).
    accounts._cache.update(held)
    monkeypatch.setattr(limiter, "enabled", False)
    problem_body(_get(client, "/api/v1/jobs", headers), 401)


def test_an_operator_demoted_elsewhere_loses_operator_routes_at_once(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    headers = dict(auth_headers(admin))
    assert _get(client, "/api/v1/admin/jobs", headers).status_code == 200
    held = copy.deepcopy(accounts._cache)

    target = db.session.get(User, admin.id)
    assert target is not None
    target.is_admin = False
    db.session.commit()
    accounts._cache.update(held)

    problem_body(_get(client, "/api/v1/admin/jobs", headers), 403)


def test_a_read_requests_cached_user_opens_no_transaction_yet_a_change_to_it_is_saved(
    app: Any, client: FlaskClient
) -> None:
    user = make_user(name="Reader")
    headers = dict(auth_headers(user))
    assert _get(client, "/api/v1/jobs", headers).status_code == 200  # now cached
    with app.test_request_context("/api/v1/me", method="GET"):
        db.session.remove()  # as in production: each request starts with a new session
        reader = accounts.load_active_user(str(user.id), attach=False)
        assert reader is not None and reader.name == "Reader"
        assert reader not in db.session
        assert not db.session().in_transaction()  # nothing to BEGIN, nothing to roll back
        reader.name = "Changed on a read"  # whatever a view does with it is never lost
        db.session.commit()
    db.session.expunge_all()
    assert db.session.scalar(select(User.name).where(User.id == user.id)) == "Changed on a read"
