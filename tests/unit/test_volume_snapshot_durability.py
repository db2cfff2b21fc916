"""volume_snapshot on real files: every stored file is fsynced, and before its manifest is written.

os.fsync is wrapped (the real fsync still runs) to record which inode each call flushed and when it
returned; the snapshot itself runs on real files and the real disk.
"""

import os
import sqlite3
import stat
import threading

import pytest

from ansible.module_utils.volume_snapshot import apply_snapshot, plan_snapshot


@pytest.fixture
def fsync_log(monkeypatch):
    """[(inode, file type bits)] in the order the fsync calls returned, from every thread."""
    real, log, lock = os.fsync, [], threading.Lock()

    def fsync(fd):
        st = os.fstat(fd)
        real(fd)
        with lock:
            log.append((st.st_ino, stat.S_IFMT(st.st_mode)))

    monkeypatch.setattr(os, "fsync", fsync)
    return log


def data_dir(root):
    os.makedirs(os.path.join(root, "sub"))
    for i, size in enumerate((3 << 20, 1 << 20, 5000, 0)):
        with open(os.path.join(root, "sub" if i % 2 else "", "f%d.bin" % i), "wb") as handle:
            handle.write(os.urandom(size))
    conn = sqlite3.connect(os.path.join(root, "zoe.db"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (randomblob(100000))")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("mode", ["copy", "read_lock", "backup_api"])
def test_every_stored_file_is_fsynced_before_the_manifest(tmp_path, fsync_log, mode):
    root, bk = str(tmp_path / "data"), str(tmp_path / "bk")
    data_dir(root)
    result = apply_snapshot(plan_snapshot(bk, [root], snapshot="s1", sqlite_mode=mode))
    snap = os.path.join(bk, "s1")
    stored = {}
    for dirpath, _dirs, names in os.walk(os.path.join(snap, "files")):
        for name in names:
            stored[os.lstat(os.path.join(dirpath, name)).st_ino] = os.path.join(dirpath, name)
    assert len(stored) == result["files"] >= 5
    order = {ino: i for i, (ino, kind) in reversed(list(enumerate(fsync_log))) if kind == stat.S_IFREG}
    missing = sorted(path for ino, path in stored.items() if ino not in order)
    assert not missing, "stored files never fsynced: %s" % missing
    manifest = os.lstat(os.path.join(snap, "manifest.json")).st_ino
    assert manifest in order
    late = sorted(path for ino, path in stored.items() if order[ino] > order[manifest])
    assert not late, "fsynced after the manifest was written: %s" % late
    # Every directory of the snapshot is fsynced too (its entries survive a power cut).
    dirs = {os.lstat(dirpath).st_ino for dirpath, _d, _n in os.walk(snap)} | {os.lstat(bk).st_ino}
    assert dirs <= {ino for ino, kind in fsync_log if kind == stat.S_IFDIR}


def test_fsync_false_skips_the_data_fsyncs(tmp_path, fsync_log):
    """The wrapper sees what the engine does: with fsync=False no stored file is flushed."""
    root, bk = str(tmp_path / "data"), str(tmp_path / "bk")
    data_dir(root)
    apply_snapshot(plan_snapshot(bk, [root], snapshot="s1"), fsync=False)
    stored = {os.lstat(os.path.join(d, n)).st_ino for d, _s, ns in os.walk(os.path.join(bk, "s1", "files"))
              for n in ns}
    assert stored and not stored & {ino for ino, _kind in fsync_log}
