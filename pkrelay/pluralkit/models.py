"""PluralKit API v2 models, used for API answers and for dispatch `data` alike.

Every field defaults to UNSET, so one Struct decodes both a full API answer (every
key present, `null` where unset) and a dispatch's partial `data` (only the changed
keys); encoding a partial emits only the keys that were present. Unknown keys are
ignored (PluralKit adds fields over time); known keys are type-checked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

Privacy = Literal["public", "private"]


class Model(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base: keyword-only, and UNSET fields are left out when encoding."""


class SystemPrivacy(Model):
    description_privacy: Privacy | UnsetType | None = UNSET
    pronoun_privacy: Privacy | UnsetType | None = UNSET
    member_list_privacy: Privacy | UnsetType | None = UNSET
    group_list_privacy: Privacy | UnsetType | None = UNSET
    front_privacy: Privacy | UnsetType | None = UNSET
    front_history_privacy: Privacy | UnsetType | None = UNSET
    name_privacy: Privacy | UnsetType | None = UNSET
    avatar_privacy: Privacy | UnsetType | None = UNSET
    banner_privacy: Privacy | UnsetType | None = UNSET


class System(Model):
    id: str | UnsetType = UNSET  # short id: 5 or 6 letters
    uuid: str | UnsetType = UNSET
    name: str | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    tag: str | UnsetType | None = UNSET
    pronouns: str | UnsetType | None = UNSET
    avatar_url: str | UnsetType | None = UNSET
    banner: str | UnsetType | None = UNSET
    color: str | UnsetType | None = UNSET
    created: datetime | UnsetType | None = UNSET
    privacy: SystemPrivacy | UnsetType | None = UNSET
    webhook_url: str | UnsetType | None = UNSET  # undocumented, owner only


class ProxyTag(Model):
    prefix: str | None = None
    suffix: str | None = None


class MemberPrivacy(Model):
    visibility: Privacy | UnsetType | None = UNSET
    name_privacy: Privacy | UnsetType | None = UNSET
    description_privacy: Privacy | UnsetType | None = UNSET
    birthday_privacy: Privacy | UnsetType | None = UNSET
    pronoun_privacy: Privacy | UnsetType | None = UNSET
    avatar_privacy: Privacy | UnsetType | None = UNSET
    banner_privacy: Privacy | UnsetType | None = UNSET
    metadata_privacy: Privacy | UnsetType | None = UNSET
    proxy_privacy: Privacy | UnsetType | None = UNSET


class Member(Model):
    id: str | UnsetType = UNSET
    uuid: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    display_name: str | UnsetType | None = UNSET
    color: str | UnsetType | None = UNSET
    birthday: str | UnsetType | None = UNSET  # YYYY-MM-DD; year 0004 means "no year"
    pronouns: str | UnsetType | None = UNSET
    avatar_url: str | UnsetType | None = UNSET
    webhook_avatar_url: str | UnsetType | None = UNSET
    banner: str | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    created: datetime | UnsetType | None = UNSET
    proxy_tags: list[ProxyTag] | UnsetType | None = UNSET
    keep_proxy: bool | UnsetType | None = UNSET
    tts: bool | UnsetType | None = UNSET
    autoproxy_enabled: bool | UnsetType | None = UNSET
    message_count: int | UnsetType | None = UNSET
    last_message_timestamp: datetime | UnsetType | None = UNSET
    privacy: MemberPrivacy | UnsetType | None = UNSET


class GroupPrivacy(Model):
    name_privacy: Privacy | UnsetType | None = UNSET
    description_privacy: Privacy | UnsetType | None = UNSET
    icon_privacy: Privacy | UnsetType | None = UNSET
    list_privacy: Privacy | UnsetType | None = UNSET
    metadata_privacy: Privacy | UnsetType | None = UNSET
    visibility: Privacy | UnsetType | None = UNSET
    banner_privacy: Privacy | UnsetType | None = UNSET


class Group(Model):
    id: str | UnsetType = UNSET
    uuid: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    display_name: str | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    created: datetime | UnsetType | None = UNSET
    icon: str | UnsetType | None = UNSET
    banner: str | UnsetType | None = UNSET
    color: str | UnsetType | None = UNSET
    privacy: GroupPrivacy | UnsetType | None = UNSET
    members: list[str] | UnsetType = UNSET  # member UUIDs, with ?with_members=true


class Switch(Model):
    """A switch with member ids: /switches lists short ids, dispatches member UUIDs."""

    id: str | UnsetType = UNSET
    timestamp: datetime | UnsetType = UNSET
    members: list[str] | UnsetType = UNSET


class Fronters(Model):
    """The current switch with full members, in their real order (/fronters)."""

    id: str | UnsetType = UNSET
    timestamp: datetime | UnsetType = UNSET
    members: list[Member] | UnsetType = UNSET


class Message(Model):
    timestamp: datetime | UnsetType = UNSET
    id: str | UnsetType = UNSET
    original: str | UnsetType | None = UNSET
    sender: str | UnsetType | None = UNSET
    channel: str | UnsetType | None = UNSET
    guild: str | UnsetType | None = UNSET
    system: System | UnsetType | None = UNSET
    member: Member | UnsetType | None = UNSET


class SystemSettings(Model):
    """Bot settings; the public subset for non-owners. Unknown keys are dropped."""

    timezone: str | UnsetType | None = UNSET
    pings_enabled: bool | UnsetType | None = UNSET
    latch_timeout: int | UnsetType | None = UNSET
    member_default_private: bool | UnsetType | None = UNSET
    group_default_private: bool | UnsetType | None = UNSET
    show_private_info: bool | UnsetType | None = UNSET
    member_limit: int | UnsetType | None = UNSET
    group_limit: int | UnsetType | None = UNSET
    case_sensitive_proxy_tags: bool | UnsetType | None = UNSET
    proxy_error_message_enabled: bool | UnsetType | None = UNSET
    hid_display_split: bool | UnsetType | None = UNSET
    hid_display_caps: bool | UnsetType | None = UNSET
    hid_list_padding: str | UnsetType | None = UNSET
    proxy_switch: str | bool | UnsetType | None = UNSET
    name_format: str | UnsetType | None = UNSET
    card_show_color_hex: bool | UnsetType | None = UNSET
    description_templates: list[str] | UnsetType | None = UNSET


class SystemGuildSettings(Model):
    guild_id: str | UnsetType = UNSET
    proxying_enabled: bool | UnsetType | None = UNSET
    tag: str | UnsetType | None = UNSET
    tag_enabled: bool | UnsetType | None = UNSET
    avatar_url: str | UnsetType | None = UNSET
    display_name: str | UnsetType | None = UNSET


class MemberGuildSettings(Model):
    guild_id: str | UnsetType = UNSET
    display_name: str | UnsetType | None = UNSET
    avatar_url: str | UnsetType | None = UNSET
    keep_proxy: bool | UnsetType | None = UNSET
    allow_autoproxy: bool | UnsetType | None = UNSET  # account events carry only this


class AutoproxySettings(Model):
    guild_id: str | UnsetType | None = UNSET
    channel_id: str | UnsetType | None = UNSET
    autoproxy_mode: str | UnsetType | None = UNSET
    autoproxy_member: str | UnsetType | None = UNSET  # member UUID in dispatches
    last_latch_timestamp: datetime | UnsetType | None = UNSET


class ErrorBody(Model):
    code: int = 0
    message: str = ""
    errors: dict[str, Any] | None = None
    retry_after: int | None = None  # milliseconds
    scope: str | None = None
