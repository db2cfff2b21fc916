"""The demo host generator reproduces the facts of the Zoe host (DESIGN.md) and the hard cases."""

import hashlib
import json
import os
import sqlite3

import pytest

from zoe_demo import (DEMO_PASSCODES, DEMO_PASSWORDS, FOLD_DATABASES, KEEP_DATABASES, REFERENCE_RE, TOTAL_FILES,
                      TOTAL_REFERENCES, UNKNOWN_DATABASES, build_demo_host, record_path, scan_references)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "zoe")
    record = build_demo_host(root, seed=7)
    return root, record


def query(root, rel, sql):
    """Read a database through a copy, as the merge does, so the -wal stays where it is."""
    path = os.path.join(root, rel)
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def sqlite_files(root):
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                if handle.read(16) == b"SQLite format 3\x00":
                    found.append(os.path.relpath(path, root))
    return sorted(found)


def test_nineteen_databases_fifteen_in_data(demo):
    root, _ = demo
    files = sqlite_files(root)
    assert len(files) == 19
    in_data = sorted(f for f in files if f.startswith("data/"))
    assert in_data == sorted("data/" + n for n in KEEP_DATABASES + FOLD_DATABASES)
    assert sorted(f for f in files if not f.startswith("data/")) == sorted(UNKNOWN_DATABASES)


@pytest.mark.parametrize("database, users", [
    ("data/zoe.db", ["admin", "system", "testuser", "user"]),
    ("data/auth.db", ["admin", "user"]),
    ("data/developer_tasks.db", ["system"]),
], ids=["zoe-4", "auth-2", "developer_tasks-1"])
def test_users_split(demo, database, users):
    root, record = demo
    assert sorted(r[0] for r in query(root, database, "SELECT username FROM users")) == users
    assert sorted(record["users"][os.path.basename(database)]) == users


def columns(root, rel, table):
    """{column: (declared type, primary-key position)} of a table."""
    return {r[1]: (r[2], r[5]) for r in query(root, rel, "PRAGMA table_info(%s)" % quote(table))}


def foreign_keys(root, rel, table):
    """{column: (parent table, parent column)} of a table's declared foreign keys."""
    return {r[3]: (r[2], r[4]) for r in query(root, rel, "PRAGMA foreign_key_list(%s)" % quote(table))}


def quote(name):
    return '"%s"' % name.replace('"', '""')


@pytest.mark.parametrize("database, key, declared, values", [
    ("data/zoe.db", "user_id", "TEXT", "usernames"),
    ("data/auth.db", "user_id", "TEXT", "usr_"),
    ("data/developer_tasks.db", "id", "INTEGER", "integers"),
], ids=["zoe-username", "auth-usr", "developer_tasks-integer"])
def test_users_keyed_three_ways(demo, database, key, declared, values):
    root, _ = demo
    cols = columns(root, database, "users")
    assert [c for c, (_, pk) in cols.items() if pk] == [key] and cols[key][0] == declared
    rows = query(root, database, "SELECT %s, username FROM users" % key)
    if values == "usernames":
        assert all(k == name for k, name in rows)
    elif values == "usr_":
        assert all(k.startswith("usr_") and k != name for k, name in rows)
    else:
        assert all(isinstance(k, int) for k, _ in rows)


def test_auth_users_have_the_columns_zoe_auth_reads_and_zoe_db_lacks(demo):
    root, _ = demo
    zoe, auth = columns(root, "data/zoe.db", "users"), columns(root, "data/auth.db", "users")
    assert len(auth) > len(zoe)
    assert sorted(set(auth) - set(zoe)) == ["failed_login_attempts", "is_verified", "last_login", "locked_until",
                                            "metadata", "passcode_hash", "role", "settings", "updated_at"]
    assert sorted(set(zoe) - set(auth)) == ["is_admin", "settings_json"]
    # the declared types drift while the values fit (a merge by declared type names would refuse it)
    assert zoe["created_at"][0] == "TIMESTAMP" and auth["created_at"][0] == "TEXT"


def test_admin_is_one_person_under_two_keys_and_user_disagrees(demo):
    root, record = demo
    sql = "SELECT username, user_id, email, password_hash, created_at FROM users"
    zoe = {r[0]: r[1:] for r in query(root, "data/zoe.db", sql)}
    auth = {r[0]: r[1:] for r in query(root, "data/auth.db", sql)}
    assert zoe["admin"][0] == "admin" != auth["admin"][0] == record["cases"]["auth_admin_other_key"]["auth.db"]
    assert zoe["admin"][1:] == auth["admin"][1:]
    assert zoe["user"][1] != auth["user"][1] and zoe["user"][2] != auth["user"][2]


@pytest.mark.parametrize("database, table, column, parent", [
    ("data/auth.db", "passcodes", "user_id", ("users", "user_id")),
    ("data/auth.db", "auth_sessions", "user_id", ("users", "user_id")),
    ("data/auth.db", "sessions", "user_id", ("users", "user_id")),
    ("data/auth.db", "password_history", "user_id", ("users", "user_id")),
    ("data/auth.db", "audit_logs", "user_id", ("users", "user_id")),
    ("data/developer_tasks.db", "developer_tasks", "user_id", ("users", "id")),
    ("data/zoe.db", "developer_tasks", "user_id", ("users", "user_id")),
    ("data/zoe.db", "user_sessions", "user_id", ("users", "user_id")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_children_declare_foreign_keys_to_each_kind_of_key(demo, database, table, column, parent):
    root, _ = demo
    assert foreign_keys(root, database, table)[column] == parent
    parent_keys = {r[0] for r in query(root, database, "SELECT %s FROM %s" % (quote(parent[1]), quote(parent[0])))}
    children = [r[0] for r in query(root, database, "SELECT %s FROM %s WHERE %s IS NOT NULL"
                                    % (quote(column), quote(table), quote(column)))]
    assert children and set(children) <= parent_keys


def test_integer_child_points_where_the_primary_has_text(demo):
    root, record = demo
    dev = columns(root, "data/developer_tasks.db", "developer_tasks")
    zoe = columns(root, "data/zoe.db", "developer_tasks")
    assert dev["user_id"][0] == "INTEGER" and zoe["user_id"][0] == "TEXT"
    assert record["cases"]["integer_child_into_text"]["column"] == "user_id"


def test_plain_user_columns_name_zoe_db_users(demo):
    root, _ = demo
    users = {r[0] for r in query(root, "data/zoe.db", "SELECT user_id FROM users")}
    for database, table in (("data/sessions.db", "sessions"), ("data/satisfaction.db", "user_feedback"),
                            ("data/tool_registry.db", "tool_executions"), ("data/context_cache.db", "context_summaries")):
        assert "user_id" not in foreign_keys(root, database, table)
        assert {r[0] for r in query(root, database, "SELECT DISTINCT user_id FROM %s" % table)} <= users


def test_sessions_in_auth_and_sessions_db_drift_and_share_one_key(demo):
    root, record = demo
    auth, sess = columns(root, "data/auth.db", "sessions"), columns(root, "data/sessions.db", "sessions")
    assert "session_type" in set(auth) - set(sess) and "last_activity" in set(sess) - set(auth)
    key = record["cases"]["session_key_conflict"]["session_id"]
    a = query(root, "data/auth.db", "SELECT user_id, created_at FROM sessions WHERE session_id = '%s'" % key)
    b = query(root, "data/sessions.db", "SELECT user_id, created_at FROM sessions WHERE session_id = '%s'" % key)
    assert a and b and a != b


def test_people_and_memory(demo):
    root, _ = demo
    assert query(root, "data/zoe.db", "SELECT count(*) FROM people")[0][0] == 17
    assert query(root, "data/memory.db", "SELECT count(*) FROM people")[0][0] == 0
    assert columns(root, "data/zoe.db", "people") != columns(root, "data/memory.db", "people")


def test_one_row_byte_identical_in_two_sources(demo):
    root, record = demo
    case = record["cases"]["identical_row"]
    rows = [query(root, "data/" + db, "SELECT * FROM %s WHERE id = %d" % (case["table"], case["id"]))
            for db in case["sources"]]
    assert len(rows[0]) == 1 and rows[0] == rows[1]
    others = [query(root, "data/" + db, "SELECT * FROM %s WHERE id = 2" % case["table"]) for db in case["sources"]]
    assert others[0] != others[1]   # the same id, another row: its id is remapped


def test_same_name_different_things(demo):
    root, record = demo
    case = record["cases"]["same_name_different_thing"]
    a, b = (columns(root, "data/" + db, case["table"]) for db in case["sources"])
    assert [c for c, (_, pk) in a.items() if pk] != [c for c, (_, pk) in b.items() if pk]


def test_table_and_columns_that_need_quoting(demo):
    root, record = demo
    case = record["cases"]["quoted_names"]
    cols = columns(root, case["database"], case["table"])
    assert '"' in case["table"] and " " in case["table"]
    assert {"order", "group", "model name", "p95 latency-ms"} <= set(cols)
    assert record["databases"][case["database"]][case["table"]] > 0


def test_every_database_is_sound_and_about_six_megabytes(demo):
    root, _ = demo
    total = 0
    for rel in sqlite_files(root):
        assert query(root, rel, "PRAGMA integrity_check") == [("ok",)], rel
        assert query(root, rel, "PRAGMA foreign_key_check") == [], rel
    for dirpath, _, files in os.walk(os.path.join(root, "data")):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    assert 5e6 < total < 8e6


def test_references_planted_and_recorded(demo):
    root, record = demo
    assert len(record["references"]) == TOTAL_REFERENCES == 441
    assert len(record["reference_files"]) == TOTAL_FILES == 95
    assert set(record["review_files"]) <= set(record["reference_files"])
    rescanned = []
    for rel in record["reference_files"]:
        with open(os.path.join(root, rel)) as handle:
            rescanned += [(rel, line, name) for line, name in scan_references(handle.read())]
    assert sorted(rescanned) == sorted((r["file"], r["line"], r["name"]) for r in record["references"])
    assert {r["kind"] for r in record["references"]} == {"path_literal", "env_default", "connect_call", "comment", "doc"}


@pytest.mark.parametrize("text, expected", [
    ("x = '/app/data/auth.db'", ["auth.db"]),
    ("oauth.db.bak", []),
    ("auth.db.bak", []),
    ("myauth.db", []),
    ("see auth.db.", ["auth.db"]),
    ("zoe_old_backup.db and zoe.db", ["zoe_old_backup.db", "zoe.db"]),
], ids=["path", "oauth-bak", "bak-suffix", "prefix", "sentence-end", "longest-name"])
def test_reference_pattern(text, expected):
    assert [m.group("name") for m in REFERENCE_RE.finditer(text)] == expected


def test_compose_and_env_style(demo):
    root, record = demo
    with open(os.path.join(root, "docker-compose.yml")) as handle:
        compose = handle.read()
    for needle in ("#  zoe-legacy-scheduler:", "- DATABASE_PATH=/app/data/zoe.db", "DATABASE_PATH: /app/data/auth.db",
                   "${LEARNING_DB:-/app/data/learning.db}", "env_file:", "healthcheck:",
                   "./data/knowledge.db:/app/knowledge/knowledge.db:ro", "&zoe-service"):
        assert needle in compose
    with open(os.path.join(root, ".env")) as handle:
        env = handle.read()
    assert record["secrets"]["JWT_SECRET"] in env
    assert oct(os.stat(os.path.join(root, ".env")).st_mode & 0o777) == "0o600"


def tree_digest(root):
    """Bytes of every file, except a -wal/-shm: SQLite salts its WAL header at random, so the WAL
    database counts by its logical content (iterdump) instead."""
    digest = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode())
            if name.endswith(("-wal", "-shm")):
                conn = sqlite3.connect("file:%s?mode=ro" % path[:-4], uri=True)
                digest.update("\n".join(conn.iterdump()).encode())
                conn.close()
                continue
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def test_deterministic_for_a_seed_and_different_for_another(tmp_path):
    a = build_demo_host(str(tmp_path / "a"), seed=3)
    b = build_demo_host(str(tmp_path / "b"), seed=3)
    c = build_demo_host(str(tmp_path / "c"), seed=4)
    assert tree_digest(a["root"]) == tree_digest(b["root"]) != tree_digest(c["root"])


def test_scale_multiplies_bulk_rows_not_facts(tmp_path):
    big = build_demo_host(str(tmp_path / "big"), seed=1, scale=3)
    small = build_demo_host(str(tmp_path / "small"), seed=1, scale=1)
    big_runs, small_runs = (h["databases"]["data/model_performance.db"]["model_performance"] for h in (big, small))
    assert big_runs == 3 * small_runs
    assert big["users"] == small["users"]
    assert big["databases"]["data/zoe.db"]["people"] == 17


def test_refuses_to_overwrite_and_record_is_private(tmp_path, demo):
    root, _ = demo
    with pytest.raises(FileExistsError):
        build_demo_host(root)
    assert oct(os.stat(record_path(root)).st_mode & 0o777) == "0o600"
    with open(record_path(root)) as handle:
        saved = json.load(handle)
    assert saved["passwords"] == DEMO_PASSWORDS and saved["passcodes"] == DEMO_PASSCODES


def test_review_files_name_a_retired_database_as_something_else(demo):
    """The import tool reads auth.db and writes zoe.db; the validator forbids the retired names and allows
    the kept ones. Rewriting either to zoe.db would break it, so the code rewrite must leave both alone."""
    root, record = demo
    texts = {}
    for rel in record["review_files"]:
        with open(os.path.join(root, rel)) as handle:
            texts[rel] = handle.read()
    importer, validator = (texts[rel] for rel in record["review_files"])
    assert not any(rel.startswith(("scripts/migration/", "docs/migration/")) for rel in texts)
    assert "/app/data/auth.db" in importer and "/app/data/zoe.db" in importer
    allowed = validator.split("ALLOWED = ")[1].split("\n")[0]
    forbidden = validator.split("FORBIDDEN = [")[1].split("]")[0]
    assert [n for _, n in scan_references(allowed)] == list(KEEP_DATABASES)
    assert [n for _, n in scan_references(forbidden)] == list(FOLD_DATABASES)
