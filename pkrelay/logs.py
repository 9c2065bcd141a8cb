"""Logging setup, with a filter that masks every configured secret.

Code never logs secrets on purpose; the filter is the second line of defence, for
messages that embed foreign text (exception strings, library logs).
"""

from __future__ import annotations

import logging

MASK = "**********"

# Chatty below WARNING at the default level: a line per job (a poll tick every
# second), per HTTP request (burying the backfill bar), per migration step, per
# server start. `log_level = "debug"` (or `--verbose`) lets them through.
QUIET = ("arq.jobs", "arq.worker", "alembic", "httpx", "httpcore", "uvicorn", "uvicorn.error")


# Control characters in a message are written escaped (a newline as a backslash and n): text from
# outside (an event's field, an error from a server) can never start a line of its own
# that looks like pkrelay's. Tracebacks keep their lines.
_ESCAPED = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09} | {0x0A: "\\n", 0x0D: "\\r"}


class RedactSecrets(logging.Filter):
    """Masks every configured secret and escapes control characters in each record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message.translate(_ESCAPED)
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


class CronRetries(logging.Filter):
    """arq's "cron:poll_tick ... max retries 1 exceeded": a cron slot that a worker started
    again after losing it (a restart, a Redis blip) is skipped, and the next slot comes a
    second later. Only `--verbose` shows it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno <= logging.WARNING and "cron:" in message and "max retries" in message)


cron_retries = CronRetries()


def setup(secrets: list[str], process: str, level: str | None = None) -> None:
    """Configure the root logger once per process; call again to refresh the secrets.

    `level` is the `log_level` setting (None keeps the current one): "info" shows
    pkrelay's start, stop, reloads, warnings and failures; "debug" also pkrelay's
    details and the libraries' per-job and per-request lines.
    """
    redactor.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
    root = logging.getLogger()
    if not any(redactor in h.filters for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(redactor)
        root.handlers = [handler]
    if level is None:
        return
    verbose = level == "debug"
    root.setLevel(logging.INFO if verbose else level.upper())
    logging.getLogger("pkrelay").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    arq_worker = logging.getLogger("arq.worker")
    if verbose:
        arq_worker.removeFilter(cron_retries)
    else:
        arq_worker.addFilter(cron_retries)
