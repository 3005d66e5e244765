"""The Configuration page: the applied configuration with its secrets redacted, its hash
and time, the last reload's outcome and errors, and the plan of the file on disk against
the configuration in force (what ``mailsync plan`` prints).

Redaction (:func:`redacted`) works on the parsed file, not its text: every value of a key
that the schema declares a secret (``password``, ``password_hash``, ``session_key``,
``client_secret``, ``refresh_token``, ``dsn``...) becomes its reference (``{file: PATH}``,
``{env: NAME}``, ``{credential: NAME}``) or, for a plain-text secret, ``(redacted)``; the
file's comments are not shown (they may hold anything). The plan shows a secret as
``Secret('***')``, as the command does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import yaml

from mailsync.config.load import load_file
from mailsync.config.plan import diff
from mailsync.config.problems import Problem
from mailsync.config.schema import schema
from mailsync.config.yamlload import parse
from mailsync.errors import ConfigError
from mailsync.web.http import Request, Response

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

REDACTED = "(redacted)"
REFERENCES = ("env", "file", "credential")


@lru_cache(maxsize=1)
def secret_keys() -> frozenset[str]:
    """The names of the config's keys whose value is a secret, as the schema says (a
    property whose schema is ``#/$defs/secret`` or a definition that is one)."""
    root = schema()
    defs = root.get("$defs", {})
    refs = {"#/$defs/secret"} | {f"#/$defs/{name}" for name, d in defs.items()
                                 if isinstance(d, dict) and d.get("$ref") == "#/$defs/secret"}

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                yield from (k for k, v in props.items()
                            if isinstance(v, dict) and v.get("$ref") in refs)
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return frozenset(walk(root))


def _shown_secret(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        kind, ref = next(iter(value.items()))
        if kind in REFERENCES and isinstance(ref, str):
            return {kind: ref}
    return REDACTED


def redact(node: Any, keys: frozenset[str]) -> Any:
    """``node`` (a parsed config) with the value of every key in ``keys`` redacted."""
    if isinstance(node, dict):
        return {k: _shown_secret(v) if k in keys else redact(v, keys) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v, keys) for v in node]
    return node


def redacted(text: str) -> str:
    """The configuration ``text`` as YAML with its secrets redacted and no comment;
    a text that does not parse shows nothing of itself."""
    data = parse(text, "applied config").data
    if not isinstance(data, dict):
        return "(the applied configuration does not parse)"
    plain = json.loads(json.dumps(data, default=str))  # the parser's own types -> plain
    return str(yaml.safe_dump(redact(plain, secret_keys()), sort_keys=False,
                              allow_unicode=True, default_flow_style=False, width=100))


def _plan(app: App) -> dict[str, Any]:
    """The plan of the file on disk against the configuration in force, or why none."""
    path = app.status().config_path
    if path is None:
        return {"file": None, "errors": [], "text": "(no configuration file known)"}
    try:
        loaded = load_file(path)
    except ConfigError as exc:
        return {"file": str(path), "errors": [str(exc)], "text": ""}
    if loaded.config is None:
        return {"file": str(path), "errors": [_problem(p) for p in loaded.errors][:20],
                "text": ""}
    return {"file": str(path), "errors": [], "text": diff(app.config(), loaded.config).render()}


def page(app: App, request: Request, visitor: Visitor) -> Response:
    """The Configuration page."""
    with app.reads() as store:
        applied = store.store.last_applied_config()
    shown = None
    if applied is not None:
        shown = {"sha256": applied.sha256, "source": applied.source,
                 "at": applied.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
                 "text": redacted(applied.text)}
    reload = app.status().reload
    return app.page(200, "config.html", visitor, title="Configuration", applied=shown,
                    reload=dict(reload) if reload is not None else None, plan=_plan(app),
                    when=_when)


def _when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(float(epoch), UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _problem(problem: Problem) -> str:
    """A problem of the file on disk, but not what it says of a secret's value (a
    schema error may quote the value): ``mailsync validate`` tells that."""
    if set(str(problem.path).replace("[", ".").split(".")) & secret_keys():
        return (f"{problem.file}:{problem.line}:{problem.column}: {problem.severity}: "
                f"{problem.path}: {REDACTED} (a secret's value; `mailsync validate` says "
                "what is wrong)")
    return problem.render()
