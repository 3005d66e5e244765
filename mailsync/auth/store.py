"""The refresh tokens mailsync keeps: ``state_dir/tokens/<name>.json``, mode 0600.

``mailsync auth login NAME`` stores the first refresh token there, and every rotation by
the token endpoint replaces it at once (temp file made with O_EXCL and mode 0600, fsync,
rename, fsync of the directory: see :func:`mailsync.files.write_atomically`), before the
access token that came with it is used. Processes (the daemon, ``mailsync test``, a
login) take ``tokens/<name>.lock`` around read, refresh and write, so that no two of them
spend the same refresh token: with an endpoint that rotates on every use, the second
would be refused (and some endpoints then revoke the whole chain).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailsync.errors import OAuth2Refused
from mailsync.files import write_atomically

TOKEN_FILE_MODE = 0o600
TOKEN_DIR_MODE = 0o700
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@:-]{0,127}$")


def check_name(name: str) -> str:
    """``name`` if it can be a file name under tokens/, else ValueError naming it."""
    if not _NAME.match(name):
        raise ValueError(
            f"OAuth2 login name {name!r}: only letters, digits, '.', '_', '+', '@', ':' and '-', "
            "starting with a letter or a digit, at most 128 characters")
    return name


class RefreshTokenFile:
    """The refresh token of one login name, kept in ``state_dir/tokens/<name>.json``."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.name = check_name(name)
        self.directory = state_dir / "tokens"
        self.path = self.directory / f"{name}.json"
        self._lock_path = self.directory / f"{name}.lock"

    def __repr__(self) -> str:
        return f"RefreshTokenFile({str(self.path)!r})"

    def _make_dir(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=TOKEN_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.directory, TOKEN_DIR_MODE)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the name's lock (an flock, freed by the kernel if the process dies)."""
        self._make_dir()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, TOKEN_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> str | None:
        """The stored refresh token, or None when there is no file yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OAuth2Refused(f"OAuth2: {self.path} cannot be read ({exc.strerror})",
                                "state") from None
        try:
            document = json.loads(data)
            token = document["refresh_token"]
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise OAuth2Refused(
                f"OAuth2: {self.path} holds no refresh token; run mailsync auth login "
                f"{self.name}", "state") from None
        return token

    def save(self, refresh_token: str, token_url: str) -> None:
        """Replace the stored refresh token, durably, before anyone uses what came with it.
        An OSError (disk full, read-only) propagates: the caller must not go on."""
        self._make_dir()
        document = {"refresh_token": refresh_token, "token_url": token_url,
                    "saved_at": int(time.time())}
        write_atomically(self.path, json.dumps(document).encode() + b"\n", TOKEN_FILE_MODE)

    def stamp(self) -> tuple[int, int] | None:
        """Identifies the file's current version (inode, mtime): a login replaced it when
        this changes. None when there is no file."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)
