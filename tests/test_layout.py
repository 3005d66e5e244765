"""The package's structure (docs/architecture.md), read from its source with ``ast``.

- No import cycle between modules: every import that runs (at the top of a module or
  inside a function; not those under ``if TYPE_CHECKING:``), with the package
  ``__init__`` each import runs first. Module level, not package level: the store's
  migrations import each part's SQL while the parts import the store, which is no cycle
  between modules (``outbound/__init__`` imports nothing).
- No upward arrow between the parts: each part imports only the parts below it in
  :data:`LAYERS`, apart from the few module-to-module arrows of :data:`KNOWN_UPWARD`.
- Every package's ``__init__`` has a docstring naming its job; so has every module.
- An import inside a function says why (a comment on its line or just above it, or a
  module comment starting ``# Imports inside``).
- No module over :data:`MAX_LINES` lines, except those of :data:`KNOWN_LONG`.
- No ``@dataclass`` in the package: its value classes are ``mailsync.values``'
  ``@valueclass`` (the same classes, without compiling their methods at import).
- No SQL in the admin console (``mailsync/web/``): its pages read through the parts'
  read sides, which own the SQL and run it on either backend.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailsync"

MAX_LINES = 400
# Modules over MAX_LINES today: none since #15 split the last five along their seams. The
# list stays empty: a module that grows past MAX_LINES is split, not listed.
KNOWN_LONG: set[str] = set()

# The parts, lowest first: a part imports only parts on an earlier line. The top-level
# modules are parts of their own.
LAYERS: list[set[str]] = [
    # Shared, importing nothing of mailsync.
    {"mailsync", "printable", "files", "values", "collector", "deadline", "mime"},
    {"errors"},
    {"config"},
    {"auth"},
    {"netio"},
    {"store"},
    {"telemetry"},
    {"outbound"},
    {"inbound"},
    {"activities"},
    {"web"},                              # the admin console, which the daemon serves
    {"daemon"},
    {"demo"},
    {"cli"},
    {"spool", "__main__"},                # what applications and `python -m` import
]
# Arrows against LAYERS, module to module, each with its reason. Only shrinks.
KNOWN_UPWARD = {
    # The config declares each server's OAuth2 settings, whose type auth defines.
    ("mailsync.config.tree", "mailsync.auth.settings"),
    ("mailsync.config.oauth2", "mailsync.auth.settings"),
    # The store applies each part's tables, in the order they were added.
    ("mailsync.store.migrations", "mailsync.outbound.tables"),
    ("mailsync.store.migrations", "mailsync.inbound.tables"),
    ("mailsync.store.migrations", "mailsync.activities.tables"),
}


@dataclass(frozen=True)
class Import:
    source: str        # the importing module
    target: str        # the imported module
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = ["mailsync", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> Iterator[Import]:
    """Every import of a mailsync module in ``path`` that runs (not under TYPE_CHECKING);
    ``from pkg import mod`` imports the module ``pkg.mod``."""
    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                yield from (i for c in child.orelse for i in visit_one(c, in_function))
                continue
            yield from visit_one(child, in_function)

    def visit_one(child: ast.AST, in_function: bool) -> Iterator[Import]:
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module \
                and child.module.split(".")[0] == "mailsync":
            for alias in child.names:
                sub = f"{child.module}.{alias.name}"
                yield Import(name, sub if sub in MODULES else child.module, child.lineno,
                             in_function)
        elif isinstance(child, ast.Import):
            for alias in child.names:
                if alias.name.split(".")[0] == "mailsync":
                    yield Import(name, alias.name, child.lineno, in_function)
        yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text("utf-8")), False)


IMPORTS = [i for name, path in MODULES.items() for i in _imports(name, path)]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _rank(part: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if part in layer:
            return rank
    raise AssertionError(f"{part}: a part in no layer of LAYERS; add it where it belongs")


def _graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs: each target and the packages above it."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        parts = imp.target.split(".")
        for n in range(1, len(parts) + 1):
            target = ".".join(parts[:n])
            if target != imp.source and not imp.source.startswith(target + "."):
                graph[imp.source].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order), or None."""
    state: dict[str, int] = {}   # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_every_import_names_a_module_of_the_package():
    unknown = [f"{i.source}:{i.line}: {i.target}" for i in IMPORTS if i.target not in MODULES]
    assert unknown == []


def test_no_import_cycle_between_modules():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_upward_arrow_between_parts():
    upward = {(i.source, i.target) for i in IMPORTS
              if _rank(_part(i.target)) > _rank(_part(i.source))}
    assert upward - KNOWN_UPWARD == set(), "a part imports one above it (see LAYERS)"
    assert KNOWN_UPWARD - upward == set(), "no longer upward: remove it from KNOWN_UPWARD"


@pytest.mark.parametrize("name", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_every_package_says_what_it_does(name):
    assert ast.get_docstring(ast.parse(MODULES[name].read_text("utf-8"))), \
        f"{MODULES[name]}: no docstring naming the package's job"


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(PACKAGE.parent)) for p in MODULES.values()
               if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


def _says_why(lines: list[str], line: int) -> bool:
    if "#" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_an_import_inside_a_function_says_why():
    unexplained = []
    for imp in IMPORTS:
        if not imp.in_function:
            continue
        lines = MODULES[imp.source].read_text("utf-8").splitlines()
        if any(line.startswith("# Imports inside") for line in lines):
            continue
        if not _says_why(lines, imp.line):
            unexplained.append(f"{MODULES[imp.source].relative_to(PACKAGE.parent)}:{imp.line}")
    assert unexplained == []


def test_modules_stay_short():
    lines = {str(p.relative_to(PACKAGE.parent)): len(p.read_text("utf-8").splitlines())
             for p in MODULES.values()}
    long = {path for path, n in lines.items() if n > MAX_LINES}
    assert long - KNOWN_LONG == set(), f"over {MAX_LINES} lines: split them"
    assert KNOWN_LONG - long == set(), f"now {MAX_LINES} lines or fewer: remove from KNOWN_LONG"


# SQL in a module's code (docstrings and comments aside): a statement's head and its body.
_SQL = re.compile(r"\b(SELECT\s.*\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|"
                  r"DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX)\b|SELECT\s)", re.DOTALL)
_RUNS_SQL = {"execute", "executemany", "executescript", "query"}


def _sql_in(path: Path) -> list[str]:
    """Where ``path`` runs SQL itself: a call of a connection's or store's ``execute``
    (``query``, ...) or a string constant (an f-string's text too) holding a statement."""
    tree = ast.parse(path.read_text("utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _RUNS_SQL:
            found.append(f"{path.name}:{node.lineno}: .{node.func.attr}(")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and _SQL.search(node.value):
            found.append(f"{path.name}:{node.lineno}: {node.value[:40]!r}")
    return found


def test_the_admin_console_runs_no_sql_of_its_own():
    """docs/architecture.md: the pages read through the parts' read sides."""
    web = sorted((PACKAGE / "web").rglob("*.py"))
    assert web and [hit for p in web for hit in _sql_in(p)] == []


def test_the_sql_finder_finds_a_query(tmp_path):
    sample = tmp_path / "page.py"
    sample.write_text('"""A page."""\n\ndef rows(store):\n    """SELECT in a docstring."""\n'
                      '    return store.query(f"SELECT id FROM messages WHERE x = {1}")\n')
    assert [h.split(": ", 1)[1] for h in _sql_in(sample)] == [
        ".query(", "'SELECT id FROM messages WHERE x = '"]


def test_the_package_defines_value_classes_not_dataclasses():
    """mailsync.values: a dataclass compiles its methods at import (~0.4 ms a class,
    paid by every one-shot command); a ``@valueclass`` is the same class without that."""
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                name = target.attr if isinstance(target, ast.Attribute) else \
                    getattr(target, "id", "")
                if name == "dataclass":
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert found == []
