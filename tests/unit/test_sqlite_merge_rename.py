"""The prepared merge written by one rename of its kept copy (sqlite_merge_prepare.rename_into_place): the same rows
as the online backup writes, the target's journal mode, owner, mode and extended attributes, its -wal folded in
first, and the online backup wherever a rename would not be the same thing (another link, a copy that is not ready)."""

import os
import shutil
import sqlite3
import stat

import pytest

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils import sqlite_merge_prepare as smp
from test_sqlite_merge_fixtures import ZOE_OPTIONS, build_zoe, rows
from test_sqlite_merge_prepare import SOURCES, content


def sources(paths):
    return [paths[n] for n in SOURCES]


def to_wal(path, sql):
    """Switch `path` to WAL and leave one committed row in its -wal (a writer that exits without a checkpoint)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(sql)
    conn.commit()
    copy = path + ".keep"
    shutil.copyfile(path, copy)
    shutil.copyfile(path + "-wal", copy + "-wal")
    conn.close()                   # checkpoints and removes the -wal ...
    os.replace(copy, path)         # ... so put back the bytes as the writer left them: the row only in the -wal
    os.replace(copy + "-wal", path + "-wal")


def prepare_and_write(paths, prepared):
    result, stored, _ = smp.prepare_merge(paths["zoe"], sources(paths), str(prepared), **ZOE_OPTIONS)
    assert stored
    plan, reason = smp.plan_prepared(paths["zoe"], sources(paths), str(prepared), **ZOE_OPTIONS)
    assert plan is not None, reason
    return smp.write_prepared(plan)


@pytest.fixture()
def wal_zoe(tmp_path):
    paths = build_zoe(tmp_path / "data")
    to_wal(paths["zoe"], "INSERT INTO developer_tasks VALUES (3, 'zoe task in the wal', 'open')")
    return paths


def test_a_rename_writes_the_rows_a_backup_writes_and_keeps_the_target_as_it_was(wal_zoe, tmp_path):
    target = wal_zoe["zoe"]
    os.chmod(target, 0o640)
    os.setxattr(target, "user.zoe-label", b"kept")
    inode = os.stat(target).st_ino
    twin = build_zoe(tmp_path / "twin")
    to_wal(twin["zoe"], "INSERT INTO developer_tasks VALUES (3, 'zoe task in the wal', 'open')")
    expected = sm.merge_databases(twin["zoe"], sources(twin), **ZOE_OPTIONS)   # the online backup

    result = prepare_and_write(wal_zoe, tmp_path / "prepared")
    assert result["written_by"] == "rename"
    assert result["totals"] == expected["totals"]
    assert os.stat(target).st_ino != inode
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert os.getxattr(target, "user.zoe-label") == b"kept"
    assert not os.path.exists(target + "-wal") and not os.path.exists(target + "-shm")
    with open(target, "rb") as handle:
        assert handle.read(20)[18] == 2          # still a WAL database for its services
    merged = content(target)
    twin_rows = content(twin["zoe"])
    for rows_of in (merged, twin_rows):          # the ledger's merged_at and digests differ between two hosts
        rows_of.pop("_zoe_merge_ledger", None)
    assert merged == twin_rows
    assert ("zoe task in the wal",) in rows(target, "SELECT title FROM developer_tasks")
    assert rows(target, "PRAGMA integrity_check") == [("ok",)]
    assert not (tmp_path / "prepared").exists()


def test_a_target_with_another_link_is_written_through_sqlite(wal_zoe, tmp_path):
    target = wal_zoe["zoe"]
    os.link(target, str(tmp_path / "second-name.db"))
    inode = os.stat(target).st_ino
    result = prepare_and_write(wal_zoe, tmp_path / "prepared")
    assert result["written_by"] == "backup"
    assert os.stat(target).st_ino == inode
    assert os.stat(str(tmp_path / "second-name.db")).st_ino == inode   # the other name sees the merge too
    assert ("zoe task in the wal",) in rows(target, "SELECT title FROM developer_tasks")


def planned(paths, prepared):
    smp.prepare_merge(paths["zoe"], sources(paths), str(prepared), **ZOE_OPTIONS)
    plan, reason = smp.plan_prepared(paths["zoe"], sources(paths), str(prepared), **ZOE_OPTIONS)
    assert plan is not None, reason
    return plan


def killed(*_args, **_kwargs):
    raise KeyboardInterrupt("killed")


def test_killed_before_the_rename_the_target_holds_all_its_rows(wal_zoe, tmp_path, monkeypatch):
    """The target's -wal is folded into it before the rename: killed there, the target alone holds every row."""
    target = wal_zoe["zoe"]
    before = content(target)
    plan = planned(wal_zoe, tmp_path / "prepared")
    monkeypatch.setattr(smp.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        smp.write_prepared(plan)
    monkeypatch.undo()
    assert not os.path.exists(target + "-wal") or os.path.getsize(target + "-wal") == 0
    assert content(target) == before and rows(target, "PRAGMA integrity_check") == [("ok",)]


def test_killed_right_after_the_rename_the_old_wal_replays_nothing(wal_zoe, tmp_path, monkeypatch):
    """Killed right after the rename (before the directory's fsync and the clean-up of the old sidecars): no -wal
    with frames is left beside the new file, so opening it replays nothing old into it (one would be)."""
    target = wal_zoe["zoe"]
    twin = build_zoe(tmp_path / "twin")
    to_wal(twin["zoe"], "INSERT INTO developer_tasks VALUES (3, 'zoe task in the wal', 'open')")
    sm.merge_databases(twin["zoe"], sources(twin), **ZOE_OPTIONS)
    plan = planned(wal_zoe, tmp_path / "prepared")
    real_fsync = smp._fsync

    def fsync(path, *args):
        if path == os.path.dirname(target):
            killed()
        return real_fsync(path, *args)
    monkeypatch.setattr(smp, "_fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        smp.write_prepared(plan)
    monkeypatch.undo()
    assert not os.path.exists(target + "-wal") or os.path.getsize(target + "-wal") == 0
    merged, expected = content(target), content(twin["zoe"])
    for found in (merged, expected):
        found.pop("_zoe_merge_ledger", None)
    assert merged == expected
    assert rows(target, "PRAGMA integrity_check") == [("ok",)]


def test_the_kept_copy_is_one_file_in_the_targets_journal_mode(wal_zoe, tmp_path):
    prepared = tmp_path / "prepared"
    smp.prepare_merge(wal_zoe["zoe"], sources(wal_zoe), str(prepared), **ZOE_OPTIONS)
    copy = str(prepared / smp.COPY_NAME)
    assert sorted(os.listdir(str(prepared))) == [smp.BASIS_NAME, smp.COPY_NAME]
    with open(copy, "rb") as handle:
        assert handle.read(20)[18] == 2
    assert smp.check_prepared_copy(str(prepared)) is None


def test_a_rollback_journal_target_stays_one(tmp_path):
    paths = build_zoe(tmp_path / "data")
    result = prepare_and_write(paths, tmp_path / "prepared")
    assert result["written_by"] == "rename"
    with open(paths["zoe"], "rb") as handle:
        assert handle.read(20)[18] == 1
    assert rows(paths["zoe"], "PRAGMA journal_mode") == [("delete",)]
