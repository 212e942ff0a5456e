"""The plans a team can be on, and what each allows: one typed table, read by everything.

`free` has no gateway subscription: a team without a live paid subscription is on it. A
paid plan names its recurring plan at the gateway (`gateway_plan_id`), which
`ensure_gateway_plan` creates on first use. Gateway plans cannot change their price, so
a new price means a new `gateway_plan_id` (bump its `-vN`); subscribers on the old id keep
mapping to the plan through `previous_gateway_plan_ids`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Final, Literal

from sqlalchemy import func, select

from extensions import db
from integrations.payments import PaymentGateway
from models import Subscription, TeamInvite, TeamMember
from services.core.errors import Conflict, ValidationFailed

FREE = "free"
# Subscription states in which the team gets what it pays for. `past_due` keeps the plan
# while the gateway retries the card (dunning); `incomplete` (first payment not through)
# and `unpaid` (retries exhausted) fall back to the free plan.
PAID_STATES: Final = frozenset({"trialing", "active", "past_due"})


@dataclass(frozen=True)
class Limits:
    seats: int  # members plus pending invitations


@dataclass(frozen=True)
class Plan:
    name: str
    display_name: str
    amount: int  # per interval, in minor units of `currency`
    currency: str  # ISO-4217, upper case
    interval: Literal["month", "year"]
    limits: Limits
    gateway_plan_id: str | None = None  # None: not billed through the gateway
    previous_gateway_plan_ids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_paid(self) -> bool:
        return self.gateway_plan_id is not None


PLANS: Final[dict[str, Plan]] = {
    plan.name: plan
    for plan in (
        Plan("free", "Free", 0, "USD", "month", Limits(seats=3)),
        Plan(
            "pro", "Pro", 1_900, "USD", "month", Limits(seats=10),
            gateway_plan_id="maycole-pro-monthly-usd-v1",
        ),
        Plan(
            "business", "Business", 9_900, "USD", "month", Limits(seats=50),
            gateway_plan_id="maycole-business-monthly-usd-v1",
        ),
        # Yearly billing: two months free.
        Plan(
            "pro_yearly", "Pro (yearly)", 19_000, "USD", "year", Limits(seats=10),
            gateway_plan_id="maycole-pro-yearly-usd-v1",
        ),
        Plan(
            "business_yearly", "Business (yearly)", 99_000, "USD", "year", Limits(seats=50),
            gateway_plan_id="maycole-business-yearly-usd-v1",
        ),
    )
}  # fmt: skip


def list_plans() -> list[Plan]:
    """Every plan: monthly ones first, each group cheapest first."""
    return sorted(PLANS.values(), key=lambda plan: (plan.interval != "month", plan.amount))


def get_plan(name: str) -> Plan:
    """The plan called `name`; 422 for an unknown name."""
    plan = PLANS.get(name)
    if plan is None:
        raise ValidationFailed(
            f"There is no plan called {name!r}.",
            errors={"plan": [f"Choose one of: {', '.join(PLANS)}."]},
        )
    return plan


def paid_plan(name: str) -> Plan:
    """A plan that is billed through the gateway; 422 for `free` or an unknown name."""
    plan = get_plan(name)
    if not plan.is_paid:
        raise ValidationFailed(
            "The free plan needs no subscription; cancel the subscription to return to it.",
            errors={"plan": ["Choose a paid plan."]},
        )
    return plan


def plan_for_gateway_id(gateway_plan_id: str) -> Plan | None:
    """Our plan behind a gateway plan id (current or previous), or None if unknown."""
    for plan in PLANS.values():
        if gateway_plan_id == plan.gateway_plan_id or (
            gateway_plan_id in plan.previous_gateway_plan_ids
        ):
            return plan
    return None


def ensure_gateway_plan(gateway: PaymentGateway, plan: Plan) -> str:
    """Create the plan at the gateway if it is not there yet; returns the gateway's id."""
    assert plan.gateway_plan_id is not None, "the free plan is not billed"
    return gateway.ensure_plan(
        plan_id=plan.gateway_plan_id,
        name=f"Maycole {plan.display_name}",
        amount=plan.amount,
        currency=plan.currency,
        interval=plan.interval,
    )


def live_subscription(team_id: uuid.UUID) -> Subscription | None:
    """The team's subscription that is not over (at most one, by a unique index)."""
    return db.session.scalar(
        select(Subscription).where(
            Subscription.team_id == team_id, Subscription.status != "canceled"
        )
    )


def effective_plan(team_id: uuid.UUID) -> Plan:
    """The plan whose limits apply to the team right now."""
    subscription = live_subscription(team_id)
    if subscription is None or subscription.status not in PAID_STATES:
        return PLANS[FREE]
    return PLANS.get(subscription.plan, PLANS[FREE])


def seats_used(team_id: uuid.UUID) -> int:
    """Members plus pending (open, unexpired) invitations: each holds a seat.

    An expired invitation holds none; resending it revives it, so that checks again.
    """
    pending = (
        select(func.count())
        .select_from(TeamInvite)
        .where(
            TeamInvite.team_id == team_id,
            TeamInvite.accepted_at.is_(None),
            TeamInvite.revoked_at.is_(None),
            TeamInvite.expires_at > func.now(),
        )
    )
    return member_count(team_id) + int(db.session.scalar(pending) or 0)


def member_count(team_id: uuid.UUID) -> int:
    """How many members the team has."""
    count = db.session.scalar(
        select(func.count()).select_from(TeamMember).where(TeamMember.team_id == team_id)
    )
    return int(count or 0)


class PlanLimitReached(Conflict):
    type_slug = "plan-limit-reached"


def require_seat_for_invite(team_id: uuid.UUID) -> None:
    """409 unless the team's plan has a seat for one more invitation (under the team lock)."""
    plan = effective_plan(team_id)
    if seats_used(team_id) >= plan.limits.seats:
        raise PlanLimitReached(
            f"Your plan allows {plan.limits.seats} members; upgrade to invite more.",
            extra={"plan": plan.name, "seats": plan.limits.seats},
        )


def require_seat_for_member(team_id: uuid.UUID) -> None:
    """409 when the team's members already fill its plan (accepting an invitation).

    Only members count here: the invitation being accepted reserved its seat when it was
    sent, so this bites only when the plan shrank since (a downgrade or a lapsed payment).
    """
    plan = effective_plan(team_id)
    if member_count(team_id) >= plan.limits.seats:
        raise PlanLimitReached(
            f"This team's plan allows {plan.limits.seats} members and they are all taken; "
            "ask an admin of the team to upgrade.",
            extra={"plan": plan.name, "seats": plan.limits.seats},
        )
