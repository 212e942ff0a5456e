"""forget deleted members in search: drop member documents whose membership is gone

Revision ID: d179a7733b03
Revises: 08e93a9a7efb
Create Date: 2026-11-26 09:20:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'd179a7733b03'
down_revision: Union[str, Sequence[str], None] = '08e93a9a7efb'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade data."""
    # Left behind by account deletions before the deletion job removed them: names and
    # emails that no search may find any more (searches hide them anyway).
    op.execute("""
        DELETE FROM search_index s
        WHERE s.subject_type = 'member'
          AND NOT EXISTS (SELECT 1 FROM team_members m WHERE m.id = s.subject_id)
    """)


def downgrade() -> None:
    """Nothing to restore: the documents described memberships that no longer exist."""
