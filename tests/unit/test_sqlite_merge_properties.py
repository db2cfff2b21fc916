"""Hypothesis: random schemas, keys and overlaps -> every source row accounted for, a second merge changes nothing."""

import os
import sqlite3
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible.module_utils import sqlite_merge as sm

KINDS = ["natural", "text_pk", "surrogate", "content"]
SCHEMA = {
    "natural": "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, a INTEGER, b TEXT)",
    "text_pk": "CREATE TABLE t (k TEXT PRIMARY KEY, a INTEGER, b TEXT)",
    "surrogate": "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, a INTEGER, b TEXT)",
    "content": "CREATE TABLE t (k TEXT, a INTEGER, b TEXT)",
}

row = st.tuples(st.integers(1, 12), st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6"]), st.integers(0, 2),
                st.sampled_from(["x", "y", None]))


def build(path, kind, rows_):
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA[kind])
    seen_id, seen_k = set(), set()
    for rid, k, a, b in rows_:
        if kind in ("natural", "text_pk") and k in seen_k:
            continue
        if kind in ("natural", "surrogate") and rid in seen_id:
            continue
        seen_id.add(rid)
        seen_k.add(k)
        if kind == "natural" or kind == "surrogate":
            conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (rid, k, a, b))
        else:
            conn.execute("INSERT INTO t VALUES (?, ?, ?)", (k, a, b))
    conn.commit()
    conn.close()
    return path


def count(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), target=st.lists(row, max_size=8),
       sources=st.lists(st.lists(row, max_size=8), min_size=1, max_size=3),
       policy=st.sampled_from(["keep_target", "keep_source"]))
def test_accounting_holds_and_second_merge_changes_nothing(kind, target, sources, policy):
    with tempfile.TemporaryDirectory() as tmp:
        t = build(os.path.join(tmp, "t.db"), kind, target)
        paths = [build(os.path.join(tmp, "s%d.db" % i), kind, rows_) for i, rows_ in enumerate(sources)]
        before = count(t)
        result = sm.merge_databases(t, paths, on_conflict=policy)
        for src in result["sources"]:
            for table in src["tables"]:
                assert table["source_rows"] == table["inserted"] + table["identical"] + table["conflicts"]
        assert count(t) == before + result["totals"]["inserted"]
        assert result["totals"]["source_rows"] == sum(count(p) for p in paths)
        # rerun: the ledger knows every source
        assert sm.merge_databases(t, paths, on_conflict=policy)["changed"] is False
        # and even without the ledger nothing new is inserted (ids remapped before are recognised)
        again = sm.merge_databases(t, paths, on_conflict=policy, use_ledger=False)
        assert again["totals"]["inserted"] == 0
        assert count(t) == before + result["totals"]["inserted"]
