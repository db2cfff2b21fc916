"""Hypothesis: random schemas, keys and overlaps -> every source row accounted for (by count and row by row), a second
merge changes nothing, children follow their parents' new or matched ids."""

import json
import os
import sqlite3
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible.module_utils import sqlite_merge as sm

from test_sqlite_merge_fixtures import rows as query

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
    return query(path, "SELECT count(*) FROM t")[0][0]


def databases(tmp, build_one, target, sources):
    """t.db and s0.db, s1.db, ... in `tmp`, each made by build_one(path, rows)."""
    return (build_one(os.path.join(tmp, "t.db"), target),
            [build_one(os.path.join(tmp, "s%d.db" % i), rows_) for i, rows_ in enumerate(sources)])


EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
tables = st.lists(row, max_size=8)
KIND, TARGET, SOURCES = st.sampled_from(KINDS), tables, st.lists(tables, min_size=1, max_size=3)
POLICY = st.sampled_from(["keep_target", "keep_source"])


@EXAMPLES
@given(kind=KIND, target=TARGET, sources=SOURCES, policy=POLICY)
def test_accounting_holds_and_second_merge_changes_nothing(kind, target, sources, policy):
    with tempfile.TemporaryDirectory() as tmp:
        t, paths = databases(tmp, lambda path, rows_: build(path, kind, rows_), target, sources)
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


def rows_of(path, cols):
    return query(path, "SELECT %s FROM t" % ", ".join(cols))


def recorded_conflicts(path):
    """(source_row, target_row) dicts of every conflict the merge recorded in the target."""
    return [(json.loads(s), json.loads(t))
            for s, t in query(path, "SELECT source_row, target_row FROM %s" % sm.DEFAULT_CONFLICTS_TABLE)]


@EXAMPLES
@given(kind=KIND, target=TARGET, sources=SOURCES, policy=POLICY)
def test_nothing_is_lost(kind, target, sources, policy):
    """Row by row, not by counts: every source row's content is in the merged target or recorded as a conflict,
    and every row the target had keeps its id and content, unless the source won a recorded conflict."""
    content = ["k", "a", "b"]
    has_id = kind in ("natural", "surrogate")
    with tempfile.TemporaryDirectory() as tmp:
        t, paths = databases(tmp, lambda path, rows_: build(path, kind, rows_), target, sources)
        before = rows_of(t, (["id"] if has_id else []) + content)
        sm.merge_databases(t, paths, on_conflict=policy)
        after_rows = rows_of(t, (["id"] if has_id else []) + content)
        after = {r[-3:] for r in after_rows}
        conflicts = recorded_conflicts(t)
        lost_in_conflict = {tuple(s[c] for c in content) for s, _ in conflicts}
        overwritten = {tuple(tr[c] for c in content) for _, tr in conflicts}
        for path in paths:
            for src in rows_of(path, content):
                # a later source may win a conflict against a row an earlier source inserted: recorded as its target_row
                assert src in after | lost_in_conflict | overwritten, "source row %r of %s vanished" % (src, path)
        for old in before:
            if policy == "keep_target":
                assert old in after_rows, "target row %r changed or vanished" % (old,)
            else:
                assert old in after_rows or old[-3:] in overwritten, "target row %r lost unrecorded" % (old,)


family = st.tuples(
    st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["p1", "p2", "p3", "p4"]), st.integers(0, 1)), max_size=5),
    st.lists(st.tuples(st.integers(1, 8), st.integers(0, 5), st.sampled_from(["u", "v", "w"])), max_size=6))


def build_family(path, fam):
    """parent(id, k UNIQUE, a) and child(id, parent_id -> parent, v); a child's parent is the n-th parent or NULL."""
    parents, children = fam
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY, k TEXT UNIQUE, a INTEGER)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), v TEXT)")
    ids, keys = [], set()
    for pid, k, a in parents:
        if pid in ids or k in keys:
            continue
        ids.append(pid)
        keys.add(k)
        conn.execute("INSERT INTO parent VALUES (?, ?, ?)", (pid, k, a))
    seen = set()
    for cid, n, v in children:
        if cid in seen:
            continue
        seen.add(cid)
        conn.execute("INSERT INTO child VALUES (?, ?, ?)", (cid, ids[n] if n < len(ids) else None, v))
    conn.commit()
    conn.close()
    return path


def children_by_parent_key(path):
    return query(path, "SELECT c.id, c.v, p.k FROM child c LEFT JOIN parent p ON p.id = c.parent_id")


@EXAMPLES
@given(target=family, sources=st.lists(family, min_size=1, max_size=3))
def test_children_follow_their_parent_through_new_and_matched_ids(target, sources):
    """Parents matched by their natural key or moved to a new id take their children along: every source child
    is in the target under the parent with the same key, the target's own children keep their ids and parents,
    and foreign_key_check stays clean."""
    with tempfile.TemporaryDirectory() as tmp:
        t, paths = databases(tmp, build_family, target, sources)
        before = children_by_parent_key(t)
        sm.merge_databases(t, paths, keys={"parent": ["k"]})
        after = children_by_parent_key(t)
        assert set(before) <= set(after)
        for path in paths:
            for _, v, k in children_by_parent_key(path):
                assert (v, k) in {(a_v, a_k) for _, a_v, a_k in after}, "child %r of %s lost its parent" % ((v, k), path)
        assert query(t, "PRAGMA foreign_key_check") == []


@settings(EXAMPLES, max_examples=40)
@given(kind=KIND, target=TARGET, sources=SOURCES)
def test_on_conflict_fail_leaves_the_target_byte_for_byte(kind, target, sources):
    """on_conflict=fail: the merge either finds no conflict or raises ConflictError with the target's bytes unchanged
    (no partial merge of the sources before the conflicting one)."""
    with tempfile.TemporaryDirectory() as tmp:
        t, paths = databases(tmp, lambda path, rows_: build(path, kind, rows_), target, sources)
        with open(t, "rb") as handle:
            before = handle.read()
        try:
            result = sm.merge_databases(t, paths, on_conflict="fail")
        except sm.ConflictError:
            with open(t, "rb") as handle:
                assert handle.read() == before
            assert not os.path.exists(t + "-journal")
        else:
            assert result["totals"]["conflicts"] == 0


versioned = st.lists(st.tuples(st.sampled_from(["k1", "k2", "k3"]), st.integers(0, 3),
                               st.sampled_from(["2024-01-01", "2024-06-01", "2025-01-01", None])), max_size=4)


def build_versioned(path, rows_):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, a INTEGER, updated_at TEXT)")
    conn.executemany("INSERT OR IGNORE INTO t VALUES (?, ?, ?)", rows_)
    conn.commit()
    conn.close()
    return path


@settings(EXAMPLES, max_examples=50)
@given(target=versioned, sources=st.lists(versioned, min_size=1, max_size=3))
def test_newest_keeps_the_latest_version_of_every_key(target, sources):
    """on_conflict=newest: per key the target ends with a version whose updated_at is the latest of all versions
    seen (NULL oldest, ties keep the row already there), and every version that lost is in the conflicts table."""
    with tempfile.TemporaryDirectory() as tmp:
        t, paths = databases(tmp, build_versioned, target, sources)
        versions = {}
        for path in [t] + paths:
            for k, a, at in rows_of(path, ["k", "a", "updated_at"]):
                versions.setdefault(k, set()).add((a, at))
        sm.merge_databases(t, paths, on_conflict="newest", newest_column="updated_at")
        final = {k: (a, at) for k, a, at in rows_of(t, ["k", "a", "updated_at"])}
        recorded = set()
        for s, tr in recorded_conflicts(t):
            recorded.add((s["k"], s["a"], s["updated_at"]))
            recorded.add((tr["k"], tr["a"], tr["updated_at"]))
        assert set(final) == set(versions)
        for k, seen in versions.items():
            latest = max((at for _, at in seen if at is not None), default=None)
            assert final[k][1] == latest, "key %s ends at %r, latest seen %r" % (k, final[k][1], latest)
            for a, at in seen:
                assert (a, at) == final[k] or (k, a, at) in recorded, "version %r of %s lost" % ((a, at), k)
