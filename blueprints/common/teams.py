"""The guard of every `/api/v1/teams/<team_id>/...` route: `@team_permission("action")`.

It authenticates the caller (401), then asks `services.teams.teams.load_membership` whether
their role in the team allows the action (404 for non-members and deleted teams, 403 for
a weaker role), before the body is even validated. Order on a view: route, this guard,
rate limit, input, idempotent, output.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g

from blueprints.common.auth import auth_required, me
from services.core import permissions
from services.core.permissions import Membership
from services.teams.teams import load_membership

F = TypeVar("F", bound=Callable[..., Any])


def team_permission(
    action: str, *, on_self: str | None = None, scope: str | None = None
) -> Callable[[F], F]:
    """Require the caller's role in `team_id` to allow `action`.

    `on_self`: the action required instead when the route's `user_id` is the caller
    (removing yourself is leaving, which every member may do).
    `scope`: the API-key scope the route needs instead of read/write (e.g. `ingest`).
    """
    for name in (action, on_self):
        if name is not None and name not in permissions.PERMISSIONS:
            raise ValueError(f"unknown team action {name!r}")  # a typo must fail at import

    def decorator(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            user = me()
            needed = on_self if on_self and kwargs.get("user_id") == user.id else action
            g.team_membership = load_membership(user, kwargs["team_id"], needed)
            return view(*args, **kwargs)

        # Read by the access-matrix test, which checks every team route against the table.
        guarded.team_actions = (action, on_self)  # type: ignore[attr-defined]
        return auth_required(scope=scope)(cast(F, guarded))

    return decorator


def current_membership() -> Membership:
    """The caller's membership of the route's team (inside a `team_permission` view)."""
    return cast(Membership, g.team_membership)
