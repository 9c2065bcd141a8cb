"""When each event reached the log: `pkrelay events --follow` reads new rows by it.

Event ids sort by arrival at the receiver, but a slow enrichment logs an event after
later ones, so following by id would skip it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("events", sa.Column("logged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_events_logged", "events", ["logged_at"])


def downgrade() -> None:
    op.drop_index("ix_events_logged", "events")
    op.drop_column("events", "logged_at")
