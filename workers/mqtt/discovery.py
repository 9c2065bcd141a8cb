"""What an MQTT sink retains for a system, and the Home Assistant discovery that describes it.

Pure functions: given the system's fronters and members (as the store holds them),
the topics and payloads to publish. Discovery follows Home Assistant's device-based
format (`homeassistant/device/<id>/config` with `dev`, `o`, `cmps`; abbreviations as
its MQTT integration's abbreviations.py lists them), as of Home Assistant 2025.10,
which replaced `object_id` with `default_entity_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pkrelay import __version__

DISCOVERY_PREFIX = "homeassistant"
BIRTH_TOPIC = f"{DISCOVERY_PREFIX}/status"  # Home Assistant's birth and last will
STATE_MAX = 255  # Home Assistant refuses longer states
NOBODY = "none"
ORIGIN = {"name": "pkrelay", "sw": __version__}


def display(member: dict[str, Any]) -> str:
    """What people call a member: display name, else name, else its id."""
    return str(member.get("display_name") or member.get("name") or member.get("id") or "?")


def describe(member: dict[str, Any]) -> dict[str, Any]:
    """One fronter as the attributes show it."""
    color = member.get("color")
    return {
        "id": member.get("id"), "uuid": member.get("uuid"), "name": member.get("name"),
        "display_name": member.get("display_name"), "color": f"#{color}" if color else None,
        "avatar_url": member.get("avatar_url"), "pronouns": member.get("pronouns"),
    }


def front_state(fronters: list[dict[str, Any]]) -> str:
    return display(fronters[0])[:STATE_MAX] if fronters else NOBODY


def front_attributes(fronters: list[dict[str, Any]]) -> dict[str, Any]:
    """The first fronter's look at the top (for templates), everyone in order below."""
    described = [describe(m) for m in fronters]
    return {**(described[0] if described else dict.fromkeys(describe({}))), "fronters": described}


def front_ids(fronters: list[dict[str, Any]]) -> list[Any]:
    """Who fronts, in order: what makes a switch (a fronter's new colour does not)."""
    return [m.get("uuid") or m.get("id") for m in fronters]


def switch_event(previous: list[dict[str, Any]], fronters: list[dict[str, Any]]) -> dict[str, Any]:
    """The payload of the switch event entity: `event_type` plus what changed."""
    return {"event_type": "switch", "fronters": [display(m) for m in fronters],
            "fronter_ids": [m.get("id") for m in fronters],
            "previous": [display(m) for m in previous], "previous_ids": [m.get("id") for m in previous]}


def selected(members: list[dict[str, Any]], wanted: list[str] | str) -> list[dict[str, Any]]:
    """The members that get a "fronting" sensor: `wanted` is "all" or names/ids."""
    if wanted == "all":
        chosen = members
    else:
        keys = set(wanted)
        chosen = [m for m in members if keys & {m.get("name"), m.get("display_name"), m.get("id"), m.get("uuid")}]
    return sorted((m for m in chosen if m.get("id")), key=lambda m: (display(m).casefold(), m["id"]))


@dataclass(frozen=True)
class Topics:
    """Where one system's retained state lives under a sink's prefix."""

    prefix: str
    short_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.short_id}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def event(self, event_type: str) -> str:
        return f"{self.base}/events/{event_type}"

    @property
    def fronters(self) -> str:
        return f"{self.base}/fronters"

    @property
    def front(self) -> str:
        return f"{self.base}/front"

    @property
    def attributes(self) -> str:
        return f"{self.base}/front/attributes"

    @property
    def count(self) -> str:
        return f"{self.base}/front/count"

    @property
    def switch(self) -> str:
        return f"{self.base}/front/switch"

    def fronting(self, member_id: str) -> str:
        return f"{self.base}/members/{member_id}/fronting"

    @property
    def device_id(self) -> str:
        return f"pkrelay_{self.short_id}"

    @property
    def discovery(self) -> str:
        return f"{DISCOVERY_PREFIX}/device/{self.device_id}/config"

    @property
    def legacy_discovery(self) -> str:
        """Where versions before device discovery announced the front sensor."""
        return f"{DISCOVERY_PREFIX}/sensor/{self.device_id}/front/config"


def components(t: Topics, members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The device's entities by component id (the id is part of Home Assistant's
    discovery id, so it must stay the same for the same entity)."""
    d = t.device_id
    out: dict[str, dict[str, Any]] = {
        # "front" under device pkrelay_<short>: the discovery id the per-entity config
        # of earlier versions had, so Home Assistant migrates that entity in place.
        "front": {"p": "sensor", "name": "Current fronter", "uniq_id": f"{d}_front",
                  "def_ent_id": f"sensor.{d}_front", "stat_t": t.front, "json_attr_t": t.attributes,
                  "ic": "mdi:account-switch"},
        "fronter_count": {"p": "sensor", "name": "Fronter count", "uniq_id": f"{d}_fronter_count",
                          "def_ent_id": f"sensor.{d}_fronter_count", "stat_t": t.count,
                          "stat_cla": "measurement", "ic": "mdi:account-multiple"},
        "switch": {"p": "event", "name": "Switch", "uniq_id": f"{d}_switch", "def_ent_id": f"event.{d}_switch",
                   "stat_t": t.switch, "evt_typ": ["switch"], "ic": "mdi:swap-horizontal"},
    }
    for member in members:
        mid = member["id"]
        out[f"member_{mid}"] = {
            "p": "binary_sensor", "name": f"{display(member)} fronting", "uniq_id": f"{d}_member_{mid}",
            "def_ent_id": f"binary_sensor.{d}_{mid}_fronting", "stat_t": t.fronting(mid), "ic": "mdi:account",
        }
    return out


def device_config(t: Topics, cmps: dict[str, dict[str, Any]], removed: dict[str, str]) -> dict[str, Any]:
    """The one retained discovery config of a system's device.

    `removed` maps component ids published before and gone now to their platform:
    Home Assistant removes a device's component when it is listed with only `p`
    (leaving it out of `cmps` would leave the entity behind).
    """
    return {
        "dev": {"ids": [t.device_id], "name": f"PluralKit system {t.short_id}", "mf": "pkrelay",
                "mdl": "PluralKit system", "sw": __version__},
        "o": ORIGIN,
        "avty_t": t.status,
        "qos": 1,
        "cmps": {**{cid: {"p": platform} for cid, platform in removed.items()}, **cmps},
    }
