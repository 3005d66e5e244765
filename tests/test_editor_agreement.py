"""mailsync, check-jsonschema and the YAML language server read every file alike.

Editors and CI check the config with the shipped schema under YAML 1.2 (check-jsonschema
reads YAML with ruamel.yaml's 1.2 rules); ``mailsync validate`` must give each file the
same verdict, or a file that the editor marks as fine is refused by the daemon (or the
other way round). Checked over the corpus of small files in tests/config_corpus (each
says what mailsync reports on its first line), config.example.yaml and every config
snippet of README.md and docs/*.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailsync.cli import main
from tests.conftest import EXAMPLE, ROOT

SCHEMA = ROOT / "schemas" / "mailsync.schema.json"
CORPUS = sorted((Path(__file__).parent / "config_corpus").glob("*.yaml"))
TOP_LEVEL = set(json.loads(SCHEMA.read_text("utf-8"))["properties"])


def _check_jsonschema() -> list[str]:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("check-jsonschema")
    if found is None:  # a test dependency (pyproject.toml [test]): missing is a broken venv
        pytest.fail("check-jsonschema is not installed: pip install -e '.[test]'")
    return [found]


def check_jsonschema(files: list[Path]) -> dict[str, bool]:
    """check-jsonschema's verdict on each file (True: valid), in one run."""
    result = subprocess.run(
        [*_check_jsonschema(), "--schemafile", str(SCHEMA), "--output-format", "json",
         *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(result.stdout)
    failed = {e["filename"] for e in report.get("errors", [])}
    failed |= {e["filename"] for e in report.get("parse_errors", [])}
    return {str(f): str(f) not in failed for f in files}


def mailsync_validate(runner, path: Path) -> tuple[bool, str]:
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    return result.exit_code == 0, result.stdout


def _expected(path: Path) -> tuple[bool, str]:
    first = path.read_text("utf-8").splitlines()[0]
    m = re.match(r"^# expect: (valid|invalid: (.+))$", first)
    assert m, f"{path.name}: the first line must be '# expect: valid' or '# expect: invalid: …'"
    return m.group(1) == "valid", m.group(2) or ""


def _snippets() -> list[tuple[str, str]]:
    """(where, text) of every ```yaml block of the docs that is a piece of a config file:
    a mapping of top-level config keys (others, such as Prometheus' config, are skipped)."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text("utf-8")
        for m in re.finditer(r"^( *)```yaml\n(.*?)^\1```", text, re.M | re.S):
            body = "\n".join(line[len(m.group(1)):] for line in m.group(2).splitlines())
            data = yaml.safe_load(body)
            if isinstance(data, dict) and data and set(data) <= TOP_LEVEL:
                line = text[:m.start()].count("\n") + 1
                out.append((f"{doc.relative_to(ROOT)}:{line}", body))
    return out


def test_the_corpus_and_the_snippets_are_found():
    assert len(CORPUS) >= 20
    assert len(_snippets()) >= 5


def test_corpus_files_get_the_same_verdict_from_mailsync_and_check_jsonschema(runner):
    verdicts = check_jsonschema(CORPUS)
    for path in CORPUS:
        valid, message = _expected(path)
        ours, output = mailsync_validate(runner, path)
        assert ours == valid, f"{path.name}: mailsync says {output}"
        assert verdicts[str(path)] == valid, f"{path.name}: check-jsonschema disagrees"
        if not valid:
            assert message in output, f"{path.name}: {output}"


def test_example_and_doc_snippets_are_valid_for_both(runner, tmp_path):
    files = [EXAMPLE]
    for i, (where, body) in enumerate(_snippets()):
        text = body if re.search(r"^version:", body, re.M) else "version: 1\n" + body
        path = tmp_path / f"snippet{i}.yaml"
        path.write_text(f"# {where}\n{text}")
        files.append(path)
    verdicts = check_jsonschema(files)
    for path in files:
        ours, output = mailsync_validate(runner, path)
        where = path.read_text("utf-8").splitlines()[0]
        assert ours, f"{where}: {output}"
        assert verdicts[str(path)], f"{where}: check-jsonschema refuses it"


def test_a_yaml_1_1_boolean_is_an_error_naming_file_line_and_column(runner, write_config):
    path = write_config(
        "version: 1\nincoming_servers:\n  - name: support\n    type: imap\n"
        "    host: imap.example.com\n    username: s@example.com\n"
        "    password: {env: P}\n    keep_on_server: no\n    folder: no\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}:8:21: error: incoming_servers[0].keep_on_server: no is not a boolean: "
        "use true or false (YAML 1.2)",
        "1 error, 0 warnings",
    ]
