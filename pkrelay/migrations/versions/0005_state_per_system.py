"""State rows belong to one system: the primary key is (system_id, kind, key).

Keyed by (kind, key) alone, a row written for one system blocked the same key for
every other: a dispatch of one system naming another's member could squat the row.
The table is copied (SQLite cannot change a primary key in place); the old index on
(system_id, kind) is the new key's prefix.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

_COLUMNS = "system_id, kind, key, data, fetched_at, updated_at"


def _table(name: str, primary_key: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("system_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*primary_key, name=f"{name}_pkey"),
    )


def upgrade() -> None:
    _table("state_v5", ("system_id", "kind", "key"))
    op.execute(f"INSERT INTO state_v5 ({_COLUMNS}) SELECT {_COLUMNS} FROM state")
    op.drop_index("ix_state_system_kind", "state")
    op.drop_table("state")
    op.rename_table("state_v5", "state")


def downgrade() -> None:
    _table("state_v4", ("kind", "key"))
    # Rows of one key under several systems cannot all go back: the latest is kept.
    op.execute(f"INSERT INTO state_v4 ({_COLUMNS}) SELECT {_COLUMNS} FROM state s WHERE NOT EXISTS "
               "(SELECT 1 FROM state o WHERE o.kind = s.kind AND o.key = s.key AND o.updated_at > s.updated_at)")
    op.drop_table("state")
    op.rename_table("state_v4", "state")
    op.create_index("ix_state_system_kind", "state", ["system_id", "kind"])
