"""Alembic environment: always run through `pkrelay.db.migrate` with a connection."""

from alembic import context

from pkrelay.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
