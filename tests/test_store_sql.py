"""mailsync.store.where: a listing's WHERE from the filters that are set."""

from __future__ import annotations

from mailsync.store import where
from tests.sqlitedb import sqlite_file


def test_only_the_conditions_that_are_set_in_order():
    clause, args = where(("status IN", ("queued", "sent")), ("account =", None),
                         ("since >=", 0.0), ("user =", "ops"), ("type IN", ()))
    assert clause == "WHERE status IN (?,?) AND since >= ? AND user = ?"
    assert args == ["queued", "sent", 0.0, "ops"]


def test_nothing_set_is_no_clause():
    assert where(("a =", None), ("b IN", [])) == ("", [])


def test_the_clause_filters_a_real_table():
    with sqlite_file(":memory:") as conn:
        conn.execute("CREATE TABLE t (status TEXT, n INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3), ("a", 4)])
        clause, args = where(("status IN", ("a", "b")), ("n >=", 2))
        assert conn.execute(f"SELECT n FROM t {clause} ORDER BY n", args).fetchall() == [(2,), (4,)]
