"""Schema verdicts remembered in state_dir, so an unchanged file skips the JSON Schema.

Validating a file against the schema costs ~0.1 s (importing jsonschema, building the
validator, running it), paid by every ``mailsync send``, ``inbox poll`` or cron
``run --once``. A file that passed it once passes it again while nothing it depends on
changed, so the commands that load the -c file remember that it did, in
``state_dir/config-verdicts.json``, keyed by:

- the SHA-256 of the file's text (the schema sees only the values the text parses to);
- this mailsync's version, the SHA-256 of the schema it ships, and the size and mtime of
  the modules that run the schema (``config/schema.py`` here, jsonschema's
  ``__init__``): an upgraded or edited mailsync or jsonschema never reuses a verdict.

Only the schema's verdict is remembered, and only "no schema problem": a file with any
schema error is validated in full each time. Everything else still runs on every load:
the YAML, the model, and every semantic check (references between sections, the risky
settings' warnings, the ``tls_ca_file`` contents read from the filesystem), whose
findings depend on more than the text.

The file is written atomically (temp file, rename) with mode 0640, by whoever may write
state_dir; a reader ignores it unless it is a regular file of root, this process's user
or state_dir's owner that nobody else may write, and holds this mailsync's fingerprint
(a corrupt, torn or foreign file is as good as none). Writing it is best effort: a
command that may not write state_dir (an application's ``mailsync send``) validates in
full when nobody wrote the verdict yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

from mailsync import __version__
from mailsync.files import write_atomically

FILE_NAME = "config-verdicts.json"
KIND = "mailsync config verdicts"
KEEP = 8  # verdicts kept, newest first: a few files (or versions of one) share a state_dir


def path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def key(text: str) -> str:
    """What a verdict is remembered by: the text's hash."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_stamp(file: str | None) -> list[int]:
    """The size and mtime of a file ([] when there is none): part of a fingerprint."""
    if file is None:
        return []
    try:
        st = os.stat(file)
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


@lru_cache(maxsize=1)
def fingerprint() -> dict[str, object]:
    """What the schema's verdict depends on besides the text (see the module's doc)."""
    package = Path(__file__).resolve().parent.parent
    try:
        shipped = hashlib.sha256((package / "data" / "mailsync.schema.json").read_bytes())
        schema_sha = shipped.hexdigest()
    except OSError:
        schema_sha = ""
    try:
        spec = find_spec("jsonschema")
    except (ImportError, ValueError):
        spec = None
    return {"version": __version__, "schema": schema_sha,
            "validator": file_stamp(str(package / "config" / "schema.py")),
            "jsonschema": file_stamp(spec.origin if spec is not None else None)}


def _trusted(st: os.stat_result, state_dir: Path) -> bool:
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022:
        return False
    owners = {0, os.geteuid()}
    with contextlib.suppress(OSError):
        owners.add(state_dir.stat().st_uid)
    return st.st_uid in owners


def _read(state_dir: Path) -> list[str]:
    """The keys of the texts known to pass the schema; [] for a missing, unreadable,
    corrupt or foreign file, or one of another fingerprint."""
    try:
        fd = os.open(path(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return []
    try:
        if not _trusted(os.fstat(fd), state_dir):
            return []
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return []
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("kind") != KIND \
            or data.get("fingerprint") != fingerprint():
        return []
    keys = data.get("schema_clean")
    if not isinstance(keys, list):
        return []
    return [k for k in keys if isinstance(k, str)]


def known(state_dir: Path, text_key: str) -> bool:
    """Whether the text of ``text_key`` passed this mailsync's schema before."""
    return text_key in _read(state_dir)


def remember(state_dir: Path, text_key: str) -> None:
    """Record that the text of ``text_key`` passed the schema; best effort (a state_dir
    that does not exist yet or may not be written is left as it is)."""
    keys = _read(state_dir)
    if keys[:1] == [text_key] or not state_dir.is_dir():
        return
    keys = [text_key, *(k for k in keys if k != text_key)][:KEEP]
    body = json.dumps({"kind": KIND, "fingerprint": fingerprint(), "schema_clean": keys},
                      indent=1).encode("utf-8")
    # A crash may leave the old file, the new one or (no fsync) an empty one: an empty or
    # torn file is ignored, so this needs no fsync.
    with contextlib.suppress(OSError):
        write_atomically(path(state_dir), body, durable=False)
