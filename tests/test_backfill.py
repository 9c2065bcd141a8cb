"""`pkrelay backfill` as a user runs it: a snapshot into the state store, with progress."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from pkrelay import config, db
from pkrelay.redis_server import EmbeddedRedis
from tests.deployment import write_config
from tests.fakepk.api import FakePluralKit, FakeSystem


def test_backfill_snapshots_every_entity(
    tmp_path: Path, redis_server: EmbeddedRedis, fake_pk: FakePluralKit, fake_system: FakeSystem,
    system_creds: dict[str, str],
) -> None:
    members = [fake_pk.add_member(fake_system, f"M{i}") for i in range(12)]
    fake_pk.add_group(fake_system, "Crew", [m["uuid"] for m in members[:3]])
    for m in members[:4]:
        fake_pk.add_switch(fake_system, [m["uuid"]])
    cfg = write_config(tmp_path / "pkrelay.toml", {"systems": [system_creds], "redis": {"url": redis_server.url},
                                                   "pluralkit": {"api_base_url": fake_pk.base_url}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKRELAY_")}
    done = subprocess.run([sys.executable, "-m", "pkrelay", "backfill", "--config", str(cfg), "--system", "home"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "home" in done.stdout and "done: 6 API calls" in done.stdout
    assert system_creds["api_token"] not in done.stdout + done.stderr

    async def counts() -> dict[str, int]:
        engine = db.create_engine(config.load(cfg).database_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(db.state.c.kind, sa.func.count()).group_by(db.state.c.kind))).all()
        await engine.dispose()
        return dict(rows)

    assert asyncio.run(counts()) == {"system": 1, "settings": 1, "fronters": 1, "member": 12, "group": 1,
                                     "switch": 4}
    unknown = subprocess.run([sys.executable, "-m", "pkrelay", "backfill", "--config", str(cfg), "--system", "nope"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert unknown.returncode == 2 and "no configured system named 'nope'" in unknown.stderr
