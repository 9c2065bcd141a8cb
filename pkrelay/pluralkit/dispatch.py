"""Dispatch webhooks as PluralKit sends them (docs/pluralkit.md, "Dispatch webhooks").

The envelope is decoded first with `data` left raw, then `data` by type: a closed
tagged union would reject the event types PluralKit adds over time, and those must
be accepted and kept.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pkrelay.pluralkit import models


class Dispatch(msgspec.Struct):
    type: str
    signing_token: str | None = None  # absent in UPDATE_GROUP_MEMBERS: answered 401
    system_id: str | None = None  # null from older senders for account events
    id: str | None = None  # absent in PING
    data: msgspec.Raw = msgspec.Raw()  # absent in PING; may be JSON null


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
