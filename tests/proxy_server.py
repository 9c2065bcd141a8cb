"""A tiny forwarding HTTP proxy for tests: absolute-form requests (http://) and CONNECT
tunnels (https://), each connection recorded, then piped to its target."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ProxyServer:
    seen: list[str] = field(default_factory=list)  # each connection's first request line
    auth: list[str | None] = field(default_factory=list)  # its Proxy-Authorization, if any
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        line, *fields = head.decode("latin-1").split("\r\n")
        self.seen.append(line)
        self.auth.append(next((f.split(":", 1)[1].strip() for f in fields
                               if f.lower().startswith("proxy-authorization:")), None))
        method, target, version = line.split(" ")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
            rest = "\r\n".join(f for f in fields if not f.lower().startswith("proxy-"))
            up_writer.write(f"{method} {origin} {version}\r\n{rest}".encode("latin-1"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
