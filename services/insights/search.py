"""Team-wide full-text search over one `search_index` row per searchable resource.

The owning services keep the index current by calling `index_document` /
`remove_document` INSIDE their own transaction, before their commit: for one row this is
cheap, and the index can never disagree with a committed change (no lost task, no window
where a deleted item is still found). `search` only ever reads the caller's team and only
the types their role may read, and finds a member only while the membership exists and
the account is active and not deleted (a document left behind by any path stays hidden).
It reads the read replica when there is one (DATABASE_REPLICA_URL): a change shows up in
results once the replica has it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from sqlalchemy import (
    Exists,
    Float,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert

from extensions import db
from models import TeamMember, User
from models.search import SearchDocument
from services.core import permissions
from services.core.errors import ValidationFailed
from services.core.permissions import Membership

MEMBER = "member"
# subject_type -> the permission needed to find it.
TYPES: dict[str, str] = {
    "inventory": "inventory.read",
    MEMBER: "members.read",
    "file": "files.read",
    "payment": "payments.read",
}
HEADLINE_OPTIONS = "StartSel=«, StopSel=», MaxFragments=1"
MAX_TERMS = 16
_WORD = re.compile(r"[^\W_]+")  # [[:alnum:]]+ (Unicode letters and digits)


@dataclass(frozen=True)
class Hit:
    type: str
    id: uuid.UUID
    title: str
    snippet: str
    rank: float


def index_document(
    team_id: uuid.UUID, subject_type: str, subject_id: uuid.UUID, title: str, body: str | None
) -> None:
    """Insert or replace a resource's search document, in the caller's transaction."""
    title = title[:300]
    document = func.setweight(func.to_tsvector("simple", title), literal_column("'A'")).op("||")(
        func.setweight(func.to_tsvector("simple", func.coalesce(body, "")), literal_column("'B'"))
    )
    statement = insert(SearchDocument).values(
        id=uuid.uuid4(), team_id=team_id, subject_type=subject_type, subject_id=subject_id,
        title=title, body=body, document=document,
    )  # fmt: skip
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=["subject_type", "subject_id"],
            set_={
                "team_id": statement.excluded.team_id,
                "title": statement.excluded.title,
                "body": statement.excluded.body,
                "document": statement.excluded.document,
                "updated_at": func.now(),
            },
        )
    )


def remove_document(subject_type: str, subject_id: uuid.UUID) -> None:
    """Drop a resource's search document (nothing to drop is fine), in the caller's transaction."""
    db.session.execute(
        delete(SearchDocument).where(
            SearchDocument.subject_type == subject_type, SearchDocument.subject_id == subject_id
        )
    )


def prefix_query(q: str) -> str:
    """`blue wid` -> `blue:* & wid:*` (only letters and digits survive; empty is 422)."""
    words = [w.lower() for w in _WORD.findall(q)][:MAX_TERMS]
    if not words:
        raise ValidationFailed(
            "Search for at least one word.", errors={"q": ["Needs a letter or a digit."]}
        )
    return " & ".join(f"{w}:*" for w in words)


def _a_current_member() -> Exists:
    """The member document's membership still exists and its account is in use: someone
    who left, was removed or deleted their account (or asked to) is not found by name or
    email, whatever document was left behind."""
    return exists(
        select(1)
        .select_from(TeamMember)
        .join(User, User.id == TeamMember.user_id)
        .where(
            TeamMember.id == SearchDocument.subject_id,
            TeamMember.team_id == SearchDocument.team_id,
            User.is_active.is_(True),
            User.deleted_at.is_(None),
        )
    )


def readable_types(role: str) -> list[str]:
    return [t for t, action in TYPES.items() if permissions.allows(role, action)]


def search(membership: Membership, q: str, type: str | None, limit: int) -> list[Hit]:
    """The best `limit` matches in the member's team: an exact (case-insensitive) title
    match first, then by `ts_rank_cd`; each with a «highlighted» snippet."""
    tsquery = func.to_tsquery("simple", prefix_query(q))
    types = readable_types(membership.role)
    if type is not None:
        types = [t for t in types if t == type]
    if not types:
        return []
    exact = " ".join(q.split()).lower()
    rank = cast(func.ts_rank_cd(SearchDocument.document, tsquery), Float)
    text = SearchDocument.title.op("||")(literal("\n")).op("||")(
        func.coalesce(SearchDocument.body, "")
    )
    snippet = func.ts_headline("simple", text, tsquery, HEADLINE_OPTIONS)
    statement = (
        select(
            SearchDocument.subject_type,
            SearchDocument.subject_id,
            SearchDocument.title,
            snippet.label("snippet"),
            rank.label("rank"),
        )
        .where(
            SearchDocument.team_id == membership.team_id,
            SearchDocument.subject_type.in_(types),
            SearchDocument.document.op("@@")(tsquery),
            or_(SearchDocument.subject_type != MEMBER, _a_current_member()),
        )
        .order_by(
            case((func.lower(SearchDocument.title) == exact, 0), else_=1),
            rank.desc(),
            SearchDocument.title,
            SearchDocument.subject_id,
        )
        .limit(limit)
    )
    with db.replica_reads():
        rows = db.session.execute(statement).all()
    return [
        Hit(type=r.subject_type, id=r.subject_id, title=r.title, snippet=r.snippet, rank=r.rank)
        for r in rows
    ]
