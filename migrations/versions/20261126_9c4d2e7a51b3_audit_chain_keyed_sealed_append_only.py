"""audit chain: HMAC-keyed rows, a sealed head per chain, append-only triggers

Rows written before this revision carry a plain SHA-256 chain, which anyone who can write
the table can recompute. They are re-signed here, chain by chain in id order, with the
current AUDIT_KEYS signing key (read from the same environment the app runs with; only
needed when there are rows), and every chain gets its sealed head. Re-signing vouches for
those rows as they are at upgrade time: tampering before this revision cannot be told.
Downgrading keeps the HMAC hashes, which the old SHA-256 check would call changed.

Revision ID: 9c4d2e7a51b3
Revises: f17dee425bd3
Create Date: 2026-11-26 09:00:00.000000+00:00

"""
from types import SimpleNamespace
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '9c4d2e7a51b3'
down_revision: Union[str, Sequence[str], None] = 'f17dee425bd3'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_BATCH = 1000

# Refused for everyone, the application's role included. A superuser (or the tables'
# owner) can still disable the trigger: what catches that is the keyed chain and its head.
# The app never hard-deletes a user or a team (it anonymises and soft-deletes), and such a
# DELETE is now refused too: the foreign keys' ON DELETE SET NULL is an UPDATE of audit rows.
# TRUNCATE is a statement, not row changes: these triggers do not see it (the test suite
# empties every table that way); a production app role should not own the tables.
_TRIGGERS = """
CREATE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % of audit row % refused', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or deleted (users are anonymised and '
                     'teams soft-deleted instead).';
END $$;
CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_change();

CREATE FUNCTION audit_heads_refuse_rewind() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_heads: deleting the head of chain % refused', OLD.chain
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.chain <> OLD.chain OR NEW.last_id <= OLD.last_id
            OR NEW.row_count <= OLD.row_count THEN
        RAISE EXCEPTION 'audit_heads: the head of chain % only moves forward (row % to %)',
            OLD.chain, OLD.last_id, NEW.last_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_heads_forward_only BEFORE UPDATE OR DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION audit_heads_refuse_rewind();
"""


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('audit_logs', sa.Column('key_id', sa.String(length=16), nullable=True))
    op.create_table('audit_heads',
    sa.Column('chain', sa.String(length=36), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('row_count', sa.BigInteger(), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('seal', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('chain', name=op.f('pk_audit_heads'))
    )
    op.create_index('ix_audit_logs_team_id_id', 'audit_logs', ['team_id', 'id'], unique=False)
    _resign_existing_rows()
    op.alter_column('audit_logs', 'key_id', existing_type=sa.String(length=16), nullable=False)
    op.execute(_TRIGGERS)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TRIGGER audit_heads_forward_only ON audit_heads")
    op.execute("DROP FUNCTION audit_heads_refuse_rewind()")
    op.execute("DROP TRIGGER audit_logs_append_only ON audit_logs")
    op.execute("DROP FUNCTION audit_logs_refuse_change()")
    op.drop_index('ix_audit_logs_team_id_id', table_name='audit_logs')
    op.drop_table('audit_heads')
    op.drop_column('audit_logs', 'key_id')


def _resign_existing_rows() -> None:
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT NOT EXISTS (SELECT FROM audit_logs)")).scalar():
        return  # a new database: nothing to sign, no key needed
    # The app's own settings and signing code: the key must be the one the app will use.
    from config import load_settings
    from services.core.audit_seal import head_seal, row_mac

    key_id, key = next(iter(load_settings().audit_key_ring.items()))
    heads: dict[str, tuple[int, str, int]] = {}  # chain -> (last id, last hash, rows)
    after = 0
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, team_id, actor_user_id, action, subject_type, subject_id, data, ip, "
                "user_agent, request_id, created_at FROM audit_logs "
                "WHERE id > :after ORDER BY id LIMIT :batch"
            ),
            {"after": after, "batch": _BATCH},
        ).all()
        if not rows:
            break
        updates = []
        for row in rows:
            chain = str(row.team_id) if row.team_id else "global"
            prev = heads.get(chain)
            signed = SimpleNamespace(**row._asdict(), key_id=key_id,
                                     prev_hash=prev[1] if prev else None)
            mac = row_mac(signed, key)
            heads[chain] = (row.id, mac, (prev[2] if prev else 0) + 1)
            updates.append({"id": row.id, "key_id": key_id, "prev_hash": signed.prev_hash,
                            "hash": mac})
        conn.execute(
            sa.text("UPDATE audit_logs SET key_id = :key_id, prev_hash = :prev_hash, "
                    "hash = :hash WHERE id = :id"),
            updates,
        )
        after = rows[-1].id
    conn.execute(
        sa.text("INSERT INTO audit_heads (chain, last_id, last_hash, row_count, key_id, seal) "
                "VALUES (:chain, :last_id, :last_hash, :row_count, :key_id, :seal)"),
        [{"chain": chain, "last_id": last_id, "last_hash": last_hash, "row_count": count,
          "key_id": key_id, "seal": head_seal(chain, last_id, last_hash, count, key_id, key)}
         for chain, (last_id, last_hash, count) in heads.items()],
    )
