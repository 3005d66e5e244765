"""Spool → store: take the files in ``spool/new``, queue them or reject them, exactly once.

Each batch of files is committed to the store in one transaction, which also claims each
file, and only then are the files removed (or moved to ``rejected/``); their claims are
released by the next batch's transaction, or at the end of the pass. A crash in between
leaves files that the store has claimed (same name, content hash, inode and ctime): the
next pass finishes removing them instead of queueing them twice. A file dropped again
later under the same name and content is a new message; only an ``idempotency_key`` seen
before suppresses one, visibly (an event on the earlier message,
``mailsync_spool_duplicates_total``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from mailsync.config.model import Config
from mailsync.errors import StoreUnavailable
from mailsync.outbound import compose, routing, spool
from mailsync.outbound.dkim import Signer
from mailsync.outbound.identity import Submitters
from mailsync.outbound.queue import FileId, NewMessage, OutboundStore, RejectedMessage
from mailsync.outbound.types import IngestStats, Rejection
from mailsync.outbound.verp import VerpKey
from mailsync.telemetry.metrics import Metrics
from mailsync.values import valueclass

log = logging.getLogger("mailsync.ingest")

BATCH = 256


_BARE_LF = re.compile(rb"(?<!\r)\n")


def _crlf(data: bytes) -> bytes:
    """SMTP wants CRLF line ends; smtplib sends bytes as they are, bare LFs included."""
    if b"\n" not in data.replace(b"\r\n", b""):
        return data  # the common case, checked at C speed
    return _BARE_LF.sub(b"\r\n", data)


class _NotRegular(Exception):
    """A spool entry that is not a regular file; ``st`` is the status of what was opened,
    or None when it was not opened (a symlink, a socket)."""

    def __init__(self, st: os.stat_result | None) -> None:
        super().__init__("not a regular file")
        self.st = st


def _read(path: Path, max_size: int) -> tuple[bytes, os.stat_result] | None:
    """The file's bytes (only the first ``max_size + 1`` of an oversize one) and the status
    of the descriptor they were read from (owner, inode, ctime); None if the file is gone;
    :class:`_NotRegular` for a FIFO, symlink, directory, socket or device.

    O_NOFOLLOW: a member of the spool group must not make the daemon read (and send) a
    file only the daemon may read by swapping a spool file for a symlink after the scan.
    O_NONBLOCK: a FIFO renamed over a listed file must not block the open (and the pickup)
    forever; what is read is the descriptor checked to be a regular file, whatever the
    path names by then. The owner is that of the descriptor read, not of the path: a file
    renamed over it meanwhile cannot lend its owner to these bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink (never followed), a socket
            raise _NotRegular(None) from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegular(st)
    with os.fdopen(fd, "rb") as f:
        return f.read(max_size + 1), st


_KIND = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFLNK: "a symbolic link (never followed)",
         stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _not_regular(path: Path, st: os.stat_result | None) -> Prepared | None:
    """A spool entry that is not a regular file, rejected (moved to ``rejected/``) rather
    than left in ``new/`` forever; ``st`` that of the descriptor opened, else the entry's
    own (lstat). None if it is gone, or is a regular file again by now (the next pass
    takes it)."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode):
            return None
    kind = _KIND.get(stat.S_IFMT(st.st_mode), f"of file type {stat.S_IFMT(st.st_mode):o}")
    rejection = Rejection(
        "not_a_regular_file", f"{kind}, not a regular file: the spool takes only regular "
        "files (write the message in tmp/, then rename it into new/)")
    return Prepared(path, RejectedMessage(
        path.name, "", rejection.reason, rejection.detail,
        file=FileId(st.st_ino, st.st_ctime_ns)), rejection)


def _unreadable(path: Path) -> Prepared | None:
    """A file the daemon may not read (an application wrote it 0600): rejected with its
    mode and owner, rather than failing every pass and holding up the files behind it.
    None if it is gone meanwhile."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or directory the daemon may not open
        return _not_regular(path, st)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    rejection = Rejection(
        "unreadable", f"the daemon (uid {os.geteuid()}) may not read it: mode "
        f"{stat.S_IMODE(st.st_mode):04o}, owner {owner}; write spool files readable by the "
        "spool's group (umask 027, or chmod 0640 before renaming into new/)")
    return Prepared(path, RejectedMessage(
        path.name, "", rejection.reason, rejection.detail,
        file=FileId(st.st_ino, st.st_ctime_ns)), rejection)


@valueclass
class Prepared:
    """One spool file read, parsed, routed and composed: what the store will take."""

    path: Path
    item: NewMessage | RejectedMessage
    rejection: Rejection | None = None


@valueclass
class Batch:
    """Prepared files committed together, with the time they were taken."""

    now: float
    items: tuple[Prepared, ...]


def prepare(config: Config, paths: list[Path], now: float,
            submitters: Submitters | None = None, signer: Signer | None = None) -> Batch:
    """Read, parse, check the owner of, route, compose and DKIM-sign (with ``signer``)
    spool files: no store, no file changes. ``submitters`` (one per pass, for its cache
    of owners' names) decides who may submit as a user bound to ``unix_users``.

    The CPU-heavy half of ingestion, kept apart from :meth:`Ingester.commit` so that the
    store transaction of a batch holds no file reads.
    """
    max_size = config.daemon.max_message_size
    when = datetime.fromtimestamp(now, UTC)
    if submitters is None:
        submitters = Submitters(config)
    owners = submitters.bound  # without bound users, owners are not even looked at
    out: list[Prepared] = []
    for path in paths:
        try:
            read = _read(path, max_size)
        except PermissionError:
            unreadable = _unreadable(path)
            if unreadable is not None:
                out.append(unreadable)
            continue
        except _NotRegular as odd:
            entry = _not_regular(path, odd.st)
            if entry is not None:
                out.append(entry)
            continue
        if read is None:
            continue  # taken meanwhile
        data, st = read
        uid = st.st_uid
        file = FileId(st.st_ino, st.st_ctime_ns)
        name = path.name
        sha = hashlib.sha256(data).hexdigest()
        parsed = spool.parse(name, data, max_size=max_size)
        if isinstance(parsed, Rejection):
            raw = data if len(data) <= max_size else None
            out.append(Prepared(path, RejectedMessage(name, sha, parsed.reason, parsed.detail,
                                                      raw=raw, file=file), parsed))
            continue
        # The owner before the account: an impersonator learns nothing about grants.
        refused = submitters.check(parsed.user, uid) if owners else None
        account = refused or routing.choose_account(config, parsed.user, parsed.account)
        if isinstance(account, Rejection):
            out.append(Prepared(path, RejectedMessage(
                name, sha, account.reason, account.detail, raw=data, user=parsed.user,
                account=parsed.account, subject=parsed.subject, file=file), account))
            continue
        composed = compose.compose(parsed, account, config, now=when)
        raw = _crlf(composed.data)
        if signer:  # the final bytes: sending adds no header (outbound/dkim.py)
            raw = signer.sign(raw, composed.from_address)
        out.append(Prepared(path, NewMessage(
            source=name, sha256=sha, user=parsed.user, account=account.name,
            from_address=composed.from_address, message_id=composed.message_id,
            subject=composed.subject, raw=raw, recipients=parsed.recipients,
            idempotency_key=parsed.idempotency_key, file=file)))
    return Batch(now, tuple(out))


def prepare_spool(config: Config, clock: Callable[[], float] = time.time,
                  limit: int | None = None, signer: Signer | None = None) -> Iterator[Batch]:
    """Every file now in ``new/`` (at most ``limit``), prepared in batches, oldest first."""
    spool.ensure_dirs(config.daemon.spool_dir)
    names = spool.scan_names(config.daemon.spool_dir)
    if limit is not None:
        names = names[:limit]
    new = config.daemon.spool_dir / "new"
    submitters = Submitters(config)
    # Small batches first, so that the sender has work within milliseconds of a start
    # over a full spool; then large ones, which commit cheaply.
    start, size = 0, 16
    while start < len(names):
        paths = [new / name for name in names[start:start + size]]
        yield prepare(config, paths, clock(), submitters, signer)
        start, size = start + size, min(size * 4, BATCH)


class Ingester:
    """Takes spool files into the store; one call of :meth:`run_once` is one pass."""

    def __init__(self, config: Config, store: OutboundStore, metrics: Metrics, *,
                 clock: Callable[[], float] = time.time,
                 on_commit: Callable[[], None] | None = None,
                 verp_key: VerpKey | None = None) -> None:
        self.on_commit = on_commit  # told after each committed batch (wakes the sender)
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._verp_key = verp_key
        # Claims of files already removed, released with the next batch's transaction (or
        # at the end of the pass): one commit per batch instead of two.
        self._released: list[tuple[str, int]] = []
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take the next passes under ``config``; between passes (one thread uses an
        Ingester). As at the start, the next pass first forgets stale spool claims."""
        self.config = config
        alias = config.alias_domain
        # New messages are queued with their VERP signature (made here, not by a sender).
        self._sign = self._verp_key.sign if self._verp_key is not None and alias is not None \
            and alias.bounce else None
        self._swept = False  # stale claims are forgotten before the first pass
        self._signer: Signer | None = None  # the DKIM keys, read by the next pass
        spool.ensure_dirs(config.daemon.spool_dir)

    def run_once(self, limit: int | None = None) -> IngestStats:
        """Ingest every file now in ``new/`` (at most ``limit``), in batches."""
        stats = IngestStats()
        if not self._swept:
            self._swept = True
            new = self.config.daemon.spool_dir / "new"
            swept = self.store.sweep_claims(lambda: set(os.listdir(new)))
            if swept:
                log.info("forgot %d spool claims of files no longer in %s", swept, new)
        if self._signer is None and self.config.dkim:
            # Read once per configuration; an unusable key fails the pass (DkimError),
            # leaving the files in new/: nothing leaves unsigned meanwhile.
            self._signer = Signer.load(self.config.dkim)
        try:
            for batch in prepare_spool(self.config, self.clock, limit, self._signer):
                self.commit(batch, stats)
        finally:
            self.release()
        return stats

    def release(self) -> None:
        """Release the claims of the files removed since the last commit."""
        if not self._released:
            return
        try:
            self.store.release_claims(self._released)
        except StoreUnavailable:
            # Harmless: a claim matches only its own file, which is gone; the next batch
            # (or start, which sweeps) releases it.
            log.debug("spool claims of %d files not released (the store cannot commit)",
                      len(self._released))
            return
        self._released = []

    def commit(self, batch: Batch, stats: IngestStats) -> None:
        """Store a prepared batch in one transaction (releasing the claims of the previous
        batch's files), then remove or reject its files."""
        if not batch.items:
            return
        result = self.store.ingest([p.item for p in batch.items], batch.now, self._sign,
                                   self._released)
        self._released = []
        if self.on_commit is not None and result.queued:
            self.on_commit()
        by_name = {p.item.source: p for p in batch.items}
        # Committed: now the files may go.
        for name in result.queued:
            spool.remove(by_name[name].path)
        for name, mid in result.rejected.items():
            rejection = by_name[name].rejection
            assert rejection is not None
            self._reject(by_name[name].path, rejection, mid)
        for name, mid in result.duplicates.items():
            spool.remove(by_name[name].path)
            self.metrics.spool_duplicates.inc()
            log.info("spool file %s repeats the idempotency key of message %d: not queued "
                     "again", name, mid)
        for name, mid in result.taken.items():
            self._finish_taken(by_name[name].path, mid)
        self._released.extend(
            (name, mid) for done in (result.queued, result.rejected, result.duplicates,
                                     result.taken) for name, mid in done.items())
        stats.queued += len(result.queued)
        stats.rejected += len(result.rejected)
        stats.duplicates += len(result.duplicates)
        stats.taken += len(result.taken)

    def _reject(self, path: Path, rejection: Rejection, mid: int) -> None:
        spool.reject(self.config.daemon.spool_dir, path, rejection)
        self.metrics.messages_rejected.labels(rejection.reason).inc()
        log.warning("rejected spool file %s (message %d): %s: %s", path.name, mid,
                    rejection.reason, rejection.detail)

    def _finish_taken(self, path: Path, mid: int) -> None:
        rows = self.store.query("SELECT status, reason, last_error FROM messages WHERE id = ?",
                                (mid,))
        if rows and rows[0]["status"] == "rejected":
            # A crash came between recording the rejection and moving the file.
            spool.reject(self.config.daemon.spool_dir, path,
                         Rejection(rows[0]["reason"], rows[0]["last_error"] or ""))
        else:
            spool.remove(path)
        log.info("spool file %s had been taken as message %d before an interruption; "
                 "not queued twice", path.name, mid)
