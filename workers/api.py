"""One PluralKit client per token per worker process, sharing the Redis limiter."""

from __future__ import annotations

from typing import Any

from pkrelay.config import Settings, SystemConfig
from pkrelay.pluralkit.client import PluralKitClient
from pkrelay.pluralkit.ratelimit import Rates, token_key


def build_client(settings: Settings, redis: Any, token: str, transport: Any = None) -> PluralKitClient:
    pk = settings.pluralkit
    return PluralKitClient(
        base_url=pk.api_base_url, user_agent=pk.user_agent, redis=redis, token=token,
        rates=Rates(get=pk.get_rate, update=pk.update_rate, message=pk.message_rate), transport=transport,
    )


def client_for(ctx: dict[str, Any], system: SystemConfig) -> PluralKitClient:
    """The client of this system's API token (or the anonymous one)."""
    token = system.api_token.reveal()
    clients: dict[str, PluralKitClient] = ctx["clients"]
    key = token_key(token)
    if key not in clients:
        clients[key] = build_client(ctx["live"].current, ctx["redis"], token, ctx.get("api_transport"))
    return clients[key]


async def close_clients(ctx: dict[str, Any]) -> None:
    for client in ctx["clients"].values():
        await client.aclose()
