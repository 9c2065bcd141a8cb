"""Lua scripts run in Redis: sent once per server and then called by their SHA
(`register_script`: EVALSHA, loaded again after a Redis restart), not sent in full
with every call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis


class Script:
    """One Lua script, run on whichever client the caller holds."""

    def __init__(self, lua: str) -> None:
        self.lua = lua

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[object]) -> Any:
        return await redis.register_script(self.lua)(keys=keys, args=args)
