"""Deliveries by sink: a starting deliver job takes its sink's waiting first attempts.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("ix_deliveries_sink", "deliveries", ["sink", "status", "attempts", "event_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_sink", "deliveries")
