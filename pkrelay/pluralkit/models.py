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
    description_privacy: Privacy | None | UnsetType = UNSET
    pronoun_privacy: Privacy | None | UnsetType = UNSET
    member_list_privacy: Privacy | None | UnsetType = UNSET
    group_list_privacy: Privacy | None | UnsetType = UNSET
    front_privacy: Privacy | None | UnsetType = UNSET
    front_history_privacy: Privacy | None | UnsetType = UNSET
    name_privacy: Privacy | None | UnsetType = UNSET
    avatar_privacy: Privacy | None | UnsetType = UNSET
    banner_privacy: Privacy | None | UnsetType = UNSET


class System(Model):
    id: str | UnsetType = UNSET  # short id: 5 or 6 letters
    uuid: str | UnsetType = UNSET
    name: str | None | UnsetType = UNSET
    description: str | None | UnsetType = UNSET
    tag: str | None | UnsetType = UNSET
    pronouns: str | None | UnsetType = UNSET
    avatar_url: str | None | UnsetType = UNSET
    banner: str | None | UnsetType = UNSET
    color: str | None | UnsetType = UNSET
    created: datetime | None | UnsetType = UNSET
    privacy: SystemPrivacy | None | UnsetType = UNSET
    webhook_url: str | None | UnsetType = UNSET  # undocumented, owner only


class ProxyTag(Model):
    prefix: str | None = None
    suffix: str | None = None


class MemberPrivacy(Model):
    visibility: Privacy | None | UnsetType = UNSET
    name_privacy: Privacy | None | UnsetType = UNSET
    description_privacy: Privacy | None | UnsetType = UNSET
    birthday_privacy: Privacy | None | UnsetType = UNSET
    pronoun_privacy: Privacy | None | UnsetType = UNSET
    avatar_privacy: Privacy | None | UnsetType = UNSET
    banner_privacy: Privacy | None | UnsetType = UNSET
    metadata_privacy: Privacy | None | UnsetType = UNSET
    proxy_privacy: Privacy | None | UnsetType = UNSET


class Member(Model):
    id: str | UnsetType = UNSET
    uuid: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    display_name: str | None | UnsetType = UNSET
    color: str | None | UnsetType = UNSET
    birthday: str | None | UnsetType = UNSET  # YYYY-MM-DD; year 0004 means "no year"
    pronouns: str | None | UnsetType = UNSET
    avatar_url: str | None | UnsetType = UNSET
    webhook_avatar_url: str | None | UnsetType = UNSET
    banner: str | None | UnsetType = UNSET
    description: str | None | UnsetType = UNSET
    created: datetime | None | UnsetType = UNSET
    proxy_tags: list[ProxyTag] | None | UnsetType = UNSET
    keep_proxy: bool | None | UnsetType = UNSET
    tts: bool | None | UnsetType = UNSET
    autoproxy_enabled: bool | None | UnsetType = UNSET
    message_count: int | None | UnsetType = UNSET
    last_message_timestamp: datetime | None | UnsetType = UNSET
    privacy: MemberPrivacy | None | UnsetType = UNSET


class GroupPrivacy(Model):
    name_privacy: Privacy | None | UnsetType = UNSET
    description_privacy: Privacy | None | UnsetType = UNSET
    icon_privacy: Privacy | None | UnsetType = UNSET
    list_privacy: Privacy | None | UnsetType = UNSET
    metadata_privacy: Privacy | None | UnsetType = UNSET
    visibility: Privacy | None | UnsetType = UNSET
    banner_privacy: Privacy | None | UnsetType = UNSET


class Group(Model):
    id: str | UnsetType = UNSET
    uuid: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    display_name: str | None | UnsetType = UNSET
    description: str | None | UnsetType = UNSET
    created: datetime | None | UnsetType = UNSET
    icon: str | None | UnsetType = UNSET
    banner: str | None | UnsetType = UNSET
    color: str | None | UnsetType = UNSET
    privacy: GroupPrivacy | None | UnsetType = UNSET
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
    original: str | None | UnsetType = UNSET
    sender: str | None | UnsetType = UNSET
    channel: str | None | UnsetType = UNSET
    guild: str | None | UnsetType = UNSET
    system: System | None | UnsetType = UNSET
    member: Member | None | UnsetType = UNSET


class SystemSettings(Model):
    """Bot settings; the public subset for non-owners. Unknown keys are dropped."""

    timezone: str | None | UnsetType = UNSET
    pings_enabled: bool | None | UnsetType = UNSET
    latch_timeout: int | None | UnsetType = UNSET
    member_default_private: bool | None | UnsetType = UNSET
    group_default_private: bool | None | UnsetType = UNSET
    show_private_info: bool | None | UnsetType = UNSET
    member_limit: int | None | UnsetType = UNSET
    group_limit: int | None | UnsetType = UNSET
    case_sensitive_proxy_tags: bool | None | UnsetType = UNSET
    proxy_error_message_enabled: bool | None | UnsetType = UNSET
    hid_display_split: bool | None | UnsetType = UNSET
    hid_display_caps: bool | None | UnsetType = UNSET
    hid_list_padding: str | None | UnsetType = UNSET
    proxy_switch: str | bool | None | UnsetType = UNSET
    name_format: str | None | UnsetType = UNSET
    card_show_color_hex: bool | None | UnsetType = UNSET
    description_templates: list[str] | None | UnsetType = UNSET


class SystemGuildSettings(Model):
    guild_id: str | UnsetType = UNSET
    proxying_enabled: bool | None | UnsetType = UNSET
    tag: str | None | UnsetType = UNSET
    tag_enabled: bool | None | UnsetType = UNSET
    avatar_url: str | None | UnsetType = UNSET
    display_name: str | None | UnsetType = UNSET


class MemberGuildSettings(Model):
    guild_id: str | UnsetType = UNSET
    display_name: str | None | UnsetType = UNSET
    avatar_url: str | None | UnsetType = UNSET
    keep_proxy: bool | None | UnsetType = UNSET
    allow_autoproxy: bool | None | UnsetType = UNSET  # account events carry only this


class AutoproxySettings(Model):
    guild_id: str | None | UnsetType = UNSET
    channel_id: str | None | UnsetType = UNSET
    autoproxy_mode: str | None | UnsetType = UNSET
    autoproxy_member: str | None | UnsetType = UNSET  # member UUID in dispatches
    last_latch_timestamp: datetime | None | UnsetType = UNSET


class ErrorBody(Model):
    code: int = 0
    message: str = ""
    errors: dict[str, Any] | None = None
    retry_after: int | None = None  # milliseconds
    scope: str | None = None
