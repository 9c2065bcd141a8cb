"""What a system shows publicly: for `public_only` sinks (an envelope stripped of
everything the system marked private) and the public front (receiver/public.py).

The rule is fail-closed: a field is kept only when the entity's privacy settings say
it is public. When pkrelay does not know an entity's privacy (no `privacy` object, as
in a dispatch's partial `data`, or an API answer without a token), every field that
*can* be private is removed. Owner-only event types (settings, guild settings,
autoproxy, linked accounts) carry nothing public and are not delivered at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Event types whose content is only ever the owner's business.
OWNER_ONLY = frozenset({
    "UPDATE_SETTINGS", "UPDATE_SYSTEM_GUILD", "UPDATE_MEMBER_GUILD", "UPDATE_AUTOPROXY",
    "LINK_ACCOUNT", "UNLINK_ACCOUNT", "SUCCESSFUL_IMPORT",
})

# privacy key -> the fields it guards, per entity kind (PluralKit API v2 semantics).
MEMBER_FIELDS = {
    # PluralKit's public view has no display name for a name-private member; its
    # real name is private too (fail-closed: neither is shown).
    "name_privacy": ("name", "display_name"),
    "description_privacy": ("description",),
    "birthday_privacy": ("birthday",),
    "pronoun_privacy": ("pronouns",),
    "avatar_privacy": ("avatar_url", "webhook_avatar_url"),
    "banner_privacy": ("banner",),
    "metadata_privacy": ("created", "message_count", "last_message_timestamp"),
    "proxy_privacy": ("proxy_tags",),
}
SYSTEM_FIELDS = {
    "name_privacy": ("name",),
    "description_privacy": ("description",),
    "pronoun_privacy": ("pronouns",),
    "avatar_privacy": ("avatar_url",),
    "banner_privacy": ("banner",),
}
GROUP_FIELDS = {
    "name_privacy": ("name",),
    "description_privacy": ("description",),
    "icon_privacy": ("icon",),
    "banner_privacy": ("banner",),
    "list_privacy": ("members",),
    "metadata_privacy": ("created",),
}
# Owner-only fields that no privacy setting makes public.
ALWAYS_PRIVATE = ("privacy", "webhook_url", "keep_proxy", "tts", "autoproxy_enabled")


def _visible(obj: Any) -> dict[str, Any] | None:
    """The entity's privacy settings when it may be shown at all, else None."""
    if not isinstance(obj, dict):
        return None
    privacy = obj.get("privacy")
    return privacy if isinstance(privacy, dict) else {}


def _public(obj: dict[str, Any], privacy: dict[str, Any], guards: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    hidden = set(ALWAYS_PRIVATE)
    for key, fields in guards.items():
        if privacy.get(key) != "public":
            hidden.update(fields)
    return {k: v for k, v in obj.items() if k not in hidden}


def public_member(member: Any) -> dict[str, Any] | None:
    privacy = _visible(member)
    if privacy is None or privacy.get("visibility") != "public":
        return None  # hidden members, and members whose visibility is not known
    return _public(member, privacy, MEMBER_FIELDS)


def public_group(group: Any) -> dict[str, Any] | None:
    privacy = _visible(group)
    if privacy is None or privacy.get("visibility") != "public":
        return None
    return _public(group, privacy, GROUP_FIELDS)


def public_system(system: Any) -> dict[str, Any] | None:
    privacy = _visible(system)
    return None if privacy is None else _public(system, privacy, SYSTEM_FIELDS)


def front_is_public(system: Any) -> bool:
    privacy = _visible(system)
    return privacy is not None and privacy.get("front_privacy") == "public"


def _message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        return None
    # The sender's Discord account is private; system and member by their settings.
    kept = {k: v for k, v in message.items() if k != "sender"}
    kept["system"] = public_system(message.get("system"))
    kept["member"] = public_member(message.get("member"))
    return kept


def public_switch(switch: Any, system: Any) -> dict[str, Any] | None:
    """Fronters only when the system's front is public, and then only public members."""
    if not isinstance(switch, dict):
        return None
    members = switch.get("members")
    if not front_is_public(system):
        members = []
    elif isinstance(members, list):
        members = [m for m in (public_member(m) for m in members if isinstance(m, dict)) if m is not None]
    return {**switch, "members": members}


def strip(envelope: dict[str, Any], system: dict[str, Any] | None) -> dict[str, Any] | None:
    """The envelope as a public page may show it, or None when nothing of it is public.

    `system` is the system as pkrelay last stored it (its privacy decides whether the
    front is public); None when unknown, which hides the front.
    """
    event_type = envelope["type"]
    if event_type in OWNER_ONLY:
        return None
    data = envelope.get("data")
    if not isinstance(data, dict):  # null, or an event logged as text (workers.record): not judged, withheld
        data = None
    if event_type.endswith("_MESSAGE"):
        return {**envelope, "data": _message(data), "entity": _message(envelope.get("entity")),
                "previous": None}
    if event_type.endswith(("SWITCH", "SWITCHES")):
        entity = public_switch(envelope.get("entity"), system)
        shown = {m["uuid"] for m in (entity or {}).get("members", []) if "uuid" in m}
        if isinstance(data, dict) and "members" in data:  # a dispatch lists member UUIDs
            data = {**data, "members": [m for m in data["members"] if m in shown]}
        return {**envelope, "entity": entity, "previous": public_switch(envelope.get("previous"), system),
                "data": data}
    clean = {"SYSTEM": public_system, "MEMBER": public_member, "GROUP": public_group}.get(
        event_type.split("_", 1)[-1].removesuffix("_MEMBERS"))
    if clean is None:
        return None  # an unknown type: its privacy cannot be judged
    entity, previous = clean(envelope.get("entity")), clean(envelope.get("previous"))
    if entity is None and previous is None:
        return None  # a hidden entity, or one whose privacy is not known
    if isinstance(data, dict):  # partial: public only as far as the full entity says
        data = {k: v for k, v in data.items() if entity is not None and k in entity}
    return {**envelope, "entity": entity, "previous": previous, "data": data}
