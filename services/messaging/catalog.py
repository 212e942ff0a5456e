"""What users can be notified about: categories with their defaults, and the text of
each kind of notification (short Jinja templates rendered when the row is written)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, StrictUndefined
from jinja2 import Template as JinjaTemplate


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    email_default: bool
    mandatory: bool = False  # security notices: cannot be switched off


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category(
            "security",
            "Sign-ins, password changes, new API keys and suspicious activity",
            True,
            True,
        ),
        Category("invites", "Invitations to join a team", True),
        Category("team", "Changes to your teams and your role in them", True),
        Category("payments", "Payments you make", True),
        Category("billing", "Subscription and billing problems", True),
        Category("jobs", "Background work: exports ready, jobs that failed for good", False),
        Category("operations", "Notices from the operators", True),
        Category("inventory", "Stock running low", True),
        # Opt-in: a daily email per team is too much to switch on for every admin.
        Category("reports", "Daily and weekly team reports (owners and admins)", False),
    )
}


@dataclass(frozen=True)
class Template:
    category: str
    title: str
    body: str
    link: str = ""  # a path in the frontend, e.g. /teams/{{ team_id }}


TEMPLATES: dict[str, Template] = {
    "invite_received": Template(
        "invites",
        "You're invited to {{ team }}",
        "{{ inviter }} invited you to join {{ team }} as {{ role }}. The link is in your email.",
        "/invites",
    ),
    "role_changed": Template(
        "team",
        "Your role in {{ team }} changed",
        "You are now {{ role }} in {{ team }} (was {{ previous }}).",
        "/teams/{{ team_id }}",
    ),
    "payment_succeeded": Template(
        "payments",
        "Payment of {{ amount }} succeeded",
        "{{ description }} was paid. A receipt is in your email.",
        "/teams/{{ team_id }}/payments/{{ payment_id }}",
    ),
    "payment_failed": Template(
        "payments",
        "Payment of {{ amount }} failed",
        "{{ description }} could not be charged: {{ reason }}.",
        "/teams/{{ team_id }}/payments/{{ payment_id }}",
    ),
    "subscription_past_due": Template(
        "billing",
        "Payment for {{ team }} is past due",
        "The last charge for the {{ plan }} plan failed. Update the card to keep the plan.",
        "/teams/{{ team_id }}/billing",
    ),
    "job_failed": Template(
        "jobs",
        "A background job failed",
        "{{ job_type }} stopped after {{ attempts }} attempts: {{ error }}",
        "/jobs/{{ job_id }}",
    ),
    "export_ready": Template(
        "jobs",
        "Your {{ resource }} export is ready",
        "{{ rows }} rows as {{ format }}. Download it before {{ expires }}.",
        "{{ download }}",
    ),
    "password_changed": Template(
        "security",
        "Your password was changed",
        "Your password was changed and your other sessions were signed out. Not you? Reset it now.",
        "/settings/security",
    ),
    "new_login": Template(
        "security",
        "New sign-in to your account",
        "A new sign-in from {{ device }} ({{ ip }}). Not you? Change your password.",
        "/settings/security",
    ),
    "token_reuse": Template(
        "security",
        "A sign-in was revoked for your safety",
        "An old session token was used again, so that session was signed out everywhere.",
        "/settings/security",
    ),
    "api_key_created": Template(
        "security",
        "A new API key was created",
        'The API key "{{ name }}" (mk_{{ prefix }}_..., scopes: {{ scopes }}) was created on '
        "your account. Not you? Revoke it and reset your password now.",
        "/settings/security",
    ),
    "operator_notice": Template("operations", "{{ title }}", "{{ body }}", "/"),
    "inventory_low_stock": Template(
        "inventory",
        "{{ sku }} is running low",
        "{{ name }} is down to {{ quantity }} (low-stock threshold {{ threshold }}).",
        "/teams/{{ team_id }}/inventory/{{ item_id }}",
    ),
}

_env = Environment(undefined=StrictUndefined, autoescape=False)  # noqa: S701 - plain text


def render(template: str, data: dict[str, Any]) -> tuple[str, str, str]:
    """(title, body, link) of a notification; KeyError for an unknown template."""
    spec = TEMPLATES[template]
    return tuple(  # type: ignore[return-value]
        " ".join(_compiled(part).render(data).split())
        for part in (spec.title, spec.body, spec.link)
    )


@functools.cache
def _compiled(source: str) -> JinjaTemplate:
    """Each catalog text compiled once per process (compiling cost more than the rest
    of writing a notification). The catalog is fixed, so the cache is bounded."""
    return _env.from_string(source)
