"""The parts of a file that fit the schema, so that their semantic checks run anyway.

``mailsync validate`` reports every problem of a file in one run: when the schema refuses
some values, those are taken out (the key, or the whole list entry when what is left of it
still does not fit) until the rest fits, and the semantic checks run on that rest. An entry
taken out still counts as declared: a reference to a server whose port is wrong is not
also "not a declared outgoing server".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from mailsync.config.problems import Path
from mailsync.values import field, valueclass

LISTS = ("users", "outgoing_servers", "incoming_servers", "accounts", "activity_types")
ROUNDS = 4

# (path of the value, the failed keyword, the unknown keys of an additionalProperties)
SchemaError = tuple[Path, str, tuple[str, ...]]


@valueclass(frozen=False)
class Part:
    """The fitting part of a file: its data, where each list entry came from, and the
    names of the entries taken out (still declared for the references' sake)."""

    data: dict[str, Any]
    origin: dict[str, list[int]]
    removed: dict[str, set[str]] = field(default_factory=dict)
    taken: list[Path] = field(default_factory=list)  # keys taken out, as paths of the file

    def concerns_taken(self, path: Path) -> bool:
        """Whether a finding at ``path`` (of the file) may come from a key taken out: it
        is inside one, or on the entry or mapping holding one ("password is missing" once a
        malformed password is taken out). Findings on a whole section are kept."""
        for taken in self.taken:
            if path[:len(taken)] == taken:
                return True
            depth = 2 if path and path[0] in LISTS else 1
            if len(path) >= depth and taken[:len(path)] == path:
                return True
        return False

    def original(self, path: Path) -> Path:
        """The path in the file of ``path`` in :attr:`data` (entries taken out shift none)."""
        if len(path) >= 2 and path[0] in self.origin and isinstance(path[1], int):
            return (path[0], self.origin[str(path[0])][path[1]], *path[2:])
        return path


def fitting(data: dict[str, Any], errors: Callable[[Any], list[SchemaError]]) -> Part | None:
    """The part of ``data`` that ``errors`` (the schema) finds nothing wrong with, or None
    when the file as a whole is unusable (not a mapping at its root, or no fix point)."""
    data = copy.deepcopy(data)
    part = Part(data, {s: list(range(len(data[s]))) for s in LISTS
                       if isinstance(data.get(s), list)})
    for _ in range(ROUNDS):
        found = errors(data)
        if not found:
            return part
        drop: dict[str, set[int]] = {}
        for path, kind, unknown in found:
            taken = _take_out(data, path, kind, unknown, drop)
            if taken is None:
                return None
            part.taken += [part.original(p) for p in taken]
        for section, indexes in drop.items():
            entries = data[section]
            for i in sorted(indexes, reverse=True):
                entry = entries.pop(i)
                del part.origin[section][i]
                name = entry if isinstance(entry, str) else \
                    entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str):
                    part.removed.setdefault(section, set()).add(name)
    return None


def _take_out(data: dict[str, Any], path: Path, kind: str, unknown: tuple[str, ...],
              drop: dict[str, set[int]]) -> list[Path] | None:
    """Remove what ``path`` points at: the keys taken out (entries to drop go in ``drop``);
    None when nothing sensible can be."""
    if not path:
        if kind == "additionalProperties":
            for key in unknown:
                data.pop(key, None)
            return []
        if kind == "required":
            data.setdefault("version", 1)
            return []
        return None
    section = str(path[0])
    in_list = section in LISTS and len(path) >= 2 and isinstance(path[1], int)
    # The key holding the bad value (a bad item of a nested list: the whole list).
    start = 2 if in_list else 1
    end = next((i for i in range(start, len(path)) if isinstance(path[i], int)), len(path))
    target = path[:end]
    if kind == "additionalProperties" and end == len(path):
        holder = _get(data, target)
        if isinstance(holder, dict):
            for key in unknown:
                holder.pop(key, None)
            return []  # an unknown key is nothing the checks look at
    if kind == "required" or (in_list and len(target) == 2):
        if in_list:
            drop.setdefault(section, set()).add(int(path[1]))
            return []
        _delete(data, target)  # daemon.retry or alias_domain missing a key: all of it
        return [target]
    if target == ("version",):
        data["version"] = 1
        return []
    _delete(data, target)
    return [target]


def _get(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def _delete(data: dict[str, Any], path: Path) -> None:
    try:
        holder = _get(data, path[:-1])
    except (KeyError, IndexError, TypeError):
        return
    if isinstance(holder, dict):
        holder.pop(path[-1], None)
