"""A fake PluralKit API v2 that behaves like the real server, for tests and benchmarks.

Served for real (uvicorn on loopback, in a thread) so several processes can share it.
Like the real one it answers 400 with an empty body and no rate-limit headers when the
User-Agent is missing, 404 for unknown entities before its limiter (no headers), limits
each key (the authenticated system, else the client IP) per scope with GCRA (burst =
rate, period 1 s) where a refused request still spends budget and the last request of
a full burst is refused with retry_after 0, sends X-RateLimit-* with Reset in seconds,
nulls private fields and answers 403 for private lists to anyone but the owner, and
204 with no body on /fronters for a system that never switched, and answers a wrong or
revoked token as if none was given (public data), except `@me`: 401. Every request
lands in a journal the tests read.
"""

from __future__ import annotations

import asyncio
import copy
import math
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import msgspec

from pkrelay.redis_server import free_port
from tests.servers import ThreadedServer

_encode = msgspec.json.encode

MEMBER_GUARDS = {
    "name_privacy": ("display_name",), "description_privacy": ("description",), "birthday_privacy": ("birthday",),
    "pronoun_privacy": ("pronouns",), "avatar_privacy": ("avatar_url", "webhook_avatar_url"),
    "banner_privacy": ("banner",), "metadata_privacy": ("created", "message_count", "last_message_timestamp"),
    "proxy_privacy": ("proxy_tags",),
}
SYSTEM_GUARDS = {"description_privacy": ("description",), "pronoun_privacy": ("pronouns",),
                 "name_privacy": ("name",), "avatar_privacy": ("avatar_url",), "banner_privacy": ("banner",)}
OWNER_ONLY = ("privacy", "webhook_url", "keep_proxy", "tts", "autoproxy_enabled")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}Z"


def short_id() -> str:
    return uuidlib.uuid4().hex[:5].translate(str.maketrans("0123456789", "abcdefghij"))


@dataclass
class Journal:
    at: float
    method: str
    path: str
    status: int
    scope: str | None
    key: str | None


@dataclass
class Pause:
    """The first request whose path ends with `suffix` is answered as the API stood
    when it arrived, but only once released: an answer that is stale on arrival."""

    suffix: str
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeSystem:
    token: str
    system: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=lambda: {
        "timezone": "UTC", "pings_enabled": True, "latch_timeout": None, "member_default_private": False,
        "group_default_private": False, "show_private_info": True, "member_limit": 1000, "group_limit": 250,
        "case_sensitive_proxy_tags": True, "proxy_error_message_enabled": True, "hid_display_split": False,
        "hid_display_caps": False, "hid_list_padding": "off", "proxy_switch": "off", "name_format": None,
        "card_show_color_hex": False, "description_templates": []})
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    switches: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def uuid(self) -> str:
        return str(self.system["uuid"])


def max_in_any_second(times: Iterable[float]) -> int:
    """The most requests any window of one second saw: what the server's limiter counts."""
    ordered = sorted(times)
    start, most = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


class FakePluralKit:
    def __init__(self, get_rate: float = 10, update_rate: float = 3, reset_in_ms: bool = False) -> None:
        self.rates = {"get": get_rate, "update": update_rate}
        self.reset_in_ms = reset_in_ms
        self.systems: dict[str, FakeSystem] = {}
        self.journal: list[Journal] = []
        self._tat: dict[tuple[str, str], float] = {}
        self._injected: deque[tuple[int, dict[str, Any] | None]] = deque()
        self._uncommitted: dict[str, float] = {}  # entity uuid -> when its GET stops answering 404
        self.delay = 0.0
        self.pauses: list[Pause] = []
        self.lock = threading.Lock()
        self.port = free_port()

    # Data -------------------------------------------------------------------

    def add_system(self, name: str = "Example", **fields: Any) -> FakeSystem:
        sid = str(uuidlib.uuid4())
        system = {"id": short_id(), "uuid": sid, "name": name, "description": None, "tag": None, "pronouns": None,
                  "avatar_url": None, "banner": None, "color": None, "created": _now(), "webhook_url": None,
                  "privacy": {k: "public" for k in ("description_privacy", "pronoun_privacy", "member_list_privacy",
                                                     "group_list_privacy", "front_privacy", "front_history_privacy",
                                                     "name_privacy", "avatar_privacy", "banner_privacy")}}
        system.update(fields)
        fake = FakeSystem(token=uuidlib.uuid4().hex + uuidlib.uuid4().hex, system=system)
        self.systems[sid] = fake
        return fake

    def add_member(self, system: FakeSystem, name: str, **fields: Any) -> dict[str, Any]:
        member = {"id": short_id(), "uuid": str(uuidlib.uuid4()), "system": system.system["id"], "name": name,
                  "display_name": None, "color": None, "birthday": None, "pronouns": None, "avatar_url": None,
                  "webhook_avatar_url": None, "banner": None, "description": None, "created": _now(),
                  "proxy_tags": [], "keep_proxy": False, "tts": False, "autoproxy_enabled": True,
                  "message_count": 0, "last_message_timestamp": None,
                  "privacy": {"visibility": "public", **{k: "public" for k in MEMBER_GUARDS}}}
        member.update(fields)
        system.members[member["uuid"]] = member
        return member

    def commit_later(self, entity: dict[str, Any], seconds: float) -> None:
        """PluralKit dispatches API-created members and groups before its commit: their
        GET answers 404 for a while."""
        self._uncommitted[entity["uuid"]] = time.time() + seconds

    def add_group(self, system: FakeSystem, name: str, members: list[str] | None = None) -> dict[str, Any]:
        group = {"id": short_id(), "uuid": str(uuidlib.uuid4()), "system": system.system["id"], "name": name,
                 "display_name": None, "description": None, "created": _now(), "icon": None, "banner": None,
                 "color": None, "members": list(members or []),
                 "privacy": {k: "public" for k in ("name_privacy", "description_privacy", "icon_privacy",
                                                    "list_privacy", "metadata_privacy", "visibility",
                                                    "banner_privacy")}}
        system.groups[group["uuid"]] = group
        return group

    def add_switch(self, system: FakeSystem, member_uuids: list[str], timestamp: str | None = None) -> dict[str, Any]:
        switch = {"id": str(uuidlib.uuid4()), "timestamp": timestamp or _now(), "members": list(member_uuids)}
        system.switches.append(switch)
        system.switches.sort(key=lambda s: s["timestamp"])
        return switch

    def pause(self, suffix: str) -> Pause:
        """Hold the next answer to a path ending with `suffix` (see Pause)."""
        pause = Pause(suffix)
        self.pauses.append(pause)
        return pause

    def inject(self, status: int, body: dict[str, Any] | None = None, count: int = 1) -> None:
        """The next `count` limited requests get this answer (after spending budget)."""
        for _ in range(count):
            self._injected.append((status, body))

    # Serving ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    def start(self) -> None:
        self._server = ThreadedServer(self.asgi, self.port)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            status, payload, extra = self.handle(scope["method"], scope["path"], query, headers, body,
                                                 scope["client"][0] if scope.get("client") else "127.0.0.1")
        content = b"" if payload is None else _encode(payload)
        for pause in self.pauses:
            if scope["path"].endswith(pause.suffix) and not pause.reached.is_set():
                pause.reached.set()
                await asyncio.to_thread(pause.released.wait, 60)
        out_headers = [(b"content-type", b"application/json")] if payload is not None else []
        out_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": content})

    def _limit(self, key: str, scope: str) -> tuple[bool, dict[str, str], int]:
        """GCRA, burst = rate, period 1 s; remaining rounded down; refusals spend budget."""
        rate = self.rates["update" if scope.endswith("update") else "get"]
        interval = 1.0 / rate
        now = time.monotonic()
        tat = max(self._tat.get((key, scope), now), now)
        new_tat = tat + interval
        allowed = new_tat - now < 1.0 - 1e-9
        self._tat[(key, scope)] = new_tat  # a refused request still spends budget
        remaining = max(0, math.floor((1.0 - (new_tat - now)) / interval))
        reset = time.time() + (new_tat - now)
        headers = {"X-RateLimit-Limit": str(int(rate)), "X-RateLimit-Remaining": str(remaining),
                   "X-RateLimit-Reset": str(int(reset * 1000) if self.reset_in_ms else math.ceil(reset)),
                   "X-RateLimit-Scope": scope}
        retry_after = max(0, int((new_tat - now - 1.0) * 1000)) if not allowed else 0
        return allowed, headers, retry_after

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
               ip: str) -> tuple[int, Any, dict[str, str]]:
        def record(status: int, scope: str | None = None, key: str | None = None) -> None:
            self.journal.append(Journal(time.time(), method, path, status, scope, key))

        if not headers.get("user-agent"):
            record(400)
            return 400, None, {}
        parts = [p for p in path.removeprefix("/v2").split("/") if p]
        # An unknown token is no error by itself: PluralKit answers as to anyone (public
        # data only); only what needs the owner (`@me`) is refused.
        owner = next((s for s in self.systems.values() if headers.get("authorization") == s.token), None)
        if owner is None and parts[:2] == ["systems", "@me"]:
            record(401)
            return 401, {"code": 0, "message": "401: Missing or invalid Authorization header"}, {}
        try:
            target = self._resolve(parts, owner)
        except LookupError as exc:
            record(404)
            return 404, {"code": 20001, "message": str(exc)}, {}
        scope_kind = "get" if method == "GET" else "update"
        own = owner is not None and target is owner
        scope = f"{'own_system' if own else 'generic'}_{scope_kind}"
        key = owner.uuid if own and owner else ip
        allowed, limit_headers, retry_after = self._limit(key, scope)
        if not allowed:
            record(429, scope, key)
            return 429, {"message": "429: too many requests", "retry_after": retry_after, "scope": scope,
                         "code": 0}, limit_headers
        if self._injected:
            status, payload = self._injected.popleft()
            record(status, scope, key)
            return status, payload, limit_headers
        status, payload = self._route(method, parts, query, body, target, own)
        record(status, scope, key)
        return status, payload, limit_headers

    def _resolve(self, parts: list[str], owner: FakeSystem | None) -> FakeSystem | None:
        """The system a request is about; LookupError for unknown entities (answered before the limiter)."""
        if not parts:
            raise LookupError("Not found.")
        if parts[0] == "systems" and len(parts) >= 2:
            ref = parts[1]
            if ref == "@me":
                if owner is None:
                    raise LookupError("System not found.")
                return owner
            for s in self.systems.values():
                if ref in (s.uuid, s.system["id"]):
                    return s
            raise LookupError("System not found.")
        if parts[0] in ("members", "groups") and len(parts) >= 2:
            attr = parts[0]
            for s in self.systems.values():
                for entity in getattr(s, attr).values():
                    if parts[1] in (entity["uuid"], entity["id"]):
                        if time.time() < self._uncommitted.get(entity["uuid"], 0):
                            break
                        return s
            raise LookupError(f"{attr[:-1].capitalize()} not found.")
        if parts[0] == "members" and len(parts) == 1:
            return owner
        raise LookupError("Not found.")

    # Views ------------------------------------------------------------------

    @staticmethod
    def _view(obj: dict[str, Any], guards: dict[str, tuple[str, ...]], own: bool) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if own:
            return out
        privacy = obj.get("privacy") or {}
        for key, fields in guards.items():
            if privacy.get(key) == "private":
                for f in fields:
                    out[f] = None
        for f in OWNER_ONLY:
            if f in out:
                out[f] = None
        if "webhook_url" in out:
            del out["webhook_url"]
        return out

    def _member_view(self, member: dict[str, Any], own: bool) -> dict[str, Any] | None:
        if not own and member["privacy"]["visibility"] == "private":
            return None
        return self._view(member, MEMBER_GUARDS, own)

    def _fronters(self, s: FakeSystem, switch: dict[str, Any], own: bool) -> dict[str, Any]:
        members = [self._member_view(s.members[u], own) for u in switch["members"] if u in s.members]
        return {"id": switch["id"], "timestamp": switch["timestamp"], "members": [m for m in members if m]}

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes, s: FakeSystem | None,
               own: bool) -> tuple[int, Any]:
        assert s is not None

        def private(key: str) -> bool:
            return not own and s.system["privacy"].get(key) == "private"

        if method == "GET" and parts[0] == "systems":
            rest = parts[2:]
            if not rest:
                return 200, self._view(s.system, SYSTEM_GUARDS, own)
            if rest == ["settings"]:
                return 200, copy.deepcopy(s.settings) if own else {k: s.settings[k] for k in ("timezone",)}
            if rest == ["members"]:
                if private("member_list_privacy"):
                    return 403, {"code": 30001, "message": "Unauthorized to view member list"}
                return 200, [m for m in (self._member_view(m, own) for m in s.members.values()) if m]
            if rest == ["groups"]:
                if private("group_list_privacy"):
                    return 403, {"code": 30002, "message": "Unauthorized to view group list"}
                groups = [self._view(g, {}, own) for g in s.groups.values()]
                if query.get("with_members") != "true":
                    for g in groups:
                        g.pop("members", None)
                return 200, groups
            if rest == ["fronters"]:
                if private("front_privacy"):
                    return 403, {"code": 30003, "message": "Unauthorized to view fronter."}
                return (204, None) if not s.switches else (200, self._fronters(s, s.switches[-1], own))
            if rest == ["switches"]:
                if private("front_history_privacy"):
                    return 403, {"code": 30004, "message": "Unauthorized to view front history."}
                newest = list(reversed(s.switches))
                if "before" in query:
                    newest = [w for w in newest if w["timestamp"] < query["before"]]
                limit = min(100, int(query.get("limit", 100)))
                ids = {u: m["id"] for u, m in s.members.items()}
                return 200, [{"id": w["id"], "timestamp": w["timestamp"],
                              "members": [ids[u] for u in w["members"] if u in ids]} for w in newest[:limit]]
            if len(rest) == 2 and rest[0] == "switches":
                if private("front_history_privacy"):
                    return 403, {"code": 30004, "message": "Unauthorized to view front history."}
                switch = next((w for w in s.switches if w["id"] == rest[1]), None)
                if switch is None:
                    return 404, {"code": 20006, "message": "Switch not found."}
                return 200, self._fronters(s, switch, own)
        if method == "GET" and parts[0] == "members":
            member = next(m for m in s.members.values() if parts[1] in (m["uuid"], m["id"]))
            view = self._member_view(member, own)
            return (404, {"code": 20002, "message": "Member not found."}) if view is None else (200, view)
        if method == "GET" and parts[0] == "groups":
            group = next(g for g in s.groups.values() if parts[1] in (g["uuid"], g["id"]))
            out = self._view(group, {}, own)
            out.pop("members", None)
            return 200, out
        if not own:
            return 401, {"code": 0, "message": "401: Missing or invalid Authorization header"}
        changes = msgspec.json.decode(body) if body else {}
        if method == "PATCH" and parts[0] == "members":
            member = next(m for m in s.members.values() if parts[1] in (m["uuid"], m["id"]))
            member.update(changes)
            return 200, copy.deepcopy(member)
        if method == "PATCH" and parts[0] == "systems":
            s.system.update(changes)
            return 200, copy.deepcopy(s.system)
        if method == "POST" and parts == ["members"]:
            return 200, copy.deepcopy(self.add_member(s, **changes))
        if method == "POST" and parts[2:] == ["switches"]:
            switch = self.add_switch(s, changes.get("members", []), changes.get("timestamp"))
            return 200, self._fronters(s, switch, True)
        if method == "DELETE" and parts[0] == "members":
            member = next(m for m in s.members.values() if parts[1] in (m["uuid"], m["id"]))
            del s.members[member["uuid"]]
            return 204, None
        if method == "DELETE" and parts[2:3] == ["switches"]:
            s.switches = [w for w in s.switches if w["id"] != parts[3]]
            return 204, None
        return 400, {"code": 40000, "message": "Unsupported by the fake."}
