"""A fake PluralKit dispatcher: request bodies and headers exactly as the bot sends them.

PluralKit builds a JObject with keys in the order type, signing_token, system_id, id,
data and serializes it compactly (Newtonsoft, no escaping of non-ASCII). PING carries
no `id` or `data` key; UPDATE_GROUP_MEMBERS' builder forgets the token.
"""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from typing import Any

import httpx

HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "PluralKit Dispatch (https://pluralkit.me/api/dispatch/)",
}

MEMBER_ID = "2ee0c92b-bb4f-4a2c-a9a8-3b7d8f3d5f10"
GROUP_ID = "9d2c1a6e-8f4b-4b6f-9b0e-77c1f6a2d3e4"
SWITCH_ID = "5a6b7c8d-1e2f-4a3b-8c9d-0e1f2a3b4c5d"
ACCOUNT_ID = "466378653216014359"
GUILD_ID = "466707357099884544"


def new_token() -> str:
    """64 characters of standard base64, like the bot's tokens (+ and / occur)."""
    return base64.b64encode(os.urandom(48)).decode()


def body(event_type: str, token: str | None, system_id: str | None, entity_id: str | None = None,
         data: Any = None, *, ping: bool = False) -> bytes:
    obj: dict[str, Any] = {"type": event_type}
    if token is not None:
        obj["signing_token"] = token
    obj["system_id"] = system_id
    if not ping:
        obj["id"] = entity_id
        obj["data"] = _in_no_order(event_type, data)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _in_no_order(event_type: str, data: Any) -> Any:
    """CREATE_SWITCH lists its members in no particular order: here never the one given
    (the switch's real order is what the API answers)."""
    if event_type != "CREATE_SWITCH" or not isinstance(data, dict) or len(set(data.get("members") or ())) < 2:
        return data
    members = list(data["members"])
    while members == data["members"]:
        random.shuffle(members)
    return {**data, "members": members}


def sample_events(token: str, system_id: str) -> list[tuple[str, bytes]]:
    """One body of every type PluralKit sends (docs/pluralkit.md), as the sender would build it."""
    member = {
        "id": "abcde", "uuid": MEMBER_ID, "system": "exmpl", "name": "Alex", "display_name": None,
        "color": "ff00aa", "birthday": "0004-03-15", "pronouns": "they/them", "avatar_url": None,
        "webhook_avatar_url": None, "banner": None, "description": "hi ✨", "created": "2026-11-22T18:00:00.123456Z",
        "proxy_tags": [{"prefix": "a:", "suffix": None}], "keep_proxy": False, "tts": False,
        "autoproxy_enabled": True, "message_count": 3, "last_message_timestamp": "2026-11-22T18:01:00Z",
        "privacy": {"visibility": "public", "name_privacy": "public", "description_privacy": "private",
                    "birthday_privacy": "private", "pronoun_privacy": "public", "avatar_privacy": "public",
                    "metadata_privacy": "private", "proxy_privacy": "public"},
    }
    system = {
        "id": "exmpl", "uuid": system_id, "name": "Example", "description": None, "tag": None, "pronouns": None,
        "avatar_url": None, "banner": None, "color": None, "created": "2026-01-01T00:00:00Z",
        "privacy": None,
    }
    message = {
        "timestamp": "2026-11-22T18:02:00.5Z", "id": "1180000000000000001", "original": "1180000000000000000",
        "sender": ACCOUNT_ID, "channel": "1180000000000000002", "guild": GUILD_ID,
        "system": system, "member": member,
    }
    e = [
        ("PING", body("PING", token, system_id, ping=True)),
        ("UPDATE_SYSTEM", body("UPDATE_SYSTEM", token, system_id, None, {"name": "Example renamed"})),
        ("UPDATE_SETTINGS", body("UPDATE_SETTINGS", token, system_id, None, {"timezone": "Europe/Paris"})),
        ("CREATE_MEMBER", body("CREATE_MEMBER", token, system_id, MEMBER_ID, {"name": "Alex"})),
        ("UPDATE_MEMBER", body("UPDATE_MEMBER", token, system_id, MEMBER_ID, {"color": "00ff00", "pronouns": None})),
        ("DELETE_MEMBER", body("DELETE_MEMBER", token, system_id, MEMBER_ID, None)),
        ("CREATE_GROUP", body("CREATE_GROUP", token, system_id, GROUP_ID, {"name": "Friends"})),
        ("UPDATE_GROUP", body("UPDATE_GROUP", token, system_id, GROUP_ID, {"description": "the crew"})),
        ("UPDATE_GROUP_MEMBERS", body("UPDATE_GROUP_MEMBERS", None, system_id, GROUP_ID, None)),
        ("DELETE_GROUP", body("DELETE_GROUP", token, system_id, GROUP_ID, None)),
        ("LINK_ACCOUNT", body("LINK_ACCOUNT", token, system_id, ACCOUNT_ID, None)),
        ("UNLINK_ACCOUNT", body("UNLINK_ACCOUNT", token, system_id, ACCOUNT_ID, None)),
        ("UPDATE_SYSTEM_GUILD", body("UPDATE_SYSTEM_GUILD", token, system_id, None,
                                     {"guild_id": GUILD_ID, "proxying_enabled": False})),
        ("UPDATE_MEMBER_GUILD", body("UPDATE_MEMBER_GUILD", token, system_id, MEMBER_ID,
                                     {"guild_id": GUILD_ID, "display_name": "Al"})),
        # An account change: Discord id in `id`, `{}` data, and null system_id (older senders).
        ("UPDATE_MEMBER_GUILD", body("UPDATE_MEMBER_GUILD", token, None, ACCOUNT_ID, {})),
        ("CREATE_MESSAGE", body("CREATE_MESSAGE", token, system_id, None, message)),
        ("CREATE_SWITCH", body("CREATE_SWITCH", token, system_id, SWITCH_ID,
                               {"id": SWITCH_ID, "timestamp": "2026-11-22T18:03:00Z", "members": [MEMBER_ID]})),
        ("UPDATE_SWITCH", body("UPDATE_SWITCH", token, system_id, SWITCH_ID, {"timestamp": "2026-11-22T17:00:00Z"})),
        ("DELETE_SWITCH", body("DELETE_SWITCH", token, system_id, SWITCH_ID, None)),
        ("DELETE_ALL_SWITCHES", body("DELETE_ALL_SWITCHES", token, system_id, None, None)),
        ("SUCCESSFUL_IMPORT", body("SUCCESSFUL_IMPORT", token, system_id, None, None)),
        ("UPDATE_AUTOPROXY", body("UPDATE_AUTOPROXY", token, system_id, None,
                                  {"guild_id": GUILD_ID, "channel_id": None, "autoproxy_mode": "latch",
                                   "autoproxy_member": MEMBER_ID, "last_latch_timestamp": "2026-11-22T18:04:00Z"})),
        ("A_TYPE_FROM_THE_FUTURE", body("A_TYPE_FROM_THE_FUTURE", token, system_id, None, {"novel": True})),
    ]
    return e


class FakeDispatcher:
    """Sends bodies the way PluralKit's sender does: one POST, 10 s timeout, no redirects."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def send(self, content: bytes) -> httpx.Response:
        return await self.client.post(self.url, content=content, headers=HEADERS, timeout=10, follow_redirects=False)

    async def register(self, token: str, system_id: str) -> bool:
        """`pk;system webhook <url>`: the right token must get 200, a random one exactly 401."""
        good = await self.send(body("PING", token, system_id, ping=True))
        if good.status_code != 200:
            return False
        bad = await self.send(body("PING", new_token(), system_id, ping=True))
        return bad.status_code == 401


def new_system_id() -> str:
    return str(uuid.uuid4())
