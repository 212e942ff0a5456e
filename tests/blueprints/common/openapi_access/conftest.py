"""Fixtures of the OpenAPI access tests: the documented operations, the crowd of callers
(kept across tests), and isolation that keeps the crowd.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apiflask import APIFlask

from blueprints.common.ratelimits import limiter
from extensions import db
from tests.blueprints.common.openapi_access.world import Crowd, make_crowd
from tests.support import truncate_all_tables


@pytest.fixture(scope="module")
def crowd(app: APIFlask) -> Iterator[Crowd]:
    with app.app_context():
        made = make_crowd()
    yield made
    with app.app_context():
        truncate_all_tables()
        limiter.reset()


@pytest.fixture(autouse=True)
def _isolated(app: APIFlask) -> Iterator[None]:
    """Replaces conftest's `_isolated`, whose emptying of every table after each test
    would be most of this module's time: each operation builds a team and objects of its
    own, so what one leaves behind cannot change another's answers. `crowd` empties the
    tables once, after the module."""
    with app.app_context():
        yield
        db.session.remove()
