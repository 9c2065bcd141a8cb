"""The event log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("system", sa.String(200), nullable=True),
        sa.Column("system_id", sa.String(64), nullable=True),
        sa.Column("entity_id", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
        sa.Column("entity", sa.JSON, nullable=True),
        sa.Column("previous", sa.JSON, nullable=True),
    )
    op.create_index("ix_events_system_received", "events", ["system_id", "received_at"])
    op.create_index("ix_events_type_received", "events", ["type", "received_at"])
    op.create_index("ix_events_received", "events", ["received_at"])


def downgrade() -> None:
    op.drop_table("events")
