"""analytics rollups without a foreign key to teams: derived data, written in bulk

Revision ID: 5b8e0f3c2a71
Revises: d179a7733b03
Create Date: 2026-11-27 09:00:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '5b8e0f3c2a71'
down_revision: Union[str, Sequence[str], None] = 'd179a7733b03'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # Rollups are derived from rows that reference teams themselves (events, payments,
    # jobs, ...), and the aggregation writes hundreds of thousands at once: the per-row
    # check against teams was a fifth of the first full run (bench/RESULTS.md, B8).
    # Deleting a team deletes its rollups explicitly (services.insights.aggregation.
    # forget_team, in the deletion's transaction), and runs skip deleted teams.
    op.drop_constraint('fk_analytics_rollups_team_id_teams', 'analytics_rollups', type_='foreignkey')


def downgrade() -> None:
    """Downgrade schema."""
    # Rows of teams that no longer exist would make the constraint fail to validate.
    op.execute("""
        DELETE FROM analytics_rollups r
        WHERE NOT EXISTS (SELECT 1 FROM teams t WHERE t.id = r.team_id)
    """)
    op.create_foreign_key('fk_analytics_rollups_team_id_teams', 'analytics_rollups', 'teams', ['team_id'], ['id'], ondelete='CASCADE')
