"""How `pkrelay serve` runs the receiver: uvicorn, with a deadline on reading requests.

uvicorn has no header or body read timeout: a connection that sends a byte now and
then stays open forever, and a few thousand of them exhaust the process. Its
`limit_concurrency` does not help, since it answers 503 to the *new* requests, real
dispatches among them. So each connection gets a deadline: the request (headers and
body) must arrive in full within READ_TIMEOUT_S of the connection or of the previous
answer, or the connection is closed. PluralKit gives up after 10 s itself, so no real
dispatch takes longer. And when more than MAX_UNREAD connections are still waiting
for their headers, the oldest of them is closed: a real request's headers come in
one packet, so a flood of idle or trickling connections evicts itself, not them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

READ_TIMEOUT_S = 10.0
MAX_UNREAD = 1000
KEEP_ALIVE_S = 5


class CannotBind(Exception):
    """The port cannot be listened on; the message says why and what to change."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a taken port is one
    clear error rather than a receiver restarted over and over."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CannotBind(f"cannot listen on {host}:{port}: {reason} "
                         "(another program, or another pkrelay, uses it; set server.port)") from None


def deadline_protocol(read_timeout: float = READ_TIMEOUT_S, max_unread: int = MAX_UNREAD) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a read deadline and a cap on unread connections."""
    unread: dict[DeadlineProtocol, None] = {}  # insertion-ordered: the oldest first

    class DeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout, self._expire)
            unread[self] = None
            if len(unread) > max_unread:
                oldest = next(iter(unread))
                oldest._expire()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            unread.pop(self, None)

        def _expire(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            unread.pop(self, None)  # the body is still on the clock
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            waiting = bool(self.pipeline)  # a pipelined request is read already
            super().on_response_complete()
            if not waiting and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return DeadlineProtocol


def config(app: Any, host: str, port: int, read_timeout: float = READ_TIMEOUT_S,
           max_unread: int = MAX_UNREAD) -> uvicorn.Config:
    """The uvicorn config `pkrelay serve` runs `app` with."""
    return uvicorn.Config(
        app, host=host, port=port, access_log=False, log_config=None, server_header=False,
        timeout_graceful_shutdown=10, timeout_keep_alive=KEEP_ALIVE_S,
        http=deadline_protocol(read_timeout, max_unread),
    )

