"""Real SQLite fixtures for the sqlite_merge tests: the Zoe shape and small helpers."""

import os
import sqlite3

USERS_SQL = ("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT, "
             "password_hash TEXT, role TEXT, created_at TEXT, updated_at TEXT{extra})")
SESSIONS_SQL = ("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), "
                "token TEXT, created_at TEXT)")
SESSIONS_NOFK_SQL = "CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER, token TEXT, created_at TEXT)"
TASKS_SQL = "CREATE TABLE developer_tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT)"
COMMENTS_SQL = ("CREATE TABLE task_comments (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL "
                "REFERENCES developer_tasks(id) ON DELETE CASCADE, body TEXT)")

HASH = "pbkdf2_sha256$600000$salt$%s"
T0 = "2024-01-01T00:00:00"


def make_db(path, statements, rows=None, wal=False):
    """Create a database from CREATE statements and {table: [tuples]} rows."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    for sql in statements:
        conn.execute(sql)
    for table, values in (rows or {}).items():
        for row in values:
            conn.execute("INSERT INTO \"%s\" VALUES (%s)" % (table.replace('"', '""'), ", ".join("?" * len(row))), row)
    conn.commit()
    conn.close()
    return str(path)


def user(uid, name, email=None, secret="x", role="user", extra=()):
    return (uid, name, email or "%s@zoe.local" % name, HASH % secret, role, T0, T0) + tuple(extra)


def build_zoe(root):
    """The Zoe host's shape in `root`: zoe.db target and five sources. Returns {name: path}."""
    os.makedirs(str(root), exist_ok=True)
    p = {name: os.path.join(str(root), name + ".db")
         for name in ("zoe", "auth", "sessions", "developer_tasks", "learning", "self_awareness")}
    make_db(p["zoe"], [USERS_SQL.format(extra=""), SESSIONS_SQL, TASKS_SQL, COMMENTS_SQL], {
        "users": [user(1, "testuser"), user(2, "admin", role="admin"), user(3, "user"),
                  user(4, "system", role="system")],
        "sessions": [(1, 2, "tok-zoe-1", T0)],
        "developer_tasks": [(1, "zoe task one", "open"), (2, "zoe task two", "done")],
        "task_comments": [(1, 1, "comment on zoe task one")],
    })
    make_db(p["auth"], [USERS_SQL.format(extra=", last_login TEXT"), SESSIONS_SQL], {
        # admin: same content, different id (7 vs 2) -> identical by natural key, sessions re-point to 2
        # user: different email and hash -> conflict, keep_target
        "users": [user(7, "admin", role="admin", extra=(None,)),
                  user(8, "user", email="other@zoe.local", secret="y", extra=(None,))],
        "sessions": [(1, 7, "tok-auth-admin", T0), (2, 8, "tok-auth-user", T0)],
    })
    make_db(p["sessions"], [SESSIONS_NOFK_SQL], {
        "sessions": [(1, 1, "tok-sess-testuser", T0), (5, 3, "tok-sess-user", T0)],
    })
    make_db(p["developer_tasks"], [USERS_SQL.format(extra=""), TASKS_SQL, COMMENTS_SQL], {
        "users": [user(4, "system", role="system")],
        "developer_tasks": [(1, "dev task A", "open"), (2, "dev task B", "open")],
        "task_comments": [(1, 1, "on dev task A"), (2, 2, "on dev task B")],
    })
    make_db(p["learning"], ["CREATE TABLE events (id INTEGER PRIMARY KEY, event_type TEXT, data TEXT, "
                            "created_at TEXT)"], {"events": [(1, "learned", "{}", T0)]})
    make_db(p["self_awareness"], ["CREATE TABLE events (id INTEGER PRIMARY KEY, awareness REAL NOT NULL, "
                                  "reflection TEXT)"], {"events": [(1, 0.5, "hmm")]})
    return p


ZOE_OPTIONS = {
    "keys": {"users": ["username"]},
    "references": {"sessions": {"user_id": "users"}},
    "table_map": {"self_awareness.db": {"events": "awareness_events"}},
}


def rows(path, sql, params=()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def snapshot(paths):
    """(bytes, mtime_ns) of every file and sidecar, to prove nothing was touched."""
    out = {}
    for path in paths:
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            if os.path.exists(name):
                with open(name, "rb") as handle:
                    out[name] = (handle.read(), os.stat(name).st_mtime_ns)
    return out
