"""State writes of a batch, coalesced: the end state of writing them one by one, in
fewer statements, on a real SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from pkrelay import db
from pkrelay.store import state
from pkrelay.store.state import Clear, Delete, Kind, Put, Write

SYSTEM = "sys-uuid"
T1 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T2 = T1 + timedelta(seconds=5)


async def _rows(tmp_path: Path, name: str, before: list[Write], writes: list[Write],
                one_by_one: bool) -> set[tuple[str, str, str, datetime | None]]:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / name}")
    try:
        await db.migrate(engine)
        async with engine.begin() as conn:
            await state.apply(conn, SYSTEM, before)
            for batch in ([[w] for w in writes] if one_by_one else [writes]):
                await state.apply(conn, SYSTEM, batch)
            rows = (await conn.execute(sa.select(db.state.c.kind, db.state.c.key, db.state.c.data,
                                                 db.state.c.fetched_at))).all()
        return {(r.kind, r.key, r.data["v"], r.fetched_at) for r in rows}
    finally:
        await engine.dispose()


async def test_a_batch_of_writes_leaves_what_writing_them_one_by_one_leaves(tmp_path: Path) -> None:
    before: list[Write] = [Put(Kind.MEMBER, "kept", {"v": "old"}, T1), Put(Kind.SWITCH, "s", {"v": "s"}, T1)]
    writes: list[Write] = [
        Put(Kind.MEMBER, "a", {"v": "a1"}, T1), Put(Kind.MEMBER, "a", {"v": "a2"}),  # fetched, then merged
        Put(Kind.MEMBER, "kept", {"v": "new"}),  # an update keeps the confirmed time it had
        Put(Kind.GROUP, "g", {"v": "g1"}, T2), Delete(Kind.GROUP, "g"), Put(Kind.GROUP, "g", {"v": "g2"}),
        Clear(Kind.SWITCH), Put(Kind.SWITCH, "s2", {"v": "s2"}, T2), Put(Kind.MEMBER, "a", {"v": "a3"}),
    ]
    assert len(state.coalesced(writes)) == 5  # a, kept, g, the clear, s2
    expected = await _rows(tmp_path, "one.db", before, writes, one_by_one=True)
    assert await _rows(tmp_path, "batch.db", before, writes, one_by_one=False) == expected
    assert ("member", "a", "a3", T1) in expected and ("group", "g", "g2", None) in expected
    assert ("member", "kept", "new", T1) in expected and not any(k == "s" for _, k, _, _ in expected)
