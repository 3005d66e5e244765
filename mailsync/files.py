"""Modes of the files and directories mailsync makes, whatever the umask.

The store holds every message's content (its WAL too, the content of another app's 0600
spool file included): directories mailsync creates are 0750 and files 0640 (group read
is on purpose: operators in the daemon's group run ``mailsync history``), set with
chmod after creating them, so neither a loose umask (022) widens them nor a strict one
narrows them. Existing paths keep their mode: :func:`tighten` only takes away what
other users may do and warns about the rest.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640


def make_dir(path: Path) -> None:
    """Create the directory ``path`` (and missing parents) with mode 0750; an existing one
    keeps its mode. Parents get the usual mode: they are not mailsync's to restrict."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if path.is_dir():
            return  # made by another process meanwhile
        raise
    os.chmod(path, DIR_MODE)


def create_file(path: Path, mode: int = FILE_MODE) -> int:
    """Create ``path`` (which must not exist) with exactly ``mode``; its descriptor (O_WRONLY)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` into the new file ``path`` (mode 0640)."""
    fd = create_file(path, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_atomically(path: Path, data: bytes, mode: int = FILE_MODE, *,
                     durable: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once (temp file, fsync, rename, fsync of the
    directory): a crash leaves the old content or the new one, never a part.

    ``durable=False`` skips both fsyncs, for a file a reader can do without: a crash may
    then leave it empty or torn (the reader must ignore that), never with another name's
    content or mode."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_and_rename(create_file(tmp, mode), tmp, path, data, durable=durable)


def write_and_rename(fd: int, tmp: Path, final: Path, data: bytes, *,
                     durable: bool) -> None:
    """Write ``data`` into the new file ``tmp`` (open as ``fd``, which this closes), then
    rename it to ``final``; ``tmp`` is removed if that fails. ``durable``: the data is
    fsynced before the rename, and ``final``'s directory after it (the rename itself)."""
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync(final.parent)


def fsync(path: Path) -> None:
    """Flush ``path`` to the disk: a file's data, or a directory's names (a rename or a
    link made in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def own_copy(path: Path, mode: int = FILE_MODE) -> None:
    """Make ``path`` a file of this process's user with ``mode``: a chmod when it is ours,
    else (EPERM) a copy into a new file that replaces it (rename over it)."""
    try:
        os.chmod(path, mode, follow_symlinks=False)
        return
    except PermissionError:
        pass
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
    tmp = path.with_name(f".{path.name}.{os.getpid()}.copy")
    tmp.unlink(missing_ok=True)
    # Never blocks on a FIFO renamed over it, never copies what is not a regular file.
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        dst = create_file(tmp, mode)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
        finally:
            os.close(dst)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(src)


def looser(mode: int, expected: int) -> int:
    """The permission bits of ``mode`` that ``expected`` does not grant (pure)."""
    return stat.S_IMODE(mode) & ~expected & 0o777


def tighten(state_dir: Path, files: Iterable[Path]) -> list[str]:
    """Check the modes of ``state_dir`` (0750) and of ``files`` (0640, those that exist):
    remove what they grant other users (never legitimate for mail; a chmod this process
    may be refused) and log a WARNING for each one that was more open. The warnings."""
    said: list[str] = []
    for path, expected in ((state_dir, DIR_MODE), *((f, FILE_MODE) for f in files)):
        try:
            mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            continue
        extra = looser(mode, expected)
        if not extra:
            continue
        text = f"{path} has mode {mode:04o}, more open than {expected:04o}"
        if extra & 0o007:
            try:
                os.chmod(path, mode & ~0o007, follow_symlinks=False)
                text += f"; now {mode & ~0o007:04o} (other users may not read it)"
            except OSError as exc:
                text += f"; cannot remove other users' access ({exc.strerror})"
        if extra & 0o070:
            what = "write" if extra & 0o020 else "execute"
            text += f"; its group may {what} it: chmod {expected:04o} unless on purpose"
        # Here, only when there is something to say: not logging's import on every send.
        import logging

        logging.getLogger("mailsync.files").warning("%s", text)
        said.append(text)
    return said
