"""zoe_audit: every SQLite file of a tree found by header, classified, checked, counted, and nothing touched."""

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from ansible.module_utils.zoe_audit import (LIVE_MARK, PAYLOAD_PREFIX, WORKDIR_PREFIX, AuditOptions, DataDirMissingError,
                                            RootMissingError, audit_host, classify, find_sqlite_files, nearest_existing,
                                            sweep_dead)
from zoe_demo import FOLD_DATABASES, KEEP_DATABASES, build_demo_host

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")


def make_db(path, rows=3, table="items"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE %s (id INTEGER PRIMARY KEY, name TEXT)" % table)
    conn.executemany("INSERT INTO %s (name) VALUES (?)" % table, [("row%d" % i,) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def corrupt(path):
    """A database SQLite still opens but whose integrity_check fails (a b-tree page overwritten)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE big (a INTEGER, b TEXT)")
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, "x" * 100) for i in range(500)])
    conn.commit()
    conn.close()
    with open(path, "r+b") as handle:
        handle.seek(4096 * 5 + 100)
        handle.write(b"\xff" * 200)


def snapshot(root):
    """(relpath -> (sha256, mtime_ns, size)) of every regular file: proves an audit changed nothing."""
    state = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            st = os.stat(path)
            state[os.path.relpath(path, root)] = (digest, st.st_mtime_ns, st.st_size)
    return state


@pytest.fixture()
def tree(tmp_path):
    """A small host tree with every case the audit has to get right; yields (root, open WAL connection)."""
    root = tmp_path / "zoe"
    data = root / "data"
    make_db(str(data / "zoe.db"), rows=4, table="users")
    conn = sqlite3.connect(str(data / "zoe.db"))
    conn.execute("CREATE TABLE _zoe_merge_ledger (id INTEGER PRIMARY KEY, source TEXT, digest TEXT, merged_at TEXT)")
    conn.execute("INSERT INTO _zoe_merge_ledger (source, digest, merged_at) VALUES (?, ?, ?)",
                 (str(data / "sessions.db"), "ab" * 32, "2025-01-01T00:00:00Z"))
    conn.commit()
    conn.close()
    make_db(str(data / "memory.db"), rows=0)
    make_db(str(data / "auth.db"), rows=2, table="users")
    make_db(str(data / "odd.sqlite"), rows=1)
    (data / "empty.db").write_bytes(b"")
    (data / "notes.db").write_text("not a database\n")
    (data / "README.txt").write_text("data dir\n")
    make_db(str(root / "services" / "core" / "state"), rows=5)  # no extension at all
    make_db(str(root / "backups" / "old" / "auth.db"))
    make_db(str(root / ".git" / "objects" / "x.db"))
    make_db(str(root / "node_modules" / "pkg" / "cache.db"))
    # learning.db in WAL mode with 7 committed rows that live only in its -wal (the writer is still open).
    wal = sqlite3.connect(str(data / "learning.db"))
    wal.execute("PRAGMA journal_mode=wal")
    wal.execute("PRAGMA wal_autocheckpoint=0")
    wal.execute("CREATE TABLE lessons (id INTEGER PRIMARY KEY, t TEXT)")
    wal.executemany("INSERT INTO lessons (t) VALUES (?)", [("l%d" % i,) for i in range(7)])
    wal.commit()
    assert os.path.getsize(str(data / "learning.db-wal")) > 0
    yield str(root), wal
    wal.close()


def options(root, **kwargs):
    kwargs.setdefault("keep", ["zoe.db", "memory.db"])
    kwargs.setdefault("fold", ["auth.db", "learning.db", "sessions.db"])
    return AuditOptions(root, os.path.join(root, "data"), **kwargs)


def by_relpath(result):
    return {d["relpath"]: d for d in result["databases"]}


def test_finds_databases_by_header_and_skips_sidecars_git_and_excludes(tree):
    root, _ = tree
    result = audit_host(options(root, exclude=["backups", os.path.join(root, "node_modules")]))
    assert sorted(by_relpath(result)) == ["data/auth.db", "data/learning.db", "data/memory.db", "data/odd.sqlite",
                                          "data/zoe.db", "services/core/state"]


@pytest.mark.parametrize("exclude, expected_extra", [
    ([], ["backups/old/auth.db", "node_modules/pkg/cache.db"]),
    (["backups"], ["node_modules/pkg/cache.db"]),
    (["backups/*", "node_modules"], []),
    (["*/old"], ["node_modules/pkg/cache.db"]),
    (["cache.db", "/nonexistent"], ["backups/old/auth.db"]),
], ids=["nothing", "dir-glob", "two-globs", "nested-glob", "file-name-glob"])
def test_exclude_globs(tree, exclude, expected_extra):
    root, _ = tree
    found = audit_host(options(root, exclude=exclude))["unknown"]
    assert sorted(r for r in found if r.startswith(("backups", "node_modules"))) == expected_extra


@pytest.mark.parametrize("exclude, expected", [
    (["data/*.db"], ["data/old/x.db", "data/y.sqlite", "services/data/z.db"]),
    (["data/**/*.db"], ["data/y.sqlite", "services/data/z.db"]),
    (["**/data/*.db"], ["data/old/x.db", "data/y.sqlite"]),
    (["*.db"], ["data/y.sqlite"]),
    (["data/old"], ["data/keep.db", "data/y.sqlite", "services/data/z.db"]),
    (["./data/old/"], ["data/keep.db", "data/y.sqlite", "services/data/z.db"]),
    (["old"], ["data/keep.db", "data/y.sqlite", "services/data/z.db"]),
    (["data/?.sqlite"], ["data/keep.db", "data/old/x.db", "services/data/z.db"]),
], ids=["star-stays-in-one-component", "double-star-crosses", "leading-double-star", "name-at-any-depth",
        "anchored-directory", "dot-slash-and-trailing-slash", "directory-name-at-any-depth", "question-mark"])
def test_exclude_globs_are_path_globs(tmp_path, exclude, expected):
    """zoe_glob's meaning, not fnmatch's: `data/*.db` leaves out data/keep.db and not data/old/x.db."""
    root = tmp_path / "zoe"
    for relpath in ("data/keep.db", "data/old/x.db", "data/y.sqlite", "services/data/z.db"):
        make_db(str(root / relpath))
    result = audit_host(AuditOptions(str(root), str(root / "data"), exclude=exclude))
    assert sorted(by_relpath(result)) == expected


def test_exclude_globs_below_a_data_dir_outside_the_root_do_not_read_the_path_above_it(tmp_path):
    make_db(str(tmp_path / "tree" / "app.db"))
    make_db(str(tmp_path / "old" / "data" / "zoe.db"))
    make_db(str(tmp_path / "old" / "data" / "cache" / "c.db"))
    result = audit_host(AuditOptions(str(tmp_path / "tree"), str(tmp_path / "old" / "data"), exclude=["old", "cache"]))
    assert sorted(d["name"] for d in result["databases"]) == ["app.db", "zoe.db"]


def test_backup_root_is_always_excluded_and_measured_at_its_nearest_parent(tree):
    root, _ = tree
    result = audit_host(options(root, backup_root=os.path.join(root, "backups")))
    assert not any(r.startswith("backups/") for r in result["unknown"])
    result = audit_host(options(root, backup_root=os.path.join(root, "backups", "not", "yet")))
    assert result["free_path"] == os.path.join(os.path.realpath(root), "backups")
    assert result["free_bytes"] > 0
    assert audit_host(options(root))["free_bytes"] is None


@pytest.mark.parametrize("relpath, expected", [
    ("data/zoe.db", "keep"),
    ("data/memory.db", "keep"),
    ("data/auth.db", "fold"),
    ("data/learning.db", "fold"),
    ("data/odd.sqlite", "unknown"),
    ("services/core/state", "unknown"),
    ("backups/old/auth.db", "unknown"),
], ids=["primary", "memory", "fold", "fold-wal", "unlisted-in-data", "elsewhere", "fold-name-outside-data"])
def test_classify(tree, relpath, expected):
    root, _ = tree
    assert classify(os.path.join(os.path.realpath(root), relpath), options(root)) == expected


def test_wal_content_is_counted_and_journal_mode_reported(tree):
    root, _ = tree
    learning = by_relpath(audit_host(options(root)))["data/learning.db"]
    assert learning["tables"] == {"lessons": 7}
    assert learning["journal_mode"] == "wal"
    data = os.path.join(root, "data")
    assert learning["size"] == os.path.getsize(os.path.join(data, "learning.db")) + \
        os.path.getsize(os.path.join(data, "learning.db-wal"))
    assert learning["sidecars"] == ["learning.db-wal", "learning.db-shm"]


def test_audit_touches_no_byte_and_no_mtime(tree):
    root, _ = tree
    before = snapshot(root)
    time.sleep(0.01)
    audit_host(options(root, backup_root=os.path.join(root, "backups")))
    assert snapshot(root) == before


def test_fold_present_missing_merged_and_not_databases(tree):
    root, _ = tree
    result = audit_host(options(root, keep=["zoe.db", "memory.db", "gone.db"]))
    assert result["fold_present"] == ["auth.db", "learning.db"]
    assert result["fold_missing"] == ["sessions.db"]
    assert result["keep_missing"] == ["gone.db"]
    assert result["merged_names"] == ["sessions.db"]
    assert result["merged"] == [{"id": 1, "source": os.path.join(root, "data", "sessions.db"), "digest": "ab" * 32,
                                 "merged_at": "2025-01-01T00:00:00Z"}]
    assert result["not_databases"] == ["data/empty.db", "data/notes.db"]
    assert result["integrity_failures"] == []
    assert result["data_bytes"] == sum(os.path.getsize(os.path.join(root, "data", n))
                                       for n in os.listdir(os.path.join(root, "data")))


def test_ledger_table_option_and_missing_ledger(tree):
    root, _ = tree
    assert audit_host(options(root, ledger_table="other_ledger"))["merged"] == []


def test_integrity_failure_is_reported_not_raised(tree):
    root, _ = tree
    corrupt(os.path.join(root, "data", "auth.db"))
    result = audit_host(options(root))
    assert [f["relpath"] for f in result["integrity_failures"]] == ["data/auth.db"]
    assert isinstance(by_relpath(result)["data/auth.db"]["integrity"], list)
    assert by_relpath(result)["data/zoe.db"]["integrity"] == "ok"


def test_integrity_and_counts_can_be_skipped(tree):
    root, _ = tree
    zoe = by_relpath(audit_host(options(root, integrity=False, counts=False)))["data/zoe.db"]
    assert zoe["integrity"] is None and zoe["tables"] == {}


def test_duplicate_links_are_reported_once(tree):
    root, _ = tree
    os.symlink(os.path.join(root, "data", "auth.db"), os.path.join(root, "services", "auth-link.db"))
    found, _, _ = find_sqlite_files(options(root))
    rel = sorted(os.path.relpath(p, os.path.realpath(root)) for p in found)
    assert "services/auth-link.db" not in rel
    assert rel.count("data/auth.db") == 1


def test_data_dir_outside_root_is_walked(tmp_path):
    make_db(str(tmp_path / "tree" / "app.db"))
    make_db(str(tmp_path / "elsewhere" / "data" / "zoe.db"))
    result = audit_host(AuditOptions(str(tmp_path / "tree"), str(tmp_path / "elsewhere" / "data"), keep=["zoe.db"]))
    assert {d["name"]: d["class"] for d in result["databases"]} == {"app.db": "unknown", "zoe.db": "keep"}


@pytest.mark.parametrize("root, data_dir, error", [
    ("missing", "data", RootMissingError),
    ("file", "data", RootMissingError),
    ("root", "missing", DataDirMissingError),
], ids=["no-root", "root-is-file", "no-data-dir"])
def test_bad_paths_fail_clearly(tmp_path, root, data_dir, error):
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(error, match="does not exist or is not a directory"):
        AuditOptions(str(tmp_path / root), str(tmp_path / "root" / data_dir))


def test_nearest_existing(tmp_path):
    assert nearest_existing(str(tmp_path / "a" / "b")) == str(tmp_path)


def test_demo_host_audit_is_fast_and_complete(tmp_path):
    root = str(tmp_path / "zoe")
    build_demo_host(root, seed=1)
    before = snapshot(root)
    opts = AuditOptions(root, os.path.join(root, "data"), keep=KEEP_DATABASES, fold=FOLD_DATABASES)
    start = time.perf_counter()
    result = audit_host(opts)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, "audit of the demo tree took %.2f s" % elapsed
    assert len(result["databases"]) == 19
    assert sorted(result["fold_present"]) == sorted(FOLD_DATABASES) and result["fold_missing"] == []
    assert len(result["unknown"]) == 4 and all(not r.startswith("data/") for r in result["unknown"])
    zoe = by_relpath(result)["data/zoe.db"]
    assert zoe["tables"]["users"] == 4 and zoe["tables"]["people"] == 17
    assert by_relpath(result)["data/auth.db"]["tables"]["users"] == 2
    assert result["integrity_failures"] == [] and result["not_databases"] == []
    assert snapshot(root) == before


def run_module(args, check=False):
    """Run the module through `ansible localhost` on the bare system python3; (rc, result)."""
    cmd = [ANSIBLE, "localhost", "-m", "zoe_audit", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3"] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_module_on_bare_python3(tree, check):
    root, _ = tree
    before = snapshot(root)
    rc, result = run_module({"root": root, "data_dir": os.path.join(root, "data"), "keep": ["zoe.db", "memory.db"],
                             "fold": ["auth.db", "learning.db", "sessions.db"], "exclude": ["backups"]}, check=check)
    assert rc == 0, result
    assert result["changed"] is False
    assert result["fold_missing"] == ["sessions.db"]
    assert by_relpath(result)["data/learning.db"]["tables"] == {"lessons": 7}
    assert snapshot(root) == before


def test_module_fails_with_one_sentence(tmp_path):
    rc, result = run_module({"root": str(tmp_path / "nope"), "data_dir": str(tmp_path)})
    assert rc != 0 and result["failed"]
    assert result["msg"] == "root %s does not exist or is not a directory" % (tmp_path / "nope")


def test_foreign_key_violations_are_reported_when_asked(tmp_path):
    """A child row pointing at a missing parent is a failure with foreign_keys=true, silent without."""
    import sqlite3

    from ansible.module_utils.zoe_audit import AuditOptions, audit_host

    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(str(data / "zoe.db"))
    conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id));"
                       "INSERT INTO users VALUES (1); INSERT INTO sessions VALUES (1, 1), (2, 99);")
    conn.commit()
    conn.close()
    checked = audit_host(AuditOptions(str(tmp_path), str(data), keep=["zoe.db"], foreign_keys=True))
    assert checked["foreign_key_failures"] == [
        {"relpath": "data/zoe.db", "violations": 1, "sample": [["sessions", 2, "users", 0]]}]
    unchecked = audit_host(AuditOptions(str(tmp_path), str(data), keep=["zoe.db"]))
    assert unchecked["foreign_key_failures"] == []


# -- special files and killed audits ------------------------------------------------------------------

def test_special_files_named_like_a_database_are_reported_by_name_and_never_opened(tree):
    """A FIFO opened for reading blocks until a writer comes: the audit must never open one."""
    root, _ = tree
    os.mkfifo(os.path.join(root, "data", "sessions.db"))          # a fold name
    os.mkfifo(os.path.join(root, "services", "cache.sqlite"))     # named like a database, outside data/
    os.mkfifo(os.path.join(root, "services", "events.pipe"))      # not named like one: skipped, not reported
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(root, "data", "agent.db"))
    before = snapshot(root)
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=audit_host(options(root))), daemon=True)
    worker.start()
    worker.join(60)
    sock.close()
    assert not worker.is_alive(), "the audit hangs on a special file"
    result = done["result"]
    assert result["special_files"] == [{"relpath": "data/agent.db", "kind": "a socket"},
                                       {"relpath": "data/sessions.db", "kind": "a named pipe (FIFO)"},
                                       {"relpath": "services/cache.sqlite", "kind": "a named pipe (FIFO)"}]
    assert "data/sessions.db" not in by_relpath(result) and result["fold_missing"] == ["sessions.db"]
    assert snapshot(root) == before


HOLD_MARK = r"""
import sys
import ansible.module_utils
ansible.module_utils.__path__.append(sys.argv[1])
from ansible.module_utils.zoe_audit import make_live_dir
path, fd = make_live_dir(sys.argv[2], sys.argv[3])
print(path, flush=True)
sys.stdin.read()
"""


def live_dir_of_a_process(tmpdir, prefix):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_MARK, os.path.join(REPO, "module_utils"), prefix, tmpdir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_sweep_removes_only_what_a_killed_audit_left(tmp_path):
    tmpdir = str(tmp_path)
    alive, alive_dir = live_dir_of_a_process(tmpdir, WORKDIR_PREFIX)
    killed, killed_dir = live_dir_of_a_process(tmpdir, PAYLOAD_PREFIX)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    unmarked = os.path.join(tmpdir, WORKDIR_PREFIX + "unmarked")
    other = os.path.join(tmpdir, "zoe-other-dir")
    for path in (unmarked, other):
        os.mkdir(path)
    with open(os.path.join(other, LIVE_MARK), "w"):
        pass
    try:
        assert sweep_dead(tmpdir) == [killed_dir]
        assert sorted(os.listdir(tmpdir)) == sorted(os.path.basename(p) for p in (alive_dir, unmarked, other))
    finally:
        alive.communicate("")
    assert sweep_dead(tmpdir) == [alive_dir]   # its process ended: now it is a leftover too
