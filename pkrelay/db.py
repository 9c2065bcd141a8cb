"""The database: tables, engine setup and migrations.

SQLite by default (WAL and BEGIN IMMEDIATE: without them a second writer often gets
"database is locked"), PostgreSQL through `database.url`. An engine made with
`deferred_reads` (the receiver's) begins IMMEDIATE only for `engine.begin()`: what it
reads through `engine.connect()` begins DEFERRED, a WAL snapshot that takes no lock, so
readers never wait for the workers' writes nor hold them up. JSON columns hold msgspec-encoded documents.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp column that always reads back UTC-aware: PostgreSQL keeps the zone,
    SQLite hands back naive values, which pkrelay wrote in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("system", sa.String(200), nullable=True),
    sa.Column("system_id", sa.String(64), nullable=True),
    sa.Column("entity_id", sa.String(64), nullable=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Column("entity", sa.JSON, nullable=True),
    sa.Column("previous", sa.JSON, nullable=True),
    sa.Column("logged_at", UTCDateTime, nullable=True),
    sa.Index("ix_events_system_received", "system_id", "received_at"),
    sa.Index("ix_events_type_received", "type", "received_at"),
    sa.Index("ix_events_received", "received_at"),
    sa.Index("ix_events_logged", "logged_at"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("event_id", sa.String(40), sa.ForeignKey("events.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | dead | skipped
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_deliveries_status", "status"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(40), sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    sa.Column("sink", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Index("ix_delivery_attempts_event", "event_id", "sink"),
)

# Each sink's health, shared by every worker: disabled (410, or failing for
# delivery.disable_after_h) holds its deliveries; hold_until is a Retry-After.
sinks = sa.Table(
    "sinks",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # _Sink.key
    sa.Column("state", sa.String(16), nullable=False),  # active | disabled
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
    sa.Column("failing_since", UTCDateTime, nullable=True),  # first failure since the last success
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UTCDateTime, nullable=True),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),  # the earliest retry a failure scheduled
    sa.Column("hold_until", UTCDateTime, nullable=True),  # no attempt before (Retry-After)
)

# The state store: the last known version of each entity, as the API returns it.
# kind: system | settings | fronters (key = system UUID), member | group | switch (key = its UUID).
state = sa.Table(
    "state",
    metadata,
    sa.Column("system_id", sa.String(64), primary_key=True),  # each system's rows are its own
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("fetched_at", UTCDateTime, nullable=True),  # last confirmed by the API
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# The execution option `_ReadWriteEngine.begin` sets on the connections it writes through.
_WRITES = "pkrelay_writes"


class _ReadWriteEngine(AsyncEngine):
    """An engine whose `begin()` marks its connection as a writer (BEGIN IMMEDIATE on
    SQLite); a transaction autobegun on `connect()` is a reader (plain BEGIN)."""

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.connect() as conn:
            await conn.execution_options(**{_WRITES: True})
            async with conn.begin():
                yield conn


def create_engine(url: str, *, deferred_reads: bool = False) -> AsyncEngine:
    """The engine for `url`. With `deferred_reads`, on SQLite, only `engine.begin()`
    takes the write lock at once: reads go through `engine.connect()` and must not
    write (a deferred transaction that starts writing fails under another writer)."""
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": msgspec.json.decode}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        if deferred_reads:
            event.listen(engine.sync_engine, "begin", _sqlite_begin_deferred_reads)
            event.listen(engine.sync_engine, "before_cursor_execute", _sqlite_reader_must_not_write)
            return _ReadWriteEngine(engine.sync_engine)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(url, pool_pre_ping=True, **kwargs)
    return _ReadWriteEngine(engine.sync_engine) if deferred_reads else engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (below), and make concurrent writers wait.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A read-then-write transaction that starts deferred fails at once with
    # "database is locked" under a second writer; IMMEDIATE waits its turn.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_deferred_reads(conn: sa.Connection) -> None:
    # A reader's plain BEGIN takes no lock until its first SELECT, and then only a
    # WAL snapshot: it neither waits for a writer nor makes one wait.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITES) else "BEGIN")


_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _sqlite_reader_must_not_write(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
    if not conn.get_execution_options().get(_WRITES) and statement.lstrip()[:7].upper().startswith(_WRITE_VERBS):
        raise sa.exc.InvalidRequestError("a write through engine.connect() of a deferred_reads engine: "
                                         "write through engine.begin()")


def insert_ignoring_duplicates(conn: AsyncConnection | sa.Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).on_conflict_do_nothing()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    def upgrade(connection: sa.Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", "pkrelay:migrations")
        cfg.attributes["connection"] = connection
        if connection.dialect.name == "postgresql":
            # Several processes may start at once; one migrates, the others wait.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(74707265)")
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


async def migrate_url(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
