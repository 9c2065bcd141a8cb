"""How metrics and logs name a sink: never by anything derived from its URL.

A URL can carry a secret (a Home Assistant webhook id is the whole credential), and a
short hash of it is no protection: the id can be found offline by guessing. So a sink
is its `name`, or `sink<N>`, its position in `[[sinks]]` counted from 1 (the first
table is `sink1`), which the dashboard shows beside each unnamed sink. The database
keeps its own key (`_Sink.key`, a hash for unnamed sinks, as existing rows hold);
only labels change. Moving an unnamed sink in the file changes its label: a `name`
keeps it.
"""

from __future__ import annotations

from pkrelay.config import Settings, Sink


def sink_label(settings: Settings, sink: Sink) -> str:
    if sink.name:
        return sink.name
    for position, configured in enumerate(settings.sinks, start=1):
        if configured is sink or configured.key == sink.key:
            return f"sink{position}"
    return "sink?"  # not (or no longer) configured
