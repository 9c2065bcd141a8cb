"""The migrations build exactly the schema the code uses, and keep data across upgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from pkrelay import db


def _upgrade(connection: sa.Connection, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "pkrelay:migrations")
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'pkrelay.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        await db.migrate(engine)
        async with engine.connect() as conn:
            drift = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), db.metadata))
        assert drift == []
    finally:
        await engine.dispose()


async def test_state_rows_survive_the_move_to_per_system_keys(database_url: str) -> None:
    engine = db.create_engine(database_url)
    now = datetime.now(UTC)
    row = {"kind": "member", "key": "m-1", "system_id": "s-alpha", "data": {"name": "A"}, "fetched_at": now,
           "updated_at": now}
    v4 = sa.table("state", *(sa.column(c) for c in row), sa.column("data", sa.JSON))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, "0004")
            await conn.execute(sa.insert(v4).values(**row))
        await db.migrate(engine)
        async with engine.begin() as conn:
            rows = (await conn.execute(sa.select(db.state))).all()
            assert [(r.system_id, r.kind, r.key, r.data) for r in rows] == [("s-alpha", "member", "m-1", {"name": "A"})]
            # the same key under another system is another row now, not a conflict
            await conn.execute(db.state.insert().values(**(row | {"system_id": "s-beta", "data": {"name": "B"}})))
            assert (await conn.execute(sa.select(sa.func.count()).select_from(db.state))).scalar() == 2
    finally:
        await engine.dispose()
