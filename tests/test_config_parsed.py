"""The parsed form of an unchanged file remembered in state_dir (mailsync/config/parsed.py).

A file loaded before is not parsed again (nor PyYAML imported), with the same model and
the same problems on the same lines; the form kept is what the parser makes, over the
corpus, the example and YAML's corners (anchors, merge keys, YAML 1.1 readings, NaN);
another text, another loader, a foreign, writable, linked or torn file are parsed in
full; the file is 0600 whatever the umask; `mailsync validate` neither uses nor writes it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsync.cli import main
from mailsync.config import load_file, parsed, verdicts, yamlload
from tests.conftest import EXAMPLE

CORPUS = sorted((Path(__file__).parent / "config_corpus").glob("*.yaml"))
PLAIN = "outgoing_servers:\n  - {name: r, host: h, username: u, password: hunter2}\n"


def config_text(tmp_path: Path, extra: str = "") -> str:
    return (f"version: 1\ndaemon:\n  state_dir: {tmp_path}/state\n"
            f"  spool_dir: {tmp_path}/spool\n{extra}")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files the YAML loader parsed, in order."""
    seen: list[str] = []
    real = yamlload.parse

    def counting(text: str, file: str) -> Any:
        seen.append(file)
        return real(text, file)

    monkeypatch.setattr(yamlload, "parse", counting)
    yield seen


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, PLAIN))
    return path


def kept(cfg: Path) -> Path:
    return parsed.path(cfg.parent / "state")


def test_an_unchanged_file_is_not_parsed_again_with_the_same_outcome(cfg, parses):
    first = load_file(cfg, remembered=True)
    second = load_file(cfg, remembered=True)
    assert parses == [str(cfg)]
    assert second.config == first.config and second.config is not None
    # The semantic checks ran again, their warning on the same line and column.
    assert second.problems == first.problems
    assert [(p.line, p.column) for p in second.warnings] == [(6, 47)]
    assert second.text == cfg.read_text()


def test_the_kept_form_is_the_parsers_over_the_corpus_and_yamls_corners(tmp_path):
    corners = tmp_path / "corners.yaml"
    corners.write_text(
        "version: 1\nbase: &b {host: h, port: 25, tls: [a, 1, 2.5, .nan, -.inf, null]}\n"
        "servers:\n  - <<: *b\n    name: x\n  - *b\n"
        "flags: {keep: no, at: 1:30, when: 2024-01-01, text: \"caf\\u00e9 \\t\"}\n"
        "big: 123456789012345678901234567890\nempty: {}\nlist: []\n'quoted key': ''\n")
    state_dir = tmp_path / "var" / "state"  # the default, and the example's
    state_dir.mkdir(parents=True)
    checked = 0
    for source in [*CORPUS, EXAMPLE, corners]:
        text = source.read_text("utf-8")
        doc = yamlload.parse(text, str(source))
        if doc.problems or not isinstance(doc.data, dict) \
                or parsed.state_dir_named(text, tmp_path) != state_dir:
            continue
        key = verdicts.key(text)
        parsed.path(state_dir).unlink(missing_ok=True)
        parsed.remember(state_dir, key, doc)
        again = parsed.recall(text, str(source), tmp_path, key)
        assert again is not None, source
        assert _same(again.data, doc.data), source
        assert again.marks == doc.marks and again.yaml11 == doc.yaml11, source
        assert again.problems == [] and again.text == text and again.file == str(source)
        checked += 1
    assert checked >= 10


def _same(a: object, b: object) -> bool:
    """Equal, NaN included, and of the same types (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def forge(cfg: Path, **changes: Any) -> None:
    """A kept form of the file's text whose data says state_dir is elsewhere: what a
    forger would write (a load that takes it reports another state_dir)."""
    text = cfg.read_text()
    form = {"kind": parsed.KIND, "key": verdicts.key(text), "fingerprint": parsed.fingerprint(),
            "values": [], "keys": [], "yaml11": [],
            "data": {"version": 1, "daemon": {"state_dir": "/forged"}}}
    form.update(changes)
    kept(cfg).write_text(json.dumps(form))
    kept(cfg).chmod(0o600)


def test_a_form_of_this_loader_for_this_text_is_taken(cfg):
    load_file(cfg, remembered=True)  # the verdict remembered
    forge(cfg)
    assert load_file(cfg, remembered=True).config.daemon.state_dir == Path("/forged")


@pytest.mark.parametrize("case", ["other text", "other loader", "other version", "torn",
                                  "writable by others", "a link"])
def test_a_form_not_certainly_this_loaders_of_this_text_is_parsed_again(cfg, parses, case):
    load_file(cfg, remembered=True)
    if case == "other text":
        forge(cfg, key=verdicts.key("version: 1\n"))
    elif case == "other loader":
        forge(cfg, fingerprint={**parsed.fingerprint(), "pyyaml": [1, 2]})
    elif case == "other version":
        forge(cfg, fingerprint={**parsed.fingerprint(), "version": "0.0.1"})
    elif case == "torn":
        forge(cfg)
        kept(cfg).write_bytes(kept(cfg).read_bytes()[:100])
    elif case == "writable by others":
        forge(cfg)
        kept(cfg).chmod(0o620)
    else:
        forge(cfg)
        os.rename(kept(cfg), cfg.parent / "elsewhere.json")
        kept(cfg).symlink_to(cfg.parent / "elsewhere.json")
    loaded = load_file(cfg, remembered=True)
    assert loaded.config.daemon.state_dir == cfg.parent / "state"
    assert parses == [str(cfg), str(cfg)]
    if case != "a link":  # rewritten for this text by this loader
        assert json.loads(kept(cfg).read_text())["key"] == verdicts.key(cfg.read_text())
        assert load_file(cfg, remembered=True).config == loaded.config
        assert len(parses) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_form_of_another_user_is_not_taken(cfg, parses):
    load_file(cfg, remembered=True)
    forge(cfg)
    os.chown(kept(cfg), 65534, 65534)  # nobody: state_dir's owner is trusted no further
    assert load_file(cfg, remembered=True).config.daemon.state_dir == cfg.parent / "state"
    assert len(parses) == 2


def test_the_form_is_0600_whatever_the_umask_and_holds_the_values(cfg):
    old = os.umask(0)
    try:
        load_file(cfg, remembered=True)
    finally:
        os.umask(old)
    assert kept(cfg).stat().st_mode & 0o777 == 0o600  # a plain-text password is in it
    assert "hunter2" in kept(cfg).read_text()


def test_a_file_that_does_not_load_is_not_remembered(tmp_path, parses):
    (tmp_path / "state").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, "accounts: [{name: a, server: missing}]\n"))
    assert load_file(path, remembered=True).config is None
    assert load_file(path, remembered=True).config is None
    assert not parsed.path(tmp_path / "state").exists() and len(parses) == 2


def test_validate_neither_uses_nor_writes_the_form(cfg, parses):
    from click.testing import CliRunner

    assert CliRunner().invoke(main, ["validate", str(cfg)]).exit_code == 0
    assert not kept(cfg).exists()
    load_file(cfg, remembered=True)
    assert CliRunner().invoke(main, ["validate", str(cfg)]).exit_code == 0
    assert len(parses) == 3


@pytest.mark.parametrize(("text", "named"), [
    ("daemon:\n  # state_dir: /old\n  log_format: text\n  state_dir: /s  # here\n", "/s"),
    ("daemon:\n  state_dir: \"/q q\"\n", "/q q"),
    ("daemon:\n  state_dir: 'rel'\n", "BASE/rel"),
    ("daemon: {spool_dir: /x, state_dir: /f}\n", "/f"),
    ("version: 1\n", "BASE/var/state"),  # the default
    ("daemon:\n  state_dir: /a\nother:\n  daemon: {state_dir: /b}\n", "/a"),
    ("daemon: &d\n  state_dir: *x\n", None),  # an alias: told only by parsing
    ("daemon:\n  state_dir: /a\n---\ndaemon: {state_dir: /b}\n", None),  # two: no guess
    ("x: {state_dir: /a}\n", None),  # named, but not in daemon's usual layout
])
def test_where_state_dir_is_is_read_from_the_usual_layouts(tmp_path, text, named):
    guess = parsed.state_dir_named(text, tmp_path)
    expect = None if named is None else Path(named.replace("BASE", str(tmp_path)))
    assert guess == expect


def test_a_command_on_a_remembered_file_imports_no_yaml_parser(cfg):
    code = ("import sys; from mailsync.config import load_file; from pathlib import Path\n"
            f"c = load_file(Path({str(cfg)!r}), remembered=True).config\n"
            "print(c.daemon.state_dir, 'yaml' in sys.modules)")
    run = [sys.executable, "-c", code]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    second = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert first.stdout.split() == [f"{cfg.parent}/state", "True"]
    assert second.stdout.split() == [f"{cfg.parent}/state", "False"]
