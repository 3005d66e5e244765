"""JSON Schema validation of a parsed document, with errors placed on lines.

Every jsonschema error is translated into a :class:`Problem` that points at the
offending value, at the unknown key itself, or at the mapping a required key is
missing from, and that says what is allowed.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from mailsync.config import listen
from mailsync.config.document import Document
from mailsync.config.problems import Path, Problem, format_path

_TYPE_NAMES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, as shipped in the package."""
    text = resources.files("mailsync").joinpath("data/mailsync.schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


@lru_cache(maxsize=1)
def _validator() -> Any:
    # Imported here: jsonschema costs ~0.2 s to import, which commands that do not
    # validate (history, queue...) should not pay.
    import jsonschema

    base = jsonschema.Draft202012Validator
    # A whole number is an int: YAML 1.2 reads `1e1` as the float 10.0, which JSON Schema
    # would take for the integer 10 and hand to the model (a port of 10.0).
    types = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base, {"pattern": _pattern}, type_checker=types)
    return cls(_inline(schema(), schema()["$defs"]), format_checker=base.FORMAT_CHECKER)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """JSON Schema's ``pattern`` with ECMA-262's ``$``: Python's also matches before a final
    newline, which would let ``"alice\\n"`` through as a name (a header injection)."""
    import jsonschema

    if not validator.is_type(instance, "string"):
        return
    if re.search(pattern, instance) is None or (pattern.endswith("$") and instance.endswith("\n")):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def _pattern_descriptions() -> dict[str, str]:
    """What each shared pattern means, from its $defs entry (properties override the
    description with their own, which says what the value is for, not how to write it)."""
    return {d["pattern"]: d["description"] for d in schema()["$defs"].values()
            if isinstance(d, dict) and "pattern" in d and "description" in d}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local ``$ref`` replaced by its target.

    jsonschema resolves a ``$ref`` on every use, which costs half of the validation time
    of a large file; the schema has no recursion, so inlining is exact.
    """
    if isinstance(node, dict):
        if "$ref" in node:
            target = _inline(defs[node["$ref"].rpartition("/")[2]], defs)
            return {**target, **{k: _inline(v, defs) for k, v in node.items() if k != "$ref"}}
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _describe(value: Any) -> str:
    """A value as shown in a message, with its kind: "a string 'x'", "true", "nothing"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string " + _show(value)
    if isinstance(value, int):
        return f"a whole number {value}"
    return f"a number {value}"


def _show(value: Any) -> str:
    """A value quoted for a message: strings in quotes (cut when long), others as written."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _allowed_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _type_of(value: Any) -> str:
    for name, py in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                     ("array", list), ("object", dict)):
        if isinstance(value, py):
            return name
    return "null"


_SECRET_KEYS = {"password"}


def _problems_for(error: Any, doc: Document) -> list[Problem]:
    path: Path = tuple(error.absolute_path)
    instance = error.instance
    kind = error.validator
    sub = error.schema if isinstance(error.schema, dict) else {}
    marks = doc.marks
    # A secret's value is never shown, even when it is the wrong type (the names inside
    # a reference, such as {env: NAME}, are not secret).
    secret = bool(path) and path[-1] in _SECRET_KEYS
    shown = "the value" if secret else _show(instance)

    def at_value(message: str, p: Path = path) -> Problem:
        line, col = marks.value(p)
        return Problem(doc.file, line, col, "error", format_path(p), message)

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(sub.get("properties", {}))
        out = []
        for key in instance:
            if key in allowed:
                continue
            child = path + (key,)
            line, col = marks.key(child)
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            out.append(Problem(
                doc.file, line, col, "error", format_path(child),
                f"unknown key {key!r}{did_you_mean} (allowed: {_allowed_list(allowed)})",
            ))
        return out
    if kind == "required":
        # jsonschema reports each missing key as its own error.
        m = re.match(r"^'(.*)' is a required property$", error.message)
        missing = [m.group(1)] if m else [k for k in error.validator_value if k not in instance]
        return [at_value(f"missing required key {k!r}") for k in missing]
    if kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        yaml11 = _yaml11_hint(doc, path, instance, names)
        if yaml11 is not None:
            return [at_value(yaml11)]
        want = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        got = _TYPE_NAMES[_type_of(instance)] if secret else _describe(instance)
        return [at_value(f"expected {want}, got {got}")]
    if kind == "enum":
        values = ", ".join(str(v) for v in error.validator_value)
        return [at_value(f"{shown} is not allowed (allowed: {values})")]
    if kind == "const":
        return [at_value(f"{shown} is not allowed (allowed: {error.validator_value})")]
    if kind == "pattern" and error.validator_value == schema()["$defs"]["listen"]["pattern"]:
        why = listen.explain(instance) if isinstance(instance, str) else ""
        return [at_value(f"{shown} is not a valid listen address"
                         + (f": {why}" if why else "") + f" (allowed: {listen.ALLOWED})")]
    if kind == "pattern":
        what = (_pattern_descriptions().get(error.validator_value) or sub.get("description")
                or f"a value matching {error.validator_value}")
        return [at_value(f"{shown} is not valid: expected {_lower_first(what)}")]
    if kind == "format":
        return [at_value(f"{shown} is not a valid {error.validator_value}")]
    if kind in ("minimum", "maximum"):
        word = "at least" if kind == "minimum" else "at most"
        return [at_value(f"{shown} is out of range: must be {word} {error.validator_value}")]
    if kind in ("minLength", "minItems"):
        return [at_value("must not be empty")]
    if kind == "maxLength" and isinstance(instance, str):
        return [at_value(f"{shown} is too long: {len(instance)} characters "
                         f"(at most {error.validator_value})")]
    if kind in ("minProperties", "maxProperties") and "env" in sub.get("properties", {}):
        return [at_value("a secret takes exactly one of: env, file, credential")]
    if kind == "anyOf":
        best = _best_branch(error)
        if best is not None:
            return _problems_for(best, doc)
        # Every branch failed on its type: say which types are allowed.
        wanted = [b.get("type") for b in error.validator_value if isinstance(b, dict)]
        types = [w for w in wanted if isinstance(w, str)]
        yaml11 = _yaml11_hint(doc, path, instance, types)
        if yaml11 is not None:
            return [at_value(yaml11)]
        if types and len(types) == len(wanted):
            want = " or ".join(_TYPE_NAMES.get(w, w) for w in types)
            got = _TYPE_NAMES[_type_of(instance)] if secret else _describe(instance)
            return [at_value(f"expected {want}, got {got}")]
    return [at_value(error.message if not secret else "is not valid")]


def _yaml11_hint(doc: Document, path: Path, instance: Any, wanted: list[str]) -> str | None:
    """Why a plain ``no`` or ``1:30`` is a string where a boolean or a number is expected:
    YAML 1.2 (editors, check-jsonschema, mailsync) is not YAML 1.1 (older PyYAML)."""
    reading = doc.yaml11.get(path)
    if reading is None or not isinstance(instance, str):
        return None
    kind, value = reading
    if kind == "boolean" and "boolean" in wanted:
        return f"{instance} is not a boolean: use true or false (YAML 1.2)"
    if kind in ("integer", "number") and ("number" in wanted or
                                          (kind == "integer" and "integer" in wanted)):
        return (f"{instance} is not a number in YAML 1.2 (YAML 1.1 read it as {value!r}): "
                f"write {value!r}")
    return None


def _best_branch(error: Any) -> Any:
    candidates = [e for e in error.context or [] if e.validator != "type"]
    if candidates:
        return max(candidates, key=lambda e: len(e.absolute_path))
    return None


def _lower_first(text: str) -> str:
    text = text.rstrip(".")
    return text[:1].lower() + text[1:] if not re.match(r"^[A-Z]{2}", text) else text


_RANK = {"minLength": 0, "maxLength": 0, "pattern": 1, "format": 1}


def errors(data: Any) -> list[tuple[Path, str, tuple[str, ...]]]:
    """Where ``data`` fails the schema: (path, keyword, unknown keys of additionalProperties),
    for :mod:`mailsync.config.partial` to take those parts out."""
    out = []
    for error in _validator().iter_errors(data):
        unknown: tuple[str, ...] = ()
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            unknown = tuple(k for k in error.instance if k not in allowed)
        out.append((tuple(error.absolute_path), str(error.validator), unknown))
    return out


def validate(doc: Document) -> list[Problem]:
    """All schema problems of ``doc``, each placed on its line, each said once."""
    if doc.data is None:
        line, col = 1, 1
        return [Problem(doc.file, line, col, "error", "(root)",
                        "the file is empty: expected a mapping with at least `version: 1`")]
    problems: list[Problem] = []
    value_errors: set[str] = set()
    for error in sorted(_validator().iter_errors(doc.data),
                        key=lambda e: (_RANK.get(e.validator, 2), list(e.absolute_path))):
        if error.validator in _RANK:
            # An address with no '@' fails both `format: email` and its pattern, an empty
            # display name both minLength and its pattern: one problem, the plainest.
            where = format_path(tuple(error.absolute_path))
            if where in value_errors:
                continue
            value_errors.add(where)
        for p in _problems_for(error, doc):
            if p not in problems:
                problems.append(p)
    return problems
