"""volume_snapshot on real files: WAL capture, live snapshots, byte-identical restore, refusals, quartets."""

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ansible.module_utils.volume_snapshot import (
    LockedError, ManifestError, NoSpaceError, SourceError, VerifyError, apply_prune, apply_restore, apply_snapshot,
    copy_and_hash, list_snapshots, load_manifest, plan_prune, plan_restore, plan_snapshot, plan_verify,
    sqlite_read_lock_copy)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------- helpers


def tree_digest(root):
    """Digest of a tree: every entry's relative path, type, mode, owner, mtime, size and content or target."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in ["."] + sorted(dirnames + filenames):
            path = os.path.normpath(os.path.join(dirpath, name))
            if name == "." and dirpath != root:
                continue
            st = os.lstat(path)
            line = [os.path.relpath(path, root), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                    st.st_gid, st.st_mtime_ns]
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    line += [st.st_size, hashlib.sha256(handle.read()).hexdigest()]
            elif stat.S_ISLNK(st.st_mode):
                line.append(os.readlink(path))
            digest.update(repr(line).encode())
    return digest.hexdigest()


def stat_tree(root):
    """(path, mtime_ns, size, mode) of everything under root, to prove a step wrote nothing."""
    out = []
    if not os.path.exists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames) + ["."]:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.join(dirpath, name), st.st_mtime_ns, st.st_size, st.st_mode, st.st_ino))
    return sorted(out)


def wal_db(path, rows=100, wal_rows=50):
    """A WAL database whose last `wal_rows` rows live only in the -wal; the open connection is returned."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO items (body) VALUES (?)", [("row %d" % i,) for i in range(rows)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO items (body) VALUES (?)", [("wal %d" % i,) for i in range(wal_rows)])
    conn.execute("COMMIT")
    return conn


def count_main_file_only(path, tmp_path):
    """Rows visible from the main database file alone (no -wal): proves the -wal holds the rest."""
    alone = str(tmp_path / ("alone-%s.db" % uuid.uuid4().hex[:6]))
    shutil.copyfile(path, alone)
    conn = sqlite3.connect(alone)
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        conn.close()


def build_tree(root):
    """A data dir like the Zoe host's: WAL databases with sidecars, a subdir, a symlink, odd modes and owners."""
    os.makedirs(os.path.join(root, "sub", "deep"))
    conns = [wal_db(os.path.join(root, "zoe.db")), wal_db(os.path.join(root, "sub", "auth.db"), 30, 7)]
    with open(os.path.join(root, "notes.txt"), "w") as handle:
        handle.write("hello\n" * 100)
    with open(os.path.join(root, "sub", "deep", "secret.key"), "wb") as handle:
        handle.write(os.urandom(5000))
    os.chmod(os.path.join(root, "sub", "deep", "secret.key"), 0o640)
    os.chmod(os.path.join(root, "notes.txt"), 0o755)
    os.chown(os.path.join(root, "notes.txt"), 1234, 4321)
    os.symlink("notes.txt", os.path.join(root, "link-to-notes"))
    os.utime(os.path.join(root, "notes.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return conns


def close_all(conns):
    """Close writers without a checkpoint removing the -wal (copy the files' state first is the caller's job)."""
    for conn in conns:
        conn.close()


def take(backup_root, paths, **kw):
    plan = plan_snapshot(str(backup_root), [str(p) for p in paths], **kw)
    return apply_snapshot(plan)


@pytest.fixture
def data_tree(tmp_path):
    """A data dir with its writers stopped, -wal and -shm left in place (as after `docker stop`)."""
    root = tmp_path / "data"
    root.mkdir()
    conns = build_tree(str(root))
    # Freeze the sidecars: copy the tree state with connections open, then close on copies so the
    # live -wal is not checkpointed away.
    frozen = tmp_path / "frozen"
    shutil.copytree(str(root), str(frozen), symlinks=True)
    close_all(conns)
    shutil.rmtree(str(root))
    shutil.copytree(str(frozen), str(root), symlinks=True, copy_function=shutil.copy2)
    os.chown(str(root / "notes.txt"), 1234, 4321)
    os.utime(str(root / "notes.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    shutil.rmtree(str(frozen))
    assert os.path.getsize(str(root / "zoe.db-wal")) > 0
    return root


# ---------------------------------------------------------------------------------------------- copy engine


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (3 << 20) + 17], ids=["empty", "one-byte", "one-buffer", "odd"])
def test_copy_and_hash_hashes_the_bytes_written(tmp_path, size):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(size))
    written, digest = copy_and_hash(str(src), str(dst))
    assert written == size
    assert digest == hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert stat.S_IMODE(os.stat(str(dst)).st_mode) == 0o600


# ---------------------------------------------------------------------------------------------- WAL capture


@pytest.mark.parametrize("mode", ["copy", "backup_api", "read_lock"], ids=["byte-copy", "backup-api", "read-lock"])
def test_rows_only_in_wal_are_captured(tmp_path, mode):
    data = tmp_path / "data"
    data.mkdir()
    db = str(data / "zoe.db")
    conn = wal_db(db, rows=100, wal_rows=50)
    try:
        assert count_main_file_only(db, tmp_path) == 100  # the 50 newest rows live only in the -wal
        result = take(tmp_path / "bk", [data], sqlite_mode=mode)
    finally:
        conn.close()
    verified = plan_verify(str(tmp_path / "bk"), result["snapshot_id"]).result
    assert [d["rows"] for d in verified["databases"]] == [{"items": 150}]
    manifest = load_manifest(result["snapshot_path"])
    names = sorted(e["rel"] for e in manifest["entries"] if e["type"] == "file")
    if mode == "copy":
        assert names == ["zoe.db", "zoe.db-shm", "zoe.db-wal"]
    elif mode == "read_lock":
        assert names == ["zoe.db", "zoe.db-wal"]  # the reader needed the -wal; the -shm is never kept
    else:
        assert names == ["zoe.db"]  # self-contained copy; the restore removes stale live sidecars


def test_backup_api_snapshot_with_an_active_writer_is_consistent(tmp_path):
    """A writer commits numbered transactions throughout; the snapshot holds a gap-free prefix that
    includes every transaction committed before the snapshot began."""
    data = tmp_path / "data"
    data.mkdir()
    db = str(data / "live.db")
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE tx (n INTEGER PRIMARY KEY, pad BLOB)")
    setup.execute("INSERT INTO tx VALUES (0, zeroblob(4000))")
    setup.close()
    committed = [0]
    stop = threading.Event()

    def writer():
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        n = 1
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO tx VALUES (?, zeroblob(4000))", [(n + i,) for i in range(10)])
            conn.execute("COMMIT")
            committed[0] = n + 9
            n += 10
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while committed[0] < 2000:
            time.sleep(0.01)
        before = committed[0]
        result = take(tmp_path / "bk", [data], sqlite_mode="backup_api")
        at_end = committed[0]
        deadline = time.monotonic() + 30
        while committed[0] <= at_end and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)  # under load the writer may not get a core right after a short snapshot
        after = committed[0]
    finally:
        stop.set()
        thread.join()
    assert after > at_end  # the writer committed after the snapshot returned: the snapshot left it unblocked
    snap_db = os.path.join(result["snapshot_path"], "files", "0", "live.db")
    conn = sqlite3.connect(snap_db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count, top = conn.execute("SELECT count(*), max(n) FROM tx").fetchone()
    finally:
        conn.close()
    assert top >= before
    assert count == top + 1  # every transaction up to the cut, none torn
    assert (top + 1) % 10 == 1  # whole transactions of 10 rows only


# ---------------------------------------------------------------------------------------------- read_lock (live byte copy)

# Writers and checkpointers run in other processes, as the services do: POSIX locks belong to a process,
# and a writer in the test's own process would share the snapshot's locks.
WRITER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("PRAGMA wal_autocheckpoint=50")
conn.execute("PRAGMA synchronous=OFF")  # locking is what matters here, not durability
n = conn.execute("SELECT max(n) FROM tx").fetchone()[0] + 1
while n < 200000:  # bounded, and paced, so the database stays small whatever the machine's speed
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO tx VALUES (?, randomblob(1000))", [(n + i,) for i in range(10)])
    conn.execute("UPDATE bulk SET pad = randomblob(1000) WHERE id = ?", (n % 5000,))
    conn.execute("COMMIT")
    n += 10
    time.sleep(0.0005)
"""

CHECKPOINTER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.05)
while True:
    for kind in ("PASSIVE", "RESTART", "TRUNCATE"):
        try:
            conn.execute("PRAGMA wal_checkpoint(%s)" % kind).fetchall()
        except sqlite3.OperationalError:
            pass
        time.sleep(0.003)
"""


def tx_db(path, journal_mode):
    """Transactions table `tx` (n = 0 first) and a 20 MB `bulk` table, so a copy takes long enough to be overlapped."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=%s" % journal_mode)
    conn.execute("CREATE TABLE tx (n INTEGER PRIMARY KEY, pad BLOB)")
    conn.execute("INSERT INTO tx VALUES (0, randomblob(1000))")
    conn.execute("CREATE TABLE bulk (id INTEGER PRIMARY KEY, pad BLOB)")
    conn.execute("WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < 4999) "
                 "INSERT INTO bulk SELECT x, randomblob(4000) FROM c")
    conn.close()


def committed(db):
    """The newest committed transaction, read with a connection closed again before the snapshot starts."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT max(n) FROM tx").fetchone()[0]
    finally:
        conn.close()


def open_stored(stored, scratch):
    """Open a stored database the way a restore does: the copy plus its stored -wal (if any), no -shm."""
    os.makedirs(scratch)
    copy = os.path.join(scratch, "snap.db")
    shutil.copyfile(stored, copy)
    if os.path.exists(stored + "-wal"):
        shutil.copyfile(stored + "-wal", copy + "-wal")
    return sqlite3.connect(copy)


def stored_rows(tmp_path, sql):
    """Open `copy.db` (and its -wal) in tmp_path as a restore would; integrity_check passes; the count `sql` gives."""
    conn = open_stored(str(tmp_path / "copy.db"), str(tmp_path / "open"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def check_tx_snapshot(conn, before):
    """integrity_check passes, every transaction up to the cut is whole, and the cut is at or after `before`."""
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count, top = conn.execute("SELECT count(*), max(n) FROM tx").fetchone()
    assert top >= before  # every row committed before the snapshot began
    assert count == top + 1  # no gap: a prefix of the commit history
    assert top % 10 == 0  # whole transactions of 10 rows only
    assert conn.execute("SELECT count(*) FROM bulk").fetchone()[0] == 5000
    return top


@pytest.mark.parametrize("journal_mode", ["WAL", "DELETE"], ids=["wal", "rollback-journal"])
def test_read_lock_snapshot_with_a_live_writer_and_checkpoints_is_consistent(tmp_path, journal_mode):
    """A writer commits numbered 10-row transactions in another process throughout (WAL: with automatic
    checkpoints, and a second process running PASSIVE/RESTART/TRUNCATE checkpoints in a loop); every
    snapshot opens, passes integrity_check and holds a whole prefix that includes every transaction
    committed before it began. Repeated, so the snapshot meets the -wal in different states."""
    data = tmp_path / "data"
    data.mkdir()
    db = str(data / "live.db")
    tx_db(db, journal_mode)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db])]
    if journal_mode == "WAL":
        procs.append(subprocess.Popen([sys.executable, "-c", CHECKPOINTER, db]))
    kept_wal, tops = 0, []
    try:
        while committed(db) < 300:
            time.sleep(0.02)
        for rep in range(10):
            before = committed(db)
            result = take(tmp_path / ("bk%d" % rep), [data], sqlite_mode="read_lock")
            deadline = time.monotonic() + 30
            while committed(db) <= before and time.monotonic() < deadline:
                time.sleep(0.02)  # under load the writer may not get a core during a short snapshot
            assert committed(db) > before  # the writer kept committing: the snapshot did not block it
            assert all(proc.poll() is None for proc in procs)
            stored = os.path.join(result["snapshot_path"], "files", "0", "live.db")
            kept_wal += os.path.exists(stored + "-wal")
            conn = open_stored(stored, str(tmp_path / ("open%d" % rep)))
            try:
                tops.append(check_tx_snapshot(conn, before))
            finally:
                conn.close()
            names = sorted(e["rel"] for e in load_manifest(result["snapshot_path"])["entries"] if e["type"] == "file")
            assert names == sorted(os.listdir(os.path.dirname(stored)))  # the manifest lists what is stored
            assert plan_verify(str(tmp_path / ("bk%d" % rep)), result["snapshot_id"]).result["verified"]
            shutil.rmtree(str(tmp_path / ("bk%d" % rep)))  # keep the test's disk use small
            shutil.rmtree(str(tmp_path / ("open%d" % rep)))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert tops == sorted(tops)
    if journal_mode == "DELETE":
        assert kept_wal == 0


def test_read_lock_keeps_the_wal_when_the_reader_needs_it(tmp_path):
    """Rows only in the -wal when the read transaction began (a read slot >= 1): the -wal is copied and
    kept although, while the lock is held, another process commits and checkpoints as far as it can and
    a RESTART checkpoint is refused (busy)."""
    db = str(tmp_path / "zoe.db")
    conn = wal_db(db, rows=100, wal_rows=50)
    conn.close()  # closing checkpoints; put 50 rows back into the -wal only
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.executemany("INSERT INTO items (body) VALUES (?)", [("wal %d" % i,) for i in range(50)])
    wal_before = open(db + "-wal", "rb").read(32)
    busy = []

    def meanwhile():
        out = subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.2)\n"
            "c.executemany('INSERT INTO items (body) VALUES (?)', [('late',)] * 30)\n"
            "print(c.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone()[0])\n"
            "print(c.execute('PRAGMA wal_checkpoint(RESTART)').fetchone()[0])\n"), db],
            capture_output=True, text=True, check=True)
        busy.extend(int(x) for x in out.stdout.split())

    try:
        database, wal = sqlite_read_lock_copy(db, str(tmp_path / "copy.db"), _while_locked=meanwhile)
    finally:
        conn.close()
    assert busy[1] == 1  # the RESTART checkpoint could not rewind the -wal under our read transaction
    assert wal is not None and wal[0] > 0
    with open(str(tmp_path / "copy.db-wal"), "rb") as handle:
        assert handle.read(32) == wal_before
    assert database[1] == hashlib.sha256((tmp_path / "copy.db").read_bytes()).hexdigest()
    assert wal[1] == hashlib.sha256((tmp_path / "copy.db-wal").read_bytes()).hexdigest()
    assert stored_rows(tmp_path, "SELECT count(*) FROM items WHERE body != 'late'") == 200


def test_read_lock_drops_a_wal_restarted_under_it(tmp_path):
    """Everything in the -wal already checkpointed when the read transaction began (read slot 0): another
    process's commit restarts the -wal while the lock is held; the changed header is seen, the -wal copy
    is dropped, and the database file alone (not written since the BEGIN) holds exactly the rows then."""
    db = str(tmp_path / "zoe.db")
    conn = wal_db(db, rows=100, wal_rows=50)
    assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0  # all backfilled, -wal kept
    assert os.path.getsize(db + "-wal") > 0

    def meanwhile():
        subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n"
            "c.executemany('INSERT INTO items (body) VALUES (?)', [('late',)] * 30)\n"), db], check=True)

    header = open(db + "-wal", "rb").read(32)
    try:
        database, wal = sqlite_read_lock_copy(db, str(tmp_path / "copy.db"), _while_locked=meanwhile)
        assert open(db + "-wal", "rb").read(32) != header  # the writer really restarted the -wal
    finally:
        conn.close()
    assert wal is None and not os.path.exists(str(tmp_path / "copy.db-wal"))
    assert stored_rows(tmp_path, "SELECT count(*) FROM items") == 150


def test_read_lock_leaves_the_source_database_untouched(data_tree, tmp_path):
    """No writer: the live database and -wal keep their bytes (read-only connection, no checkpoint)."""
    paths = [str(data_tree / "zoe.db"), str(data_tree / "zoe.db-wal")]
    before = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    result = take(tmp_path / "bk", [data_tree], sqlite_mode="read_lock")
    assert [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths] == before
    manifest = load_manifest(result["snapshot_path"])
    names = sorted(e["rel"] for e in manifest["entries"] if e["type"] == "file")
    # Both databases had rows only in their -wal: each -wal is kept, no -shm.
    assert names == ["notes.txt", "sub/auth.db", "sub/auth.db-wal", "sub/deep/secret.key", "zoe.db", "zoe.db-wal"]
    apply_restore(plan_restore(str(tmp_path / "bk"), "latest"))
    assert not os.path.exists(str(data_tree / "zoe.db-shm"))  # a stale -shm never comes back
    conn = sqlite3.connect(str(data_tree / "zoe.db"))
    try:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 150
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- live modes, no other connection

HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("SELECT count(*) FROM items").fetchone()  # maps the -shm and read-locks its dead-man-switch byte
print("open", flush=True)
sys.stdin.read()
"""


def file_bytes(paths):
    return {os.path.basename(p): (hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None)
            for p in paths}


def idle_wal_db(data):
    """A WAL database with rows only in its -wal and a -shm, and no connection left open."""
    db = str(data / "zoe.db")
    conn = wal_db(db)
    conn.close()  # closing the last connection checkpoints and removes the -wal: make one again, then crash-stop
    proc = subprocess.run([sys.executable, "-c", "import sqlite3, os, sys\n"
                           "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                           "c.execute('PRAGMA wal_autocheckpoint=0')\n"
                           "c.execute(\"INSERT INTO items (body) VALUES ('wal only')\")\n"
                           "os._exit(0)\n", db], check=True)
    assert proc.returncode == 0
    paths = [db + suffix for suffix in ("", "-wal", "-shm")]
    assert all(os.path.exists(p) for p in paths)
    return db, paths


@pytest.mark.parametrize("mode", ["backup_api", "read_lock"])
def test_a_live_snapshot_of_a_database_nobody_has_open_changes_no_byte(tmp_path, mode):
    """The -shm included: opening the live database would rebuild it, so the snapshot reads a byte copy."""
    data = tmp_path / "data"
    data.mkdir()
    db, paths = idle_wal_db(data)
    before = file_bytes(paths)
    result = take(tmp_path / "bk", [data], sqlite_mode=mode)
    assert file_bytes(paths) == before
    entry = next(e for e in load_manifest(result["snapshot_path"])["entries"] if e["rel"] == "zoe.db")
    assert entry["read_from"] == "copy"
    verified = plan_verify(str(tmp_path / "bk"), result["snapshot_id"]).result
    assert [d["rows"] for d in verified["databases"]] == [{"items": 151}]  # the -wal's rows are in
    assert not [n for n in os.listdir(result["snapshot_path"] + "/files/0") if n.startswith(".zoe-source-")]


def test_a_live_snapshot_of_a_database_another_process_has_open_reads_it_live(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db, paths = idle_wal_db(data)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        result = take(tmp_path / "bk", [data], sqlite_mode="backup_api")
    finally:
        holder.communicate("")
    entry = next(e for e in load_manifest(result["snapshot_path"])["entries"] if e["rel"] == "zoe.db")
    assert entry["read_from"] == "live"
    verified = plan_verify(str(tmp_path / "bk"), result["snapshot_id"]).result
    assert [d["rows"] for d in verified["databases"]] == [{"items": 151}]


# ---------------------------------------------------------------------------------------------- snapshot


def test_snapshot_permissions_and_manifest(data_tree, tmp_path):
    result = take(tmp_path / "bk", [data_tree])
    for dirpath, dirnames, filenames in os.walk(result["snapshot_path"]):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            assert stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode) == 0o600, name
    manifest = load_manifest(result["snapshot_path"])
    notes = next(e for e in manifest["entries"] if e["rel"] == "notes.txt")
    assert (notes["mode"], notes["uid"], notes["gid"], notes["mtime_ns"]) == (0o755, 1234, 4321,
                                                                           1_600_000_000_123_456_789)
    assert notes["path"] == str(data_tree / "notes.txt")
    assert notes["sha256"] == hashlib.sha256((data_tree / "notes.txt").read_bytes()).hexdigest()
    link = next(e for e in manifest["entries"] if e["rel"] == "link-to-notes")
    assert (link["type"], link["target"]) == ("symlink", "notes.txt")
    assert result["files"] == 8 and result["databases"] == 2 and result["symlinks"] == 1
    assert not [n for n in os.listdir(str(tmp_path / "bk")) if n.startswith(".")]


def test_plan_snapshot_writes_nothing(data_tree, tmp_path):
    before = stat_tree(str(tmp_path))
    plan = plan_snapshot(str(tmp_path / "bk"), [str(data_tree)])
    assert plan.changed and plan.result["bytes"] > 0
    assert stat_tree(str(tmp_path)) == before
    assert not (tmp_path / "bk").exists()


def test_snapshot_that_does_not_fit_fails_before_writing(tmp_path):
    """A 2 MiB tmpfs as backup_root, 4 MiB of data: refused with nothing left on the tmpfs."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(4 << 20))
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        with pytest.raises(NoSpaceError, match="nothing was written"):
            take(mount / "bk", [data])
        assert os.listdir(str(mount)) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_backup_root_inside_the_sources_is_refused(data_tree):
    with pytest.raises(SourceError, match="inside the snapshotted path"):
        plan_snapshot(str(data_tree / "backups"), [str(data_tree)])


def test_backup_root_that_is_a_symlink_into_the_sources_is_refused(data_tree, tmp_path):
    (data_tree / "bk2").mkdir()
    (tmp_path / "backups").symlink_to(data_tree / "bk2")
    with pytest.raises(SourceError, match="backups/deeper lies inside the snapshotted path %s" % data_tree):
        plan_snapshot(str(tmp_path / "backups" / "deeper"), [str(data_tree)])


def test_named_snapshot_is_idempotent(data_tree, tmp_path):
    first = take(tmp_path / "bk", [data_tree], snapshot="run-42")
    again = plan_snapshot(str(tmp_path / "bk"), [str(data_tree)], snapshot="run-42")
    assert first["snapshot_id"] == "run-42" and not again.changed


# ---------------------------------------------------------------------------------------------- restore


def damage(root):
    """Arbitrary damage: delete, modify, add, truncate a database, change modes/owners/times, swap a dir."""
    os.unlink(os.path.join(root, "sub", "auth.db-wal"))
    with open(os.path.join(root, "notes.txt"), "r+") as handle:
        handle.write("HELLO")
    with open(os.path.join(root, "zoe.db"), "r+b") as handle:
        handle.truncate(1024)
    with open(os.path.join(root, "new.db"), "w") as handle:
        handle.write("created after the snapshot")
    os.makedirs(os.path.join(root, "newdir", "x"))
    os.chmod(os.path.join(root, "sub", "deep", "secret.key"), 0o666)
    os.utime(os.path.join(root, "zoe.db-shm"), ns=(1, 1))
    shutil.rmtree(os.path.join(root, "sub", "deep"))
    os.symlink("/etc", os.path.join(root, "sub", "deep"))  # a symlink where a directory was
    os.unlink(os.path.join(root, "link-to-notes"))
    with open(os.path.join(root, "link-to-notes"), "w") as handle:
        handle.write("not a link any more")


def test_restore_after_arbitrary_damage_gives_the_same_tree(data_tree, tmp_path):
    expected = tree_digest(str(data_tree))
    snap = take(tmp_path / "bk", [data_tree])
    damage(str(data_tree))
    assert tree_digest(str(data_tree)) != expected
    etc_before = stat_tree("/etc/ssl")
    plan = plan_restore(str(tmp_path / "bk"), "latest")
    assert plan.changed
    result = apply_restore(plan)
    assert tree_digest(str(data_tree)) == expected
    assert result["snapshot_id"] == snap["snapshot_id"]
    assert result["files_removed"] == 2  # new.db, newdir
    assert result["files_restored"] >= 4
    assert stat_tree("/etc/ssl") == etc_before
    again = plan_restore(str(tmp_path / "bk"), "latest")
    assert not again.changed and again.result["files_unchanged"] == 8
    conn = sqlite3.connect(str(data_tree / "zoe.db"))
    try:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 150
    finally:
        conn.close()


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "quick-check"])
def test_same_size_same_mtime_edit(data_tree, tmp_path, checksum):
    """An in-place edit that keeps size and mtime is found by checksum=true and missed, as documented, by
    the quick check."""
    take(tmp_path / "bk", [data_tree])
    path = str(data_tree / "notes.txt")
    st = os.stat(path)
    with open(path, "r+") as handle:
        handle.write("J")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plan_restore(str(tmp_path / "bk"), "latest", checksum=checksum).changed is checksum


def test_restore_recreates_a_deleted_data_dir_through_ansible(data_tree, tmp_path):
    expected = tree_digest(str(data_tree))
    take(tmp_path / "bk", [data_tree])
    shutil.rmtree(str(data_tree))
    result = run_module({"state": "restored", "backup_root": str(tmp_path / "bk"), "paths": [str(data_tree)]})
    assert result["changed"] and result["files_restored"] == 8, result
    assert tree_digest(str(data_tree)) == expected


def test_check_mode_restore_writes_nothing(data_tree, tmp_path):
    take(tmp_path / "bk", [data_tree])
    damage(str(data_tree))
    before = stat_tree(str(tmp_path))
    plan = plan_restore(str(tmp_path / "bk"), "latest")
    assert plan.changed and plan.result["actions"]
    assert stat_tree(str(tmp_path)) == before


def test_restore_of_a_live_snapshot_removes_stale_sidecars(data_tree, tmp_path):
    take(tmp_path / "bk", [data_tree], sqlite_mode="backup_api")
    apply_restore(plan_restore(str(tmp_path / "bk"), "latest"))
    assert not os.path.exists(str(data_tree / "zoe.db-wal"))
    conn = sqlite3.connect(str(data_tree / "zoe.db"))
    try:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 150
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def rewrite_manifest(snap_dir, edit):
    """Edit a manifest and re-sign its checksum, as an attacker with write access to the backup would."""
    path = os.path.join(snap_dir, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    edit(manifest)
    raw = json.dumps(manifest).encode()
    with open(path, "wb") as handle:
        handle.write(raw)
    with open(path + ".sha256", "w") as handle:
        handle.write("%s  manifest.json\n" % hashlib.sha256(raw).hexdigest())


def _entry(manifest, rel):
    return next(e for e in manifest["entries"] if e["rel"] == rel)


def _dotdot(m):
    e = _entry(m, "notes.txt")
    e["rel"] = "../escaped.txt"
    e["path"] = os.path.normpath(os.path.join(m["roots"][0]["path"], "../escaped.txt"))


def _absolute(m):
    _entry(m, "notes.txt")["rel"] = "/tmp/escaped.txt"


def _path_elsewhere(m):
    _entry(m, "notes.txt")["path"] = "/tmp/escaped.txt"


def _under_symlink(m):
    e = dict(_entry(m, "notes.txt"))
    e["rel"] = "link-to-notes/escaped.txt"
    e["path"] = os.path.join(m["roots"][0]["path"], e["rel"])
    m["entries"].append(e)


def _root_moved(m):
    m["roots"][0]["path"] = "/etc"


@pytest.mark.parametrize("edit", [_dotdot, _absolute, _path_elsewhere, _under_symlink, _root_moved],
                         ids=["dotdot", "absolute-rel", "path-elsewhere", "under-a-symlink", "root-moved"])
def test_tampered_manifest_is_refused_before_writing(data_tree, tmp_path, edit):
    snap = take(tmp_path / "bk", [data_tree])
    damage(str(data_tree))
    rewrite_manifest(snap["snapshot_path"], edit)
    before = stat_tree(str(tmp_path))
    allowed = [str(data_tree)] if edit is _root_moved else None
    with pytest.raises(ManifestError):
        plan = plan_restore(str(tmp_path / "bk"), "latest", allowed_roots=allowed)
        apply_restore(plan)
    assert stat_tree(str(tmp_path)) == before
    assert not os.path.exists(str(tmp_path / "escaped.txt"))


def test_manifest_edited_without_its_checksum_is_refused(data_tree, tmp_path):
    snap = take(tmp_path / "bk", [data_tree])
    path = os.path.join(snap["snapshot_path"], "manifest.json")
    with open(path, "a") as handle:
        handle.write(" ")
    with pytest.raises(ManifestError, match="checksum"):
        plan_restore(str(tmp_path / "bk"), snap["snapshot_id"])


def test_corrupt_snapshot_file_aborts_before_any_live_file_changes(data_tree, tmp_path):
    snap = take(tmp_path / "bk", [data_tree])
    damage(str(data_tree))
    stored = os.path.join(snap["snapshot_path"], "files", "0", "zoe.db")
    with open(stored, "r+b") as handle:
        handle.seek(2000)
        handle.write(b"\xff")
    before = stat_tree(str(data_tree))
    with pytest.raises(VerifyError, match="nothing was restored"):
        apply_restore(plan_restore(str(tmp_path / "bk"), "latest"))
    assert [s[:3] for s in stat_tree(str(data_tree))] == [s[:3] for s in before]
    with pytest.raises(VerifyError):
        plan_verify(str(tmp_path / "bk"), "latest")


def test_verified_state_reports_integrity_and_rows(data_tree, tmp_path):
    snap = take(tmp_path / "bk", [data_tree])
    before = stat_tree(str(tmp_path))
    plan = plan_verify(str(tmp_path / "bk"), snap["snapshot_id"])
    assert not plan.changed
    assert sorted((os.path.basename(d["path"]), d["integrity"], d["rows"]["items"])
                  for d in plan.result["databases"]) == [("auth.db", "ok", 37), ("zoe.db", "ok", 150)]
    assert stat_tree(str(tmp_path)) == before


# ---------------------------------------------------------------------------------------------- prune


def test_prune_keeps_newest_and_locked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    ids = []
    for i in range(5):
        ids.append(take(tmp_path / "bk", [data], snapshot="s%d" % i)["snapshot_id"])
        time.sleep(0.01)
    (tmp_path / "bk" / "s0" / ".restore-lock").write_text("1\n")
    plan = plan_prune(str(tmp_path / "bk"), keep=2)
    assert plan.result["removed"] == ["s1", "s2"] and plan.result["protected"] == ["s0"]
    apply_prune(plan)
    assert [sid for _ns, sid, _p in list_snapshots(str(tmp_path / "bk"))] == ["s0", "s3", "s4"]
    assert not plan_prune(str(tmp_path / "bk"), keep=2).changed
    with pytest.raises(LockedError):
        plan_prune(str(tmp_path / "bk"), snapshot="s0")
    with pytest.raises(Exception, match="at least 1"):
        plan_prune(str(tmp_path / "bk"), keep=0)


# ---------------------------------------------------------------------------------------------- module, quartets


def run_module(args, check=False, diff=False):
    """Run the module through `ansible localhost -m volume_snapshot` on the system python3."""
    cmd = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "volume_snapshot", "-a",
           json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"]
    cmd += ["--check"] if check else []
    cmd += ["--diff"] if diff else []
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = json.loads(proc.stdout)
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_quartet_present_restored_absent_through_ansible(data_tree, tmp_path):
    bk = str(tmp_path / "bk")
    snap = {"paths": [str(data_tree)], "backup_root": bk, "snapshot": "rollback-1"}
    check = run_module(snap, check=True)
    assert check["changed"] and not os.path.exists(bk)
    real = run_module(snap)
    assert real["changed"] and real["snapshot_id"] == "rollback-1" and real["files"] == 8
    assert "sha256" not in json.dumps(real) and "hello" not in json.dumps(real)
    assert not run_module(snap, check=True)["changed"]
    assert not run_module(snap)["changed"]

    expected = tree_digest(str(data_tree))
    damage(str(data_tree))
    restore = {"state": "restored", "backup_root": bk, "snapshot": "latest", "paths": [str(data_tree)]}
    before = stat_tree(str(tmp_path))
    check = run_module(restore, check=True, diff=True)
    assert check["changed"] and stat_tree(str(tmp_path)) == before
    assert "remove %s" % (data_tree / "new.db") in check["diff"]["before"]
    real = run_module(restore)
    assert real["changed"] and tree_digest(str(data_tree)) == expected, real
    assert not run_module(restore, check=True)["changed"]
    assert not run_module(restore)["changed"]

    run_module({"paths": [str(data_tree)], "backup_root": bk, "snapshot": "rollback-2"})
    prune = {"state": "absent", "backup_root": bk, "keep": 1}
    assert run_module(prune, check=True)["changed"] and os.path.isdir(os.path.join(bk, "rollback-1"))
    assert run_module(prune)["removed"] == ["rollback-1"]
    assert not run_module(prune, check=True)["changed"]
    assert not run_module(prune)["changed"]

    failed = run_module({"state": "restored", "backup_root": bk, "snapshot": "nope"})
    assert failed["failed"] and failed["msg"].startswith("snapshot not found")


# ---------------------------------------------------------------------------------------------- docker volume


@pytest.mark.docker
def test_named_docker_volume_snapshot_and_restore(docker_engine, tmp_path):
    name = "zoe-test-%s" % uuid.uuid4().hex[:10]
    subprocess.run(["docker", "volume", "create", name], check=True, capture_output=True)
    try:
        mountpoint = subprocess.run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", name], check=True,
                                    capture_output=True, text=True).stdout.strip()
        conn = wal_db(os.path.join(mountpoint, "memory.db"), 40, 9)
        conn.close()
        os.makedirs(os.path.join(mountpoint, "cache"))
        with open(os.path.join(mountpoint, "cache", "x.bin"), "wb") as handle:
            handle.write(os.urandom(3000))
        expected = tree_digest(mountpoint)
        result = run_module({"volumes": [name], "backup_root": str(tmp_path / "bk")})
        assert result["changed"] and result["roots"] == [mountpoint], result
        os.unlink(os.path.join(mountpoint, "memory.db"))
        shutil.rmtree(os.path.join(mountpoint, "cache"))
        with open(os.path.join(mountpoint, "stray"), "w") as handle:
            handle.write("x")
        restored = run_module({"state": "restored", "backup_root": str(tmp_path / "bk"), "volumes": [name]})
        assert restored["changed"], restored
        assert tree_digest(mountpoint) == expected
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
