"""VERP: the signed envelope sender ``bounce+<id>.<signature>@<alias domain>`` and its key.

A bounce names the message it is about in the address it is sent to (VERP). Message ids
are sequential, so an unsigned ``bounce+1@domain`` lets anyone mark message 1 bounced;
as BATV and SRS do, the address carries a signature: the first 50 bits of
HMAC-SHA256(key, ``mailsync-verp-1:<id>``), in lowercase base32 (10 characters of
``a-z2-7``), so that a server changing the case of the local part does not break it.
50 bits make guessing hopeless: every guess is one mail through a mail server, and even
a million of them a second would need 18 years on average to find one signature.

The key is 32 random bytes in ``<state_dir>/verp.key`` (mode 0600), created once by the
first process that sends or polls and read by every later one; it is never logged and
never shown (``repr`` hides it). Losing it means that bounces of messages sent before are
no longer recognised; messages sent from then on are signed with the new key.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from pathlib import Path

from mailsync.config.model import Config
from mailsync.errors import StoreError
from mailsync.values import valueclass

log = logging.getLogger("mailsync.verp")

KEY_NAME = "verp.key"
KEY_BYTES = 32
SIGNATURE_CHARS = 10  # base32: 5 bits each, 50 bits
MAX_ID = 2**63 - 1  # SQLite's largest integer: no message has a larger id

_ID = re.compile(r"[0-9]{1,19}")
_SIGNATURE = re.compile(rf"[a-z2-7]{{{SIGNATURE_CHARS}}}")
# RFC 4648 base32 (lowercase) of every 10-bit value, two characters each: the signature is
# the base32 of the MAC's first 50 bits, made with five lookups (base64.b32encode is pure
# Python, and costs more than the HMAC).
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


class VerpKey:
    """The secret VERP addresses are signed with. ``repr`` and ``str`` never show it."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a VERP key is {KEY_BYTES} bytes (got {len(secret)})")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return "VerpKey(<secret>)"

    def sign(self, message_id: int) -> str:
        """The signature of ``message_id``: 10 lowercase base32 characters."""
        # hmac.digest: OpenSSL's one-shot HMAC, the same bytes as hmac.new() at half the cost.
        mac = hmac.digest(self._secret, b"mailsync-verp-1:%d" % message_id, "sha256")
        bits = int.from_bytes(mac[:7]) >> 6  # the first 50 bits
        pairs = _PAIRS
        return (pairs[bits >> 40] + pairs[(bits >> 30) & 1023] + pairs[(bits >> 20) & 1023]
                + pairs[(bits >> 10) & 1023] + pairs[bits & 1023])

    def verify(self, message_id: int, signature: str) -> bool:
        """Whether ``signature`` (any case) is that of ``message_id``; constant time."""
        given = signature.lower().encode("utf-8", "replace")
        return hmac.compare_digest(self.sign(message_id).encode("ascii"), given)


@valueclass
class VerpAddress:
    """What a ``bounce+...@<alias domain>`` address says: the message id it names and
    whether its signature is right (``problem`` None), or why not (``unsigned``,
    ``bad_signature``)."""

    message_id: int
    problem: str | None

    @property
    def signed(self) -> bool:
        return self.problem is None


def verp_sender(config: Config, key: VerpKey, message_id: int,
                signature: str | None = None) -> str | None:
    """The envelope sender ``bounce+<id>.<signature>@<alias domain>``, or None without a
    bounce local part (the caller then uses the From address as MAIL FROM).

    ``signature``: ``key.sign(message_id)`` made earlier (when the message was queued, in
    the pickup process: signing costs the senders' process more than it seems, as every
    microsecond there is taken from the threads waiting for the GIL)."""
    alias = config.alias_domain
    if alias is None or not alias.bounce:
        return None
    if not 0 <= message_id <= MAX_ID:
        raise ValueError(f"message id must be in 0..{MAX_ID} (got {message_id})")
    return f"{alias.bounce}+{message_id}.{signature or key.sign(message_id)}@{alias.domain}"


def read_verp(config: Config, key: VerpKey | None, address: str) -> VerpAddress | None:
    """The VERP address ``address`` (bare or in ``<>``) is, signed or not; None when it is
    not one of ours at all (another local part or domain, no id, an id out of range).

    Local part and domain compare case-insensitively: servers may change their case.
    Without a key (``None``) no signature is right.
    """
    alias = config.alias_domain
    if alias is None or not alias.bounce:
        return None
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    local, at, domain = addr.rpartition("@")
    if not at or domain.rstrip(".").lower() != alias.domain.rstrip(".").lower():
        return None
    prefix = f"{alias.bounce}+".lower()
    if not local.lower().startswith(prefix):
        return None
    digits, dot, signature = local[len(prefix):].partition(".")
    if not _ID.fullmatch(digits) or int(digits) > MAX_ID:
        return None
    message_id = int(digits)
    if not dot:
        return VerpAddress(message_id, "unsigned")
    if key is None or not _SIGNATURE.fullmatch(signature.lower()) \
            or not key.verify(message_id, signature):
        return VerpAddress(message_id, "bad_signature")
    return VerpAddress(message_id, None)


def parse_verp(config: Config, key: VerpKey | None, address: str) -> int | None:
    """The message id a correctly signed VERP address stands for; None otherwise."""
    found = read_verp(config, key, address)
    return found.message_id if found is not None and found.signed else None


# -- the key file ----------------------------------------------------------------------------

def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_NAME


def load_key(state_dir: Path) -> VerpKey:
    """The key in ``state_dir/verp.key``, made first when there is none. StoreError when
    it cannot be read or written or has the wrong size: never a new key in place of an
    unreadable one, since that would silently stop recognising the bounces of messages
    in flight.

    A new key is written to a private temporary file (O_CREAT|O_EXCL, mode 0600) and
    linked into place, so that two processes starting at once agree on one key and no
    process ever reads a half-written one.
    """
    path = key_path(state_dir)
    key = existing_key(state_dir)
    if key is not None:
        return key
    try:
        _create(path)
        return _read(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the VERP key: {exc.strerror}") from None


def existing_key(state_dir: Path) -> VerpKey | None:
    """The key in ``state_dir/verp.key``, or None when there is none (StoreError when it
    cannot be read or has the wrong size)."""
    path = key_path(state_dir)
    try:
        return _read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the VERP key: {exc.strerror}") from None


def _read(path: Path) -> VerpKey:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise StoreError(
            f"{path}: the VERP key must be {KEY_BYTES} bytes, found {len(data)}"
            f"{' or more' if len(data) > KEY_BYTES else ''}: restore it from the backup of "
            f"the state directory, or remove it to make a new key (bounces of messages sent "
            f"before are then no longer recognised)")
    if mode & 0o037:
        log.warning("%s: the VERP key is mode %04o: anyone who can read it can forge "
                    "bounces; chmod 600 it", path, mode & 0o7777)
    return VerpKey(data)


def _create(path: Path) -> None:
    # os.urandom: what secrets.token_bytes reads (secrets itself imports random, base64
    # and more, on every start of a command that loads the key).
    tmp = path.with_name(f".{KEY_NAME}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process made it first: theirs is the key
        log.info("%s: a new VERP key was made (keep it with the state directory)", path)
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["KEY_NAME", "MAX_ID", "VerpAddress", "VerpKey", "existing_key", "key_path",
           "load_key", "parse_verp", "read_verp", "verp_sender"]
