"""The pkrelay receiver as `pkrelay serve` builds it, for uvicorn's --factory."""

import os
from pathlib import Path

from pkrelay import config
from receiver import server
from receiver.app import create_app

# `pkrelay serve`'s HTTP protocol (uvicorn's httptools one with a read deadline), for --http.
protocol = server.deadline_protocol()


def app():  # type: ignore[no-untyped-def]
    path = Path(os.environ["PKRELAY_CONFIG"])
    settings = config.load(path)
    return create_app(config.LiveSettings(path, settings), settings.redis.url)
