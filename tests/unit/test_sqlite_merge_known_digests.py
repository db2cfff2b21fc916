"""A prepared merge checked against digests the caller already holds (the rollback point's per-file sha256), and its
kept copy checked before the stop: every byte hashed once in the window, never a stale merge written."""

import builtins
import collections
import hashlib
import json
import os
import sqlite3

import pytest

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils import sqlite_merge_files as smf
from ansible.module_utils import sqlite_merge_prepare as smp
from test_sqlite_merge_fixtures import T0, ZOE_OPTIONS, build_zoe, rows, snapshot, user
from test_sqlite_merge_prepare import SOURCES, content

REAL_OPEN = builtins.open
HEADER = 16 + 20  # bytes the target's checks read (is_sqlite_file; the journal-mode byte before a rename); a hash reads all


def sha(path):
    with REAL_OPEN(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def rollback_digests(data_dir, databases):
    """What the rollback point knows: the sha256 of every file of the data directory, and no -wal where none is."""
    known = {}
    for name in sorted(os.listdir(data_dir)):
        known[os.path.join(data_dir, name)] = sha(os.path.join(data_dir, name))
    for path in databases:
        if not os.path.exists(path + "-wal"):
            known[path + "-wal"] = None
    return known


class OpenSpy:
    """builtins.open, recording the bytes read from every file under `roots` (real paths)."""

    def __init__(self, *roots):
        self.roots = [os.path.realpath(str(root)) for root in roots]
        self.read = collections.Counter()

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = REAL_OPEN(file, mode, *args, **kwargs)
        if not isinstance(file, (str, bytes, os.PathLike)):
            return handle
        path = os.path.realpath(os.fsdecode(file))
        if not any(path == root or path.startswith(root + os.sep) for root in self.roots):
            return handle
        self.read[path] += 0  # an open that reads nothing is recorded too
        return _Counted(handle, path, self.read)

    def bytes_read(self, path):
        return self.read.get(os.path.realpath(path), 0)


class _Counted:
    def __init__(self, handle, path, counter):
        self._handle, self._path, self._counter = handle, path, counter

    def read(self, *args):
        data = self._handle.read(*args)
        self._counter[self._path] += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture()
def spy(monkeypatch):
    def install(*roots):
        recorder = OpenSpy(*roots)
        monkeypatch.setattr(builtins, "open", recorder)
        return recorder
    return install


def leave_wal(path, sql, params=()):
    """Switch `path` to WAL and commit `sql` into its -wal; the returned connection keeps the -wal there (a writer
    that is not checkpointed)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(sql, params)
    conn.commit()
    return conn


def zoe_with_wal(root):
    """The Zoe data directory with the target and two sources holding rows only in their -wal."""
    paths = build_zoe(root)
    writers = [
        leave_wal(paths["zoe"], "INSERT INTO developer_tasks VALUES (3, 'zoe task in the wal', 'open')"),
        leave_wal(paths["auth"], "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)", user(9, "walrow", extra=(None,))),
        leave_wal(paths["learning"], "INSERT INTO events VALUES (2, 'wal', '{}', ?)", (T0,)),
    ]
    return paths, writers


@pytest.fixture()
def zoe(tmp_path):
    paths, writers = zoe_with_wal(tmp_path / "data")
    yield paths
    for conn in writers:
        conn.close()


def same_rows(path, other):
    """content() of both, but for the ledger's digests: a -wal's header has a random salt, so two data directories
    built alike hold the same rows in different bytes."""
    found = []
    for db in (path, other):
        tables = content(db)
        tables["_zoe_merge_ledger"] = sorted((row[:2] + row[3:] for row in tables["_zoe_merge_ledger"]), key=repr)
        found.append(tables)
    return found[0] == found[1]


def sources(paths):
    return [paths[n] for n in SOURCES]


def databases(paths):
    return [paths["zoe"]] + sources(paths)


def prepare(paths, prepared):
    result, stored, _ = smp.prepare_merge(paths["zoe"], sources(paths), str(prepared), **ZOE_OPTIONS)
    assert stored
    return result


def exact(paths, prepared, known=None, copy_checked=False):
    return smp.exact_basis(str(prepared), os.path.realpath(paths["zoe"]), sources(paths), dict(ZOE_OPTIONS),
                           known=known, copy_checked=copy_checked)


def call(paths, prepared, **extra):
    """plan_call as the sqlite_merge module makes it, and the result it returns."""
    plan, apply, _, _ = smp.plan_call(paths["zoe"], sources(paths), False, str(prepared),
                                      dict(ZOE_OPTIONS, lock_timeout=5.0), **extra)
    with plan:
        return apply()


def append_to_wal(path, sql, params=()):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(sql, params)
    conn.commit()
    return conn


# ------------------------------------------------------------------------------------------------ file_digests

@pytest.mark.parametrize("wal", ["frames", "empty", "none"])
def test_file_digests_keep_the_ledger_digest_and_add_each_file(tmp_path, wal):
    path = str(tmp_path / "a.db")
    conn = leave_wal(path, "CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    if wal == "empty":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    elif wal == "none":
        conn.close()
    sizes = {"frames": True, "empty": False, "none": None}
    assert (os.path.getsize(path + "-wal") > 0 if os.path.exists(path + "-wal") else None) == sizes[wal]
    combined, files = smf.file_digests(path)
    assert combined == smf.file_digest([path, path + "-wal"])
    assert files == {"": sha(path), "-wal": sha(path + "-wal") if wal != "none" else None}
    if wal != "none":
        conn.close()


def test_the_plan_carries_per_file_digests_and_the_ledger_keeps_the_combined_one(zoe):
    with sm.plan_merge(zoe["zoe"], sources(zoe), digest_target=True, **ZOE_OPTIONS) as plan:
        assert plan.target_files == {"": sha(zoe["zoe"]), "-wal": sha(zoe["zoe"] + "-wal")}
        assert plan.target_digest == smf.file_digest([zoe["zoe"], zoe["zoe"] + "-wal"])
        for src in plan.sources:
            path = src["path"]
            wal = sha(path + "-wal") if os.path.exists(path + "-wal") else None
            assert src["files"] == {"": sha(path), "-wal": wal}, path
            assert src["digest"] == smf.file_digest([path, path + "-wal"]), path
        assert all("files" not in src for src in plan.result()["sources"])  # the module's result keeps its shape
        sm.apply_merge(plan)
    ledger = dict(rows(zoe["zoe"], "SELECT source, digest FROM _zoe_merge_ledger"))
    assert ledger == {path: smf.file_digest([path, path + "-wal"]) for path in sources(zoe)}


def test_the_basis_keeps_the_per_file_digests(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    basis = json.loads((prepared / smp.BASIS_NAME).read_text())
    assert basis["version"] == 2
    assert basis["target_files"] == {"": sha(zoe["zoe"]), "-wal": sha(zoe["zoe"] + "-wal")}
    files = {src["path"]: src["files"] for src in basis["sources"]}
    assert files[zoe["auth"]] == {"": sha(zoe["auth"]), "-wal": sha(zoe["auth"] + "-wal")}
    assert files[zoe["sessions"]] == {"": sha(zoe["sessions"]), "-wal": None}


# ------------------------------------------------------------------------------------------------ known digests

def test_known_digests_use_the_prepared_merge_without_reading_a_live_file(zoe, tmp_path, spy):
    twin, writers = zoe_with_wal(tmp_path / "twin")
    fresh = sm.merge_databases(twin["zoe"], sources(twin), **ZOE_OPTIONS)
    for conn in writers:
        conn.close()
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    recorder = spy(os.path.dirname(zoe["zoe"]))
    basis, reason = exact(zoe, prepared, known=known)
    assert basis is not None, reason
    assert not recorder.read  # exact_basis itself opens no file of the data directory
    result = call(zoe, prepared, known=known)
    assert result["prepared"] == "used"
    for path in sources(zoe):
        assert recorder.bytes_read(path) == recorder.bytes_read(path + "-wal") == 0, path
    assert recorder.bytes_read(zoe["zoe"]) <= HEADER and recorder.bytes_read(zoe["zoe"] + "-wal") == 0
    assert result["totals"] == fresh["totals"]
    assert same_rows(zoe["zoe"], twin["zoe"])


@pytest.mark.parametrize("keys", ["as_given", "real"])
def test_known_digests_match_through_a_symlinked_data_dir(tmp_path, spy, keys):
    _, writers = zoe_with_wal(tmp_path / "real-data")
    (tmp_path / "data").symlink_to(tmp_path / "real-data")
    try:
        zoe = {name: str(tmp_path / "data" / (name + ".db")) for name in ("zoe",) + SOURCES}
        prepared = tmp_path / "prepared"
        prepare(zoe, prepared)
        data_dir = str(tmp_path / ("data" if keys == "as_given" else "real-data"))
        known = rollback_digests(data_dir, [os.path.join(data_dir, os.path.basename(p)) for p in databases(zoe)])
        recorder = spy(tmp_path / "real-data")
        basis, reason = exact(zoe, prepared, known=known)
        assert basis is not None, reason
        assert not recorder.read
    finally:
        for conn in writers:
            conn.close()


def test_a_wal_appended_after_the_preparation_is_stale_and_named(zoe, tmp_path, spy):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    before = sha(zoe["auth"])
    late = append_to_wal(zoe["auth"], "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         user(10, "late", extra=(None,)))
    assert sha(zoe["auth"]) == before  # only the -wal moved
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    recorder = spy(os.path.dirname(zoe["zoe"]))
    basis, reason = exact(zoe, prepared, known=known)
    late.close()
    assert basis is None and reason == "%s-wal changed since the merge was prepared" % zoe["auth"]
    assert not recorder.read


def test_a_known_wal_digest_of_the_target_that_differs_is_stale(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    known[zoe["zoe"] + "-wal"] = "0" * 64
    result = call(zoe, prepared, known=known)
    assert result["prepared"] == "stale"
    assert result["prepared_reason"] == "the target %s-wal changed since the merge was prepared" % zoe["zoe"]
    assert ("walrow",) in rows(zoe["zoe"], "SELECT username FROM users")  # merged from scratch


def test_without_the_wal_key_the_files_are_hashed(zoe, tmp_path, spy):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    del known[zoe["auth"] + "-wal"]
    recorder = spy(os.path.dirname(zoe["zoe"]))
    basis, reason = exact(zoe, prepared, known=known)
    assert basis is not None, reason
    assert recorder.bytes_read(zoe["auth"] + "-wal") == os.path.getsize(zoe["auth"] + "-wal") > 0
    assert recorder.bytes_read(zoe["auth"]) == os.path.getsize(zoe["auth"])
    assert recorder.bytes_read(zoe["learning"]) == 0  # covered: not read
    # hashed, the -wal a writer appended to is seen although the database's own digest is the known one
    late = append_to_wal(zoe["auth"], "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         user(10, "late", extra=(None,)))
    assert known[zoe["auth"]] == sha(zoe["auth"])
    basis, reason = exact(zoe, prepared, known=known)
    late.close()
    assert basis is None and reason == "%s changed since the merge was prepared" % zoe["auth"]


def test_a_wal_known_absent_that_the_preparation_read_is_stale(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    known[zoe["learning"] + "-wal"] = None
    basis, reason = exact(zoe, prepared, known=known)
    assert basis is None and reason == "%s-wal is gone since the merge was prepared" % zoe["learning"]
    known[zoe["learning"] + "-wal"] = sha(zoe["learning"] + "-wal")
    known[zoe["sessions"] + "-wal"] = hashlib.sha256(b"x").hexdigest()
    basis, reason = exact(zoe, prepared, known=known)
    assert basis is None and reason == "%s-wal exists now and did not when the merge was prepared" % zoe["sessions"]


def test_an_empty_wal_is_no_wal(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    assert known[zoe["sessions"] + "-wal"] is None
    known[zoe["sessions"] + "-wal"] = hashlib.sha256(b"").hexdigest()  # a reader opened it in WAL mode
    basis, reason = exact(zoe, prepared, known=known)
    assert basis is not None, reason


# ------------------------------------------------------------------------------------------------ the kept copy

def test_check_prepared_copy_finds_a_damaged_copy(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    assert smp.check_prepared_copy(str(prepared)) is None
    copy = prepared / smp.COPY_NAME
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    assert smp.check_prepared_copy(str(prepared)) == "the prepared copy changed since the merge was prepared"
    assert smp.check_prepared_copy(str(tmp_path / "none")) == "no prepared merge"
    # without copy_checked the window finds it too, and merges from scratch
    result = call(zoe, prepared)
    assert result["prepared"] == "stale" and "prepared copy changed" in result["prepared_reason"]


def test_copy_checked_does_not_hash_the_copy(zoe, tmp_path, spy):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    assert smp.check_prepared_copy(str(prepared)) is None
    copy = str(prepared / smp.COPY_NAME)
    recorder = spy(prepared)
    basis, reason = exact(zoe, prepared, copy_checked=False)
    assert basis is not None, reason
    assert recorder.bytes_read(copy) == os.path.getsize(copy)
    recorder = spy(prepared)
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    result = call(zoe, prepared, known=known, copy_checked=True)
    assert result["prepared"] == "used"
    assert recorder.bytes_read(copy) <= 20   # its header's journal-mode byte (before the rename), not a hash


def test_copy_checked_with_the_copy_gone_writes_nothing(zoe, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    os.remove(str(prepared / smp.COPY_NAME))
    before = snapshot([zoe["zoe"]])
    result = smp.apply_prepared(zoe["zoe"], sources(zoe), str(prepared), copy_checked=True, **ZOE_OPTIONS)
    assert result == (None, "the prepared copy is gone")
    assert snapshot([zoe["zoe"]]) == before


# ------------------------------------------------------------------------------------------------ basis version

def test_a_version_1_basis_is_no_prepared_merge(zoe, tmp_path):
    twin, writers = zoe_with_wal(tmp_path / "twin")
    fresh = sm.merge_databases(twin["zoe"], sources(twin), **ZOE_OPTIONS)
    for conn in writers:
        conn.close()
    prepared = tmp_path / "prepared"
    prepare(zoe, prepared)
    path = prepared / smp.BASIS_NAME
    basis = json.loads(path.read_text())
    basis["version"] = 1
    del basis["target_files"]
    for src in basis["sources"]:
        del src["files"]
    path.write_text(json.dumps(basis))
    known = rollback_digests(os.path.dirname(zoe["zoe"]), databases(zoe))
    result = call(zoe, prepared, known=known)
    assert result["prepared"] == "stale" and result["prepared_reason"] == "no readable basis"
    assert not prepared.exists()
    assert result["totals"] == fresh["totals"]
    assert same_rows(zoe["zoe"], twin["zoe"])
