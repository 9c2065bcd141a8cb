"""HTTP_PROXY / HTTPS_PROXY / NO_PROXY for sink requests, read once per worker process.

aiohttp's `trust_env=True` reads them again for every request, in a thread, and looks
the host up in ~/.netrc in another: two thread hops per POST, which cost more than
the POST itself (tests/bench/bench_proxy.py). The environment of a worker does not
change while it runs, so here it is read when the worker starts and each sink URL's
route (through which proxy, if any) is worked out once.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


def _bypass(host: str, env: dict[str, str]) -> bool:
    """Whether NO_PROXY names this host (urllib's rules: suffixes, `*`, ports, IPs)."""
    # urllib.request has it on every platform; typeshed leaves it out.
    return bool(urllib.request.proxy_bypass_environment(host, env))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Route:
    """How to reach one URL: `proxy` (None: directly) and the proxy's credentials, which
    go on the CONNECT (`proxy_headers`, https) or on the request itself (`headers`,
    http: aiohttp sends proxy_headers on CONNECT only)."""

    proxy: str | None = None
    proxy_headers: Mapping[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Proxies:
    """The process's proxy settings (urllib's reading of the environment, NO_PROXY included)."""

    env: dict[str, str] = field(default_factory=urllib.request.getproxies_environment)
    _routes: dict[str, Route] = field(default_factory=dict)

    def route(self, url: str) -> Route:
        found = self._routes.get(url)
        if found is None:
            found = self._routes[url] = self._route(url)
        return found

    def _route(self, url: str) -> Route:
        parts = urlsplit(url)
        proxy = self.env.get(parts.scheme)
        if not proxy or (parts.hostname and _bypass(parts.hostname, self.env)):
            return Route()
        if "://" not in proxy:
            proxy = f"http://{proxy}"
        given = urlsplit(proxy)
        if given.username is None:
            return Route(proxy)
        # Credentials in the proxy URL go in Proxy-Authorization (aiohttp's proxy_auth is deprecated).
        bare = given._replace(netloc=given.netloc.rpartition("@")[2]).geturl()
        credentials = f"{unquote(given.username)}:{unquote(given.password or '')}".encode()
        auth = {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()}
        return Route(bare, auth) if parts.scheme == "https" else Route(bare, None, auth)
