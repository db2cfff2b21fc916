"""A merge prepared before the downtime window: written only when nothing moved, a fresh merge otherwise."""

import json
import os
import sqlite3
import stat
import subprocess

import pytest

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils import sqlite_merge_prepare as smp
from test_sqlite_merge_fixtures import ZOE_OPTIONS, build_zoe, make_db, rows, snapshot, user

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ("auth", "sessions", "developer_tasks", "learning", "self_awareness")


@pytest.fixture()
def zoe(tmp_path):
    return build_zoe(tmp_path / "data")


def sources(paths):
    return [paths[n] for n in SOURCES]


def content(path):
    """Every table's rows, sorted, without the merge time and with the data directory as <root> (paths differ)."""
    root = os.path.dirname(path)
    conn = sqlite3.connect(path)
    try:
        out = {}
        for name in sm.table_names(conn):
            cols = [r[1] for r in conn.execute("PRAGMA table_info(%s)" % sm.q(name)) if r[1] != "merged_at"]
            found = conn.execute("SELECT %s FROM %s" % (", ".join(map(sm.q, cols)), sm.q(name)))
            out[name] = sorted((tuple(v.replace(root, "<root>") if isinstance(v, str) else v for v in row)
                                for row in found), key=repr)
        return out
    finally:
        conn.close()


def prepare(zoe, prepared, **extra):
    return smp.prepare_merge(zoe["zoe"], sources(zoe), str(prepared), **dict(ZOE_OPTIONS, **extra))


def apply(zoe, prepared, **extra):
    return smp.apply_prepared(zoe["zoe"], sources(zoe), str(prepared), **dict(ZOE_OPTIONS, **extra))


def test_prepared_merge_writes_what_a_fresh_merge_writes(zoe, tmp_path):
    twin = build_zoe(tmp_path / "twin")
    fresh = sm.merge_databases(twin["zoe"], sources(twin), **ZOE_OPTIONS)
    prepared = tmp_path / "prepared"
    planned, stored, _ = prepare(zoe, prepared)
    assert stored
    result, diff = apply(zoe, prepared)
    assert result is not None, diff
    assert result["totals"] == fresh["totals"] == planned["totals"]
    assert content(zoe["zoe"]) == content(twin["zoe"])
    assert [r[0] for r in rows(zoe["zoe"], "SELECT username FROM users ORDER BY id")] == [
        "testuser", "admin", "user", "system"]
    assert rows(zoe["zoe"], "PRAGMA integrity_check") == [("ok",)]
    assert not prepared.exists()
    # the ledger holds the sources: the next run is a no-op
    with sm.plan_merge(zoe["zoe"], sources(zoe), **ZOE_OPTIONS) as plan:
        assert not plan.changed


def test_prepare_writes_nothing_but_its_directory(zoe, tmp_path):
    every = [zoe["zoe"]] + sources(zoe)
    before = snapshot(every)
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    assert snapshot(every) == before
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o700
    names = sorted(os.listdir(prepared))
    assert names == [smp.BASIS_NAME, smp.COPY_NAME]
    for name in names:
        assert stat.S_IMODE((prepared / name).stat().st_mode) == 0o600
    basis = (prepared / smp.BASIS_NAME).read_text()
    assert "pbkdf2" not in basis and "tok-" not in basis


def test_a_source_written_after_the_preparation_makes_it_stale(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    conn = sqlite3.connect(zoe["auth"])
    conn.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)", user(9, "late", extra=(None,)))
    conn.commit()
    conn.close()
    result, reason = apply(zoe, prepared)
    assert result is None and "auth.db changed" in reason
    assert not prepared.exists()
    # the caller's fresh merge then takes the late row too
    fresh = sm.merge_databases(zoe["zoe"], sources(zoe), **ZOE_OPTIONS)
    assert fresh["totals"]["source_rows"] == 14
    assert ("late",) in rows(zoe["zoe"], "SELECT username FROM users")


def test_a_target_written_after_the_preparation_makes_it_stale(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    conn = sqlite3.connect(zoe["zoe"])
    conn.execute("UPDATE developer_tasks SET status = 'done' WHERE id = 1")
    conn.commit()
    conn.close()
    before = snapshot([zoe["zoe"]])
    result, reason = apply(zoe, prepared)
    assert result is None and "the target changed" in reason
    assert snapshot([zoe["zoe"]]) == before


def test_a_damaged_copy_is_never_written(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    with open(prepared / smp.COPY_NAME, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00garbage")
    before = snapshot([zoe["zoe"]])
    result, reason = apply(zoe, prepared)
    assert result is None and "prepared copy changed" in reason
    assert snapshot([zoe["zoe"]]) == before


@pytest.mark.parametrize("change, expected", [
    ({"on_conflict": "keep_source"}, "options differ"),
    ({"table_map": {}}, "options differ"),
], ids=["on_conflict", "table_map"])
def test_other_options_make_it_stale(zoe, tmp_path, change, expected):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    result, reason = apply(zoe, prepared, **change)
    assert result is None and expected in reason


def test_other_sources_make_it_stale(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    result, reason = smp.apply_prepared(zoe["zoe"], sources(zoe)[:-1], str(prepared), **ZOE_OPTIONS)
    assert result is None and "sources or options differ" in reason


def test_a_missing_or_unreadable_preparation_is_stale(zoe, tmp_path):
    result, reason = apply(zoe, tmp_path / "nothing-here")
    assert result is None and reason == "no prepared merge"
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    (prepared / smp.BASIS_NAME).write_text("{not json")
    result, reason = apply(zoe, prepared)
    assert result is None and reason == "no readable basis"


def test_nothing_to_merge_stores_nothing(zoe, tmp_path):
    sm.merge_databases(zoe["zoe"], sources(zoe), **ZOE_OPTIONS)
    prepared = tmp_path / "prepared"
    _, stored, _ = prepare(zoe, prepared)
    assert not stored and not prepared.exists()


def test_retired_sources_stay_retired(zoe, tmp_path):
    sm.merge_databases(zoe["zoe"], [zoe["learning"]], **ZOE_OPTIONS)
    os.rename(zoe["learning"], str(tmp_path / "learning.retired"))
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    basis = json.loads((prepared / smp.BASIS_NAME).read_text())
    assert [s["status"] for s in basis["sources"] if s["path"] == zoe["learning"]] == ["retired"]
    os.rename(str(tmp_path / "learning.retired"), zoe["learning"])
    result, reason = apply(zoe, prepared)
    assert result is None and "was retired at preparation and exists now" in reason


def test_wal_sources_are_compared_with_their_wal(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    target = make_db(data / "zoe.db", ["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"], {"notes": [("a", "1")]})
    source = str(data / "learning.db")
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    writer.execute("INSERT INTO notes VALUES ('b', '2')")
    writer.commit()
    prepared = tmp_path / "prepared"
    smp.prepare_merge(target, [source], str(prepared))
    writer.execute("INSERT INTO notes VALUES ('c', '3')")  # lives only in the -wal
    writer.commit()
    result, reason = smp.apply_prepared(target, [source], str(prepared))
    assert result is None and "learning.db changed" in reason
    writer.close()


@pytest.mark.parametrize("where", ["symlink", "file", "data_dir"])
def test_bad_prepared_dirs_are_refused(zoe, tmp_path, where):
    if where == "symlink":
        real = tmp_path / "real"
        real.mkdir()
        bad = tmp_path / "link"
        bad.symlink_to(real)
    elif where == "file":
        bad = tmp_path / "afile"
        bad.write_text("x")
    else:
        bad = tmp_path / "data" / "prepared"
    with pytest.raises(smp.PreparedDirError):
        prepare(zoe, bad)
    assert not (tmp_path / "data" / "prepared").exists()


def _ansible(args, check=False):
    cmd = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "sqlite_merge", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3", "-o"]
    if check:
        cmd += ["--check"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_module_prepare_then_use_on_a_bare_python(zoe, tmp_path):
    prepared = str(tmp_path / "prepared")
    args = dict(ZOE_OPTIONS, target=zoe["zoe"], sources=sources(zoe), prepared_dir=prepared)
    rc, out = _ansible(dict(args, prepare=True), check=True)
    assert rc == 0 and not os.path.exists(prepared), out
    rc, out = _ansible(dict(args, prepare=True))
    assert rc == 0 and '"prepared": "stored"' in out and os.path.isdir(prepared), out
    before = snapshot([zoe["zoe"]] + [os.path.join(prepared, name) for name in sorted(os.listdir(prepared))])
    rc, out = _ansible(args, check=True)     # check mode plans from scratch and leaves the preparation alone
    assert rc == 0 and "CHANGED" in out and '"prepared": "none"' in out, out
    assert snapshot([zoe["zoe"]] + [os.path.join(prepared, name) for name in sorted(os.listdir(prepared))]) == before
    rc, out = _ansible(args)
    assert rc == 0 and "CHANGED" in out and '"prepared": "used"' in out and "pbkdf2" not in out, out
    rc, out = _ansible(args)
    assert rc == 0 and "SUCCESS" in out and '"prepared": "stale"' in out, out
