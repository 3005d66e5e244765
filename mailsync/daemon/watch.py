"""Watching the config file and the spool: watchdog's observer (inotify) on the config
file's directory, the periodic stat of the file (the safety net for a missed event or a
config on a network mount), and the spool thread's :class:`Doorbell` on ``spool/new/``.

:class:`Watch` notes when the file changed (the supervisor reloads it after a short
debounce); the kernel wakes the spool thread when a file arrives in ``new/`` (an inotify
watch of the doorbell's own, not watchdog's: no Python code runs per spool file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsync.config.model import Config
from mailsync.daemon.wakeup import Doorbell

# watchdog's inotify emitter logs this at ERROR when the observer is stopped while it
# waits for an event (a race inside watchdog at every stop, harmless: watchdog PR #963
# chose a log line over an exception); the daemon's stop would end on an ERROR.
_STOP_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"


def _not_the_stop_race(record: logging.LogRecord) -> bool:
    return record.msg != _STOP_RACE


RESCAN = 5.0  # the config file's periodic check (seconds)
DEBOUNCE = 0.1  # editors write, rename and chmod in a burst: wait for quiet


class Watch:
    """The config file's state and the observer; ``poke`` wakes the supervisor (any
    thread); ``spool_wake`` is rung by the kernel when a file arrives in ``new/``."""

    def __init__(self, config_path: Path, poke: Callable[[], None],
                 spool_wake: Doorbell) -> None:
        self.config_path = config_path
        self.changed_at: float | None = None  # an event seen, not yet acted on (monotonic)
        self.file_stat: tuple[int, int, int] | None = None  # when last acted on
        self.unapplied_sha256: str | None = None  # a saved file waiting (auto_reload off)
        self._poke = poke
        self._spool_wake = spool_wake
        self._observer: Any = None
        self._spool_dir: Path | None = None
        self._next_stat = time.monotonic() + RESCAN

    def start(self, config: Config, sha256: str) -> None:
        """Watch the file's directory and ``spool/new/``; a file already changed since it
        was loaded (its content not ``sha256``) is noted as changed now."""
        # Imported here: watchdog starts nothing on import, but only the daemon needs it.
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        inotify_log = logging.getLogger("watchdog.observers.inotify")
        if _not_the_stop_race not in inotify_log.filters:
            inotify_log.addFilter(_not_the_stop_race)
        watch = self
        # The directory the path names, symlinks not followed: a config that is a symlink
        # swapped by renaming another one beside it (Kubernetes' ConfigMaps) changes there.
        config_dir = self.config_path.absolute().parent
        config_name = self.config_path.name

        class ConfigEvents(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Not "opened" or "closed_no_write": reading the file must not reload it.
                if event.event_type not in ("created", "modified", "moved", "deleted",
                                            "closed"):
                    return
                paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "")
                                                                  or "")}
                if (any(Path(p).name == config_name for p in paths if p)
                        or watch.stat() != watch.file_stat):
                    watch.changed_at = time.monotonic()
                    watch._poke()

        self._spool_dir = config.daemon.spool_dir
        self._spool_wake.watch(self._spool_dir / "new")
        observer = Observer()
        observer.schedule(ConfigEvents(), str(config_dir), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self.file_stat = self.stat()
        if self.sha256() != sha256:
            # Edited between loading and watching: no event will come for that edit.
            self.changed_at = time.monotonic()

    def reconfigure(self, config: Config) -> None:
        """Watch ``config``'s ``spool/new/`` (when it moved)."""
        spool_dir = config.daemon.spool_dir
        if self._observer is None or spool_dir == self._spool_dir:
            return
        self._spool_wake.watch(spool_dir / "new")
        self._spool_dir = spool_dir

    def debounced(self, now: float) -> str | None:
        """"file change" once the file has been quiet for DEBOUNCE after an event."""
        changed_at = self.changed_at
        if changed_at is not None and now - changed_at >= DEBOUNCE:
            self.changed_at = None
            return "file change"
        return None

    def periodic(self, now: float) -> str | None:
        """Every RESCAN: "file change (periodic check)" when the file's stat differs from
        when it was last acted on and no event is waiting."""
        if now < self._next_stat:
            return None
        self._next_stat = now + RESCAN
        if self.stat() != self.file_stat and self.changed_at is None:
            return "file change (periodic check)"
        return None

    def acted(self) -> None:
        """The file as it is now was acted on (reloaded, or said to wait)."""
        self.file_stat = self.stat()

    def sha256(self) -> str | None:
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.config_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()

    def join(self, timeout: float) -> None:
        if self._observer is not None:
            self._observer.join(timeout)
