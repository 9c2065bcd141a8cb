"""Waiting in tests: poll a condition until it holds or a deadline passes.

`until` (async) and `wait_until` (sync) share `Deadline`: both return the condition's
first truthy value, or fail with what was awaited and the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


class Deadline:
    """`timeout` seconds from now for `what`; `check` fails once they have passed."""

    def __init__(self, timeout: float, what: str, seen: Callable[[], Any] | None = None) -> None:
        self.timeout, self.what, self.seen = timeout, what, seen
        self.at = time.monotonic() + timeout

    def check(self, last: Any) -> None:
        if time.monotonic() > self.at:
            shown = self.seen() if self.seen is not None else last
            raise AssertionError(f"timed out after {self.timeout:g} s waiting for {self.what}; last seen: {shown!r}")


async def until(condition: Callable[[], Awaitable[Any] | Any], timeout: float, what: str, *,
                interval: float = 0.005, seen: Callable[[], Any] | None = None) -> Any:
    """Wait for `condition` (sync or async) to hold, checked every `interval` s; its value.
    `seen` describes the state for the failure when the condition's own value (often
    False) would say little."""
    deadline = Deadline(timeout, what, seen)
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check(value)
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, *,
               interval: float = 0.1, seen: Callable[[], Any] | None = None) -> Any:
    """`until` for code outside an event loop (threads, subprocesses, fixtures)."""
    deadline = Deadline(timeout, what, seen)
    while not (value := condition()):
        deadline.check(value)
        time.sleep(interval)
    return value
