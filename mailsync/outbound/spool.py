"""The spool directory: how applications hand messages to the daemon (docs/design.md §2).

Writers put a file in ``tmp/`` and rename it into ``new/`` (atomic on one filesystem);
the daemon scans ``new/``, parses each file with the pure :func:`parse` (the reading of a
file's content, :mod:`mailsync.outbound.spoolparse`), and moves refused files to
``rejected/`` with a ``NAME.error`` beside them. This module is the directory side: drop,
scan, reject, remove.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsync import files
from mailsync.outbound.types import Rejection
from mailsync.values import valueclass

if TYPE_CHECKING:
    from mailsync.outbound.spoolparse import parse

__all__ = ["SUFFIXES", "Attachment", "drop", "drop_eml", "ensure_dirs", "parse", "reject",
           "remove", "scan"]

SUFFIXES = (".eml", ".json")

_NAME_TIME = re.compile(r"(\d{19})\.")                # names made by _spool()


def __getattr__(name: str) -> Any:
    """``parse``, imported on first use (then a plain attribute): the email package it
    needs costs ~5 ms that ``run --once`` with an empty spool does not pay (#19)."""
    if name == "parse":
        # On first use: see the docstring.
        from mailsync.outbound.spoolparse import parse

        globals()["parse"] = parse
        return parse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@valueclass
class Attachment:
    """A file attached to a message given to :func:`drop`."""

    filename: str
    content_type: str
    content: bytes


def ensure_dirs(spool_dir: Path) -> None:
    """Create ``tmp/``, ``new/`` and ``rejected/`` (permissions are the operator's choice)."""
    for sub in ("tmp", "new", "rejected"):
        (spool_dir / sub).mkdir(parents=True, exist_ok=True)


def drop(spool_dir: Path, *, user: str, to: Sequence[str], subject: str,
         text: str | None = None, html: str | None = None, account: str | None = None,
         cc: Sequence[str] = (), bcc: Sequence[str] = (), reply_to: str | None = None,
         headers: Mapping[str, str] | None = None,
         attachments: Sequence[Attachment | Path] = (), idempotency_key: str | None = None,
         durable: bool = False) -> Path:
    """Spool a message as a ``.json`` file and return its path in ``new/``.

    Arguments are checked with the daemon's own parser, so a bad value raises
    ``ValueError`` here instead of ending in ``rejected/``. ``durable`` fsyncs the file.
    """
    # A bare string is a Sequence[str] too: take it as one address, not as characters.
    to, cc, bcc = ([v] if isinstance(v, str) else list(v) for v in (to, cc, bcc))
    doc: dict[str, Any] = {
        "user": user, "account": account, "to": to, "cc": cc or None, "bcc": bcc or None,
        "subject": subject, "text": text, "html": html, "reply_to": reply_to,
        "headers": dict(headers) if headers else None, "idempotency_key": idempotency_key,
        "attachments": [_attachment_doc(a) for a in attachments] or None}
    data = json.dumps({k: v for k, v in doc.items() if v is not None}, ensure_ascii=False)
    return _spool(spool_dir, ".json", data.encode("utf-8"), durable)


def drop_eml(spool_dir: Path, message: bytes, *, durable: bool = False) -> Path:
    """Spool a complete RFC 5322 message (with ``X-Mailsync-User``) as an ``.eml`` file."""
    return _spool(spool_dir, ".eml", bytes(message), durable)


def _attachment_doc(item: Attachment | Path) -> dict[str, str]:
    if isinstance(item, Path):
        import mimetypes  # only for a file attached by path: not every drop's import

        ctype = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        item = Attachment(item.name, ctype, item.read_bytes())
    import base64  # only for a drop with attachments: not `run --once`'s import

    return {"filename": item.filename, "content_type": item.content_type,
            "content_base64": base64.b64encode(item.content).decode("ascii")}


def _spool(spool_dir: Path, suffix: str, data: bytes, durable: bool) -> Path:
    # Time first so that names sort oldest first; pid and randomness make them unique.
    from mailsync.outbound.spoolparse import parse  # on first use (see __getattr__)

    # os.urandom is what secrets.token_hex reads, without importing secrets (and random,
    # base64, hmac with it) on every start.
    name = f"{time.time_ns():019d}.{os.getpid()}.{os.urandom(6).hex()}{suffix}"
    checked = parse(name, data, max_size=sys.maxsize)
    if isinstance(checked, Rejection):
        raise ValueError(f"{checked.reason}: {checked.detail}")
    tmp, final = spool_dir / "tmp" / name, spool_dir / "new" / name
    # The application's umask decides the file's mode (the spool is its, not mailsync's).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    files.write_and_rename(fd, tmp, final, data, durable=durable)
    return final


def _listed(name: str) -> bool:
    """Whether :func:`scan` lists the entry ``name`` of ``new/``."""
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def waiting(spool_dir: Path) -> bool:
    """Whether :func:`scan` would list anything: the first such entry answers, so a full
    spool is not listed and sorted to learn it is not empty."""
    with os.scandir(spool_dir / "new") as entries:
        return any(_listed(entry.name) for entry in entries)


def scan(spool_dir: Path) -> list[Path]:
    """The ``.eml``/``.json`` entries waiting in ``new/``, oldest first.

    Dotfiles and other names are skipped. Entries that are not regular files (symlinks,
    FIFOs, directories) are listed too, so that the ingester rejects them instead of
    leaving them there forever; it never follows or blocks on one. Names made by
    :func:`drop` carry their time; others use the entry's own mtime (a symlink's, not its
    target's).
    """
    new = spool_dir / "new"
    return [new / name for name in scan_names(spool_dir)]


def scan_names(spool_dir: Path) -> list[str]:
    """:func:`scan`'s entries by name (a path each costs ~1 µs: a pass makes its batch's
    when it comes to it, not 5,000 before its first batch)."""
    found: list[tuple[int, str]] = []
    with os.scandir(spool_dir / "new") as entries:
        for entry in entries:
            name = entry.name
            if not _listed(name):
                continue
            try:
                stamp = _NAME_TIME.match(name)
                key = int(stamp.group(1)) if stamp else \
                    entry.stat(follow_symlinks=False).st_mtime_ns
            except FileNotFoundError:   # taken by someone else meanwhile
                continue
            found.append((key, name))
    found.sort()
    return [name for _, name in found]


def reject(spool_dir: Path, path: Path, rejection: Rejection, *,
           now: datetime | None = None) -> Path:
    """Move a refused file to ``rejected/`` and write ``NAME.error`` with the reason;
    both end 0640 and owned by the daemon's user, whatever the umask and the writer.

    An entry that is not a regular file (a symlink, FIFO or directory) is moved as it
    is: a symlink as the link, never followed; none is opened, copied or chmod'ed.
    """
    target_dir = spool_dir / "rejected"
    target_dir.mkdir(exist_ok=True)
    target, n = target_dir / path.name, 0
    # lexists: a dangling symlink already in rejected/ is a name taken too.
    while os.path.lexists(target) or os.path.lexists(target.with_name(target.name + ".error")):
        n += 1
        target = target_dir / f"{path.stem}.{n}{path.suffix}"
    os.rename(path, target)
    if stat.S_ISREG(os.lstat(target).st_mode):
        try:
            # The app's own file, made the daemon's (0640: the spool group may read it, no
            # one else): a chmod, or a copy replacing it when another user owns it.
            files.own_copy(target)
        except OSError as exc:
            # Only on this failure: not logging's import on every `mailsync send`.
            import logging

            logging.getLogger("mailsync.spool").warning(
                "%s: cannot make the rejected file 0640: %s", target, exc)
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    detail = " ".join(rejection.detail.splitlines())
    files.write_new(target.with_name(target.name + ".error"),
                    f"{rejection.reason}: {detail}\nrejected_at: {when}\n".encode())
    return target


def remove(path: Path) -> None:
    """Delete a spool file once its message is safely stored (already gone is fine)."""
    path.unlink(missing_ok=True)
