"""sqlite_merge on drifted schemas, shaped like the real Zoe databases: users keyed by username (zoe.db), by
`usr_` ids with more columns (auth.db) and by an integer id (developer_tasks.db), declared types that differ while
the values fit, child tables pointing at each kind of key, views and triggers in a fold database."""

import json
import os

import pytest

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils.zoe_secrets import MASK
from test_sqlite_merge_fixtures import make_db, rows, snapshot

H = "pbkdf2_sha256$600000$salt$%s"

ZOE_USERS = ("CREATE TABLE users (user_id TEXT PRIMARY KEY, username TEXT UNIQUE NOT NULL, email TEXT, "
             "password_hash TEXT, phone NUMERIC, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
AUTH_USERS = ("CREATE TABLE users (user_id TEXT PRIMARY KEY, username TEXT UNIQUE NOT NULL, email TEXT, "
              "password_hash TEXT, phone TEXT, created_at TEXT, role TEXT DEFAULT 'user', passcode_hash TEXT, "
              "is_active BOOLEAN DEFAULT 1, last_login DATETIME DEFAULT CURRENT_TIMESTAMP)")
T0 = "2025-01-01 10:00:00"


def build(root):
    """zoe.db (target), auth.db, developer_tasks.db, sessions.db, model_performance.db in `root`."""
    os.makedirs(str(root), exist_ok=True)
    p = {n: os.path.join(str(root), n + ".db")
         for n in ("zoe", "auth", "developer_tasks", "sessions", "model_performance")}
    make_db(p["zoe"], [ZOE_USERS,
                       "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, user_id TEXT REFERENCES users(user_id), "
                       "created_at TIMESTAMP)",
                       "CREATE TABLE guest_codes (code TEXT PRIMARY KEY, note TEXT)"], {
        "users": [(n, n, "%s@zoe.local" % n, H % n, None, T0) for n in ("testuser", "admin", "user", "system")],
        "sessions": [("s-zoe", "admin", T0)],
        "guest_codes": [("G-SECRET-1", "for the party")],
    })
    make_db(p["auth"], [AUTH_USERS,
                        "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES "
                        "users(user_id), created_at TEXT)",
                        "CREATE TABLE guest_codes (code TEXT PRIMARY KEY, note TEXT)",
                        "CREATE TABLE audit (id INTEGER PRIMARY KEY, user_id TEXT REFERENCES users(user_id), "
                        "what TEXT)",
                        "CREATE INDEX idx_users_email ON users (email)"], {
        "users": [("usr_a1", "admin", "admin@zoe.local", H % "admin", None, T0, "admin", H % "1234", 1, T0),
                  ("usr_u2", "user", "other@zoe.local", H % "other", None, T0, "user", None, 1, T0),
                  ("usr_n3", "newbie", "newbie@zoe.local", H % "newbie", "0712345", T0, "user", None, 1, T0)],
        "sessions": [("s-auth-1", "usr_a1", T0), ("s-auth-2", "usr_n3", T0)],
        "guest_codes": [("G-SECRET-1", "another note")],
        "audit": [(1, "usr_a1", "login"), (2, "usr_u2", "login"), (3, "usr_n3", "signup")],
    })
    make_db(p["developer_tasks"], [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT, created_at DATETIME)",
        "CREATE TABLE developer_tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL, assigned_to INTEGER "
        "REFERENCES users(id), user_id INTEGER, created_at TEXT)"], {
        "users": [(1, "system", "system@zoe.local", T0), (2, "devbot", "devbot@zoe.local", T0)],
        "developer_tasks": [(1, "fix login", 1, 2, T0), (2, "write docs", 2, 1, T0)],
    })
    make_db(p["sessions"], ["CREATE TABLE user_sessions (id INTEGER PRIMARY KEY, user_id TEXT, token_hash TEXT)"], {
        "user_sessions": [(1, "usr_n3", H % "t1"), (2, "usr_a1", H % "t2")]})
    make_db(p["model_performance"], [
        'CREATE TABLE "main" (id INTEGER PRIMARY KEY, model TEXT, ms REAL)',
        'CREATE TABLE runs_log (id INTEGER PRIMARY KEY, model TEXT)',
        'CREATE VIEW v_main AS SELECT model, avg(ms) AS ms FROM "main" GROUP BY model',
        'CREATE TRIGGER log_run AFTER INSERT ON "main" BEGIN INSERT INTO runs_log (model) VALUES (new.model); END'], {
        "main": [(1, "llama", 10.0), (2, "llama", 20.0)]})
    return p


OPTIONS = {
    "keys": {"users": ["username"]},
    "references": {"developer_tasks": {"user_id": "users"},
                   "sessions.db": {"user_sessions": {"user_id": "auth.db:users"}}},
}
SOURCES = ("sessions", "auth", "developer_tasks", "model_performance")  # sessions.db first: its parent is auth.db's


@pytest.fixture()
def zoe(tmp_path):
    return build(tmp_path / "data")


def merge(p, **extra):
    return sm.merge_databases(p["zoe"], [p[n] for n in SOURCES], **dict(OPTIONS, **extra))


def table(result, source, name):
    return next(t for s in result["sources"] if os.path.basename(s["path"]) == source for t in s["tables"]
                if t["source_table"] == name)


def test_users_keyed_three_ways_become_one_table_keyed_like_the_target(zoe):
    result = merge(zoe)
    assert rows(zoe["zoe"], "SELECT user_id, username FROM users ORDER BY rowid") == [
        (n, n) for n in ("testuser", "admin", "user", "system", "newbie", "devbot")]
    auth = table(result, "auth.db", "users")
    assert (auth["decision"], auth["keys_to_existing"], auth["keys_new"]) == ("merged", 2, 1)
    assert auth["columns_added"] == ["role", "passcode_hash", "is_active", "last_login"]
    dev = table(result, "developer_tasks.db", "users")
    assert (dev["keys_to_existing"], dev["keys_new"], dev["source_key_mapped"]) == (1, 1, "id -> user_id")
    assert not rows(zoe["zoe"], "SELECT 1 FROM pragma_table_info('users') WHERE name = 'id'")


def test_columns_the_target_lacked_are_filled_for_matched_users(zoe):
    merge(zoe)
    # admin is the same person in auth.db: its role and passcode hash arrive, nothing the target had changes
    assert rows(zoe["zoe"], "SELECT role, passcode_hash, email FROM users WHERE username = 'admin'") == [
        ("admin", H % "1234", "admin@zoe.local")]
    # user differs (email, hash): a recorded conflict, the target's values kept, the added columns filled
    assert rows(zoe["zoe"], "SELECT role, email FROM users WHERE username = 'user'") == [("user", "user@zoe.local")]


def test_declared_types_that_differ_with_fitting_values_merge_unchanged(zoe):
    result = merge(zoe)
    created = next(d for d in table(result, "auth.db", "users")["type_differences"] if d["column"] == "created_at")
    assert (created["source_affinity"], created["target_affinity"], created["values_converted"]) == (
        "TEXT", "NUMERIC", 0)
    assert rows(zoe["zoe"], "SELECT created_at, typeof(created_at) FROM users WHERE username = 'newbie'") == [
        (T0, "text")]


def test_a_value_the_target_type_would_change_is_a_recorded_conflict(zoe):
    result = merge(zoe)
    auth = table(result, "auth.db", "users")
    phone = next(d for d in auth["type_differences"] if d["column"] == "phone")
    assert phone["values_converted"] == 1 and "recorded as conflicts" in phone["handling"]
    assert auth["converted"] == 1
    (key, trow, srow), = rows(zoe["zoe"], "SELECT key, target_row, source_row FROM _zoe_merge_conflicts "
                                          "WHERE resolution = 'converted'")
    assert (json.loads(key), json.loads(trow)["phone"], json.loads(srow)["phone"]) == (
        {"username": "newbie"}, 712345, "0712345")


def test_a_value_the_target_type_would_change_is_refused_with_on_conflict_fail(zoe):
    os.remove(zoe["zoe"])
    zoe.update(build(os.path.dirname(zoe["zoe"]) + "-fresh"))
    # only the type change, no content conflict: drop auth.db's conflicting user first
    conn = __import__("sqlite3").connect(zoe["auth"])
    conn.execute("DELETE FROM users WHERE username = 'user'")
    conn.execute("DELETE FROM guest_codes")
    conn.commit()
    conn.close()
    before = snapshot([zoe["zoe"]])
    with pytest.raises(sm.TypeConflictError, match=r"auth\.db: table users, column phone: 1 value\(s\) would change "
                                                    r"under the target's type NUMERIC .*key username=newbie"):
        sm.merge_databases(zoe["zoe"], [zoe["auth"]], keys={"users": ["username"]}, on_conflict="fail")
    assert snapshot([zoe["zoe"]]) == before


def test_children_of_every_key_kind_follow_their_parent(zoe):
    result = merge(zoe)
    # auth.db sessions (declared FK, TEXT usr_ ids) re-pointed to the usernames zoe.db keys users by
    assert dict(rows(zoe["zoe"], "SELECT session_id, user_id FROM sessions")) == {
        "s-zoe": "admin", "s-auth-1": "admin", "s-auth-2": "newbie"}
    # developer_tasks (INTEGER columns, a declared FK and a configured reference) point at TEXT keys now
    assert rows(zoe["zoe"], "SELECT title, assigned_to, user_id FROM developer_tasks ORDER BY id") == [
        ("fix login", "system", "devbot"), ("write docs", "devbot", "system")]
    assert rows(zoe["zoe"], "SELECT \"table\", \"to\" FROM pragma_foreign_key_list('developer_tasks')") == [
        ("users", "user_id")]
    # sessions.db comes first in the list but names auth.db's users: merged after it, re-pointed too
    assert dict(rows(zoe["zoe"], "SELECT id, user_id FROM user_sessions")) == {1: "newbie", 2: "admin"}
    assert rows(zoe["zoe"], "PRAGMA foreign_key_check") == []
    tasks = table(result, "developer_tasks.db", "developer_tasks")
    assert {(c["column"], c["parent"], c["rows"]) for c in tasks["children_repointed"]} == {
        ("assigned_to", "developer_tasks.db:users", 2), ("user_id", "developer_tasks.db:users", 2)}
    assert [os.path.basename(s["path"]) for s in result["sources"]][:2] == ["auth.db", "sessions.db"]


def test_views_triggers_and_indexes_are_carried_over_and_listed(zoe):
    result = merge(zoe)
    assert rows(zoe["zoe"], "SELECT model, ms FROM v_main") == [("llama", 15.0)]
    # runs_log holds the source's 2 rows (its trigger fired in the source); it did not fire again on merged rows
    assert rows(zoe["zoe"], "SELECT count(*) FROM runs_log") == [(2,)]
    names = {r[0] for r in rows(zoe["zoe"], "SELECT name FROM sqlite_master")}
    assert {"v_main", "log_run", "idx_users_email"} <= names
    objects = {(o["type"], o["name"], o["action"]) for s in result["sources"] for o in s["objects"]}
    assert {("view", "v_main", "created"), ("trigger", "log_run", "created"),
            ("index", "idx_users_email", "created"), ("table", "main", "created")} <= objects
    assert "model_performance.db view v_main -> v_main: created" in result["plan"]


def test_a_view_that_cannot_live_in_the_target_is_refused_by_name(tmp_path):
    t = make_db(tmp_path / "t.db", ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"])
    s = make_db(tmp_path / "s.db", ["CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)",
                                    "CREATE VIEW stale AS SELECT label FROM archive"])   # archive is nowhere
    before = snapshot([t])
    with pytest.raises(sm.SchemaObjectError, match=r"s\.db: view stale cannot be carried into the target "
                                                   r"\(no such table: main\.archive\)"):
        sm.merge_databases(t, [s])
    assert snapshot([t]) == before


def test_conflict_keys_of_secret_columns_are_masked(zoe):
    with sm.plan_merge(zoe["zoe"], [zoe[n] for n in SOURCES], **OPTIONS) as plan:
        result, diff = plan.result(), plan.diff()
    codes = [c for c in result["conflicts"] if c["target_table"] == "guest_codes"]
    assert codes and codes[0]["key"] == {"code": MASK}
    assert "G-SECRET-1" not in json.dumps(result) + json.dumps(diff)
    with pytest.raises(sm.ConflictError) as err:
        sm.merge_databases(zoe["zoe"], [zoe["auth"]], keys={"users": ["username"]}, on_conflict="fail")
    assert "G-SECRET" not in str(err.value) and "pbkdf2" not in str(err.value)


def test_plan_says_per_table_what_happens(zoe):
    lines = merge(zoe)["plan"]
    users = next(line for line in lines if line.startswith("auth.db users -> users"))
    assert "merged" in users and "matched by username: 2 key(s) to existing rows, 1 new" in users
    assert "columns added: role, passcode_hash, is_active, last_login" in users
    assert "created_at is TEXT here, TIMESTAMP in the target: every new value keeps its type and bytes" in users
    tasks = next(line for line in lines if line.startswith("developer_tasks.db developer_tasks"))
    assert "table created" in tasks and "assigned_to -> developer_tasks.db:users: 2 row(s) re-pointed" in tasks


def test_second_merge_changes_nothing(zoe):
    first = merge(zoe)
    before = snapshot([zoe["zoe"]])
    assert merge(zoe)["changed"] is False
    assert snapshot([zoe["zoe"]]) == before
    again = merge(zoe, use_ledger=False)
    assert again["totals"]["inserted"] == 0
    assert rows(zoe["zoe"], "SELECT count(*) FROM users") == [(6,)]
    assert first["totals"]["inserted"] > 0


def test_not_null_column_the_source_cannot_fill_keeps_it_apart_or_refuses(tmp_path):
    t = make_db(tmp_path / "t.db", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, owner TEXT NOT NULL)"],
                {"notes": [(1, "a", "me")]})
    s = make_db(tmp_path / "s.db", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"], {"notes": [(1, "b")]})
    with pytest.raises(sm.ShapeClashError, match="target column owner is NOT NULL without default and the source has no such column to fill it for its new rows"):
        sm.merge_databases(t, [s], clash_policy="refuse")
    result = sm.merge_databases(t, [s])
    assert table(result, "s.db", "notes")["target_table"] == "s_notes"
    assert rows(t, "SELECT body FROM s_notes") == [("b",)]


def test_kept_apart_child_points_at_the_merged_parent_key(tmp_path):
    """A child table kept apart (its keys differ from the target's same-named table) keeps a working foreign key
    to the merged parent: its column is re-pointed to the target's key and its REFERENCES names that key."""
    t = make_db(tmp_path / "t.db", [ZOE_USERS, "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, title TEXT)"], {
        "users": [("admin", "admin", None, None, None, T0)], "tasks": [("t1", "zoe task")]})
    s = make_db(tmp_path / "developer_tasks.db", [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE)",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT, owner INTEGER REFERENCES users(id))"], {
        "users": [(7, "admin")], "tasks": [(1, "dev task", 7)]})
    result = sm.merge_databases(t, [s], keys={"users": ["username"]})
    assert table(result, "developer_tasks.db", "tasks")["decision"] == "kept_apart"
    assert rows(t, "SELECT title, owner FROM developer_tasks_tasks") == [("dev task", "admin")]
    assert rows(t, "SELECT \"table\", \"to\" FROM pragma_foreign_key_list('developer_tasks_tasks')") == [
        ("users", "user_id")]
    assert rows(t, "PRAGMA foreign_key_check") == []


def test_not_null_column_needs_no_value_for_rows_matched_by_the_natural_key(tmp_path):
    """developer_tasks.db's users lack zoe.db's NOT NULL password_hash: fine while every one of them is a user the
    target has (nothing to insert), a clash as soon as one would be a new row."""
    schema = "CREATE TABLE users (user_id TEXT PRIMARY KEY, username TEXT UNIQUE, password_hash TEXT NOT NULL)"
    t = make_db(tmp_path / "t.db", [schema], {"users": [("system", "system", H % "s")]})
    s = make_db(tmp_path / "developer_tasks.db", ["CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE)"],
                {"users": [(1, "system")]})
    result = sm.merge_databases(t, [s], keys={"users": ["username"]})
    assert (table(result, "developer_tasks.db", "users")["decision"], rows(t, "SELECT count(*) FROM users")) == (
        "merged", [(1,)])
    t2 = make_db(tmp_path / "t2.db", [schema], {"users": [("system", "system", H % "s")]})
    s2 = make_db(tmp_path / "d2.db", ["CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE)"],
                 {"users": [(1, "system"), (2, "ghost")]})
    result = sm.merge_databases(t2, [s2], keys={"users": ["username"]})
    assert table(result, "d2.db", "users")["decision"] == "kept_apart"
