"""A local user who can write to a Maildir mailsync reads or writes cannot make it read a
file they cannot, stall its poll, or overwrite one of its files.

- The local source lists regular files only and opens them without following a symbolic
  link and without blocking: a symlink in ``new/`` to a file only mailsync may read (its
  store, its VERP key) is not fetched into the inbox for all to read; a FIFO swapped in
  after the listing does not hold the poll.
- ``deliver_to`` writes each message to ``tmp/<name>`` under a name anyone can compute:
  a symlink planted there is replaced, never written through (it used to truncate and
  overwrite its target, say mailsync's own database).
"""

from __future__ import annotations

import os
import threading

from mailsync.inbound.maildir import MaildirWriter
from mailsync.inbound.source import Incoming
from tests.dovecot import message, rig_fixture  # noqa: F401  (fixtures)


def _maildir(path):
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def test_a_symlink_or_fifo_in_new_is_never_read(rig, tmp_path):
    drop = _maildir(tmp_path / "drop")
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: TOP SECRET\r\n\r\nthe store's key\r\n")
    os.symlink(secret, drop / "new" / "1700000000.evil.host")
    os.mkfifo(drop / "new" / "1700000001.fifo.host")
    (drop / "new" / "1700000002.ok.host").write_bytes(message(3))
    r = rig("  - name: drop\n    type: local\n    path: ./drop\n")
    result = r.poller("drop").poll_once()
    assert result.ok and result.fetched == 1
    assert [row["raw"] for row in r.rows()] == [message(3)]
    # Left where they are, untouched: not mailsync's to move.
    assert sorted(os.listdir(drop / "new")) == ["1700000000.evil.host",
                                                "1700000001.fifo.host"]
    assert os.path.islink(drop / "new" / "1700000000.evil.host")


def test_a_fifo_swapped_in_after_the_listing_does_not_hold_the_poll(rig, tmp_path):
    drop = _maildir(tmp_path / "drop")
    (drop / "new" / "1700000000.a.host").write_bytes(message(1))
    r = rig("  - name: drop\n    type: local\n    path: ./drop\n")
    source = r.poller("drop").source
    source.open()
    source._names = {"1700000000.a.host": "1700000000.a.host"}  # as the listing saw it
    os.unlink(drop / "new" / "1700000000.a.host")
    os.mkfifo(drop / "new" / "1700000000.a.host")  # ... and what is there when it is read
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(source._read("1700000000.a.host", [])),
                              daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the read of a FIFO blocked the poll"
    assert got == [None]  # not a message: as if it were gone


def test_deliver_to_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    box = _maildir(tmp_path / "box")
    victim = tmp_path / "mailsync.db"
    victim.write_bytes(b"precious")
    writer = MaildirWriter(box, "support")
    name = writer.name_for("7/42")  # anyone can compute it
    os.symlink(victim, box / "tmp" / name)
    assert writer.deliver([Incoming("7/42", message(42))]) == 1
    assert victim.read_bytes() == b"precious"
    delivered = box / "new" / name
    assert not delivered.is_symlink() and delivered.read_bytes() == message(42)
    assert oct(delivered.stat().st_mode & 0o777) == "0o600"
