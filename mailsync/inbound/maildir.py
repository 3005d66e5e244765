"""Maildirs on disk: the ``local`` source, and the ``deliver_to`` copy of fetched mail.

Local source: messages in ``new/`` are taken (key = the file's base name, before any
``:2,`` flags) and, once committed, moved to ``cur/`` (or removed when
``keep_on_server`` is false). A crash between the commit and the move leaves a stored
file in ``new/``; the next poll recognises its name and only moves it. A file larger
than ``max_message_size`` is skipped (recorded, never read again) and stays in ``new/``.

deliver_to: each fetched message is also written to a Maildir, before the commit, under
a name derived from (server, key) alone. If the process dies after the rename into
``new/`` and before the commit, the next poll fetches the message again, finds the name
in ``new/`` or ``cur/``, and does not write a second copy. A batch is written to
``tmp/``, made durable (one syncfs(2) of the Maildir's filesystem where Linux has it,
else an fsync per file), renamed into ``new/``, and ``new/`` is fsynced once.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

from mailsync import files
from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError
from mailsync.inbound.source import (
    BATCH,
    BATCH_BYTES,
    Batch,
    Cursor,
    Incoming,
    Known,
    Skipped,
    describe,
)


def base_name(file_name: str) -> str:
    """A Maildir file's name without its ``:2,FLAGS`` info part."""
    return file_name.split(":", 1)[0]


class LocalSource:
    """A Maildir on this machine, read from ``new/``."""

    supports_idle = False

    def __init__(self, server: IncomingServer, *, batch: int = BATCH,
                 batch_bytes: int = BATCH_BYTES) -> None:
        self.server = server
        self.folder = ""
        self._batch = batch
        self._batch_bytes = batch_bytes
        self._path = Path(server.path or ".")
        self._names: dict[str, str] = {}

    def open(self) -> None:
        """Check that the path is a Maildir (has new/ and cur/)."""
        missing = [d for d in ("new", "cur") if not (self._path / d).is_dir()]
        if missing:
            raise ConnectError(f"{describe(self.server)}: not a Maildir (no "
                               f"{' and '.join(m + '/' for m in missing)})", "folder")

    def close(self) -> None:
        """Nothing to release."""

    def batches(self, cursor: Cursor, known: Known) -> Iterator[Batch]:
        """Files of new/ not stored yet, oldest name first; stored ones to move first."""
        self.open()
        self._names = {}
        with os.scandir(self._path / "new") as entries:
            for entry in entries:
                # Regular files only, never through a symbolic link: a local user who may
                # write here could link a file only mailsync may read (its store).
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    self._names[base_name(entry.name)] = entry.name
        stored = known.keys(list(self._names))
        if stored:
            yield Batch(done=tuple(k for k in self._names if k in stored))
        skipped = known.skipped() if len(stored) < len(self._names) else set()
        new = sorted(k for k in self._names if k not in stored and k not in skipped)
        messages: list[Incoming] = []
        over: list[Skipped] = []
        total = 0
        for key in new:
            raw = self._read(key, over)
            if raw is not None:
                messages.append(Incoming(key, raw))
                total += len(raw)
            if len(messages) >= self._batch or total >= self._batch_bytes:
                yield Batch(messages=tuple(messages), done=tuple(m.key for m in messages),
                            skipped=tuple(over))
                messages, over, total = [], [], 0
        if messages or over:
            yield Batch(messages=tuple(messages), done=tuple(m.key for m in messages),
                        skipped=tuple(over))

    def _read(self, key: str, over: list[Skipped]) -> bytes | None:
        """The file of ``key`` in new/; None when it is gone (taken by another reader
        meanwhile) or larger than max_message_size (then added to ``over``; it stays in
        new/). Never more than the cap + 1 bytes are read, even from a growing file."""
        cap = self.server.max_message_size
        try:
            # Not followed if a symlink was put there since the listing; not waited on if
            # a FIFO was (O_NONBLOCK), and read only once fstat says it is a regular file.
            fd = os.open(self._path / "new" / self._names[key],
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink now: as if it were gone
                return None
            raise
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            size = st.st_size
            raw = f.read(cap + 1) if size <= cap else b""
        if size > cap or len(raw) > cap:
            over.append(Skipped(key, "too_large", max(size, len(raw))))
            return None
        return raw

    def acknowledge(self, batch: Batch) -> None:
        """Move committed files to cur/ (or delete them when not kept)."""
        for key in batch.done:
            name = self._names.get(key, key)
            src = self._path / "new" / name
            try:
                if self.server.keep_on_server:
                    target = name if ":" in name else f"{name}:2,"
                    os.rename(src, self._path / "cur" / target)
                else:
                    src.unlink()
            except FileNotFoundError:
                pass

    def end_poll(self) -> None:
        """Nothing to finish."""

    def wait(self, timeout: float, cursor: Cursor, stop: threading.Event | None) -> bool:
        """No push for a local Maildir here: sleep ``timeout``; always False."""
        if stop is not None:
            stop.wait(timeout)
        else:
            time.sleep(timeout)
        return False


class MaildirWriter:
    """Writes fetched messages into a Maildir exactly once, by deterministic names."""

    def __init__(self, path: Path, server: str) -> None:
        self.path = path
        self.server = server
        self._present: set[str] | None = None

    def name_for(self, key: str) -> str:
        """The file name of the message ``key`` of this server (no '/' or ':')."""
        digest = hashlib.sha256(f"{self.server}\0{key}".encode()).hexdigest()[:32]
        return f"mailsync.{self.server}.{digest}"

    def begin_poll(self) -> None:
        """Forget the listing: files may have been moved or read since the last poll."""
        self._present = None

    def deliver(self, messages: Sequence[Incoming]) -> int:
        """Write each message not already there; returns how many files were written."""
        if not messages:
            return 0
        present = self._listing()
        todo = [(self.name_for(m.key), m.raw) for m in messages]
        todo = [(name, raw) for name, raw in todo if name not in present]
        tmp, new = self.path / "tmp", self.path / "new"
        syncfs = _syncfs() if todo else None
        for name, raw in todo:
            fd = _create(tmp / name)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view):]
                if syncfs is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if syncfs is not None:
            _sync_filesystem(syncfs, tmp)
        for name, _ in todo:
            os.rename(tmp / name, new / name)
        if todo:
            files.fsync(new)
        present.update(name for name, _ in todo)
        return len(todo)

    def _listing(self) -> set[str]:
        if self._present is None:
            files.make_dir(self.path)  # 0750 when new, as its subdirectories
            for sub in ("tmp", "new", "cur"):
                files.make_dir(self.path / sub)
            self._present = {base_name(n) for sub in ("new", "cur")
                             for n in os.listdir(self.path / sub)}
        return self._present


def _create(path: Path) -> int:
    """A new file at ``path`` (0600) to write a message to. Its name is anyone's to
    compute, so whatever is there already (a crash's leftover, or a symbolic link a local
    user planted to have mailsync overwrite its target) is removed, never written
    through: unlink removes a link, not what it points to."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o600)


# One syncfs(2) makes a whole batch of files durable at the cost of one journal commit;
# an fsync per file costs one each (1.2 ms per file on journaled ext4 here, vs 0.1 ms).
@functools.lru_cache(maxsize=1)
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), or None where the C library has no such call. Looked up at the
    first delivery: a poll that writes no file need not import ctypes (~1 ms)."""
    import ctypes  # see the docstring

    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


def _sync_filesystem(syncfs: Callable[[int], int], path: Path) -> None:
    import ctypes  # loaded by _syncfs already

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}", str(path))
    finally:
        os.close(fd)

