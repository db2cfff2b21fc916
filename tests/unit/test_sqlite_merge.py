"""sqlite_merge on real SQLite files: semantics, failure kinds, WAL, purity of the plan, the Zoe case."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils.zoe_secrets import MASK
from test_sqlite_merge_fixtures import (COMMENTS_SQL, TASKS_SQL, USERS_SQL, ZOE_OPTIONS, build_zoe, make_db, rows,
                                        snapshot, user)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZOE_SOURCES = ("auth", "sessions", "developer_tasks", "learning", "self_awareness")


@pytest.fixture()
def zoe(tmp_path):
    return build_zoe(tmp_path / "data")


def zoe_merge(paths, **extra):
    options = dict(ZOE_OPTIONS, **extra)
    return sm.merge_databases(paths["zoe"], [paths[n] for n in ZOE_SOURCES], **options)


def table(result, source, name):
    for src in result["sources"]:
        if os.path.basename(src["path"]) == source:
            for t in src["tables"]:
                if t["source_table"] == name:
                    return t
    raise AssertionError("no %s in %s" % (name, source))


# ---------------------------------------------------------------------------------------------- the Zoe case

def test_zoe_users_present_once_each(zoe):
    zoe_merge(zoe)
    names = [r[0] for r in rows(zoe["zoe"], "SELECT username FROM users ORDER BY id")]
    assert names == ["testuser", "admin", "user", "system"]


def test_zoe_accounting(zoe):
    result = zoe_merge(zoe)
    admin_user = table(result, "auth.db", "users")
    assert (admin_user["identical"], admin_user["conflicts"], admin_user["inserted"]) == (1, 1, 0)
    assert admin_user["columns_added"] == ["last_login"]
    assert table(result, "developer_tasks.db", "users")["identical"] == 1
    assert table(result, "developer_tasks.db", "developer_tasks")["remapped"] == 2
    for src in result["sources"]:
        for t in src["tables"]:
            assert t["source_rows"] == t["inserted"] + t["identical"] + t["conflicts"]
    assert result["totals"]["source_rows"] == 13


def test_zoe_auth_sessions_repointed_to_target_ids(zoe):
    zoe_merge(zoe)
    by_token = dict(rows(zoe["zoe"], "SELECT token, user_id FROM sessions"))
    assert by_token["tok-auth-admin"] == 2   # auth.db admin id 7 -> zoe.db admin id 2
    assert by_token["tok-auth-user"] == 3    # conflicting user, kept target: still the same person (id 3)
    assert by_token["tok-sess-testuser"] == 1  # sessions.db ids already are zoe.db ids
    assert by_token["tok-zoe-1"] == 2


def test_zoe_developer_task_ids_remapped_and_children_follow(zoe):
    zoe_merge(zoe)
    got = rows(zoe["zoe"], "SELECT c.body, t.title FROM task_comments c JOIN developer_tasks t ON t.id = c.task_id")
    assert sorted(got) == [("comment on zoe task one", "zoe task one"), ("on dev task A", "dev task A"),
                           ("on dev task B", "dev task B")]
    assert rows(zoe["zoe"], "SELECT id, title FROM developer_tasks WHERE id <= 2") == [
        (1, "zoe task one"), (2, "zoe task two")]


def test_zoe_events_clash_resolved_by_table_map(zoe):
    zoe_merge(zoe)
    assert rows(zoe["zoe"], "SELECT awareness, reflection FROM awareness_events") == [(0.5, "hmm")]
    assert rows(zoe["zoe"], "SELECT event_type FROM events") == [("learned",)]


def test_zoe_events_without_map_merge_as_one_drifted_table(zoe):
    """Both events tables are keyed by an integer id: the same key, so the union of their columns, not a clash."""
    result = sm.merge_databases(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], keys={"users": ["username"]})
    assert rows(zoe["zoe"], "SELECT event_type, awareness, reflection FROM events ORDER BY id") == [
        ("learned", None, None), (None, 0.5, "hmm")]
    assert table(result, "self_awareness.db", "events")["columns_added"] == ["awareness", "reflection"]


def _other_events(zoe):
    """A self_awareness.db whose events are keyed by a TEXT event_id: not the same thing as learning's events."""
    os.remove(zoe["self_awareness"])
    make_db(zoe["self_awareness"], ["CREATE TABLE events (event_id TEXT PRIMARY KEY, awareness REAL NOT NULL, "
                                    "reflection TEXT)", "CREATE TABLE notes (id INTEGER PRIMARY KEY, event_id TEXT "
                                    "REFERENCES events(event_id), body TEXT)"],
            {"events": [("e1", 0.5, "hmm")], "notes": [(1, "e1", "a note")]})


def test_zoe_events_with_other_keys_refused_under_clash_policy_refuse(zoe):
    _other_events(zoe)
    before = snapshot([zoe["zoe"]])
    with pytest.raises(sm.ShapeClashError, match=r"self_awareness\.db: table events cannot merge into table events.*"
                                                 r"primary keys differ.*clash_policy=refuse"):
        sm.merge_databases(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], keys={"users": ["username"]},
                           clash_policy="refuse")
    assert snapshot([zoe["zoe"]]) == before


def test_zoe_events_with_other_keys_kept_apart_with_working_foreign_keys(zoe):
    _other_events(zoe)
    result = sm.merge_databases(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], keys={"users": ["username"]})
    events = table(result, "self_awareness.db", "events")
    assert (events["decision"], events["target_table"]) == ("kept_apart", "self_awareness_events")
    assert "primary keys differ" in events["clash"]
    assert rows(zoe["zoe"], "SELECT reflection FROM self_awareness_events") == [("hmm",)]
    # notes is new in the target: created, its foreign key pointed at the renamed parent
    assert rows(zoe["zoe"], "SELECT \"table\" FROM pragma_foreign_key_list('notes')") == [("self_awareness_events",)]
    assert rows(zoe["zoe"], "PRAGMA foreign_key_check") == []
    assert any("kept apart as self_awareness_events" in line for line in result["plan"])


def test_zoe_conflict_recorded_with_both_versions(zoe):
    zoe_merge(zoe)
    (key, trow, srow, resolution), = rows(zoe["zoe"], "SELECT key, target_row, source_row, resolution "
                                                      "FROM _zoe_merge_conflicts")
    assert json.loads(key) == {"username": "user"}
    assert json.loads(trow)["email"] == "user@zoe.local"
    assert json.loads(srow)["email"] == "other@zoe.local"
    assert resolution == "kept_target"


def test_zoe_secrets_masked_in_result_and_diff(zoe):
    with sm.plan_merge(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], **ZOE_OPTIONS) as plan:
        text = json.dumps(plan.result()) + json.dumps(plan.diff())
        assert plan.result()["conflicts"][0]["source_row"]["password_hash"] == MASK
    assert "pbkdf2" not in text


def test_zoe_rerun_changes_nothing_and_retired_sources_are_fine(zoe):
    zoe_merge(zoe)
    before = snapshot([zoe["zoe"]])
    assert zoe_merge(zoe)["changed"] is False
    for name in ZOE_SOURCES:
        os.rename(zoe[name], zoe[name] + ".retired")
    result = zoe_merge(zoe)
    assert result["changed"] is False
    assert {s["status"] for s in result["sources"]} == {"retired"}
    assert snapshot([zoe["zoe"]]) == before


def test_plan_is_pure(zoe):
    everything = [zoe[n] for n in ("zoe",) + ZOE_SOURCES]
    before = snapshot(everything)
    with sm.plan_merge(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], **ZOE_OPTIONS) as plan:
        assert plan.changed
        assert plan.totals()["inserted"] == 10
    assert snapshot(everything) == before


def test_plan_equals_apply(zoe):
    with sm.plan_merge(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], **ZOE_OPTIONS) as plan:
        planned = plan.totals()
    assert zoe_merge(zoe)["totals"] == planned


# ---------------------------------------------------------------------------------------------- policies

def _users_pair(tmp_path, target_time, source_time):
    t = make_db(tmp_path / "t.db", [USERS_SQL.format(extra="")],
                {"users": [(1, "ann", "old@x", "h1", "user", T(target_time), T(target_time))]})
    s = make_db(tmp_path / "s.db", [USERS_SQL.format(extra="")],
                {"users": [(1, "ann", "new@x", "h2", "user", T(source_time), T(source_time))]})
    return t, s


def T(day):
    return "2024-01-%02dT00:00:00" % day


@pytest.mark.parametrize("policy, target_day, source_day, email, won", [
    ("keep_target", 1, 2, "old@x", 0),
    ("keep_source", 2, 1, "new@x", 1),
    ("newest", 1, 2, "new@x", 1),
    ("newest", 2, 1, "old@x", 0),
    ("newest", 2, 2, "old@x", 0),
], ids=["keep_target", "keep_source", "newest-source-newer", "newest-target-newer", "newest-tie-keeps-target"])
def test_conflict_policies(tmp_path, policy, target_day, source_day, email, won):
    t, s = _users_pair(tmp_path, target_day, source_day)
    result = sm.merge_databases(t, [s], keys={"users": ["username"]}, on_conflict=policy,
                                newest_column="updated_at")
    assert rows(t, "SELECT email FROM users") == [(email,)]
    assert result["totals"]["conflicts"] == 1
    assert result["sources"][0]["tables"][0]["conflicts_source_won"] == won
    assert rows(t, "SELECT count(*) FROM _zoe_merge_conflicts") == [(1,)]


def test_conflict_policy_fail_writes_nothing_and_masks(tmp_path):
    t, s = _users_pair(tmp_path, 1, 2)
    before = snapshot([t])
    with pytest.raises(sm.ConflictError, match=r"s\.db.*users.*on_conflict=fail"):
        sm.merge_databases(t, [s], keys={"users": ["username"]}, on_conflict="fail")
    assert snapshot([t]) == before


def test_newest_needs_column():
    with pytest.raises(sm.MergeError, match="newest_column"):
        sm.MergeOptions(on_conflict="newest")


# ---------------------------------------------------------------------------------------------- bad input

def _simple(tmp_path, name="s.db", rows_=((1, "a"),)):
    return make_db(tmp_path / name, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"], {"t": list(rows_)})


def test_not_a_database(tmp_path):
    t = _simple(tmp_path, "t.db")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(sm.NotADatabaseError, match="bad.db"):
        sm.merge_databases(t, [str(bad)])


def test_corrupt_source(tmp_path):
    t = _simple(tmp_path, "t.db")
    src = _simple(tmp_path, "c.db", [(i, "x" * 200) for i in range(1, 200)])
    data = bytearray(open(src, "rb").read())
    for page in range(1, len(data) // 4096):
        data[page * 4096:page * 4096 + 12] = b"\x0d\xff\xff\x7f\x7f\xff\xff\x00\x00\x00\x00\x09"  # bad page headers
    open(src, "wb").write(bytes(data))
    before = snapshot([t])
    with pytest.raises(sm.CorruptDatabaseError, match="c.db"):
        sm.merge_databases(t, [src])
    assert snapshot([t]) == before


def test_missing_source(tmp_path):
    t = _simple(tmp_path, "t.db")
    with pytest.raises(sm.MissingSourceError, match="gone.db"):
        sm.merge_databases(t, [str(tmp_path / "gone.db")])


def test_missing_target(tmp_path):
    with pytest.raises(sm.MissingTargetError, match="nothere.db"):
        sm.merge_databases(str(tmp_path / "nothere.db"), [_simple(tmp_path)])


@pytest.mark.parametrize("how", ["same-path", "symlink", "hardlink", "dot-path"], ids=str)
def test_source_is_target_refused(tmp_path, how):
    t = _simple(tmp_path, "t.db")
    alias = {"same-path": t, "dot-path": str(tmp_path / "." / "t.db")}.get(how, str(tmp_path / "alias.db"))
    if how == "symlink":
        os.symlink(t, alias)
    elif how == "hardlink":
        os.link(t, alias)
    with pytest.raises(sm.SourceIsTargetError, match="itself"):
        sm.merge_databases(t, [alias])


def test_target_not_writable(tmp_path, monkeypatch):
    t = _simple(tmp_path, "t.db")
    real_access = os.access
    # the tests run as root, for whom access() always succeeds: emulate an unprivileged user
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == t and m == os.W_OK else real_access(p, m))
    with pytest.raises(sm.TargetNotWritableError, match="t.db"):
        sm.merge_databases(t, [_simple(tmp_path)])


HOLD = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "wal":
    c.execute("PRAGMA journal_mode=WAL")
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO t (v) VALUES ('held')")
print("locked", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("which", ["source", "target"], ids=str)
@pytest.mark.parametrize("journal", ["delete", "wal"], ids=str)
def test_locked_by_writer(tmp_path, which, journal):
    t = _simple(tmp_path, "t.db")
    s = _simple(tmp_path, "s.db", [(5, "b")])
    held = {"source": s, "target": t}[which]
    proc = subprocess.Popen([sys.executable, "-c", HOLD, held, journal], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(sm.DatabaseLockedError, match=os.path.basename(held)):
            sm.merge_databases(t, [s], lock_timeout=0.2)
    finally:
        proc.kill()
        proc.wait()


def test_disk_full_leaves_target_unchanged(tmp_path):
    t = _simple(tmp_path, "t.db")
    s = _simple(tmp_path, "s.db", [(i, "y" * 500) for i in range(10, 2000)])
    before = snapshot([t])
    with pytest.raises(sm.DiskFullError, match="full"):
        sm.merge_databases(t, [s], pragmas=["max_page_count = 20"])
    assert snapshot([t]) == before


def test_hostile_names(tmp_path):
    evil = 'x"; DROP TABLE t; --'
    col = "we'ird \"col\""
    sql = 'CREATE TABLE "%s" (id INTEGER PRIMARY KEY, "%s" TEXT)' % (evil.replace('"', '""'), col.replace('"', '""'))
    t = make_db(tmp_path / "t.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", sql], {"t": [(1, "a")]})
    s = make_db(tmp_path / "s.db", [sql], {evil: [(1, "boom")]})
    con = sqlite3.connect(s)
    con.execute('CREATE INDEX "i""dx" ON "%s" ("%s")' % (evil.replace('"', '""'), col.replace('"', '""')))
    con.commit()
    con.close()
    os.remove(t)
    t = make_db(tmp_path / "t.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"], {"t": [(1, "a")]})
    result = sm.merge_databases(t, [s])
    assert result["totals"]["inserted"] == 1
    assert rows(t, 'SELECT "%s" FROM "%s"' % (col.replace('"', '""'), evil.replace('"', '""'))) == [("boom",)]
    assert rows(t, "SELECT v FROM t") == [("a",)]


# ---------------------------------------------------------------------------------------------- WAL

def test_wal_only_rows_are_merged_and_source_untouched(tmp_path):
    t = _simple(tmp_path, "t.db")
    s = str(tmp_path / "w.db")
    writer = sqlite3.connect(s, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    writer.execute("INSERT INTO t VALUES (2, 'only in the wal')")
    # keep the writer's connection open (no checkpoint on close), like a stopped-but-not-checkpointed service
    assert os.path.getsize(s + "-wal") > 0
    before = snapshot([s])
    time.sleep(0.01)
    try:
        result = sm.merge_databases(t, [s])
    finally:
        after = snapshot([s])
        writer.close()
    assert result["totals"]["inserted"] == 1
    assert rows(t, "SELECT v FROM t ORDER BY id") == [("a",), ("only in the wal",)]
    assert after == before


# ---------------------------------------------------------------------------------------------- shapes & keys

def test_created_table_keeps_indexes_and_triggers(tmp_path):
    t = _simple(tmp_path, "t.db")
    s = make_db(tmp_path / "s.db", [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL CHECK (length(body) > 0), n INTEGER)",
        "CREATE INDEX notes_body ON notes (body)",
        "CREATE TRIGGER notes_n AFTER INSERT ON notes BEGIN UPDATE notes SET n = 1 WHERE id = new.id; END",
    ], {"notes": [(1, "x", None)]})
    sm.merge_databases(t, [s])
    names = {r[0] for r in rows(t, "SELECT name FROM sqlite_master")}
    assert {"notes", "notes_body", "notes_n"} <= names
    conn = sqlite3.connect(t)
    conn.execute("INSERT INTO notes (id, body) VALUES (2, 'y')")
    conn.commit()
    conn.close()
    assert rows(t, "SELECT id, n FROM notes ORDER BY id") == [(1, 1), (2, 1)]  # the trigger works in the target


def test_text_primary_key_conflict_and_identical(tmp_path):
    sql = "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"
    t = make_db(tmp_path / "t.db", [sql], {"kv": [("a", "1"), ("b", "2")]})
    s = make_db(tmp_path / "s.db", [sql], {"kv": [("a", "1"), ("b", "changed"), ("c", "3")]})
    result = sm.merge_databases(t, [s])
    assert (result["totals"]["identical"], result["totals"]["conflicts"], result["totals"]["inserted"]) == (1, 1, 1)


def test_configured_reference_across_sources(tmp_path):
    t = make_db(tmp_path / "t.db", [USERS_SQL.format(extra="")], {"users": [user(1, "ann")]})
    a = make_db(tmp_path / "a.db", [USERS_SQL.format(extra="")], {"users": [user(1, "bob")]})
    b = make_db(tmp_path / "b.db", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER, body TEXT)"],
                {"notes": [(1, 1, "bob's note")]})
    sm.merge_databases(t, [a, b], keys={"users": ["username"]}, references={"notes": {"user_id": "a.db:users"}})
    assert rows(t, "SELECT u.username FROM notes n JOIN users u ON u.id = n.user_id") == [("bob",)]


def test_columns_added_never_dropped(tmp_path):
    t = make_db(tmp_path / "t.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"], {"t": [(1, "x", "y")]})
    s = make_db(tmp_path / "s.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)"], {"t": [(2, "z")]})
    s2 = make_db(tmp_path / "s2.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER)"],
                 {"t": [(3, "q", "r", 7)]})
    result = sm.merge_databases(t, [s, s2])
    assert result["schema_changes"]["columns_added"] == ["t.c"]
    assert rows(t, "SELECT id, a, b, c FROM t ORDER BY id") == [(1, "x", "y", None), (2, "z", None, None),
                                                                 (3, "q", "r", 7)]


def test_cascade_child_rows_survive(tmp_path):
    t = make_db(tmp_path / "t.db", ["PRAGMA foreign_keys=ON", TASKS_SQL, COMMENTS_SQL],
                {"developer_tasks": [(1, "t1", "open")], "task_comments": [(1, 1, "c1")]})
    s = make_db(tmp_path / "s.db", [TASKS_SQL, COMMENTS_SQL],
                {"developer_tasks": [(1, "t1", "open"), (2, "s2", "open")], "task_comments": [(5, 2, "c2")]})
    result = sm.merge_databases(t, [s])
    assert result["totals"]["identical"] == 1
    assert rows(t, "SELECT count(*) FROM task_comments") == [(2,)]
    assert rows(t, "PRAGMA foreign_key_check") == []


def test_rename_create_quotes():
    assert sm.rename_create('CREATE TABLE IF NOT EXISTS "a b" (x)', 'n"ew') == 'CREATE TABLE IF NOT EXISTS "n""ew" (x)'
    assert sm.rename_create("CREATE UNIQUE INDEX i ON [t] (x)", "j", "u") == 'CREATE UNIQUE INDEX "j" ON "u" (x)'


# ---------------------------------------------------------------------------------------------- the module

def _ansible(args, check=False):
    cmd = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "sqlite_merge", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3", "-o"]
    if check:
        cmd += ["--check", "--diff"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_module_quartet(zoe):
    args = dict(ZOE_OPTIONS, target=zoe["zoe"], sources=[zoe[n] for n in ZOE_SOURCES])
    before = snapshot([zoe[n] for n in ("zoe",) + ZOE_SOURCES])
    rc, out = _ansible(args, check=True)
    assert rc == 0 and "CHANGED" in out, out
    assert snapshot([zoe[n] for n in ("zoe",) + ZOE_SOURCES]) == before
    rc, out = _ansible(args)
    assert rc == 0 and "CHANGED" in out and "pbkdf2" not in out, out
    rc, out = _ansible(args, check=True)
    assert rc == 0 and "SUCCESS" in out, out
    rc, out = _ansible(args)
    assert rc == 0 and "SUCCESS" in out, out
    assert [r[0] for r in rows(zoe["zoe"], "SELECT username FROM users ORDER BY id")] == [
        "testuser", "admin", "user", "system"]


def test_module_failure_is_one_clear_message(zoe):
    rc, out = _ansible({"target": zoe["zoe"], "sources": [zoe["zoe"]]})
    assert rc != 0 and "SourceIsTargetError" in out and "itself" in out


def test_ansible_doc_renders():
    proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-doc"), "-M", "library", "-t", "module",
                           "sqlite_merge"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "on_conflict" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------- no timer in the result

def test_the_plan_and_the_result_carry_no_timer(zoe):
    with sm.plan_merge(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], **ZOE_OPTIONS) as plan:
        sm.apply_merge(plan)
        result = plan.result()
    assert not hasattr(plan, "timings") and not hasattr(sm, "Timings")
    assert "timings" not in result and "integrity_check" not in json.dumps(result)


def _corrupt(path):
    data = bytearray(open(path, "rb").read())
    for page in range(1, len(data) // 4096):
        data[page * 4096:page * 4096 + 12] = b"\x0d\xff\xff\x7f\x7f\xff\xff\x00\x00\x00\x00\x09"  # bad page headers
    open(path, "wb").write(bytes(data))
    return path


def _clashing(tmp_path, name):
    return make_db(tmp_path / name, ["CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)"], {"t": [("x", "y")]})


@pytest.mark.parametrize("names, error, culprit", [
    (["good1", "good2", "corrupt"], sm.CorruptDatabaseError, "corrupt.db"),
    (["clash", "corrupt"], sm.CorruptDatabaseError, "corrupt.db"),
    (["clash", "good1"], sm.ShapeClashError, "clash.db"),
    (["corrupt", "clash"], sm.CorruptDatabaseError, "corrupt.db"),
], ids=["last-source-checked-beside-the-merge", "check-error-wins-over-a-later-merge-error",
        "merge-error-alone", "first-source-corrupt"])
def test_source_checks_in_the_background_fail_like_a_sequential_run(tmp_path, names, error, culprit):
    t = _simple(tmp_path, "t.db")
    make = {"good1": lambda: _simple(tmp_path, "good1.db", [(i, "a%d" % i) for i in range(2, 300)]),
            "good2": lambda: _simple(tmp_path, "good2.db", [(i, "b%d" % i) for i in range(2, 300)]),
            "corrupt": lambda: _corrupt(_simple(tmp_path, "corrupt.db", [(i, "x" * 200) for i in range(1, 200)])),
            "clash": lambda: _clashing(tmp_path, "clash.db")}
    sources = [make[n]() for n in names]
    work = tmp_path / "work"
    work.mkdir()
    threads = threading.active_count()
    before = snapshot([t])
    with pytest.raises(error, match=culprit):
        sm.merge_databases(t, sources, workdir=str(work), clash_policy="refuse")
    assert snapshot([t]) == before
    assert os.listdir(work) == []                  # every private copy removed
    assert threading.active_count() == threads     # the background worker is gone


def test_source_copies_are_released_once_merged_and_checked(tmp_path):
    t = _simple(tmp_path, "t.db")
    sources = [_simple(tmp_path, "s%d.db" % n, [(i, "v%d" % n) for i in range(1, 50)]) for n in range(4)]
    with sm.plan_merge(t, sources, workdir=str(tmp_path)) as plan:
        left = os.listdir(plan.workdir)
        assert plan.totals()["source_rows"] == 4 * 49
    assert left == [os.path.basename(os.path.dirname(plan.merged_copy))]


def _before(result, source, name):
    return table(result, source, name)["target_rows_before"]


def test_match_index_reused_across_sources_and_dropped(tmp_path):
    sql = "CREATE TABLE c (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"
    t = make_db(tmp_path / "t.db", [sql], {"c": [(1, "t", "0")]})
    s1 = make_db(tmp_path / "s1.db", [sql], {"c": [(1, "x", "1"), (2, "y", "2")]})
    s2 = make_db(tmp_path / "s2.db", [sql], {"c": [(7, "x", "1"), (2, "z", "3"), (9, "t", "0")]})
    result = sm.merge_databases(t, [s1, s2])
    assert (table(result, "s2.db", "c")["identical"], table(result, "s2.db", "c")["inserted"]) == (2, 1)
    assert (_before(result, "s1.db", "c"), _before(result, "s2.db", "c")) == (1, 3)
    assert rows(t, "SELECT a, b FROM c ORDER BY a") == [("t", "0"), ("x", "1"), ("y", "2"), ("z", "3")]
    assert rows(t, "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'") == []


@pytest.mark.parametrize("extra", [
    "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log (x) VALUES (new.v); END",
    None,
], ids=["trigger-adds-rows-behind-the-merge", "no-trigger"])
def test_target_rows_before_stays_exact(tmp_path, extra):
    statements = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "CREATE TABLE log (x TEXT)"]
    t = make_db(tmp_path / "t.db", statements + ([extra] if extra else []), {"t": [(1, "a")], "log": [("l",)]})
    s1 = make_db(tmp_path / "s1.db", statements, {"t": [(2, "b"), (3, "c")], "log": [("m",)]})
    s2 = make_db(tmp_path / "s2.db", statements, {"t": [(4, "d")], "log": [("n",)]})
    result = sm.merge_databases(t, [s1, s2])
    after = rows(t, "SELECT count(*) FROM t")[0][0]
    assert _before(result, "s2.db", "t") + table(result, "s2.db", "t")["inserted"] == after
    # log is merged before t in each source; with the trigger, every row inserted into t also lands in log
    assert (_before(result, "s1.db", "log"), _before(result, "s2.db", "log")) == ((2, 5) if extra else (1, 2))


# ---------------------------------------------------------------------------------------------- result checks beside the backup

def _sha256(path):
    import hashlib
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _dangling_source(tmp_path):
    """A source whose child row points at a parent that exists nowhere: the merged result fails foreign_key_check."""
    schema = ["CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT)",
              "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), body TEXT)"]
    t = make_db(tmp_path / "t.db", schema, {"p": [(i, "x" * 400) for i in range(1, 6001)], "c": [(1, 1, "ok")]})
    s = make_db(tmp_path / "s.db", schema, {"p": [(9001, "new")], "c": [(2, 777777, "dangling")]})
    return t, s


def test_failed_result_check_aborts_the_backup_and_leaves_the_target(tmp_path, monkeypatch):
    t, s = _dangling_source(tmp_path)
    monkeypatch.setattr(sm, "BACKUP_STEP_PAGES", 64)   # ~700 pages: many steps, more than the 2 MiB page cache
    digest, before = _sha256(t), os.stat(t).st_mtime_ns
    with sm.plan_merge(t, [s]) as plan:
        assert plan.changed                                # the plan itself does not wait for the checks
        with pytest.raises(sm.VerificationError, match="foreign_key_check: c -> p: 1 row"):
            sm.apply_merge(plan)
    assert _sha256(t) == digest                            # rolled back byte for byte
    assert os.stat(t).st_mtime_ns != before                # ... after pages were really written into it
    assert not os.path.exists(t + "-journal")
    assert rows(t, "PRAGMA integrity_check") == [("ok",)]
    assert rows(t, "SELECT count(*) FROM p") == [(6000,)]


def test_check_mode_result_waits_for_the_result_checks(tmp_path):
    t, s = _dangling_source(tmp_path)
    before = snapshot([t, s])
    with sm.plan_merge(t, [s]) as plan:
        with pytest.raises(sm.VerificationError, match="foreign_key_check"):
            plan.result()
    assert snapshot([t, s]) == before


def _indexed_db(path):
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE small (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
        CREATE INDEX small_a ON small (a);
        CREATE TABLE big (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
        CREATE INDEX big_a ON big (a);
    """)
    conn.executemany("INSERT INTO small VALUES (?, ?, ?)", [(i, "a%d" % i, "b%d" % i) for i in range(1, 4)])
    conn.executemany("INSERT INTO big VALUES (?, ?, ?)", [(i, "a%d" % i, "b%d" % i) for i in range(1, 20001)])
    conn.commit()
    conn.close()
    return str(path)


@pytest.mark.parametrize("index", ["small_a", "big_a"], ids=["index-of-a-small-table", "index-of-a-big-table"])
def test_result_integrity_check_catches_a_corrupt_index(tmp_path, index):
    path = _indexed_db(tmp_path / "merged.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA writable_schema = ON")  # the index now claims column b while its entries hold a
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, '(a)', '(b)') WHERE name = ?", (index,))
    conn.commit()
    conn.close()
    check = sm._Verification(path, path, {})
    try:
        with pytest.raises(sm.VerificationError, match="integrity_check: .*%s" % index):
            check.wait()
    finally:
        check.close()


def test_closing_a_plan_stops_its_result_checks(tmp_path):
    t = _indexed_db(tmp_path / "t.db")
    s = make_db(tmp_path / "s.db", ["CREATE TABLE big (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"],
                {"big": [(i, "s%d" % i, "t%d" % i) for i in range(1, 3001)]})
    threads = threading.active_count()
    with sm.plan_merge(t, [s], workdir=str(tmp_path)) as plan:
        assert plan.verification is not None
        workdir = plan.workdir
    assert threading.active_count() == threads and not os.path.exists(workdir)


def test_self_references_follow_remapped_ids(tmp_path):
    sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES t(id), v TEXT)"
    t = make_db(tmp_path / "t.db", [sql], {"t": [(1, None, "a"), (2, 1, "b")]})
    s = make_db(tmp_path / "s.db", [sql], {"t": [(1, None, "x"), (2, 1, "y"), (3, 2, "z")]})
    result = sm.merge_databases(t, [s])
    assert table(result, "s.db", "t")["remapped"] == 2
    assert rows(t, "SELECT c.v, p.v FROM t c LEFT JOIN t p ON p.id = c.parent_id ORDER BY c.v") == [
        ("a", None), ("b", "a"), ("x", None), ("y", "x"), ("z", "y")]
    assert rows(t, "SELECT id FROM t WHERE v IN ('a', 'b') ORDER BY id") == [(1,), (2,)]


def test_new_rows_in_key_order_or_rowid_order_same_rows(tmp_path):
    statements = ["CREATE TABLE r (k TEXT PRIMARY KEY, v INTEGER)", "CREATE TABLE n (name TEXT, v INTEGER)"]
    t = make_db(tmp_path / "t.db", statements, {"r": [("m", 0)], "n": [("m", 0)]})
    data = [("k%d" % i, i) for i in (5, 3, 9, 1, 7)]
    s = make_db(tmp_path / "s.db", statements, {"r": data + [("m", 0)], "n": [("z", 1), ("a", 2), ("m", 0)]})
    result = sm.merge_databases(t, [s], keys={"n": ["name"]})
    assert table(result, "s.db", "r")["inserted"] == 5 and table(result, "s.db", "n")["inserted"] == 2
    # key order when the source's key index gives it (k1 first), the source's rowid order without one (z, a)
    assert rows(t, "SELECT k FROM r ORDER BY rowid") == [("m",), ("k1",), ("k3",), ("k5",), ("k7",), ("k9",)]
    assert rows(t, "SELECT name FROM n ORDER BY rowid") == [("m",), ("z",), ("a",)]


# ---------------------------------------------------------------------------------------------- INSERT OR IGNORE on an enforced key

@pytest.mark.parametrize("schema", [
    "CREATE TABLE r (k TEXT PRIMARY KEY, email TEXT UNIQUE, v INTEGER)",
    "CREATE TABLE r (id INTEGER PRIMARY KEY, k TEXT UNIQUE, email TEXT UNIQUE, v INTEGER)",
], ids=["key-is-the-primary-key:insert-or-ignore", "surrogate-id:anti-join"])
def test_new_row_colliding_on_another_unique_column_is_an_error(tmp_path, schema):
    with_id = "id INTEGER" in schema
    row = (lambda i, k, e, v: (i, k, e, v)) if with_id else (lambda i, k, e, v: (k, e, v))
    t = make_db(tmp_path / "t.db", [schema], {"r": [row(1, "a", "a@x", 1), row(3, "c", "z@x", 3)]})
    s = make_db(tmp_path / "s.db", [schema], {"r": [row(1, "a", "a@x", 1), row(2, "b", "z@x", 2)]})
    before = snapshot([t])
    with pytest.raises(sm.KeyDefinitionError, match="s.db: .*table r collide.*configure keys for r"):
        sm.merge_databases(t, [s], keys={"r": ["k"]})
    assert snapshot([t]) == before


def test_enforced_key_accounting_matches_the_anti_join(tmp_path):
    schema = "CREATE TABLE r (k TEXT PRIMARY KEY, v INTEGER)"
    t = make_db(tmp_path / "t.db", [schema], {"r": [("a", 1), ("b", 2), ("c", 3)]})
    s = make_db(tmp_path / "s.db", [schema], {"r": [("a", 1), ("b", 20), ("d", 4), (None, 5)]})
    result = sm.merge_databases(t, [s], on_conflict="keep_source")
    r = table(result, "s.db", "r")
    assert (r["source_rows"], r["identical"], r["conflicts"], r["inserted"]) == (4, 1, 1, 2)
    assert rows(t, "SELECT k, v FROM r ORDER BY v") == [("a", 1), ("c", 3), ("d", 4), (None, 5), ("b", 20)]


def test_before_insert_trigger_does_not_fire_for_matched_rows(tmp_path):
    statements = ["CREATE TABLE r (k TEXT PRIMARY KEY, v INTEGER)", "CREATE TABLE log (k TEXT)"]
    trigger = "CREATE TRIGGER r_log BEFORE INSERT ON r BEGIN INSERT INTO log VALUES (new.k); END"
    t = make_db(tmp_path / "t.db", statements + [trigger], {"r": [("a", 1)]})
    s = make_db(tmp_path / "s.db", statements, {"r": [("a", 1), ("b", 2)]})
    assert rows(t, "SELECT k FROM log") == [("a",)]   # the target's own insert
    sm.merge_databases(t, [s])
    assert rows(t, "SELECT k FROM log") == [("a",), ("b",)]
