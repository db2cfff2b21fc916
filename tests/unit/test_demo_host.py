"""The demo host generator reproduces the facts of the Zoe host (DESIGN.md) and the hard cases."""

import hashlib
import json
import os
import sqlite3

import pytest

from zoe_demo import (DEMO_PASSWORDS, FOLD_DATABASES, KEEP_DATABASES, REFERENCE_RE, TOTAL_FILES,
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
    root, _ = demo
    assert sorted(r[0] for r in query(root, database, "SELECT username FROM users")) == users


def test_admin_has_another_id_in_auth_and_user_disagrees(demo):
    root, _ = demo
    zoe = {r[0]: r[1:] for r in query(root, "data/zoe.db", "SELECT username, id, email, password_hash FROM users")}
    auth = {r[0]: r[1:] for r in query(root, "data/auth.db", "SELECT username, id, email, password_hash FROM users")}
    assert zoe["admin"][0] != auth["admin"][0] and zoe["admin"][1:] == auth["admin"][1:]
    assert zoe["user"][1:] != auth["user"][1:]
    cols = [r[1] for r in query(root, "data/auth.db", "PRAGMA table_info(users)")]
    assert "last_login" in cols
    assert "last_login" not in [r[1] for r in query(root, "data/zoe.db", "PRAGMA table_info(users)")]
    # auth.db sessions point at auth.db's admin id, which is not zoe.db's admin id
    assert query(root, "data/auth.db", "SELECT count(*) FROM sessions WHERE user_id = 1")[0][0] > 0


def test_sessions_people_and_memory(demo):
    root, _ = demo
    assert query(root, "data/auth.db", "SELECT count(*) FROM sessions")[0][0] > 0
    assert query(root, "data/sessions.db", "SELECT count(*) FROM sessions")[0][0] > 0
    assert query(root, "data/zoe.db", "SELECT count(*) FROM people")[0][0] == 17
    assert query(root, "data/memory.db", "SELECT count(*) FROM people")[0][0] == 0


def test_developer_task_ids_collide_with_children(demo):
    root, _ = demo
    zoe = dict(query(root, "data/zoe.db", "SELECT id, title FROM developer_tasks"))
    dev = dict(query(root, "data/developer_tasks.db", "SELECT id, title FROM developer_tasks"))
    assert [i for i in zoe if dev[i] != zoe[i]] == [1, 2, 4, 5]
    assert dev[3] == zoe[3]
    children = query(root, "data/developer_tasks.db", "SELECT count(*) FROM task_comments WHERE task_id IN (1,2,4,5)")
    assert children[0][0] > 0


def test_events_share_a_name_not_a_shape(demo):
    root, _ = demo
    learning = [r[1] for r in query(root, "data/learning.db", "PRAGMA table_info(events)")]
    awareness = [r[1] for r in query(root, "data/self_awareness.db", "PRAGMA table_info(events)")]
    assert learning != awareness


def test_wal_rows_live_only_in_the_wal(demo):
    root, record = demo
    path = os.path.join(root, "data/learning.db")
    assert os.path.getsize(path + "-wal") > 0
    main_only = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
    in_main = main_only.execute("SELECT count(*) FROM learning_patterns").fetchone()[0]
    main_only.close()
    case = record["cases"]["wal_only_rows"]
    assert record["databases"]["data/learning.db"]["learning_patterns"] == in_main + case["rows"]
    # a normal reader sees the -wal rows too
    assert query(root, "data/learning.db", "SELECT count(*) FROM learning_patterns")[0][0] == in_main + case["rows"]


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
    assert big["databases"]["data/model_performance.db"]["model_runs"] == 3 * small["databases"]["data/model_performance.db"]["model_runs"]
    assert big["users"] == small["users"]
    assert big["databases"]["data/zoe.db"]["people"] == 17


def test_refuses_to_overwrite_and_record_is_private(tmp_path, demo):
    root, _ = demo
    with pytest.raises(FileExistsError):
        build_demo_host(root)
    assert oct(os.stat(record_path(root)).st_mode & 0o777) == "0o600"
    with open(record_path(root)) as handle:
        assert json.load(handle)["passwords"] == DEMO_PASSWORDS
