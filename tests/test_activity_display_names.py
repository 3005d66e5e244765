"""Activity type names are display names (Upload Document, To Do, Gọi lại khách): in the
schema, in every reference, in `mailsync activity` and in the metrics' type label; other
names (servers, accounts, users) stay identifiers."""

from __future__ import annotations

import csv
import io
import json
import time
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from mailsync.activities.store import ActivityCollector
from mailsync.cli import main
from mailsync.config import load_text

VI = "Gọi lại khách"
TYPES = f"""\
activity_types:
  - name: Upload Document
    action: upload_document
    default_user: alice
  - name: To Do
    default_user: alice
    chaining: trigger
    default_next: {VI}
  - name: {VI}
    action: phonecall
    default_user: bob
    chaining: suggest
    recommended_next: [To Do, Upload Document]
incoming_servers:
  - name: support
    type: local
    path: ./maildir
    activity: {{type: {VI}, user: alice}}
"""


def write(tmp_path: Path, types: str = TYPES) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\ndaemon: {state_dir: ./state, spool_dir: ./spool}\n"
                    f"users: [alice, bob]\n{types}", "utf-8")
    return path


def validate(path: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(path)])
    return result.exit_code, [line.removeprefix(f"{path}:") for line in result.stdout.splitlines()]


def activity(cfg: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["activity", *args, "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_display_names_validate_in_every_reference(tmp_path):
    assert validate(write(tmp_path)) == (0, ["0 errors, 0 warnings"])


def test_a_dangling_display_name_is_named_with_a_suggestion(tmp_path):
    code, lines = validate(write(tmp_path, TYPES.replace("default_next: Gọi", "default_next: Goi")))
    assert code == 1
    assert lines[0] == ("11:19: error: activity_types[1].default_next: 'Goi lại khách' is not "
                        "a declared activity type; did you mean 'Gọi lại khách'? "
                        "(declared: Gọi lại khách, To Do, Upload Document)")


@pytest.mark.parametrize(("name", "message"), [
    ("' To Do'", "' To Do' is not valid: expected a display name"),
    ("'To Do '", "'To Do ' is not valid: expected a display name"),
    ('"To\\tDo"', "'To\\tDo' is not valid: expected a display name"),
    ('"To Do\\n"', "'To Do\\n' is not valid: expected a display name"),
    ('"To\\u202eDo"', "'To\\u202eDo' is not valid: expected a display name"),
    ("''", "must not be empty"),
    ("'" + "x" * 65 + "'", "is too long: 65 characters (at most 64)"),
])
def test_a_bad_display_name_is_refused_saying_what_is_allowed(tmp_path, name, message):
    code, lines = validate(write(tmp_path, f"activity_types:\n  - name: {name}\n"))
    assert code == 1
    assert lines[-1] == "1 error, 0 warnings"
    assert lines[0].startswith("5:11: error: activity_types[0].name: ")
    assert message in lines[0]
    if "display name" in message:
        assert "one line of at most 64 characters" in lines[0]


def test_sixty_four_characters_of_any_script_are_a_name(tmp_path):
    name = "Gọi " * 16
    code, _ = validate(write(tmp_path, f"activity_types:\n  - name: '{name[:63]}ọ'\n"))
    assert code == 0


@pytest.mark.parametrize("section", [
    "outgoing_servers:\n  - {name: main relay, host: smtp.example.com}\n",
    "accounts:\n  - {name: sales team, email: sales@example.com}\n",
])
def test_other_names_stay_identifiers(tmp_path, section):
    code, lines = validate(write(tmp_path, section))
    assert code == 1
    assert "expected a name: letters, digits" in lines[0]


def test_the_same_name_in_two_unicode_normalizations_is_one_name(tmp_path):
    nfd = unicodedata.normalize("NFD", VI)
    assert nfd != VI
    text = TYPES.replace("    action: upload_document\n",
                         f"    action: upload_document\n  - name: {nfd}\n", 1)
    code, lines = validate(write(tmp_path, text))
    assert code == 1
    assert any("duplicate activity type name" in line for line in lines), lines
    # A reference typed in the other normalization finds the declared type.
    text = TYPES.replace(f"activity: {{type: {VI}", f"activity: {{type: {nfd}")
    assert validate(write(tmp_path, text))[0] == 0


def test_the_cli_takes_display_names_and_quotes_them_for_the_shell(tmp_path):
    cfg = write(tmp_path)
    out = activity(cfg, "schedule", "--type", VI, "--summary", "Call Mrs Lan back")
    assert out.startswith(f"scheduled activity 1: {VI} for bob, due ")
    # typed in the other Unicode normalization (as some keyboards and terminals do)
    listed = activity(cfg, "list", "--type", unicodedata.normalize("NFD", VI))
    assert VI in listed and "Call Mrs Lan back" in listed
    rows = json.loads(activity(cfg, "list", "--format", "json"))
    assert [r["type"] for r in rows] == [VI]
    done = activity(cfg, "done", "1")
    assert done.splitlines()[:3] == [
        f"activity 1 done: {VI} (Call Mrs Lan back)",
        "recommended next: 'To Do', 'Upload Document'",
        "  schedule one with: mailsync activity schedule --after 1 --type TYPE",
    ]
    out = activity(cfg, "schedule", "--after", "1", "--type", "To Do")
    assert out.startswith("scheduled activity 2: To Do for alice, due ")
    refused = CliRunner().invoke(main, ["activity", "schedule", "--type", "To Dp", "-c", str(cfg)])
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "error: activity type 'To Dp' is not declared "
        f"(declared: 'Upload Document', 'To Do', '{VI}')")


def test_activity_list_as_csv_has_the_json_fields_and_defuses_formulas(tmp_path):
    cfg = write(tmp_path)
    activity(cfg, "schedule", "--type", VI, "--summary", "=HYPERLINK(\"http://x\")")
    activity(cfg, "schedule", "--type", "To Do", "--summary", "Send the quote")
    rows = json.loads(activity(cfg, "list", "--format", "json"))
    result = CliRunner().invoke(main, ["activity", "list", "-c", str(cfg), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert b"\r\n" in result.stdout_bytes  # RFC 4180 line ends
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == list(rows[0])  # every field of the JSON, in its order
    assert [(r["id"], r["type"], r["user"]) for r in table] == [
        (str(r["id"]), r["type"], r["user"]) for r in rows]
    by_type = {r["type"]: r for r in table}
    assert by_type[VI]["summary"] == "'=HYPERLINK(\"http://x\")"  # not run as a formula
    assert by_type["To Do"]["summary"] == "Send the quote"
    assert by_type["To Do"]["deadline"] == next(r["deadline"] for r in rows
                                                if r["type"] == "To Do")
    empty = CliRunner().invoke(main, ["activity", "list", "-c", str(cfg), "--format", "csv",
                                      "--state", "done"])
    assert empty.stdout.splitlines() == [",".join(rows[0])]  # the header alone


def test_metric_labels_carry_display_names(tmp_path):
    cfg = write(tmp_path)
    activity(cfg, "schedule", "--type", "To Do")
    loaded = load_text(cfg.read_text("utf-8"), str(cfg), tmp_path)
    assert loaded.config is not None
    registry = CollectorRegistry()
    registry.register(ActivityCollector(tmp_path / "state", loaded.config, clock=time.time))
    assert registry.get_sample_value("mailsync_activities_open", {"type": "To Do"}) == 1
    assert registry.get_sample_value("mailsync_activities_open", {"type": VI}) == 0
    text = generate_latest(registry).decode("utf-8")
    assert 'mailsync_activities_open{type="To Do"} 1.0' in text
    assert f'mailsync_activities_open{{type="{VI}"}} 0.0' in text
