"""Read a configuration file: YAML → schema → model → semantic checks.

``load_file`` never raises on bad content: it returns every problem found, each placed
on its line, and the model when there were no errors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mailsync.config import checks, parsed, verdicts
from mailsync.config.document import Document
from mailsync.config.document import read_text as read_text  # moved there: read by status too
from mailsync.config.model import Config, build
from mailsync.config.problems import Problem, format_path
from mailsync.errors import ConfigInvalid
from mailsync.values import field, valueclass


@valueclass
class Loaded:
    """The outcome of reading one file: its model (None when it has errors) and problems."""

    file: str
    text: str = field(repr=False)  # may hold plain-text secrets
    config: Config | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_text(text: str, file: str, base_dir: Path, *, validate: bool = True,
              remembered: bool = False) -> Loaded:
    """Parse and check ``text`` (named ``file`` in problems); paths relative to ``base_dir``.

    ``validate=False`` skips the schema and the semantic checks (falling back to them when
    the text does not fit the model): for the side of a plan that is only compared with,
    such as the last applied config or ``plan --against``.

    ``remembered=True`` skips the schema when the state_dir the text names remembers that
    this text passed it (:mod:`mailsync.config.verdicts`), and the parse when it remembers
    what this text parses to (:mod:`mailsync.config.parsed`), and remembers both there
    when it passes; the outcome is the same either way (the semantic checks always run).
    """
    text_key = verdicts.key(text) if validate and remembered else ""
    doc = parsed.recall(text, file, base_dir, text_key) if text_key else None
    fresh = doc is None
    if doc is None:
        # PyYAML (~10 ms to import) only for a text whose parsed form is not remembered.
        from mailsync.config.yamlload import parse

        doc = parse(text, file)
    if text_key and not doc.problems and isinstance(doc.data, dict):
        known = _known_clean(doc, text_key, base_dir)
        if known is not None:
            if fresh and known.config is not None:
                parsed.remember(known.config.daemon.state_dir, text_key, doc)
            return known
    loaded = _load(doc, text, file, base_dir, validate)
    if text_key and loaded.config is not None:
        # A model means no error at all: the schema (whose problems are errors) found none.
        verdicts.remember(loaded.config.daemon.state_dir, text_key)
        parsed.remember(loaded.config.daemon.state_dir, text_key, doc)
    return loaded


def _known_clean(doc: Document, text_key: str, base_dir: Path) -> Loaded | None:
    """The outcome of loading ``doc`` when its state_dir remembers that its text (of
    ``text_key``) passed the schema: the model and the semantic checks' findings, as a
    full load gives them."""
    assert isinstance(doc.data, dict)
    try:
        config = build(doc.data, base_dir, source=doc.file)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    if not verdicts.known(config.daemon.state_dir, text_key):
        return None
    problems = _place(doc, checks.check(config, doc.data))
    has_errors = any(p.severity == "error" for p in problems)
    return Loaded(doc.file, doc.text, None if has_errors else config, tuple(sorted(problems)))


def _load(doc: Document, text: str, file: str, base_dir: Path, validate: bool) -> Loaded:
    # The schema (and jsonschema, ~0.1 s) only when a file is validated in full: not for a
    # remembered verdict (_known_clean) nor a plan's other side (validate=False).
    from mailsync.config import schema

    if doc.data is None:
        problems = doc.problems or (schema.validate(doc) if validate else [])
        return Loaded(file, text, None, tuple(sorted(problems)))
    # Duplicate keys are reported and the first one kept, so that everything else in the
    # file is still checked: every problem is reported, not just the first.
    problems = list(doc.problems)
    if validate:
        problems += schema.validate(doc)
    if any(p.severity == "error" for p in problems) and not _buildable(problems, doc):
        if validate and isinstance(doc.data, dict):
            problems += _check_fitting_part(doc, base_dir, problems)
        return Loaded(file, text, None, tuple(sorted(problems)))
    if not isinstance(doc.data, dict):
        return Loaded(file, text, None, (Problem(file, 1, 1, "error", "(root)",
                                                 "expected a mapping"),))
    try:
        config = build(doc.data, base_dir, source=file)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        if validate:
            # Schema-valid but unusable (should not happen): a problem, never a traceback.
            problems.append(Problem(file, 1, 1, "error", "(root)", f"cannot be used: {exc}"))
            return Loaded(file, text, None, tuple(sorted(problems)))
        # Unvalidated text that does not fit the model: validate to say why.
        return load_text(text, file, base_dir, validate=True)
    if validate:
        problems += _place(doc, checks.check(config, doc.data))
    has_errors = any(p.severity == "error" for p in problems)
    return Loaded(file, text, None if has_errors else config, tuple(sorted(problems)))


def _check_fitting_part(doc: Document, base_dir: Path, found: list[Problem]) -> list[Problem]:
    """The semantic problems of the parts of the file that fit the schema (so that one run
    reports a bad enum and, elsewhere, a dangling reference: every problem, with its line)."""
    from mailsync.config import partial, schema  # only for a file with schema errors

    part = partial.fitting(doc.data, schema.errors)
    if part is None:
        return []
    try:
        config = build(part.data, base_dir, source=doc.file)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return []
    findings = [(severity, part.original(path), message)
                for severity, path, message in checks.check(config, part.data, part.removed)]
    findings = [f for f in findings if not part.concerns_taken(f[1])]
    return [p for p in _place(doc, findings) if p not in found]


def _buildable(problems: list[Problem], doc: Document) -> bool:
    """Only duplicate-key errors so far: the data is schema-valid and can be checked further."""
    return len(problems) == len(doc.problems) and isinstance(doc.data, dict)


def _place(doc: Document, findings: list[checks.Finding]) -> list[Problem]:
    out = []
    for severity, path, message in findings:
        line, col = doc.marks.value(path)
        out.append(Problem(doc.file, line, col, severity, format_path(path), message))
    return out


def load_file(path: Path, *, validate: bool = True, remembered: bool = False) -> Loaded:
    """Read and check a configuration file; raises ConfigError only when it cannot be read.
    ``remembered``: see :func:`load_text`."""
    text = read_text(path)
    return load_text(text, str(path), path.resolve().parent, validate=validate,
                     remembered=remembered)


def load_config(path: Path) -> Config:
    """The model of a valid file; raises ConfigInvalid (with every problem) otherwise."""
    loaded = load_file(path)
    if loaded.config is None:
        raise ConfigInvalid(loaded.problems)
    return loaded.config
