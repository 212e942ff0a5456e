"""audit rows chained by a sealer: insert signed, link into the chain within seconds

A request used to append its audit row to the team's chain itself: an advisory lock held
until its commit, the head read, the row, the head moved (four round trips, and one
team's writes queued on the lock). Now it inserts the row signed but unchained
(`entry_mac`, keyed like the chain, unique), and the sealer (services/core/audit_chain.py) links
pending rows into their chains in the order it finds them, numbering each (`chain_seq`),
and moves the sealed head. The trigger lets a row be updated exactly once, from pending
to chained, with its content unchanged; every other UPDATE and every DELETE is refused
as before.

Existing rows were chained in id order: their `chain_seq` is their rank by id in their
chain. Downgrading requires every row to be chained.

Revision ID: 5a0de1c2b7f4
Revises: 5b8e0f3c2a71
Create Date: 2026-12-07 15:10:00.000000+00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '5a0de1c2b7f4'
down_revision: Union[str, Sequence[str], None] = '5b8e0f3c2a71'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# A row may change once: from pending (no hash) to chained (hash, link and place set),
# with everything it says unchanged. Anything else is refused, for every role.
_ONE_WAY_SEAL = """
CREATE OR REPLACE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
            AND NEW.chain_seq IS NOT NULL
            AND (NEW.id, NEW.team_id, NEW.actor_user_id, NEW.action, NEW.subject_type,
                 NEW.subject_id, NEW.data, NEW.ip, NEW.user_agent, NEW.request_id,
                 NEW.created_at, NEW.key_id, NEW.entry_mac)
                IS NOT DISTINCT FROM
                (OLD.id, OLD.team_id, OLD.actor_user_id, OLD.action, OLD.subject_type,
                 OLD.subject_id, OLD.data, OLD.ip, OLD.user_agent, OLD.request_id,
                 OLD.created_at, OLD.key_id, OLD.entry_mac) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_logs is append-only: % of audit row % refused', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or deleted (users are anonymised and '
                     'teams soft-deleted instead); only the sealer chains a pending row.';
END $$;
"""

_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % of audit row % refused', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or deleted (users are anonymised and '
                     'teams soft-deleted instead).';
END $$;
"""


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('audit_logs', sa.Column('entry_mac', sa.String(length=64), nullable=True))
    op.add_column('audit_logs', sa.Column('chain_seq', sa.BigInteger(), nullable=True))
    op.execute("ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_append_only")
    op.execute(
        "UPDATE audit_logs AS a SET chain_seq = ranked.seq FROM ("
        " SELECT id, row_number() OVER (PARTITION BY team_id ORDER BY id) AS seq"
        " FROM audit_logs) AS ranked WHERE a.id = ranked.id"
    )
    op.execute("ALTER TABLE audit_logs ENABLE TRIGGER audit_logs_append_only")
    op.execute(_ONE_WAY_SEAL)
    op.create_index('ix_audit_logs_team_chain_seq', 'audit_logs', ['team_id', 'chain_seq'],
                    unique=False)
    op.create_index('ix_audit_logs_pending', 'audit_logs', ['id'], unique=False,
                    postgresql_where=sa.text('hash IS NULL'))
    # A copy of a genuine pending row carries the same entry_mac: refused.
    op.create_index('uq_audit_logs_entry_mac', 'audit_logs', ['entry_mac'], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT EXISTS (SELECT FROM audit_logs WHERE hash IS NULL)")).scalar():
        raise RuntimeError("audit rows are still pending: run the sealer before downgrading")
    op.execute(_APPEND_ONLY)
    op.drop_index('uq_audit_logs_entry_mac', table_name='audit_logs')
    op.drop_index('ix_audit_logs_pending', table_name='audit_logs')
    op.drop_index('ix_audit_logs_team_chain_seq', table_name='audit_logs')
    op.drop_column('audit_logs', 'chain_seq')
    op.drop_column('audit_logs', 'entry_mac')
