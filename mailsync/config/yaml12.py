"""YAML 1.2 core-schema typing of plain scalars, and the YAML 1.1 readings it replaces.

Editors (the YAML language server) and CI tools (check-jsonschema) read a file with the
YAML 1.2 core schema: only ``true``/``false`` are booleans, ``1e1`` is a float, ``010``
is ten, ``1:30`` is a string. PyYAML implements YAML 1.1 (``yes``/``no``/``on``/``off``
are booleans, ``1e1`` is a string, ``010`` is eight). This module gives the loader the
1.2 rules, on a resolver subclass of its own (PyYAML's global table is left untouched),
and says what YAML 1.1 would have read a plain string as, so that ``keep_on_server: no``
gets "use true or false" instead of a silent difference between the daemon and the editor.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"


class Core12Resolver(yaml.resolver.BaseResolver):
    """The YAML 1.2 core schema's implicit types (https://yaml.org/spec/1.2.2/#103-core-schema),
    plus the merge key ``<<`` that YAML tools keep supporting."""


def _add(tag: str, pattern: str, first: str) -> None:
    # add_implicit_resolver copies the inherited table into this class before adding.
    Core12Resolver.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


_add(BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_add(INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
_add(FLOAT, r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
              |[-+]?\.(?:inf|Inf|INF)
              |\.(?:nan|NaN|NAN))$""", "-+0123456789.")
_add(NULL, r"^(?:~|null|Null|NULL|)$", "~nN\0")
_add(MERGE, r"^(?:<<)$", "<")
# The empty scalar: PyYAML looks it up under the "" key.
Core12Resolver.yaml_implicit_resolvers[""] = Core12Resolver.yaml_implicit_resolvers.pop("\0")

IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = Core12Resolver.yaml_implicit_resolvers

_TRUE = {"true", "True", "TRUE"}


def construct(tag: str, value: str) -> Any:
    """The value of a scalar of ``tag`` (implicit or explicit); ValueError when it is not one."""
    if tag == NULL:
        if value in ("", "~", "null", "Null", "NULL"):
            return None
        raise ValueError(value)
    if tag == BOOL:
        if value in _TRUE or value in ("false", "False", "FALSE"):
            return value in _TRUE
        raise ValueError(value)
    if tag == INT:
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        digits = text[1:] if text[:1] in ("+", "-") else text
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        if not digits.isdigit() or not digits.isascii():
            raise ValueError(value)
        return sign * int(digits, 10)
    if tag == FLOAT:
        text = value.strip()
        lowered = text.lower()
        if lowered in (".inf", "+.inf"):
            return math.inf
        if lowered == "-.inf":
            return -math.inf
        if lowered == ".nan":
            return math.nan
        if "_" in text or not text.isascii() or "inf" in lowered or "nan" in lowered:
            raise ValueError(value)
        return float(text)
    raise ValueError(value)


# What YAML 1.1 (and so PyYAML's safe_load, and mailsync before it read YAML 1.2) took
# these plain strings for. y and n are YAML 1.1 booleans too, though PyYAML skips them.
_YAML11_BOOL = re.compile(r"^(?:y|n|yes|no|on|off)$", re.I)
_YAML11 = yaml.resolver.Resolver.yaml_implicit_resolvers  # read only
_KINDS = {BOOL: "boolean", INT: "integer", FLOAT: "number"}
YAML11_FIRST = frozenset(_YAML11) | frozenset("yYnNoO")


def yaml11_reading(value: str) -> tuple[str, Any] | None:
    """(kind, value) a plain scalar that YAML 1.2 reads as a string had in YAML 1.1:
    ``("boolean", False)`` for ``no``, ``("integer", 90)`` for ``1:30``; None otherwise."""
    if _YAML11_BOOL.match(value):
        return ("boolean", value.lower() in ("y", "yes", "on"))
    for tag, regexp in _YAML11.get(value[:1], ()):
        if tag in _KINDS and regexp.match(value):
            node = yaml.ScalarNode(tag, value)
            try:
                return (_KINDS[tag], yaml.constructor.SafeConstructor().construct_object(node))
            except (ValueError, TypeError, yaml.YAMLError):
                return None
    return None
