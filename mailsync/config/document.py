"""A parsed configuration file (its data and the position of every value) and its text.

Apart from the YAML loader (:mod:`mailsync.config.yamlload`, which imports PyYAML) so that
a command loading a file whose parsed form is remembered (:mod:`mailsync.config.parsed`)
imports no YAML parser.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any

from mailsync.config.problems import Path, Problem
from mailsync.errors import ConfigError
from mailsync.values import field, valueclass


@valueclass(frozen=False)
class Marks:
    """1-based (line, column) of values and of mapping keys, by path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def value(self, path: Path) -> tuple[int, int]:
        """Position of the value at ``path``, or of its nearest ancestor that has one."""
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (1, 1))

    def key(self, path: Path) -> tuple[int, int]:
        """Position of the key naming ``path`` (falls back to its value)."""
        if path in self.keys:
            return self.keys[path]
        return self.value(path)


@valueclass(frozen=False)
class Document:
    """A parsed YAML file: its data, positions, and the problems met while reading it.

    ``yaml11`` maps the path of each plain string that YAML 1.1 would have read as another
    type to that reading: ``("boolean", False)`` for ``keep_on_server: no``.
    """

    file: str
    text: str
    data: Any
    marks: Marks
    problems: list[Problem]
    yaml11: dict[Path, tuple[str, Any]] = field(default_factory=dict)


def read_text(path: FsPath) -> str:
    """The file's text; ConfigError (naming the file) when it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
