"""YAML with line marks: positions, duplicate keys, implicit typing, merge keys, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.config.yamlload import parse


def _one_error(text: str):
    doc = parse(text, "f.yaml")
    assert len(doc.problems) == 1, doc.problems
    problem = doc.problems[0]
    assert problem.severity == "error"
    assert problem.file == "f.yaml"
    return doc, problem


# --- marks -------------------------------------------------------------------------------

MARKED = """\
version: 1
daemon:
  state_dir: ./var
  retry: {first: 5m, max: 1h}
users: [alice, bob]
accounts:
  - name: sales
    granted_to:
      - alice
"""


def test_marks_of_values_are_one_based_line_and_column():
    doc = parse(MARKED, "f.yaml")
    assert doc.problems == []
    assert doc.marks.values[("version",)] == (1, 10)
    assert doc.marks.values[("daemon", "state_dir")] == (3, 14)
    assert doc.marks.values[("daemon", "retry")] == (4, 10)
    assert doc.marks.values[("daemon", "retry", "first")] == (4, 18)
    assert doc.marks.values[("daemon", "retry", "max")] == (4, 27)
    assert doc.marks.values[("users", 0)] == (5, 9)
    assert doc.marks.values[("users", 1)] == (5, 16)
    assert doc.marks.values[("accounts", 0)] == (7, 5)
    assert doc.marks.values[("accounts", 0, "name")] == (7, 11)
    assert doc.marks.values[("accounts", 0, "granted_to", 0)] == (9, 9)


def test_marks_of_keys_are_one_based_line_and_column():
    doc = parse(MARKED, "f.yaml")
    assert doc.marks.keys[("version",)] == (1, 1)
    assert doc.marks.keys[("daemon",)] == (2, 1)
    assert doc.marks.keys[("daemon", "state_dir")] == (3, 3)
    assert doc.marks.keys[("daemon", "retry", "max")] == (4, 22)
    assert doc.marks.keys[("accounts", 0, "name")] == (7, 5)
    assert doc.marks.keys[("accounts", 0, "granted_to")] == (8, 5)


def test_mark_lookup_falls_back_to_nearest_ancestor():
    doc = parse(MARKED, "f.yaml")
    # A missing key is placed on the mapping it is missing from.
    assert doc.marks.value(("accounts", 0, "email")) == (7, 5)
    # A key without its own key mark (a list item) falls back to its value.
    assert doc.marks.key(("users", 1)) == (5, 16)
    assert doc.marks.value(("nothing", "here")) == (1, 1)


def test_marks_count_characters_not_bytes():
    doc = parse("name: 'é😀é'\nother: x\n", "f.yaml")
    assert doc.data == {"name": "é😀é", "other": "x"}
    assert doc.marks.values[("other",)] == (2, 8)


# --- duplicate keys -------------------------------------------------------------------------


def test_duplicate_top_level_key_is_refused_naming_both_lines():
    doc, p = _one_error("version: 1\nusers: [a]\nusers: [b]\n")
    assert (p.line, p.column, p.path) == (3, 1, "users")
    assert "duplicate key 'users'" in p.message
    assert "line 2" in p.message
    assert doc.data["users"] == ["a"]  # the first one is kept so the rest can be checked


def test_duplicate_nested_key_is_refused_naming_both_lines():
    text = "daemon:\n  state_dir: a\n  spool_dir: b\n  state_dir: c\n"
    _, p = _one_error(text)
    assert (p.line, p.column, p.path) == (4, 3, "daemon.state_dir")
    assert "duplicate key 'state_dir'" in p.message
    assert "line 2" in p.message


def test_duplicate_key_in_a_list_item_is_refused_naming_both_lines():
    text = "accounts:\n  - name: a\n    email: a@example.com\n  - name: b\n    name: c\n"
    doc, p = _one_error(text)
    assert (p.line, p.column, p.path) == (5, 5, "accounts[1].name")
    assert "duplicate key 'name'" in p.message
    assert "line 4" in p.message
    assert doc.data["accounts"][1] == {"name": "b"}


def test_duplicate_key_in_a_flow_mapping_is_refused():
    _, p = _one_error("retry: {first: 5m, first: 10m}\n")
    assert (p.line, p.column, p.path) == (1, 20, "retry.first")
    assert "line 1" in p.message


def test_every_duplicate_is_reported():
    doc = parse("a: 1\na: 2\nb:\n  c: 1\n  c: 2\na: 3\n", "f.yaml")
    assert [(p.line, p.path) for p in doc.problems] == [(2, "a"), (5, "b.c"), (6, "a")]


# --- implicit typing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        # YAML 1.2 core schema, as the YAML language server and check-jsonschema read it.
        ("5", 5),
        ("-3", -3),
        ("+3", 3),
        ("0x1f", 31),
        ("0x1F", 31),
        ("0o17", 15),
        ("010", 10),  # decimal in 1.2 (octal 8 in 1.1)
        ("1_000", "1_000"),  # 1.2 core has no digit separators
        ("0b101", "0b101"),
        ("1:30", "1:30"),  # no sexagesimal numbers in 1.2
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("FALSE", False),
        ("tRUE", "tRUE"),
        ("yes", "yes"),  # YAML 1.1 booleans are strings in 1.2
        ("no", "no"),
        ("off", "off"),
        ("On", "On"),
        ("y", "y"),
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("~", None),
        ("", None),
        ("nULL", "nULL"),
        ("5.5", 5.5),
        ("-0.25", -0.25),
        ("1e1", 10.0),  # a float in 1.2 (a string in 1.1: no dot)
        ("1E3", 1000.0),
        ("1.5e-3", 0.0015),
        (".5", 0.5),
        ("1.", 1.0),
        (".inf", float("inf")),
        ("-.Inf", float("-inf")),
        ("'5'", "5"),
        ('"true"', "true"),
        ("'null'", "null"),
        ("'no'", "no"),
        ("!!str 5", "5"),
        ("!!str true", "true"),
        ("!!str", ""),
        ("! 5", "5"),
        ("!!int '7'", 7),
        ("!!float '2'", 2.0),
        ("5m", "5m"),
        ("25MiB", "25MiB"),
        ("2024-01-01", "2024-01-01"),  # timestamps are kept as written
        ("smtp.example.com", "smtp.example.com"),
    ],
)
def test_implicit_typing(yaml_value, expected):
    doc = parse(f"a: {yaml_value}\n", "f.yaml")
    assert doc.problems == []
    assert doc.data["a"] == expected
    assert type(doc.data["a"]) is type(expected)


def test_nan_is_a_float():
    value = parse("a: .nan\n", "f.yaml").data["a"]
    assert isinstance(value, float) and value != value


@pytest.mark.parametrize(
    ("yaml_value", "reading"),
    [("no", ("boolean", False)), ("Yes", ("boolean", True)), ("ON", ("boolean", True)),
     ("n", ("boolean", False)), ("1:30", ("integer", 90)), ("1_000", ("integer", 1000))],
)
def test_plain_strings_that_yaml_1_1_read_otherwise_are_noted(yaml_value, reading):
    doc = parse(f"a: {yaml_value}\nb: [{yaml_value}]\n", "f.yaml")
    assert doc.yaml11 == {("a",): reading, ("b", 0): reading}


@pytest.mark.parametrize("yaml_value", ["'no'", '"yes"', "!!str no", "&x !!str on", "nope",
                                        "true", "10"])
def test_quoted_tagged_and_other_values_are_not_noted(yaml_value):
    assert parse(f"a: {yaml_value}\n", "f.yaml").yaml11 == {}


def test_pyyaml_global_resolver_is_left_as_it_was():
    import yaml

    assert yaml.safe_load("a: yes\nb: 1e1\n") == {"a": True, "b": "1e1"}


def test_keys_that_look_like_booleans_or_null_stay_names():
    doc = parse("on: a\nno: b\nnull: c\n1: d\n", "f.yaml")
    assert doc.data == {"on": "a", "no": "b", "null": "c", "1": "d"}


def test_str_tag_after_an_anchor_stays_a_string():
    doc = parse("a: &x !!str 5\n", "f.yaml")
    assert doc.data["a"] == "5"


# --- merge keys -----------------------------------------------------------------------------


def test_merge_key_copies_keys_and_explicit_keys_win():
    text = "base: &b {host: h.example.com, port: 25}\nserver:\n  <<: *b\n  port: 587\n"
    doc = parse(text, "f.yaml")
    assert doc.problems == []
    assert doc.data["server"] == {"host": "h.example.com", "port": 587}
    assert doc.marks.values[("server", "port")] == (4, 9)


def test_merge_key_with_a_list_of_mappings_first_wins():
    text = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n"
    doc = parse(text, "f.yaml")
    assert doc.problems == []
    assert doc.data["c"] == {"x": 1, "y": 2}


def test_merge_key_of_a_scalar_is_refused():
    _, p = _one_error("d:\n  <<: 5\n")
    assert (p.line, p.column, p.path) == (2, 7, "d")
    assert "merge key" in p.message


def test_explicit_key_before_a_merge_keeps_its_own_mark():
    text = "base: &b {x: 1, y: bad}\nd:\n  y: 3\n  <<: *b\n"
    doc = parse(text, "f.yaml")
    assert doc.data["d"] == {"y": 3, "x": 1}
    assert doc.marks.values[("d", "y")] == (3, 6)
    assert doc.marks.keys[("d", "y")] == (3, 3)


# --- syntax errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("version: 1\nusers: [a\n", 3, 1, "flow sequence"),
        ("version: 1\naccount: b: c\n", 2, 11, "mapping values are not allowed"),
        ("version: 1\n\tusers: []\n", 2, 1, "tab character"),
        ("version: 1\n@x: 1\n", 2, 1, "cannot start any token"),
        ("version: 1\nusers: *nothing\n", 2, 8, "undefined alias"),
        ("a: 1\n---\nb: 2\n", 2, 1, "single document"),
        ("a: 'open\n", 2, 1, "quoted scalar"),
    ],
)
def test_syntax_error_is_a_problem_on_its_line(text, line, column, words):
    doc, p = _one_error(text)
    assert doc.data is None
    assert (p.line, p.column, p.path) == (line, column, "(root)")
    assert p.message.startswith("YAML syntax error: ")
    assert words in p.message


def test_non_scalar_key_is_refused():
    _, p = _one_error("? [a, b]\n: c\n")
    assert (p.line, p.column) == (1, 3)
    assert "plain value" in p.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_document_has_no_data_and_no_problem(text):
    doc = parse(text, "f.yaml")
    assert doc.data is None
    assert doc.problems == []


# --- parse never raises ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    doc = parse(text, "f.yaml")
    assert doc.file == "f.yaml"
    assert all(p.line >= 1 and p.column >= 1 for p in doc.problems)


# No alias tokens: a recursive alias is a known bug (test_recursive_alias_is_a_problem).
_TOKENS = ["a", "b", "1", "x y", ": ", ":", "\n", "  ", "- ", "[", "]", "{", "}", ", ",
           "'", '"', "#", "? ", "<<: ", "&a ", "!!str ", "|\n", ">\n", "---\n", "%", "\t"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join))
def test_parse_never_raises_on_yaml_like_text(text):
    doc = parse(text, "f.yaml")
    last_line = text.count("\n") + 1
    for p in doc.problems:
        assert p.severity == "error"
        assert 1 <= p.line <= last_line + 1 and p.column >= 1  # +1: the end of the stream
    if doc.data is not None:
        assert isinstance(doc.data, (dict, list, str, int, float, bool))


@pytest.mark.parametrize("value", ["!!int abc", "!!int", "!!float x", "!!bool maybe"])
def test_bad_explicit_tag_is_a_problem(value):
    doc, p = _one_error(f"version: 1\nport: {value}\n")
    assert (p.line, p.path) == (2, "port")


@pytest.mark.parametrize("text", ["a: &x [*x]\n", "a: &x {b: *x}\n"])
def test_recursive_alias_is_a_problem(text):
    doc, p = _one_error(text)
    assert p.line == 1


def test_deep_nesting_is_a_value_or_a_problem():
    doc = parse("a: " + "[" * 500 + "]" * 500 + "\n", "f.yaml")
    assert doc.data is not None or doc.problems


def test_aliases_are_built_once():
    doc = parse("a: &a [x, y]\nb: [*a, *a]\n", "f.yaml")
    assert doc.data["b"] == [["x", "y"], ["x", "y"]]
    assert doc.data["b"][0] is doc.data["b"][1]
