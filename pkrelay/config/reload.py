"""The settings of a running process, following the file while it runs.

Apart from loading because it is a different lifetime: a watcher polling stamps
every second, keeping the running settings when the file is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import os
import typing
from pathlib import Path

import msgspec

from pkrelay.config.load import read
from pkrelay.config.schema import ConfigError, Settings

log = logging.getLogger("pkrelay.config")


class LiveSettings:
    """The settings of a running process: systems and sinks follow the file.

    The owner pastes a new signing token while the bot waits for confirmation, so
    systems and sinks must change without a restart. Other sections need one.
    """

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.current = settings
        self._files: list[Path] = []
        self._notes: list[str] = []  # the removed-key warnings given already (by `load`)
        try:
            read(path, os.environ, self._files, self._notes)
        except ConfigError:
            pass  # the caller loaded `settings` already; only the file list is wanted here
        self._stamp = self._stat()
        self._on_change: typing.Callable[[Settings], None] | None = None

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        """The config file's stamp and those of its `file:` secrets."""
        stamps: list[tuple[int, int] | None] = []
        for path in (self.path, *self._files):
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def reload(self) -> Settings:
        """Re-read the file (and its `file:` secrets); on error keep the running settings and raise.

        A removed key is warned about again only when its warning is new (the key was
        added, or moved to another line): not each time a `file:` secret changes."""
        self._files = []
        notes: list[str] = []
        try:
            fresh = read(self.path, os.environ, self._files, notes)
        finally:
            self._stamp = self._stat()
        for note in notes:
            if note not in self._notes:
                log.warning("%s", note)
        self._notes = notes
        self.current = msgspec.structs.replace(self.current, systems=fresh.systems, sinks=fresh.sinks)
        return fresh

    def catch_up(self) -> bool:
        """Reload now if the file changed since the last look (as the watcher would on its
        next tick); True when the running settings changed. For whoever meets a name the
        running settings do not know yet: the receiver may have reloaded first."""
        if not self.changed():
            return False
        try:
            fresh = self.reload()
        except ConfigError as exc:
            log.error("config not reloaded, keeping the running one: %s", exc)
            return False
        log.info("config reloaded: %d systems, %d sinks", len(fresh.systems), len(fresh.sinks))
        if self._on_change is not None:
            self._on_change(fresh)
        return True

    async def watch(self, on_change: typing.Callable[[Settings], None], interval: float = 1.0) -> None:
        """Poll the file's stamp; cheap, and works on every filesystem and editor."""
        self._on_change = on_change
        while True:
            await asyncio.sleep(interval)
            self.catch_up()
