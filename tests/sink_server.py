"""A real HTTP server that plays an integration's webhook endpoint in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from litestar import Litestar, Request, Response, post

from pkrelay.redis_server import free_port
from tests.servers import ThreadedServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.perf_counter)


@dataclass
class SinkServer:
    """Records every POST; `respond` decides each answer (called off the event loop): a
    status, or (status, headers, body)."""

    respond: Callable[[int], int | tuple[int, dict[str, str], bytes]] = lambda n: 200
    received: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        @post("/hook")
        async def hook(request: Request) -> Response[bytes]:
            body = await request.body()
            self.received.append(Received(dict(request.headers), body))
            answer = await asyncio.to_thread(self.respond, len(self.received))
            status, headers, content = answer if isinstance(answer, tuple) else (answer, {}, b"")
            return Response(content, status_code=status, headers=headers)

        self._server = ThreadedServer(Litestar([hook], logging_config=None), self.port)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
