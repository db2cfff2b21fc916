"""The downtime window's steps on real files (no services: the stop and the start are the compose_services tests'
and the play's): the rollback point reuses the live snapshot, the prepared merge is written on the rollback point's
digests, the merged databases are retired, the staged files installed; failures before the rollback point change
nothing, failures after it name the step and hand over the rollback point, which restores the tree byte for byte."""

import hashlib
import json
import os
import sqlite3
import stat

import pytest

from ansible.module_utils import downtime_window as dw
from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils import sqlite_merge_prepare as smp
from ansible.module_utils import volume_snapshot as vs
from ansible.module_utils.compose_env import staged_path
from ansible.module_utils.zoe_sqlite import integrity_errors
from test_sqlite_merge_fixtures import ZOE_OPTIONS, build_zoe, rows

SOURCES = ("auth", "sessions", "developer_tasks", "learning", "self_awareness")
COMPOSE = b"""services:
  zoe-auth:
    image: zoe
    environment:
      - DATABASE_PATH=/app/data/auth.db   # the auth service's own database
"""
EDITED = COMPOSE.replace(b"/app/data/auth.db", b"/app/data/zoe.db")


def tree(root):
    """{relative path: (mode, sha256)} of every file under root: what a byte-for-byte restore must give back."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = (stat.S_IMODE(os.lstat(path).st_mode),
                                                    hashlib.sha256(handle.read()).hexdigest())
    return out


class Host:
    """A checkout with a Zoe-shaped data dir (WAL rows, drifted tables), a compose file and a backup root."""

    def __init__(self, base):
        self.root = str(base / "zoe")
        self.data = os.path.join(self.root, "data")
        self.paths = build_zoe(base / "zoe" / "data")
        self.compose = os.path.join(self.root, "docker-compose.yml")
        with open(self.compose, "wb") as handle:
            handle.write(COMPOSE)
        self.backups = str(base / "zoe-backups")
        self.prepared = os.path.join(self.backups, "prepared-merge")
        self.target = self.paths["zoe"]
        self.sources = [self.paths[name] for name in SOURCES]

    def live_snapshot(self):
        plan = vs.plan_snapshot(self.backups, paths=[self.data], sqlite_mode="read_lock", label="live")
        return vs.apply_snapshot(plan)["snapshot_id"]

    def prepare(self):
        # Every option as the sqlite_merge module passes it (its defaults spelled out); the window names fewer.
        options = dict(ZOE_OPTIONS, on_conflict="keep_target", newest_column=None, clash_policy="prefix",
                       secret_columns=None, ledger_table=sm.DEFAULT_LEDGER_TABLE, conflicts_table=sm.DEFAULT_CONFLICTS_TABLE,
                       lock_timeout=5.0, workdir=None)
        result, changed, _diff = smp.prepare_merge(self.target, self.sources, self.prepared, **options)
        assert changed
        return result

    def stage(self):
        staged = staged_path(self.compose)
        with open(staged, "wb") as handle:
            handle.write(EDITED)
        return [{"path": self.compose, "kind": "compose", "sha256": hashlib.sha256(COMPOSE).hexdigest(),
                 "staged_sha256": hashlib.sha256(EDITED).hexdigest()}]

    def spec(self, base=None, install=(), names=None, **extra):
        merge = dict(ZOE_OPTIONS, target=self.target, sources=self.sources, prepared_dir=self.prepared)
        return dw.WindowSpec(
            rollback_point={"backup_root": self.backups, "snapshot": vs.new_snapshot_id(), "base": base,
                            "paths": [self.data, self.compose], "label": "rollback point"},
            merge=merge,
            retire={"data_dir": self.data, "names": names or [s + ".db" for s in SOURCES],
                    "dest": os.path.join(self.backups, "retired", "run")},
            install=list(install), journal=os.path.join(self.backups, "runs", "window.json"), **extra)


@pytest.fixture()
def host(tmp_path):
    return Host(tmp_path)


def restore(host, snapshot_id):
    plan = vs.plan_restore(host.backups, snapshot_id)
    vs.apply_restore(plan)


def test_the_window_links_the_base_writes_the_prepared_merge_retires_and_installs(host):
    before = tree(host.root)
    base = host.live_snapshot()
    host.prepare()
    install = host.stage()
    result = dw.run_window(host.spec(base=base, install=install))

    assert [s["step"] for s in result["steps"]] == list(dw.STEPS)
    assert result["merge"]["prepared"] == "used", result["merge"]
    files = result["rollback_point_files"]
    assert files["linked"] >= len(SOURCES) + 1 and files["copied_bytes"] < files["bytes"], files
    assert sorted(os.listdir(host.data)) == ["zoe.db"] + (["zoe.db-wal"] if os.path.exists(host.target + "-wal") else [])
    dest = os.path.join(host.backups, "retired", "run")
    for name in SOURCES:
        assert stat.S_IMODE(os.stat(os.path.join(dest, name + ".db")).st_mode) == 0o600
    assert sorted(result["retired"]) == sorted(os.path.join(dest, n) for n in os.listdir(dest))
    with open(host.compose, "rb") as handle:
        assert handle.read() == EDITED
    assert not os.path.exists(staged_path(host.compose))
    assert result["installed"] == [host.compose]
    assert result["downtime_started"] is None and result["stopped"] == []
    with open(os.path.join(host.backups, "runs", "window.json")) as handle:
        journal = json.load(handle)
    assert journal["done"] == list(dw.STEPS) and journal["step"] is None
    assert journal["rollback_point"] == result["rollback_point"]
    assert rows(host.target, "SELECT count(*) FROM users")[0][0] > 0
    diff = dw.window_diff(result)
    assert "in the data directory: auth.db\n" in diff["before"]
    assert "installed: %s\n" % host.compose in diff["after"] and result["rollback_point"] in diff["after"]

    restore(host, result["rollback_point"])
    assert tree(host.root) == before


def test_the_rollback_point_without_a_base_copies_every_file(host):
    result = dw.run_window(host.spec())
    assert result["rollback_point_files"]["linked"] in (0, None)
    assert result["merge"]["prepared"] == "stale"      # nothing was prepared: merged from scratch


def test_a_compose_file_changed_after_staging_stops_the_window_before_anything(host):
    base = host.live_snapshot()
    host.prepare()
    install = host.stage()
    with open(host.compose, "ab") as handle:
        handle.write(b"# an operator's edit during the run\n")
    before, backups = tree(host.root), sorted(os.listdir(host.backups))
    with pytest.raises(dw.StagedFileError, match="changed since its edit was staged"):
        dw.run_window(host.spec(base=base, install=install))
    assert tree(host.root) == before
    assert sorted(os.listdir(host.backups)) == backups     # no rollback point, no journal


def test_a_source_written_after_the_preparation_is_merged_from_scratch(host, tmp_path):
    base = host.live_snapshot()
    host.prepare()
    conn = sqlite3.connect(host.paths["auth"])
    conn.execute("INSERT INTO users (username, email, password_hash, role, created_at, updated_at) "
                 "VALUES ('late', 'late@zoe.local', 'x', 'user', '2024-02-01', '2024-02-01')")
    conn.commit()
    conn.close()
    result = dw.run_window(host.spec(base=base))
    assert result["merge"]["prepared"] == "stale"
    assert "auth.db" in result["merge"]["prepared_reason"]
    assert rows(host.target, "SELECT count(*) FROM users WHERE username = 'late'")[0][0] == 1


def test_a_damaged_prepared_copy_is_not_written(host):
    base = host.live_snapshot()
    host.prepare()
    copy = os.path.join(host.prepared, smp.COPY_NAME)
    with open(copy, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = dw.run_window(host.spec(base=base))
    assert result["merge"]["prepared"] == "stale"
    assert "copy" in result["merge"]["prepared_reason"]
    assert not os.path.exists(host.prepared)
    conn = sqlite3.connect(host.target)
    try:
        assert integrity_errors(conn) == []
    finally:
        conn.close()


def test_a_failure_after_the_rollback_point_names_the_step_and_hands_it_over(host):
    before = tree(host.root)
    base = host.live_snapshot()
    host.prepare()
    dest = os.path.join(host.backups, "retired", "run")
    os.makedirs(dest)
    with open(os.path.join(dest, "learning.db"), "wb") as handle:    # a retired file is never overwritten
        handle.write(b"earlier")
    with pytest.raises(dw.StepError) as failed:
        dw.run_window(host.spec(base=base))
    assert failed.value.step == "retire" and failed.value.changed
    point = failed.value.result["rollback_point"]
    assert point and os.path.isfile(os.path.join(host.backups, point, "manifest.json"))
    assert failed.value.result["merge"]["prepared"] == "used"
    restore(host, point)
    assert tree(host.root) == before


def test_a_failure_of_the_rollback_point_changes_nothing(host):
    before = tree(host.root)
    spec = host.spec()
    spec.rollback_point["backup_root"] = os.path.join(host.data, "backups")   # inside a snapshotted path
    with pytest.raises(dw.StepError) as failed:
        dw.run_window(spec)
    assert failed.value.step == "rollback_point" and not failed.value.changed
    assert "Nothing was changed" in str(failed.value)
    assert tree(host.root) == before


def test_the_plan_writes_nothing(host):
    base = host.live_snapshot()
    host.prepare()
    install = host.stage()
    before, backups = tree(host.root), tree(host.backups)
    changed, plan, diff = dw.plan_window(host.spec(base=base, install=install))
    assert changed and plan["merge"]["prepared"] == "ready"
    assert sorted(plan["retire"]) == sorted(host.sources)
    assert "installed: %s" % host.compose in diff["after"]
    assert tree(host.root) == before and tree(host.backups) == backups


def test_known_digests_name_an_absent_wal(tmp_path):
    data = str(tmp_path)
    manifest = {"entries": [
        {"type": "dir", "path": data},
        {"type": "file", "path": os.path.join(data, "a.db"), "sha256": "1"},
        {"type": "file", "path": os.path.join(data, "a.db-wal"), "sha256": "2"},
        {"type": "file", "path": os.path.join(data, "b.db"), "sha256": "3"},
        {"type": "file", "path": os.path.join(data, "sub", "c.db"), "sha256": "4"},
    ]}
    assert dw.known_digests(manifest, data) == {
        os.path.join(data, "a.db"): "1", os.path.join(data, "a.db-wal"): "2",
        os.path.join(data, "b.db"): "3", os.path.join(data, "b.db-wal"): None}


def test_retire_refuses_what_is_not_a_regular_file_in_the_data_dir(host):
    os.symlink(host.target, os.path.join(host.data, "link.db"))
    with pytest.raises(dw.RetireError, match="not a regular file"):
        dw.retire_paths({"data_dir": host.data, "names": ["link.db"], "dest": "/nowhere"})
    with pytest.raises(dw.RetireError, match="not a file name"):
        dw.retire_paths({"data_dir": host.data, "names": ["../zoe.db"], "dest": "/nowhere"})


def test_retire_moves_the_sidecars_before_the_database_and_an_orphan_sidecar_too(tmp_path):
    """Sidecars first: a retire interrupted between them leaves a database without its -wal (merged again by the
    rerun, identical rows), never a -wal without its database; a -wal an interrupted retire left is still moved."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("learning.db", "learning.db-wal", "learning.db-shm", "auth.db", "orphan.db-wal"):
        (data / name).write_bytes(b"x")
    retire = {"data_dir": str(data), "names": ["learning.db", "auth.db", "orphan.db", "gone.db"],
              "dest": str(tmp_path / "retired")}
    assert [os.path.basename(p) for p in dw.retire_paths(retire)] == [
        "learning.db-wal", "learning.db-shm", "learning.db", "auth.db", "orphan.db-wal"]
