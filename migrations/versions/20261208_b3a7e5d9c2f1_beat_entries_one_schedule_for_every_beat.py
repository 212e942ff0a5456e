"""beat entries: one schedule for every beat, each period claimed once

The schedule's last-run times lived in a shelve file on each beat's host, so a standby
that took over counted from its own start and re-sent crontab entries its predecessor
had already sent. Now every beat reads and claims here: one row per schedule entry, with
the latest period sent (it only moves forward) and the job that carries it.

Revision ID: b3a7e5d9c2f1
Revises: 5a0de1c2b7f4
Create Date: 2026-12-08 09:00:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'b3a7e5d9c2f1'
down_revision: Union[str, Sequence[str], None] = '5a0de1c2b7f4'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('beat_entries',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('task', sa.String(length=100), nullable=False),
    sa.Column('last_period', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_by', sa.String(length=255), nullable=True),
    sa.Column('job_id', sa.UUID(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_beat_entries_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_beat_entries'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('beat_entries')
