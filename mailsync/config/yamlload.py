"""YAML with a position for every node, duplicate keys refused, YAML 1.2 core typing.

PyYAML's constructors keep no positions and silently keep the last of two equal keys,
so this module composes the node graph with libyaml (``CBaseLoader`` when available,
about ten times faster than the pure-Python loader) and builds plain Python values
itself, recording the line and column of every value and every mapping key. Plain
scalars are typed by the YAML 1.2 core schema (:mod:`mailsync.config.yaml12`), as editors
and check-jsonschema read them; a plain string that YAML 1.1 would have read as a boolean
or a number (``no``, ``1:30``) is noted, so the schema's error can say "use true or false".
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mailsync.config import yaml12
from mailsync.config.document import Document, Marks
from mailsync.config.document import read_text as read_text  # moved there: no PyYAML
from mailsync.config.problems import Path, Problem, format_path

try:
    # The base loader's resolver tags every scalar as a string without running the
    # implicit-type regexes in Python for each node; _Builder resolves plain scalars itself
    # (YAML 1.2 core rules, yaml12.Core12Resolver's table), which halves the cost of
    # resolving tags.
    _Loader: type = yaml.CBaseLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.BaseLoader

_IMPLICIT = yaml12.IMPLICIT
# First characters of a plain scalar that is not simply a string in YAML 1.2 or in 1.1.
_LOOK = frozenset(_IMPLICIT) | yaml12.YAML11_FIRST

_STR = "tag:yaml.org,2002:str"
_MERGE = yaml12.MERGE
_SIMPLE_TAGS = {yaml12.INT, yaml12.FLOAT, yaml12.BOOL, yaml12.NULL}


MAX_DEPTH = 64            # nesting deeper than any real config; Python recursion is safe
MAX_VALUES = 1_000_000    # after alias expansion ("billion laughs" stops here)


class _Refused(Exception):
    """The document cannot be built at all (recursive alias, too deep, too large)."""

    def __init__(self, node: Node, path: Path, message: str) -> None:
        super().__init__(message)
        self.node, self.path, self.message = node, path, message


class _Builder:
    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.marks = Marks()
        self.problems: list[Problem] = []
        self.yaml11: dict[Path, tuple[str, Any]] = {}
        # Aliases share one built value (built once, at the anchor); sizes count expansion.
        self._built: dict[int, tuple[Any, int]] = {}
        self._active: set[int] = set()
        self._values = 0

    def error(self, node: Node, path: Path, message: str) -> None:
        self.problems.append(
            Problem(
                self.file,
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                "error",
                format_path(path),
                message,
            )
        )

    def build(self, node: Node, path: Path) -> Any:
        mark = node.start_mark
        self.marks.values.setdefault(path, (mark.line + 1, mark.column + 1))
        if node.__class__ is ScalarNode:
            # The hot path (two thirds of all nodes): a plain or quoted string.
            self._values += 1
            value = node.value
            if node.tag == _STR and (node.style or value[:1] not in _LOOK):
                return value
            return self._scalar(node, path)
        key = id(node)
        if key in self._built:  # an alias: the same value again
            value, size = self._built[key]
            self._count(node, path, size)
            return value
        if key in self._active:
            raise _Refused(node, path, "an alias refers to a node that contains it "
                                       "(recursive structures are not allowed)")
        if len(path) > MAX_DEPTH:
            raise _Refused(node, path, f"nested more than {MAX_DEPTH} levels deep")
        before = self._values
        self._active.add(key)
        try:
            self._count(node, path, 1)
            if isinstance(node, SequenceNode):
                value = [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            elif isinstance(node, MappingNode):
                value = self._mapping(node, path)
            else:  # pragma: no cover
                raise AssertionError(f"unknown YAML node {node!r}")
        finally:
            self._active.discard(key)
        self._built[key] = (value, self._values - before)
        return value

    def _count(self, node: Node, path: Path, size: int) -> None:
        self._values += size
        if self._values > MAX_VALUES:
            raise _Refused(node, path, f"the document expands to more than {MAX_VALUES:,} "
                                       "values through aliases")

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        tag = self._tag(node)
        if tag == _STR:
            if not node.style and node.tag == _STR and node.value[:1] in yaml12.YAML11_FIRST:
                reading = yaml12.yaml11_reading(node.value)
                if reading is not None and not self._explicit(node):
                    self.yaml11[path] = reading
            return node.value
        if tag in _SIMPLE_TAGS:
            try:
                return yaml12.construct(tag, node.value)
            except ValueError:
                kind = tag.rpartition(":")[2]
                self.error(node, path, f"{node.value!r} is not a valid {kind} "
                                       f"(explicit tag !!{kind})")
                return node.value
        # Timestamps, binary and custom tags are kept as the text the user wrote.
        return node.value

    def _explicit(self, node: ScalarNode) -> bool:
        """Whether the scalar carries an explicit tag (possibly after an &anchor)."""
        text, i = self.text, node.start_mark.index
        while i < len(text) and text[i] in "&!":
            if text[i] == "!":
                return True
            while i < len(text) and not text[i].isspace():
                i += 1
            while i < len(text) and text[i] in " \t":
                i += 1
        return False

    def _tag(self, node: ScalarNode) -> str:
        """The tag of a scalar: explicit, or by YAML 1.2 core implicit rules when plain."""
        if node.style or node.tag != _STR:  # plain scalars have no style (None or "")
            return str(node.tag)
        value = node.value
        for tag, regexp in _IMPLICIT.get(value[:1], ()):
            if regexp.match(value):
                if self._explicit(node):
                    return _STR  # an explicit !!str on a value that looks like another type
                return str(tag)
        return _STR

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merged: dict[str, Any] = {}
        merged_marks = Marks()
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and self._tag(key_node) == _MERGE:
                # Build merged mappings with their own marks: explicit keys keep theirs.
                own, self.marks = self.marks, merged_marks
                try:
                    for source in self._merge_sources(value_node, path):
                        for k, v in source.items():
                            merged.setdefault(k, v)
                finally:
                    self.marks = own
                continue
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, path, "a mapping key must be a plain value")
                continue
            key = self.build_key(key_node)
            child = path + (key,)
            if key in seen:
                self.error(
                    key_node,
                    child,
                    f"duplicate key {key!r} (first defined on line {seen[key]}); "
                    "each key may appear once in a mapping",
                )
                continue
            seen[key] = key_node.start_mark.line + 1
            self.marks.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child)
        for k, v in merged.items():
            result.setdefault(k, v)
        depth = len(path)
        for table, mine in ((merged_marks.values, self.marks.values),
                            (merged_marks.keys, self.marks.keys)):
            for p, mark in table.items():
                if len(p) > depth and p[depth] not in seen:
                    mine.setdefault(p, mark)
        return result

    def build_key(self, node: ScalarNode) -> str:
        """Keys are names in this format: `1:`, `on:` and `1.5:` are the strings written."""
        return str(node.value)

    def _merge_sources(self, node: Node, path: Path) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for n in nodes:
            if not isinstance(n, MappingNode):
                self.error(n, path, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            value = self.build(n, path)
            if isinstance(value, dict):
                sources.append(value)
        return sources


def parse(text: str, file: str) -> Document:
    """Parse one YAML document; syntax errors and duplicate keys become problems."""
    builder = _Builder(file, text)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p)
        builder.problems.append(
            Problem(file, line, column, "error", "(root)", f"YAML syntax error: {message}")
        )
        return Document(file, text, None, builder.marks, builder.problems)
    except yaml.YAMLError as exc:
        builder.problems.append(
            Problem(file, 1, 1, "error", "(root)", f"YAML syntax error: {exc}")
        )
        return Document(file, text, None, builder.marks, builder.problems)
    if node is None:
        return Document(file, text, None, builder.marks, builder.problems)
    try:
        data = builder.build(node, ())
    except _Refused as exc:
        builder.error(exc.node, exc.path, exc.message)
        return Document(file, text, None, builder.marks, builder.problems)
    return Document(file, text, data, builder.marks, builder.problems, builder.yaml11)
