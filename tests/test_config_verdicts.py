"""The schema verdicts remembered in state_dir (mailsync/config/verdicts.py).

An unchanged file skips the schema; a changed file, a verdict of another mailsync (or
schema, or jsonschema), a corrupt or foreign file are validated in full; the semantic
checks (a tls_ca_file's contents) run every time; the file is 0640 whatever the umask;
`mailsync validate` neither uses nor writes it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.cli import main
from mailsync.config import load_file, parsed, schema, verdicts

BAD = "bogus: 1\n"  # refused by the schema, ignored by the model: builds all the same


def config_text(tmp_path: Path, extra: str = "") -> str:
    return (f"version: 1\ndaemon:\n  state_dir: {tmp_path}/state\n"
            f"  spool_dir: {tmp_path}/spool\n{extra}")


@pytest.fixture
def schema_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files the JSON Schema validated, in order."""
    seen: list[str] = []
    real = schema.validate

    def counting(doc):  # type: ignore[no-untyped-def]
        seen.append(doc.file)
        return real(doc)

    monkeypatch.setattr(schema, "validate", counting)
    yield seen


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path))
    return path


def forge(state_dir: Path, text: str, **changes: object) -> None:
    """A verdicts file saying ``text`` passed the schema, with ``changes`` to the
    fingerprint (another version...): what a file written by another mailsync holds."""
    fingerprint = {**verdicts.fingerprint(), **changes}
    body = {"kind": verdicts.KIND, "fingerprint": fingerprint,
            "schema_clean": [verdicts.key(text)]}
    target = verdicts.path(state_dir)
    target.write_text(json.dumps(body))
    target.chmod(0o640)


def test_an_unchanged_file_skips_the_schema_with_the_same_outcome(cfg, schema_runs):
    first = load_file(cfg, remembered=True)
    second = load_file(cfg, remembered=True)
    assert schema_runs == [str(cfg)]
    assert second.config == first.config and second.problems == first.problems
    assert verdicts.path(cfg.parent / "state").exists()


def test_the_warnings_of_the_semantic_checks_are_kept(tmp_path, cfg, schema_runs):
    cfg.write_text(config_text(tmp_path, "outgoing_servers:\n  - {name: r, host: h, "
                                         "username: u, password: hunter2}\n"))
    first = load_file(cfg, remembered=True)
    second = load_file(cfg, remembered=True)
    assert len(schema_runs) == 1
    assert [p.message for p in second.warnings] == [p.message for p in first.warnings]
    assert any("plain-text password" in p.message for p in second.warnings)


def test_a_changed_file_is_validated_again(tmp_path, cfg, schema_runs):
    load_file(cfg, remembered=True)
    cfg.write_text(config_text(tmp_path, BAD))
    loaded = load_file(cfg, remembered=True)
    assert loaded.config is None
    assert [p.path for p in loaded.errors] == ["bogus"]
    assert len(schema_runs) == 2


def test_a_forged_verdict_of_this_mailsync_is_what_skips_the_schema(tmp_path, cfg):
    # The premise of the tests below: a verdict that matches is trusted (so a file
    # that fails the schema loads), and only the fingerprint's change makes them differ.
    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path / "state", text)
    assert load_file(cfg, remembered=True).config is not None


@pytest.mark.parametrize("changes", [
    {"version": "0.0.9"},
    {"schema": "0" * 64},
    {"validator": [1, 2]},
    {"jsonschema": [3, 4]},
], ids=["version", "schema", "validator", "jsonschema"])
def test_a_verdict_of_another_mailsync_or_schema_is_ignored(tmp_path, cfg, changes):
    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path / "state", text, **changes)
    loaded = load_file(cfg, remembered=True)
    assert loaded.config is None and [p.path for p in loaded.errors] == ["bogus"]


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]",
                                     b'{"kind": "mailsync config verdicts"}'],
                         ids=["empty", "torn", "binary", "a-list", "no-fingerprint"])
def test_a_corrupt_file_is_ignored_and_replaced(cfg, schema_runs, content):
    target = verdicts.path(cfg.parent / "state")
    target.write_bytes(content)
    target.chmod(0o640)
    assert load_file(cfg, remembered=True).config is not None
    assert load_file(cfg, remembered=True).config is not None
    assert len(schema_runs) == 1  # validated once, then remembered in a good file
    body = json.loads(target.read_text())
    assert body["schema_clean"] == [verdicts.key(cfg.read_text())]


def test_a_file_others_may_write_is_ignored(tmp_path, cfg):
    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path / "state", text)
    verdicts.path(tmp_path / "state").chmod(0o662)
    assert load_file(cfg, remembered=True).config is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_file_of_another_user_is_ignored(tmp_path, cfg):
    import pwd

    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path / "state", text)
    os.chown(verdicts.path(tmp_path / "state"), pwd.getpwnam("nobody").pw_uid, -1)
    assert load_file(cfg, remembered=True).config is None


def test_a_symlink_is_ignored(tmp_path, cfg):
    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path, text)  # elsewhere, then linked into state_dir
    verdicts.path(tmp_path / "state").symlink_to(verdicts.path(tmp_path))
    assert load_file(cfg, remembered=True).config is None


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_file_is_0640_whatever_the_umask(cfg, umask):
    old = os.umask(umask)
    try:
        load_file(cfg, remembered=True)
    finally:
        os.umask(old)
    st = verdicts.path(cfg.parent / "state").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    # No temp file left; beside it, the parsed form (tests/test_config_parsed.py).
    assert sorted(p.name for p in (cfg.parent / "state").iterdir()) == sorted(
        [verdicts.FILE_NAME, parsed.FILE_NAME])


def test_a_state_dir_that_does_not_exist_is_not_made(tmp_path, schema_runs):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(tmp_path))
    assert load_file(cfg, remembered=True).config is not None
    assert not (tmp_path / "state").exists()


def test_the_semantic_checks_still_read_the_ca_file(tmp_path, cfg, schema_runs):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    cfg.write_text(config_text(tmp_path, f"  tls_ca_file: {ca}\n"))
    assert load_file(cfg, remembered=True).config is not None
    ca.write_text("not a certificate\n")
    loaded = load_file(cfg, remembered=True)
    assert len(schema_runs) == 1  # the verdict was used, the CA file read again
    assert [p.path for p in loaded.errors] == ["daemon.tls_ca_file"]


def test_validate_checks_in_full_and_writes_nothing(runner, tmp_path, cfg, schema_runs):
    text = config_text(tmp_path, BAD)
    cfg.write_text(text)
    forge(tmp_path / "state", text)
    before = verdicts.path(tmp_path / "state").read_bytes()
    result = runner.invoke(main, ["validate", "-c", str(cfg)])
    assert result.exit_code == 1 and "unknown key 'bogus'" in result.output
    assert verdicts.path(tmp_path / "state").read_bytes() == before


def test_the_commands_remember_the_verdict(runner, cfg, schema_runs):
    for _ in range(2):
        result = runner.invoke(main, ["history", "-c", str(cfg)])
        assert result.exit_code == 0, result.output
    assert schema_runs == [str(cfg)]
