"""volume_snapshot state=present with O(base), on real files and real WAL databases: what is linked, what is
copied, what a restore and a prune of the base do, the refusals, and the safety net for a damaged base."""

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess

import pytest

from ansible.module_utils import volume_snapshot_base
from ansible.module_utils.volume_snapshot import (
    SourceChangedError, UnusableBaseError, VerifyError, apply_prune, apply_restore, apply_snapshot, load_manifest, plan_prune,
    plan_restore, plan_snapshot, plan_verify)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------- helpers


def frozen_wal_db(path, scratch, rows=2000, wal_rows=500):
    """A WAL database at `path` with a -wal holding its newest rows and a -shm, as a stopped writer leaves them.

    Built in `scratch` and its three files copied while the writer's connection is still open, so closing it
    (which checkpoints and removes the -wal) does not touch the copies.
    """
    os.makedirs(scratch)
    work = os.path.join(scratch, os.path.basename(path))
    conn = sqlite3.connect(work, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO items (body) VALUES (?)", [("row %06d" % i,) for i in range(rows)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("BEGIN")
        conn.executemany("UPDATE items SET body = ? WHERE id = ?", [("upd %06d" % i, i) for i in range(1, wal_rows)])
        conn.execute("COMMIT")
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(work + suffix, path + suffix)
    finally:
        conn.close()
    shutil.rmtree(scratch)
    assert os.path.getsize(path + "-wal") > 0


@pytest.fixture
def tree(tmp_path):
    """Two roots, as the rollback point has: a data dir (two WAL databases with -wal and -shm, small and larger
    files, an empty file, a symlink, odd modes) and a compose file."""
    data = tmp_path / "data"
    os.makedirs(str(data / "sub"))
    frozen_wal_db(str(data / "zoe.db"), str(tmp_path / "scratch1"))
    frozen_wal_db(str(data / "sub" / "auth.db"), str(tmp_path / "scratch2"), rows=300, wal_rows=50)
    (data / "notes.txt").write_text("hello\n" * 200)
    (data / "sub" / "blob.bin").write_bytes(os.urandom(3 << 20))
    (data / "empty").write_bytes(b"")
    os.chmod(str(data / "notes.txt"), 0o755)
    os.chmod(str(data / "sub" / "blob.bin"), 0o640)
    os.symlink("notes.txt", str(data / "link-to-notes"))
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services: {}\n")
    return tmp_path


def take(bk, paths, **kw):
    return apply_snapshot(plan_snapshot(str(bk), [str(p) for p in paths], **kw))


def files_of(snapshot_path):
    """{source path: (manifest entry, stored path)} of a snapshot's files."""
    manifest = load_manifest(snapshot_path)
    return {e["path"]: (e, os.path.join(snapshot_path, "files", str(e["root"]), e["rel"]))
            for e in manifest["entries"] if e["type"] == "file"}


def sha256_of(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def assert_stored_match(snapshot_path):
    """Every stored file's bytes hash to its manifest sha256 and have its size."""
    for entry, stored in files_of(snapshot_path).values():
        assert sha256_of(stored) == entry["sha256"] and os.path.getsize(stored) == entry["size"], entry["path"]


def contents(*roots):
    """{path: (type, mode, mtime_ns, bytes or link target)} of everything under the roots (files or dirs)."""
    out = {}
    for root in roots:
        paths = [root]
        for dirpath, dirnames, filenames in os.walk(root):
            paths += [os.path.join(dirpath, name) for name in dirnames + filenames]
        for path in paths:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    body = handle.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            else:
                body = None
            out[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, body)
    return out


def same_size_edit(path, offset=0):
    """Change bytes of a file in place, keeping its size (the base's size check passes; only the digest differs)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def damage_tree(data, compose):
    """Edits a rollback undoes: a database written to, a file removed, one added, a mode and the compose file."""
    conn = sqlite3.connect(os.path.join(data, "zoe.db"))
    conn.execute("INSERT INTO items (body) VALUES ('after the snapshot')")
    conn.commit()
    conn.close()
    os.unlink(os.path.join(data, "notes.txt"))
    with open(os.path.join(data, "sub", "new.txt"), "w") as handle:
        handle.write("new\n")
    os.chmod(os.path.join(data, "sub", "blob.bin"), 0o600)
    with open(compose, "w") as handle:
        handle.write("services: {changed: {}}\n")


# ---------------------------------------------------------------------------------------------- 1. reuse


@pytest.mark.parametrize("base_mode", ["copy", "read_lock"], ids=["base-copy", "base-read-lock"])
def test_unchanged_files_are_linked_from_the_base_and_the_rest_copied(tree, base_mode):
    """A (all of data/) then B (compose file + data/, other root indexes) with base=A after one same-size edit and a
    new file: B links every file A holds with the live bytes (same inode, two links), copies the edited and new
    files (and the -shm a read_lock base does not keep), restores to the tree at B's time, and survives A's prune."""
    data, compose, bk = tree / "data", tree / "docker-compose.yml", tree / "bk"
    a = take(bk, [data], snapshot="A", sqlite_mode=base_mode)
    assert a["linked"] == 0 and a["linked_bytes"] == 0 and a["copied_bytes"] == a["bytes"]
    same_size_edit(str(data / "notes.txt"), 10)
    (data / "sub" / "added.txt").write_text("added after A\n")

    b = take(bk, [compose, data], snapshot="B", sqlite_mode="copy", base="A")
    at_b = contents(str(data), str(compose))
    in_a, in_b = files_of(a["snapshot_path"]), files_of(b["snapshot_path"])
    fresh = {str(data / "notes.txt"), str(data / "sub" / "added.txt"), str(compose)}
    if base_mode == "read_lock":
        fresh |= {str(data / "zoe.db-shm"), str(data / "sub" / "auth.db-shm")}  # never kept by a live snapshot
    assert set(in_b) - fresh == set(in_a) - {str(data / "notes.txt")}
    for path, (entry, stored) in in_b.items():
        if path in fresh:
            assert "linked_from" not in entry, path
            assert os.stat(stored).st_nlink == 1, path
            if path in in_a:
                assert os.stat(stored).st_ino != os.stat(in_a[path][1]).st_ino
        else:
            assert entry["linked_from"] == "A", path
            assert os.stat(stored).st_ino == os.stat(in_a[path][1]).st_ino, path
            assert os.stat(stored).st_nlink == 2, path
            assert entry["sha256"] == in_a[path][0]["sha256"]
    notes = in_b[str(data / "notes.txt")][0]
    assert notes["sha256"] == sha256_of(str(data / "notes.txt")) != in_a[str(data / "notes.txt")][0]["sha256"]
    assert_stored_match(a["snapshot_path"])
    assert_stored_match(b["snapshot_path"])
    linked_sizes = [e["size"] for p, (e, _s) in in_b.items() if p not in fresh]
    assert b["linked"] == len(linked_sizes) > 0 and b["linked_bytes"] == sum(linked_sizes)
    assert b["copied_bytes"] == sum(in_b[p][0]["size"] for p in fresh) == b["bytes"] - b["linked_bytes"]

    damage_tree(str(data), str(compose))
    apply_restore(plan_restore(str(bk), "B"))
    assert contents(str(data), str(compose)) == at_b

    apply_prune(plan_prune(str(bk), snapshot="A"))
    assert sorted(os.listdir(str(bk))) == ["B"]
    for path, (entry, stored) in files_of(b["snapshot_path"]).items():
        assert os.stat(stored).st_nlink == 1, path
    assert_stored_match(b["snapshot_path"])
    verified = plan_verify(str(bk), "B").result
    assert verified["verified"] and [d["integrity"] for d in verified["databases"]] == ["ok", "ok"]
    damage_tree(str(data), str(compose))
    apply_restore(plan_restore(str(bk), "B"))
    assert contents(str(data), str(compose)) == at_b


# ---------------------------------------------------------------------------------------------- 2. torn base


def test_a_base_copy_that_no_longer_matches_the_live_bytes_is_copied(tree):
    """A's stored zoe.db is the database file before a checkpoint; the checkpoint then rewrote the live file in place
    (same size, the -wal untouched). A's manifest hashes A's own bytes, so the digests differ: B copies zoe.db and
    links the unchanged -wal, and B restores to a database holding every row."""
    data, bk = tree / "data", tree / "bk"
    db = str(data / "zoe.db")
    a = take(bk, [data], snapshot="A")
    scratch = tree / "checkpoint"
    scratch.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(db + suffix, str(scratch / "zoe.db") + suffix)
    conn = sqlite3.connect(str(scratch / "zoe.db"), isolation_level=None)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
        shutil.copyfile(str(scratch / "zoe.db"), db)  # the checkpointed file, -wal as it was
    finally:
        conn.close()
    in_a = files_of(a["snapshot_path"])
    assert os.path.getsize(db) == in_a[db][0]["size"] and sha256_of(db) != in_a[db][0]["sha256"]
    at_b = contents(str(data))

    b = take(bk, [data], snapshot="B", base="A")
    in_b = files_of(b["snapshot_path"])
    entry, stored = in_b[db]
    assert "linked_from" not in entry and os.stat(stored).st_ino != os.stat(in_a[db][1]).st_ino
    assert entry["sha256"] == sha256_of(db) == sha256_of(stored)
    assert in_b[db + "-wal"][0]["linked_from"] == "A"
    assert b["linked"] == len(in_b) - 1 and b["copied_bytes"] == entry["size"]
    assert_stored_match(b["snapshot_path"])
    damage_tree(str(data), str(tree / "docker-compose.yml"))
    apply_restore(plan_restore(str(bk), "B"))
    assert contents(str(data)) == at_b
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*), sum(body LIKE 'upd %') FROM items").fetchone() == (2000, 499)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- 3. damaged base


def test_a_base_damaged_behind_its_manifest_is_copied_not_linked(tree):
    """A's stored notes.txt changed after A was taken (its manifest not). The live file is compared with the stored
    bytes themselves, not with the manifest's digest: they differ, so B copies notes.txt, and B restores every byte;
    state=verified of A names the damage."""
    data, compose, bk = tree / "data", tree / "docker-compose.yml", tree / "bk"
    notes = str(data / "notes.txt")
    a = take(bk, [data], snapshot="A")
    stored_a = files_of(a["snapshot_path"])[notes][1]
    same_size_edit(stored_a, 3)

    b = take(bk, [data], snapshot="B", base="A")
    entry, stored_b = files_of(b["snapshot_path"])[notes]
    assert "linked_from" not in entry and os.stat(stored_b).st_ino != os.stat(stored_a).st_ino
    assert entry["sha256"] == sha256_of(notes) == sha256_of(stored_b)
    assert_stored_match(b["snapshot_path"])
    expected = contents(str(data))

    damage_tree(str(data), str(compose))
    apply_restore(plan_restore(str(bk), "B"))
    assert contents(str(data)) == expected
    with pytest.raises(VerifyError, match="notes.txt: stored copy does not match its sha256"):
        plan_verify(str(bk), "A")


# ---------------------------------------------------------------------------------------------- 4. bad bases


@pytest.mark.parametrize("base, snapshot, message", [
    ("nope", None, r"O\(base\) nope is not a complete snapshot under "),
    ("junk", None, r"O\(base\) junk is not a complete snapshot under "),
    ("alias", None, r"O\(base\) alias is not a complete snapshot under "),
    ("../bk/A", None, r"O\(base\) '../bk/A' is not a valid snapshot id"),
    ("A/..", None, r"O\(base\) 'A/..' is not a valid snapshot id"),
    ("", None, r"O\(base\) '' is not a valid snapshot id"),
    ("B", "B", r"O\(base\) B is the snapshot being taken"),
    ("A", "A", r"O\(base\) A is the snapshot being taken"),
    ("edited", None, r"O\(base\) edited has an unusable manifest: .*does not match its checksum"),
], ids=["missing", "not-a-snapshot", "symlink", "dotdot", "trailing-dotdot", "empty", "itself", "itself-existing",
        "edited-manifest"])
def test_an_unusable_base_is_refused_with_nothing_written(tree, base, snapshot, message):
    data, bk = tree / "data", tree / "bk"
    take(bk, [data], snapshot="A")
    os.makedirs(str(bk / "junk" / "files" / "0"))
    os.symlink("A", str(bk / "alias"))
    edited = take(bk, [data], snapshot="edited")["manifest"]
    with open(edited, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(b" ")
    before = contents(str(tree))
    with pytest.raises(UnusableBaseError, match=message):
        plan_snapshot(str(bk), [str(data)], snapshot=snapshot, base=base)
    assert contents(str(tree)) == before
    assert sorted(os.listdir(str(bk))) == ["A", "alias", "edited", "junk"]


# ---------------------------------------------------------------------------------------------- 5. link failure


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EMLINK, errno.EPERM], ids=["EXDEV", "EMLINK", "EPERM"])
def test_a_failing_link_falls_back_to_a_copy(tree, monkeypatch, code):
    data, bk = tree / "data", tree / "bk"
    a = take(bk, [data], snapshot="A")
    calls = []

    def link(src, dst, **kw):
        calls.append(src)
        raise OSError(code, os.strerror(code), src, dst)

    monkeypatch.setattr(volume_snapshot_base.os, "link", link)
    b = take(bk, [data], snapshot="B", base="A")
    monkeypatch.undo()
    in_a, in_b = files_of(a["snapshot_path"]), files_of(b["snapshot_path"])
    assert len(calls) == len(in_b) == len(in_a)  # every file matched the base, and every link failed
    assert b["linked"] == 0 and b["linked_bytes"] == 0 and b["copied_bytes"] == b["bytes"] == a["bytes"]
    for path, (entry, stored) in in_b.items():
        assert "linked_from" not in entry and os.stat(stored).st_nlink == 1
        assert os.stat(stored).st_ino != os.stat(in_a[path][1]).st_ino
        assert entry["sha256"] == in_a[path][0]["sha256"]
    assert_stored_match(b["snapshot_path"])
    assert plan_verify(str(bk), "B").result["verified"]


@pytest.mark.parametrize("damage", ["mode", "size", "symlink"])
def test_a_base_stored_file_unlike_its_manifest_is_copied(tree, damage):
    """A stored file of the base whose mode, size or type is not what a snapshot stores (0600 regular file of the
    manifest's size) is not linked: B copies it and still passes its own verification."""
    data, bk = tree / "data", tree / "bk"
    blob = str(data / "sub" / "blob.bin")
    a = take(bk, [data], snapshot="A")
    stored_a = files_of(a["snapshot_path"])[blob][1]
    if damage == "mode":
        os.chmod(stored_a, 0o644)
    elif damage == "size":
        with open(stored_a, "ab") as handle:
            handle.write(b"tail")
    else:
        os.unlink(stored_a)
        os.symlink(blob, stored_a)  # its target holds exactly the live bytes
    b = take(bk, [data], snapshot="B", base="A")
    entry, stored_b = files_of(b["snapshot_path"])[blob]
    assert "linked_from" not in entry and not os.path.islink(stored_b) and os.stat(stored_b).st_nlink == 1
    assert b["linked"] == len(files_of(b["snapshot_path"])) - 1
    assert_stored_match(b["snapshot_path"])


# ---------------------------------------------------------------------------------------------- 6. a writer


@pytest.mark.parametrize("mode", ["copy", "read_lock"])
def test_a_file_changed_while_compared_for_a_link(tree, monkeypatch, mode):
    """The source is stat'ed again after it was compared with the base's copy, as after a copy: a writer that touched it meanwhile fails
    an O(sqlite_mode=copy) snapshot (nothing left behind) and is flagged in a live one."""
    data, bk = tree / "data", tree / "bk"
    blob = str(data / "sub" / "blob.bin")
    take(bk, [data], snapshot="A")
    real = volume_snapshot_base.same_bytes

    def compare_then_write(path, stored, size):
        same = real(path, stored, size)
        if path == blob:
            os.utime(path, ns=(1, 2))  # a writer's touch after the bytes were read
        return same

    monkeypatch.setattr(volume_snapshot_base, "same_bytes", compare_then_write)
    if mode == "copy":
        with pytest.raises(SourceChangedError, match="blob.bin changed while it was copied"):
            take(bk, [data], snapshot="B", base="A")
        assert sorted(os.listdir(str(bk))) == ["A"]
        return
    b = take(bk, [data], snapshot="B", base="A", sqlite_mode=mode)
    assert b["changed_during_copy"] == [blob]
    entry = files_of(b["snapshot_path"])[blob][0]
    assert entry["changed_during_copy"] and entry["linked_from"] == "A"
    assert_stored_match(b["snapshot_path"])


# ---------------------------------------------------------------------------------------------- 7. check mode


def test_plan_with_a_base_writes_nothing(tree):
    data, bk = tree / "data", tree / "bk"
    take(bk, [data], snapshot="A")
    same_size_edit(str(data / "notes.txt"))
    before = contents(str(tree))
    plan = plan_snapshot(str(bk), [str(data)], snapshot="B", base="A")
    assert plan.changed and plan.result["linked"] is None and plan.result["copied_bytes"] is None
    assert "linked from A" in plan.diff["after"]
    assert contents(str(tree)) == before


# ---------------------------------------------------------------------------------------------- through ansible


def run_module(args, check=False):
    """Run the module through `ansible localhost -m volume_snapshot` on the system python3."""
    cmd = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "volume_snapshot", "-a",
           json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json",
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_base_through_ansible(tree):
    """The module: check mode reports null counts and writes nothing, the run links, an unusable base and a base
    with another state fail with one sentence."""
    data, bk = str(tree / "data"), str(tree / "bk")
    run_module({"paths": [data], "backup_root": bk, "snapshot": "A", "sqlite_mode": "read_lock"})
    args = {"paths": [data], "backup_root": bk, "snapshot": "B", "base": "A"}
    before = contents(str(tree))
    check = run_module(args, check=True)
    assert check["changed"] and check["linked"] is None and check["copied_bytes"] is None
    assert contents(str(tree)) == before
    real = run_module(args)
    assert real["changed"] and real["linked"] == real["files"] - 2  # the two -shm
    assert real["copied_bytes"] == real["bytes"] - real["linked_bytes"] == 2 * 32768
    missing = run_module(dict(args, snapshot="C", base="gone"), check=True)
    assert missing["failed"] and missing["error"] == "UnusableBaseError"
    assert missing["msg"] == "unusable base snapshot: O(base) gone is not a complete snapshot under %s" % bk
    other = run_module({"state": "verified", "backup_root": bk, "snapshot": "B", "base": "A"})
    assert other["failed"] and other["error"] == "UnusableBaseError"
    assert other["msg"] == "unusable base snapshot: O(base) only applies to O(state=present), not O(state=verified)"


@pytest.mark.parametrize("where", ["first", "end-of-first-half", "start-of-second-half", "last"])
def test_a_large_file_is_compared_in_both_halves(tmp_path, where):
    """A file above SPLIT_BYTES is compared in two halves on two threads: one byte changed anywhere, the file is
    copied; unchanged, it is linked."""
    data, bk = tmp_path / "data", tmp_path / "bk"
    data.mkdir()
    size = volume_snapshot_base.SPLIT_BYTES + 3 * volume_snapshot_base.COMPARE_BLOCK + 7
    big = data / "big.bin"
    big.write_bytes(os.urandom(size))
    take(bk, [data], snapshot="A")
    b = take(bk, [data], snapshot="B", base="A")
    assert files_of(b["snapshot_path"])[str(big)][0]["linked_from"] == "A"
    offset = {"first": 0, "end-of-first-half": size // 2 - 1, "start-of-second-half": size // 2, "last": size - 1}[where]
    with open(str(big), "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))
    c = take(bk, [data], snapshot="C", base="A")
    entry, stored = files_of(c["snapshot_path"])[str(big)]
    assert "linked_from" not in entry and entry["sha256"] == sha256_of(str(big))
    assert_stored_match(c["snapshot_path"])
