"""HTTP for team-wide search (API.md "search")."""

from __future__ import annotations

import uuid

from apiflask import APIBlueprint

from blueprints.common.teams import current_membership, team_permission
from blueprints.search.schemas import SearchHitOut, SearchPage, SearchQuery
from services.insights import search

bp = APIBlueprint("search", __name__, url_prefix="/api/v1/teams", tag="search")


@bp.get("/<uuid:team_id>/search")
@team_permission("team.read")
@bp.input(SearchQuery, location="query", arg_name="query")
@bp.output(SearchPage)
def search_team(team_id: uuid.UUID, query: SearchQuery) -> SearchPage:
    """Find the team's items, members, files and payments (only the kinds you may read);
    an exact title match comes first, then the best ranked."""
    hits = search.search(current_membership(), query.q, query.type, query.limit)
    return SearchPage(
        items=[
            SearchHitOut(type=h.type, id=h.id, title=h.title, snippet=h.snippet, rank=h.rank)
            for h in hits
        ],
        next_cursor=None,
    )
