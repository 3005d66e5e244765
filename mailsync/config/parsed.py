"""The parsed form of an unchanged file, remembered in state_dir: no YAML parse (nor PyYAML).

Importing PyYAML and its loader costs ~10 ms of every command that loads the -c file, a
third of what `mailsync send` or a cron `inbox poll` does besides starting Python. Beside
the schema's verdict (:mod:`mailsync.config.verdicts`), the commands that load the file
remember what its text parsed to, in ``state_dir/config-parsed.json``: the data, the
position of every value and key, and the YAML 1.1 readings the schema's hints use; the
next load of the same text takes that instead of parsing it again. What follows the parse
runs as before: the model, the semantic checks, the schema unless its verdict is
remembered too.

The parsed form is used only when it is certainly the one the loader would make now:

- it is kept with the SHA-256 of the text it was parsed from, and used only for that text;
- with this mailsync's version and the size and mtime of the loader's modules and of
  PyYAML's (an upgraded or edited loader or PyYAML never reuses it);
- only a text that loads (a model, no error) is remembered, one per state_dir (the last);
- the file is trusted only when it is a regular file of root or of this process's user
  that nobody else may write (mode 0600 when written, since values may be secrets): the
  parsed form decides what the command does, so nobody else (not even state_dir's owner,
  trusted for a schema verdict) may supply it to another user's command.

Where state_dir is must be known before the parse: the usual block or flow layout of
``daemon:`` names it on its line (:func:`state_dir_named`), else the default applies. A
file laid out otherwise is parsed every time: a wrong guess finds no parsed form of this
text, it never changes what is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from mailsync import __version__
from mailsync.config.document import Document, Marks
from mailsync.config.verdicts import file_stamp
from mailsync.files import write_atomically

FILE_NAME = "config-parsed.json"
KIND = "mailsync parsed config"
MAX_BYTES = 8 << 20  # a parsed form larger than this is not read (nor written)
DEFAULT_STATE_DIR = "./var/state"  # as mailsync.config.model builds it

_BLOCK = re.compile(r"^daemon:[ \t]*(?:#.*)?\n(?:[ \t]+.*\n|[ \t]*\n)*?[ \t]+state_dir:[ \t]*"
                    r"(\"[^\"\\\n]*\"|'[^'\n]*'|[^\s#\"'{}\[\],&*!|>]+)[ \t]*(?:#.*)?$",
                    re.MULTILINE)
_FLOW = re.compile(r"^daemon:[ \t]*\{[^}\n]*?\bstate_dir:[ \t]*"
                   r"(\"[^\"\\\n]*\"|'[^'\n]*'|[^\s#\"'{}\[\],&*!|>]+)[ \t]*[,}]", re.MULTILINE)


def path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def state_dir_named(text: str, base_dir: Path) -> Path | None:
    """Where the text's state_dir is, as read from the usual layouts without parsing;
    None when it cannot be told so. Only a guess: see the module's doc."""
    found = [m.group(1) for m in (_BLOCK.search(text), _FLOW.search(text)) if m]
    if len(found) == 1:
        raw = found[0]
        raw = raw[1:-1] if raw[:1] in "\"'" else raw
    elif not found and "state_dir" not in text:
        raw = DEFAULT_STATE_DIR
    else:
        return None
    if not raw:
        return None
    named = Path(raw).expanduser()
    return named if named.is_absolute() else base_dir / named


@lru_cache(maxsize=1)
def fingerprint() -> dict[str, object]:
    """What the parse depends on besides the text: mailsync's version, its loader, PyYAML."""
    config = Path(__file__).resolve().parent
    try:
        spec = find_spec("yaml")
    except (ImportError, ValueError):
        spec = None
    return {"version": __version__,
            "loader": [file_stamp(str(config / name))
                       for name in ("yamlload.py", "yaml12.py", "document.py")],
            "pyyaml": file_stamp(spec.origin if spec is not None else None)}


def _trusted(st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022
            and st.st_uid in (0, os.geteuid()))


def _paths(rows: Any) -> dict[tuple[str | int, ...], tuple[int, int]]:
    return {tuple(p): (int(line), int(col)) for p, line, col in rows}


def recall(text: str, file: str, base_dir: Path, text_key: str) -> Document | None:
    """The Document the loader made of this text (named ``file``) when its state_dir
    remembers it, else None (missing, untrusted, torn, of another text or fingerprint)."""
    state_dir = state_dir_named(text, base_dir)
    if state_dir is None:
        return None
    try:
        fd = os.open(path(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(fd)):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_BYTES + 1)
        form = json.loads(raw) if len(raw) <= MAX_BYTES else None
        if not isinstance(form, dict) or form.get("kind") != KIND \
                or form.get("key") != text_key or form.get("fingerprint") != fingerprint() \
                or not isinstance(form.get("data"), dict):
            return None
        marks = Marks(_paths(form["values"]), _paths(form["keys"]))
        yaml11 = {tuple(p): (str(kind), value) for p, kind, value in form["yaml11"]}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    finally:
        os.close(fd)
    return Document(file, text, form["data"], marks, [], yaml11)


def remember(state_dir: Path, text_key: str, doc: Document) -> None:
    """Keep ``doc`` (of a text that loads: no error) as the parsed form of the text
    of ``text_key``; best effort, and nothing is written when it is the one kept already
    (or state_dir does not exist, or may not be written)."""
    if doc.problems or not isinstance(doc.data, dict) or not state_dir.is_dir():
        return
    # The body starts with what names it (kind, key, fingerprint): the form of this text
    # kept already by this loader is told from those first bytes.
    head = json.dumps({"kind": KIND, "key": text_key, "fingerprint": fingerprint()})
    prefix = f"{head[:-1]}, ".encode()
    with contextlib.suppress(OSError):
        fd = os.open(path(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if _trusted(os.fstat(fd)) and os.read(fd, len(prefix)) == prefix:
                return
        finally:
            os.close(fd)
    form = {"kind": KIND, "key": text_key, "fingerprint": fingerprint(),
            "values": [[list(p), *mark] for p, mark in doc.marks.values.items()],
            "keys": [[list(p), *mark] for p, mark in doc.marks.keys.items()],
            "yaml11": [[list(p), kind, value] for p, (kind, value) in doc.yaml11.items()],
            "data": doc.data}
    try:
        body = json.dumps(form, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        return  # a value JSON cannot hold (the loader makes none): parse it every time
    if len(body) > MAX_BYTES:
        return
    # Secrets may be among the values: 0600. A crash may leave it empty or torn (no fsync):
    # such a file is ignored.
    with contextlib.suppress(OSError):
        write_atomically(path(state_dir), body, 0o600, durable=False)
