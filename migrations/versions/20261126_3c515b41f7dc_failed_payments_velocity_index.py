"""failed payments velocity index

Revision ID: 3c515b41f7dc
Revises: 9c4d2e7a51b3
Create Date: 2026-11-26 09:00:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '3c515b41f7dc'
down_revision: Union[str, Sequence[str], None] = '9c4d2e7a51b3'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # The failed-payment velocity limit reads a team's recent failures.
    op.create_index('ix_payments_team_failed', 'payments', ['team_id', 'updated_at'], unique=False, postgresql_where=sa.text("status = 'failed'"))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_payments_team_failed', table_name='payments', postgresql_where=sa.text("status = 'failed'"))
