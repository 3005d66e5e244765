"""Admin passwords: argon2id hashes (``mailsync admin hash-password``) and their check.

argon2-cffi's defaults are RFC 9106's second recommendation (argon2id, 64 MiB, 3 passes,
4 lanes): memory-hard, about 50 ms a check. Checks run at most :data:`CONCURRENT` at a
time, so a burst of logins cannot take the daemon's memory.
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CONCURRENT = 2
PREFIX = "$argon2id$"

_hasher = PasswordHasher()
_slots = threading.BoundedSemaphore(CONCURRENT)
_dummy: list[str] = []  # made at the first login of an unknown user


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, in the PHC string form (``$argon2id$v=19$...``)."""
    return _hasher.hash(password)


def verify(hashed: str | None, password: str) -> bool:
    """Whether ``password`` matches ``hashed``. With ``hashed`` None (no such user) a hash
    of a random password is checked all the same, so that the answer takes as long and
    says nothing about which names exist. A malformed hash is a mismatch."""
    with _slots:
        if hashed is None:
            if not _dummy:
                _dummy.append(_hasher.hash(secrets.token_hex(16)))
            hashed = _dummy[0]
            password = "\0" + password  # never matches
        try:
            return _hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def problem(hashed: str) -> str | None:
    """Why ``hashed`` cannot be an admin password hash (None when it can): it must be an
    argon2id PHC string such as ``mailsync admin hash-password`` prints."""
    if not hashed.startswith(PREFIX):
        return f"not an argon2id hash (it must start with {PREFIX}; make one with " \
               "`mailsync admin hash-password`)"
    return None
