"""Dispatch webhooks as PluralKit sends them (docs/pluralkit.md, "Dispatch webhooks").

The envelope is decoded first with `data` left raw, then `data` by type: a closed
tagged union would reject the event types PluralKit adds over time, and those must
be accepted and kept.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from pkrelay.pluralkit import models


class Dispatch(msgspec.Struct):
    type: str
    signing_token: str | None = None  # absent in UPDATE_GROUP_MEMBERS: answered 401
    system_id: str | None = None  # null from older senders for account events
    id: str | None = None  # absent in PING
    data: msgspec.Raw = msgspec.Raw()  # absent in PING; may be JSON null


# The shapes PluralKit's fields take. Checked at the edge, since these values go on to
# API paths, log lines and topics: a type of capitals (new types appear, so any such
# name), an entity id that is a UUID, a 5-6 letter short id or a Discord snowflake.
TYPE = re.compile(r"[A-Z][A-Z_]{0,63}")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ENTITY_ID = re.compile(rf"{UUID.pattern}|[a-zA-Z]{{5,6}}|[0-9]{{1,20}}")


def malformed(dispatch: Dispatch) -> str | None:
    """What is wrong with the dispatch's fields, else None."""
    if not TYPE.fullmatch(dispatch.type):
        return "`type` must be a PluralKit event type (capitals and underscores, at most 64)"
    if dispatch.system_id is not None and not UUID.fullmatch(dispatch.system_id):
        return "`system_id` must be a UUID or null"
    if dispatch.id is not None and not ENTITY_ID.fullmatch(dispatch.id):
        return "`id` must be a UUID, a 5-6 letter PluralKit id, a Discord id or null"
    return None


# What `data` holds, per type. None: the type carries no data (null or absent).
DATA_MODELS: dict[str, type | None] = {
    "PING": None,
    "UPDATE_SYSTEM": models.System,
    "UPDATE_SETTINGS": models.SystemSettings,
    "CREATE_MEMBER": models.Member,
    "UPDATE_MEMBER": models.Member,
    "DELETE_MEMBER": None,
    "CREATE_GROUP": models.Group,
    "UPDATE_GROUP": models.Group,
    "UPDATE_GROUP_MEMBERS": None,
    "DELETE_GROUP": None,
    "LINK_ACCOUNT": None,
    "UNLINK_ACCOUNT": None,
    "UPDATE_SYSTEM_GUILD": models.SystemGuildSettings,
    "UPDATE_MEMBER_GUILD": models.MemberGuildSettings,
    "CREATE_MESSAGE": models.Message,
    "CREATE_SWITCH": models.Switch,
    "UPDATE_SWITCH": models.Switch,
    "DELETE_SWITCH": None,
    "DELETE_ALL_SWITCHES": None,
    "SUCCESSFUL_IMPORT": None,
    "UPDATE_AUTOPROXY": models.AutoproxySettings,
}

_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(model | None) for name, model in DATA_MODELS.items() if model is not None
}
_any_object = msgspec.json.Decoder(dict[str, Any] | None)


def decode_data(event_type: str, raw: msgspec.Raw) -> Any:
    """`data` as its model (a partial: only the keys sent are set), or None.

    Types without data ignore whatever they carry; unknown types must carry a JSON
    object or null. Raises msgspec.DecodeError (or ValidationError) on a mismatch.
    """
    if not raw:
        return None
    decoder = _decoders.get(event_type)
    if decoder is not None:
        return decoder.decode(raw)
    if event_type in DATA_MODELS:
        return None
    return _any_object.decode(raw)
