"""Problems found in a configuration file, and their one-line rendering."""

from __future__ import annotations

from typing import Literal

from mailsync.values import valueclass

Severity = Literal["error", "warning"]
Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """Render ``("accounts", 1, "granted_to", 0)`` as ``accounts[1].granted_to[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"


@valueclass(order=True)
class Problem:
    """One error or warning, located at a line and column (1-based) of a file."""

    file: str
    line: int
    column: int
    severity: Severity
    path: str
    message: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.severity}: {self.path}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
        }


def summary(problems: list[Problem] | tuple[Problem, ...]) -> str:
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'s' if n != 1 else ''}"

    return f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"
