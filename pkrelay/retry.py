"""Trying again: one backoff schedule and one base for errors worth retrying."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `base` before the first retry, doubling up to `cap`.

    With jitter each delay is drawn from its upper half, so many clients that failed
    together do not come back together.
    """

    base: float
    cap: float
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1 for the first)."""
        seconds = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        return seconds * random.uniform(0.5, 1.0) if self.jitter else seconds


class Retryable(Exception):
    """A failure that may pass if tried again later; `retry_in` is when, if known."""

    retry_in: float | None = None
