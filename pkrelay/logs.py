"""Logging setup, with a filter that masks every configured secret.

Code never logs secrets on purpose; the filter is the second line of defence, for
messages that embed foreign text (exception strings, library logs).
"""

from __future__ import annotations

import logging
import os

MASK = "**********"


class RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, MASK)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


redactor = RedactSecrets()


def setup(secrets: list[str], process: str) -> None:
    """Configure the root logger once per process; call again to refresh the secrets."""
    redactor.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
    root = logging.getLogger()
    if not any(redactor in h.filters for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(redactor)
        root.handlers = [handler]
    root.setLevel(os.environ.get("PKRELAY_LOG_LEVEL", "INFO").upper())
