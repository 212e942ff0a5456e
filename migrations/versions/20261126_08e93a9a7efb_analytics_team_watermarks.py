"""analytics team watermarks: on-demand runs scoped to one team

Revision ID: 08e93a9a7efb
Revises: 3c515b41f7dc
Create Date: 2026-11-26 09:10:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '08e93a9a7efb'
down_revision: Union[str, Sequence[str], None] = '3c515b41f7dc'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('analytics_team_watermarks',
    sa.Column('team_id', sa.UUID(), nullable=False),
    sa.Column('xid', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_analytics_team_watermarks_team_id_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('team_id', name=op.f('pk_analytics_team_watermarks'))
    )
    # A team's run reads only its own new transactions.
    op.create_index('ix_analytics_events_team_xid', 'analytics_events', ['team_id', 'ingest_xid'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_analytics_events_team_xid', table_name='analytics_events')
    op.drop_table('analytics_team_watermarks')
