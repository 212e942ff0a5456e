"""Who may do what in a team: the role x action table and the role-assignment rules.

This module is the single source of truth; `services.teams.teams.load_membership` enforces it
on every team-scoped route, and README.md's "Permissions" table is generated from it
(`markdown_table()`; a test keeps the two equal).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from models.team import ROLES

OWNER, ADMIN, MEMBER, VIEWER = ROLES


@dataclass(frozen=True, slots=True)
class Membership:
    """A caller's role in a live team, as the team guard found it (a plain value, not the
    `TeamMember` row: reading it costs one SELECT and no ORM identity)."""

    team_id: uuid.UUID
    user_id: uuid.UUID
    role: str


# action -> (the least powerful role allowed, what it lets you do). Roles are ordered,
# so a role may do everything the roles below it may.
PERMISSIONS: Final[dict[str, tuple[str, str]]] = {
    "team.read": (VIEWER, "see the team"),
    "team.update": (ADMIN, "rename the team"),
    "team.delete": (OWNER, "delete the team"),
    "dashboard.read": (VIEWER, "see the team's dashboard"),
    "members.read": (VIEWER, "list the members and their roles"),
    "members.update_role": (ADMIN, "change a member's role"),
    "members.remove": (ADMIN, "remove another member"),
    "members.leave": (VIEWER, "leave the team"),
    "invites.read": (ADMIN, "list pending invitations"),
    "invites.create": (ADMIN, "invite people by email, resend an invitation"),
    "invites.revoke": (ADMIN, "revoke an invitation"),
    "ownership.transfer": (OWNER, "hand ownership to another member"),
    "audit.read": (ADMIN, "read and verify the team's audit log"),
    "payments.read": (MEMBER, "list and see payments and refunds"),
    "payments.create": (MEMBER, "take a payment"),
    "payments.refund": (ADMIN, "refund a payment"),
    "subscription.read": (MEMBER, "see the team's plan and subscription"),
    "subscription.manage": (ADMIN, "subscribe, change plan, cancel or resume"),
    "files.read": (VIEWER, "list and download the team's files"),
    "files.upload": (MEMBER, "upload files"),
    "files.delete": (ADMIN, "delete any file (members may delete their own)"),
    "exports.create": (MEMBER, "export data they may read"),
    "exports.read": (MEMBER, "list and download exports"),
    "inventory.read": (VIEWER, "see stock items and their adjustments"),
    "inventory.write": (MEMBER, "create and edit items, adjust stock"),
    "inventory.delete": (ADMIN, "delete stock items"),
    "analytics.ingest": (MEMBER, "send analytics events (API keys with the ingest scope too)"),
    "analytics.read": (MEMBER, "read metrics (events and built-ins, revenue included)"),
    "analytics.aggregate": (ADMIN, "aggregate now, rebuild a window of rollups"),
}


def rank(role: str) -> int:
    """0 for the most powerful role (owner); larger is weaker."""
    return ROLES.index(role)


def allows(role: str, action: str) -> bool:
    """Whether `role` may perform `action` (unknown actions are never allowed)."""
    entry = PERMISSIONS.get(action)
    return entry is not None and rank(role) <= rank(entry[0])


def describe(action: str) -> str:
    return PERMISSIONS[action][1]


def assignment_refusal(actor_role: str, new_role: str) -> str | None:
    """Why `actor_role` may not hand out `new_role` (to a member or an invitee), or None."""
    if rank(new_role) < rank(actor_role):
        return f"You cannot give a role above your own ({actor_role})."
    return None


def role_change_refusal(actor_role: str, current_role: str, new_role: str) -> str | None:
    """Why `actor_role` may not move a member from `current_role` to `new_role`, or None.

    (Ownership of the last owner is a conflict with the team's state, checked by the
    service under the team's lock, not a permission.)
    """
    refusal = assignment_refusal(actor_role, new_role)
    if refusal:
        return refusal
    if current_role == OWNER and actor_role != OWNER:
        return "Only an owner can change or remove an owner."
    return None


def removal_refusal(actor_role: str, target_role: str) -> str | None:
    """Why `actor_role` may not remove a member holding `target_role`, or None."""
    if target_role == OWNER and actor_role != OWNER:
        return "Only an owner can change or remove an owner."
    return None


def markdown_table() -> str:
    """The permission table as Markdown (README.md "Permissions" embeds it verbatim)."""
    header = "| action | lets you | " + " | ".join(ROLES) + " |"
    rule = "|---|---|" + "---|" * len(ROLES)
    rows = [
        f"| `{action}` | {text} | "
        + " | ".join("yes" if allows(role, action) else "-" for role in ROLES)
        + " |"
        for action, (_, text) in PERMISSIONS.items()
    ]
    return "\n".join([header, rule, *rows])
