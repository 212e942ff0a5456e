"""Writing notification rows: ONE statement per chunk of recipients.

It picks the recipients (a team's members, every active user, or given ids), applies each
one's preferences for the category, inserts the rows that do not exist yet (unique per
recipient and event key: a rerun inserts nothing) and returns every recipient with its
preferences and its new row's id, if one was inserted. A one-notification job used to
run three statements for this (audience, preferences, insert): on this machine each
costs more in the round trip and its Python than in the database.

The preference rule here is the bulk form of `notifications.preferences`: in-app on unless
switched off; email as chosen, else the category's default, as a daily digest if asked;
mandatory categories (security) ignore both.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import (
    Boolean,
    Integer,
    Select,
    String,
    Table,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    false,
    func,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert

from extensions import db
from models import Notification, NotificationPreference, TeamMember, User
from services.messaging.catalog import CATEGORIES

Source = Literal["ids", "team", "team_roles", "all"]
EmailMode = Literal["now", "digest", "off"]


@dataclass(frozen=True)
class Recipient:
    user_id: uuid.UUID
    in_app: bool
    email: EmailMode
    new_id: uuid.UUID | None  # the row inserted now; None if it existed already


def write(
    source: Source, params: dict[str, Any], *, category: str, event_key: str,
    team_id: uuid.UUID | None, title: str, body: str, data: dict[str, Any], email: bool,
) -> list[Recipient]:  # fmt: skip
    """Insert the rows of one chunk of `source` (in the caller's transaction); every
    recipient of the chunk, in id order. `params`: the source's (`user_ids`; `team_id`,
    `after`, `limit`, `roles`; `after`, `limit`). `email=False`: no digest flag (the
    caller mails the event itself)."""
    spec = CATEGORIES[category]
    values = {
        **params, "category": category, "mandatory": spec.mandatory,
        "email_default": spec.email_default, "digest_allowed": email, "row_team_id": team_id,
        "event_key": event_key, "title": title[:300], "body": body, "data": data,
    }  # fmt: skip
    rows = db.session.connection().execute(_statement(source), values)
    return [Recipient(r.user_id, r.in_app, cast(EmailMode, r.email), r.id) for r in rows]


def _source(source: Source) -> Select[uuid.UUID]:
    """The recipients of one chunk, as a one-column select `user_id`."""
    if source == "ids":
        ids = (
            func.unnest(bindparam("user_ids", type_=ARRAY(Uuid())))
            .table_valued("user_id")
            .render_derived("ids")
        )
        return select(ids.c.user_id)
    after, limit = bindparam("after", type_=Uuid()), bindparam("limit", type_=Integer())
    if source == "all":
        return (
            select(User.id.label("user_id"))
            .where(User.is_active.is_(True), User.deleted_at.is_(None), User.id > after)
            .order_by(User.id).limit(limit)
        )  # fmt: skip
    members = select(TeamMember.user_id).where(
        TeamMember.team_id == bindparam("team_id", type_=Uuid()), TeamMember.user_id > after
    )
    if source == "team_roles":
        members = members.where(TeamMember.role == any_(bindparam("roles", type_=ARRAY(String()))))
    return members.order_by(TeamMember.user_id).limit(limit)


@functools.cache
def _statement(source: Source) -> Select[Any]:
    """Built once per source (building and compiling it costs more than running it)."""
    audience = _source(source).subquery("audience")
    prefs = cast(Table, NotificationPreference.__table__)
    in_app_pref, email_pref = prefs.alias("in_app_pref"), prefs.alias("email_pref")
    category = bindparam("category", type_=String())
    mandatory = bindparam("mandatory", type_=Boolean())

    def preference(alias: Any, channel: str) -> Any:
        return and_(alias.c.user_id == audience.c.user_id, alias.c.category == category,
                    alias.c.channel == channel)  # fmt: skip

    wants_email = or_(
        mandatory, func.coalesce(email_pref.c.enabled, bindparam("email_default", type_=Boolean()))
    )
    recipient = (
        select(
            audience.c.user_id,
            or_(mandatory, func.coalesce(in_app_pref.c.enabled, true())).label("in_app"),
            case(
                (not_(wants_email), "off"),
                (and_(not_(mandatory), func.coalesce(email_pref.c.digest, false())), "digest"),
                else_="now",
            ).label("email"),
        )
        .select_from(
            audience.outerjoin(in_app_pref, preference(in_app_pref, "in_app")).outerjoin(
                email_pref, preference(email_pref, "email")
            )
        )
        .cte("recipient")
    )
    table = cast(Table, Notification.__table__)
    columns = table.c
    # A user who switched in-app off still gets the row (it backs the email), read.
    rows = select(
        func.gen_random_uuid(),
        recipient.c.user_id,
        bindparam("row_team_id", type_=columns.team_id.type),
        category,
        bindparam("event_key", type_=columns.event_key.type),
        bindparam("title", type_=columns.title.type),
        bindparam("body", type_=columns.body.type),
        bindparam("data", type_=columns.data.type),
        and_(bindparam("digest_allowed", type_=Boolean()), recipient.c.email == "digest"),
        case((recipient.c.in_app, null()), else_=func.now()),
    )
    names = ["id", "user_id", "team_id", "category", "event_key", "title", "body", "data",
             "digest_pending", "read_at"]  # fmt: skip
    written = (
        insert(table)
        .from_select(names, rows)
        .on_conflict_do_nothing(index_elements=["user_id", "event_key"])
        .returning(columns.id, columns.user_id)
        .cte("written")
    )
    return (
        select(recipient.c.user_id, recipient.c.in_app, recipient.c.email, written.c.id)
        .select_from(recipient.outerjoin(written, written.c.user_id == recipient.c.user_id))
        .order_by(recipient.c.user_id)
    )
