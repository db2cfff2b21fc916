"""Bad inputs and writers that did not stop: each one refused with a clear error before any service stops.

One real demo host for the whole file (real containers, real HTTP, real SQLite files). Every test breaks one
thing, runs consolidate.yml (or rollback.yml), and checks three things: the play failed with the expected
sentence, no service was stopped or recreated (same container ids and start times), and the tree of the
host is byte for byte what it was (tree digest). Each test puts back what it broke, so the next one starts
from the same host. The two tests that need a consolidated host (a table name with quotes and spaces must
merge; a tampered snapshot manifest must be refused) come last and share one real run.

The wrong zoe_root kind lives in test_play_failures.py (test_a_wrong_zoe_root_is_a_clear_error_and_changes_nothing).
Run: .venv/bin/pytest -q tests/integration/test_bad_inputs.py
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from zoe_host import ZoeHost, tree_digest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NOT_STOPPED = "no service was stopped"
WEIRD_TABLE = 'we"ird table'


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("bad"))
    zoe.initial_digest = zoe.digest()
    zoe.initial_containers = zoe.containers()
    yield zoe
    zoe.destroy()


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a read-only bind mount needs root")


@contextlib.contextmanager
def saved(*paths):
    """Put the bytes (and the presence) of each path back afterwards, whatever the test did to them."""
    kept = {p: (open(p, "rb").read() if os.path.exists(p) else None) for p in paths}
    try:
        yield
    finally:
        for path, data in kept.items():
            if data is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
                    handle.write(data)
                    handle.truncate()


@contextlib.contextmanager
def mounted(target, *options):
    subprocess.run(["mount"] + list(options) + [target], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", target], check=True)


def flat(text):
    """The play's output with the YAML callback's line wrapping and quote doubling undone."""
    return re.sub(r"\s*\n\s*", " ", text).replace("''", "'")


def assert_refused(host, result, *needles):
    """Failed, said why, stopped nothing, changed nothing."""
    out = flat(result.stdout)
    assert result.returncode != 0, out[-3000:]
    for needle in needles:
        assert needle in out, "expected %r in the play's output:\n%s" % (needle, out[-3000:])
    assert "TASK [consolidate : Stop the writers" not in out, "the downtime window ran before the refusal"
    assert host.containers() == host.initial_containers, "a container was stopped, started or recreated"
    assert all(running for _, _, running in host.containers().values())
    assert host.digest() == host.initial_digest, "the host's tree changed"


def data(host, name):
    return os.path.join(host.root, "data", name)


# ---------------------------------------------------------------------------------- bad databases

def test_a_source_that_is_not_a_database(host):
    path = data(host, "auth.db")
    with saved(path):
        with open(path, "r+b") as handle:
            handle.write(os.urandom(8192))
        result = host.playbook("consolidate.yml")
    assert_refused(host, result, "data/auth.db in %s is not a SQLite database" % os.path.dirname(path), NOT_STOPPED)


def test_a_truncated_database(host):
    path = data(host, "satisfaction.db")
    with saved(path):
        os.truncate(path, 12000)
        result = host.playbook("consolidate.yml")
    assert_refused(host, result, "integrity_check failed for data/satisfaction.db", NOT_STOPPED)


def test_a_database_locked_by_a_live_writer(host):
    """A process outside Docker holds a write transaction on a fold database for the whole run."""
    path = data(host, "tool_registry.db")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\n"
         "c.execute('BEGIN EXCLUSIVE')\n"
         "c.execute('CREATE TABLE held_by_a_writer (x)')\n"
         "print('locked', flush=True)\n"
         "sys.stdin.readline()\n"
         "c.execute('ROLLBACK')\n"
         "c.close()\n", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = host.playbook("consolidate.yml")
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert_refused(host, result, "tool_registry.db: source is locked by a writer", "DatabaseLockedError")


def test_a_missing_database(host):
    fold = yaml.safe_load(open(os.path.join(host.inventory, "group_vars", "zoe_hosts.yml")))["zoe_fold_databases"]
    result = host.playbook("consolidate.yml", "-e", json.dumps({"zoe_fold_databases": fold + ["nothere.db"]}))
    assert_refused(host, result, "nothere.db named in zoe_fold_databases does not exist", "not in the merge ledger",
                   NOT_STOPPED)


def test_a_schema_clash_with_clash_policy_refuse(host):
    """agent_planning.db's task_executions shares its name, not its keys, with zoe.db's: kept apart by default,
    an error naming the table and the ways out under zoe_merge_clash_policy=refuse."""
    result = host.playbook("consolidate.yml", "-e", "zoe_merge_clash_policy=refuse")
    assert_refused(host, result, "ShapeClashError", "agent_planning.db: table task_executions cannot merge into "
                   "table task_executions of the target", "primary keys differ", "clash_policy=refuse",
                   "set clash_policy=prefix")


def test_a_relative_zoe_root(host):
    host.write_inventory(zoe_root="zoe")
    try:
        result = host.playbook("consolidate.yml")
    finally:
        host.write_inventory()
    assert_refused(host, result, "zoe_root must be an absolute path (got zoe)")


# ---------------------------------------------------------------------------------- bad compose files

def test_a_compose_file_with_invalid_yaml(host):
    path = os.path.join(host.root, "docker-compose.yml")
    with saved(path):
        with open(path, "a") as handle:
            handle.write("\nbroken:\n  zoe-core: [unclosed\n   bad: : yaml\n")
        result = host.playbook("consolidate.yml")
    assert_refused(host, result, "cannot read %s" % path, "Fix the compose file first", NOT_STOPPED)


def test_a_compose_file_that_does_not_know_the_running_writers(host, tmp_path):
    """zoe_compose_files names a compose file with only zoe-ui: the running writers are no service of it.

    Nothing in the configuration names services one by one (the play finds the writers from the mounts), so
    the unknown-service case is the other way round: containers of the project that the configured compose
    files do not define. compose_services reports them as strays, and the play refuses: it could not stop them.
    """
    compose = yaml.safe_load(open(os.path.join(host.root, "docker-compose.yml")))
    ui = compose["services"]["zoe-ui"]
    ui.pop("depends_on", None)
    compose["services"] = {"zoe-ui": ui}
    other = tmp_path / "ui-only-compose.yml"
    other.write_text(yaml.safe_dump(compose))
    result = host.playbook("consolidate.yml", "-e", json.dumps({"zoe_compose_files": [str(other)]}))
    assert_refused(host, result, "%s-zoe-core" % host.project, "is not a service of the compose project",
                   "stop it first")


# ---------------------------------------------------------------------------------- bad filesystems

def test_a_backup_root_on_a_full_filesystem(host, tmp_path):
    needs_root()
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    with mounted(str(tiny), "-t", "tmpfs", "-o", "size=64k", "tmpfs"):
        result = host.playbook("consolidate.yml", "-e", "zoe_backup_root=%s" % (tiny / "backups"))
        assert not (tiny / "backups").exists()
    assert_refused(host, result, "%s has 64.00 KB free; the snapshots need" % (tiny / "backups"), NOT_STOPPED)


def test_a_data_dir_on_a_full_filesystem(host, tmp_path):
    """The data dir on a tmpfs with 256 KB left: the merge (several MB into zoe.db) cannot fit.

    The tmpfs is mounted over the data dir after the containers started, so they keep the real directory
    while the play sees a copy on the small filesystem; the copy must be untouched too.
    """
    needs_root()
    path = os.path.join(host.root, "data")
    stash = tmp_path / "stash"
    shutil.copytree(path, str(stash))
    size_k = sum(os.path.getsize(os.path.join(str(stash), f)) for f in os.listdir(str(stash))) // 1024
    with mounted(path, "-t", "tmpfs", "-o", "size=%dk" % (size_k + 256), "tmpfs"):
        for name in os.listdir(str(stash)):
            shutil.copy2(os.path.join(str(stash), name), os.path.join(path, name))
        on_tmpfs = tree_digest(path)
        result = host.playbook("consolidate.yml")
        assert tree_digest(path) == on_tmpfs
    assert_refused(host, result, "%s has " % path, "free; merging into zoe.db (and rolling back if it fails) needs",
                   NOT_STOPPED)


def test_a_read_only_data_dir(host):
    """A read-only bind mount of the data dir over itself: chmod would not stop root, EROFS does."""
    needs_root()
    path = os.path.join(host.root, "data")
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
        result = host.playbook("consolidate.yml")
    finally:
        subprocess.run(["umount", path], check=True)
    assert_refused(host, result, "TargetNotWritableError", "zoe.db: target (or its directory, for the journal) is "
                   "not writable")


# ---------------------------------------------------------------------------------- writers that did not stop

def test_a_writer_outside_compose_is_refused_before_the_merge(host, images):
    """A `docker run` container (no compose labels) writes to a fold database every 100 ms during the run."""
    path = data(host, "tool_registry.db")
    name = "zoe-stray-writer-%s" % uuid.uuid4().hex[:8]
    loop = ("import sqlite3, time\n"
            "c = sqlite3.connect('/app/data/tool_registry.db', timeout=5)\n"
            "c.execute('CREATE TABLE IF NOT EXISTS stray_ticks (t REAL)')\n"
            "while True:\n"
            "    c.execute('INSERT INTO stray_ticks VALUES (?)', (time.time(),)); c.commit(); time.sleep(0.1)\n")
    with saved(path, path + "-journal"):
        try:
            subprocess.run(["docker", "run", "-d", "--name", name, "-v", "%s:/app/data" % os.path.dirname(path),
                            "--entrypoint", "python3", images["service"], "-c", loop],
                           check=True, capture_output=True, text=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and b"stray_ticks" not in open(path, "rb").read():
                time.sleep(0.2)
            result = host.playbook("consolidate.yml")
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert_refused(host, result, "%s mounts %s" % (name, os.path.dirname(path)),
                   "is not a service of the compose project, so the play cannot stop it")
    assert "TASK [consolidate" not in result.stdout and "Merge the databases" not in result.stdout


# ---------------------------------------------------------------------------------- on a consolidated host

@pytest.fixture(scope="module")
def consolidated(host):
    """One real run over a fold database holding a table named with quotes and spaces; rolled back after."""
    path = data(host, "agent_planning.db")
    original = open(path, "rb").read()
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "we""ird table" ("some col" TEXT, "it\'s" INTEGER)')
    conn.executemany('INSERT INTO "we""ird table" VALUES (?, ?)', [("a b", 1), ('q"uote', 2), ("x'y", 3)])
    conn.commit()
    conn.close()
    before = host.digest()
    result = host.playbook("consolidate.yml")
    yield result
    back = host.playbook("rollback.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    assert host.digest() == before
    with open(path, "r+b") as handle:
        handle.write(original)
        handle.truncate()
    assert host.digest() == host.initial_digest


def test_a_table_name_with_quotes_and_spaces_merges(host, consolidated):
    assert consolidated.returncode == 0, consolidated.stdout[-3000:]
    assert host.query("zoe.db", 'SELECT "some col", "it\'s" FROM "we""ird table" ORDER BY 2') == [
        ("a b", 1), ('q"uote', 2), ("x'y", 3)]
    assert host.data_files() == ["memory.db", "zoe.db"]
    assert host.login("testuser") == 200


def tamper(snapshot_dir, edit):
    """Edit the manifest and write a matching checksum, as someone with write access to the backups could."""
    manifest_path = os.path.join(snapshot_dir, "manifest.json")
    manifest = json.load(open(manifest_path))
    edit(manifest)
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with open(manifest_path, "wb") as handle:
        handle.write(raw)
    with open(manifest_path + ".sha256", "w") as handle:
        handle.write("%s  manifest.json\n" % hashlib.sha256(raw).hexdigest())


def escape_with_dotdot(manifest):
    entry = next(e for e in manifest["entries"] if e["rel"] == "agent_planning.db")
    root = manifest["roots"][entry["root"]]["path"]
    entry["rel"] = "../../planted.db"
    entry["path"] = os.path.normpath(os.path.join(root, entry["rel"]))


def test_a_snapshot_manifest_tampered_with_dotdot_is_refused(host, consolidated):
    assert consolidated.returncode == 0, consolidated.stdout[-3000:]
    snapshots = [os.path.join(host.backups, d) for d in os.listdir(host.backups) if d[:1].isdigit()]
    latest = max(snapshots, key=lambda d: json.load(open(os.path.join(d, "manifest.json")))["created_ns"])
    before, containers = host.digest(), host.containers()
    planted = os.path.normpath(os.path.join(host.root, "data", "../../planted.db"))
    with saved(os.path.join(latest, "manifest.json"), os.path.join(latest, "manifest.json.sha256")):
        tamper(latest, escape_with_dotdot)
        result = host.playbook("rollback.yml")
    assert result.returncode != 0
    out = flat(result.stdout)
    assert "ManifestError" in out
    assert "manifest entry '../../planted.db' escapes the snapshotted path %s/data" % host.root in out
    assert not os.path.exists(planted)
    assert host.digest() == before and host.containers() == containers


def test_a_snapshot_manifest_with_a_root_outside_the_zoe_root_is_refused(host, consolidated):
    assert consolidated.returncode == 0, consolidated.stdout[-3000:]
    snapshots = [os.path.join(host.backups, d) for d in os.listdir(host.backups) if d[:1].isdigit()]
    latest = max(snapshots, key=lambda d: json.load(open(os.path.join(d, "manifest.json")))["created_ns"])
    before, containers = host.digest(), host.containers()
    # A sibling whose name starts with the root's, as the backups dir does: refused only if the check ends at a "/".
    elsewhere = host.root + "-elsewhere"

    def move_data_root(manifest):
        index = next(i for i, r in enumerate(manifest["roots"]) if r["path"].endswith("/data"))
        manifest["roots"][index]["path"] = elsewhere
        for entry in manifest["entries"]:
            if entry["root"] == index:
                entry["path"] = os.path.normpath(os.path.join(elsewhere, entry["rel"]))

    with saved(os.path.join(latest, "manifest.json"), os.path.join(latest, "manifest.json.sha256")):
        tamper(latest, move_data_root)
        result = host.playbook("rollback.yml")
    assert result.returncode != 0
    out = flat(result.stdout)
    assert "would restore paths outside %s: %s" % (host.root, elsewhere) in out, out[-3000:]
    assert not os.path.exists(elsewhere)
    assert host.digest() == before and host.containers() == containers


# ---------------------------------------------------------------------------------- paths, on a host with no stack
# A second demo host whose stack is not started (zoe_manage_services=false): the path kinds need no container,
# and a run that is refused in preflight must leave the tree, the backup root and the lock as they were.

@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("paths"), start=False)
    zoe.write_inventory(zoe_manage_services=False)
    zoe.initial_digest = zoe.digest()
    yield zoe
    zoe.destroy()


def state_of(host):
    """The tree digest of the checkout and of every path beside it (the backups, a planted target)."""
    beside = {name: tree_digest(os.path.join(host.base, name)) if os.path.isdir(os.path.join(host.base, name)) else
              os.path.lexists(os.path.join(host.base, name))
              for name in sorted(os.listdir(host.base)) if name not in ("reports", "inventory")}
    return host.digest(), beside


def assert_refused_in_preflight(host, result, before, *needles):
    """Failed, said why, before the run lock or any write: the tree and everything beside it unchanged."""
    out = flat(result.stdout)
    assert result.returncode != 0, out[-3000:]
    for needle in needles:
        assert needle in out, "expected %r in the play's output:\n%s" % (needle, out[-3000:])
    assert "Nothing was changed, no service was stopped" in out
    assert "Take the run lock" not in out and "Create the backup root" not in out, "refused only after the lock"
    assert state_of(host) == before, "the host's tree or something beside it changed"


def test_a_fold_database_that_is_a_symlink_out_of_data_is_refused_by_name(quiet):
    """The retire step moves regular files only: a link would stay behind and the smoke test fail in the window."""
    path = data(quiet, "snapshots.db")
    moved = os.path.join(quiet.base, "outside-snapshots.db")
    os.rename(path, moved)
    os.symlink(moved, path)
    try:
        before = state_of(quiet)
        result = quiet.playbook("consolidate.yml", "-e", "zoe_root=%s/" % quiet.root)
        assert_refused_in_preflight(quiet, result, before, "%s in zoe_fold_databases is a symbolic link (to %s)"
                                    % (path, moved), "put the file itself in its place")
        assert not os.path.exists(os.path.join(quiet.root, "-backups"))
    finally:
        os.unlink(path)
        os.rename(moved, path)
    assert quiet.digest() == quiet.initial_digest


def test_a_fold_database_that_is_a_directory_is_named_a_directory(quiet):
    path = data(quiet, "auth.db")
    os.rename(path, path + ".kept")
    os.mkdir(path)
    try:
        before = state_of(quiet)
        result = quiet.playbook("consolidate.yml")
        assert_refused_in_preflight(quiet, result, before, "%s in zoe_fold_databases is a directory, not a database "
                                    "file" % path)
        assert "does not exist" not in flat(result.stdout)
    finally:
        os.rmdir(path)
        os.rename(path + ".kept", path)
    assert quiet.digest() == quiet.initial_digest


def test_zoe_root_slash_is_named_the_filesystem_root(quiet):
    before = state_of(quiet)
    result = quiet.playbook("consolidate.yml", "-e", "zoe_root=/")
    assert_refused_in_preflight(quiet, result, before, "zoe_root=/ resolves to the filesystem root /, not to a Zoe checkout")
    assert "must be an absolute path" not in flat(result.stdout)


def test_a_backup_root_that_is_a_symlink_into_data_is_refused_before_anything_is_written(quiet):
    target = data(quiet, "bk2")
    os.mkdir(target)
    os.chmod(target, 0o755)
    os.symlink(target, quiet.backups)
    try:
        before = state_of(quiet)
        result = quiet.playbook("consolidate.yml")
        assert_refused_in_preflight(quiet, result, before, "zoe_backup_root=%s resolves to %s, inside the data "
                                    "directory %s" % (quiet.backups, target, os.path.dirname(target)))
        assert os.listdir(target) == [] and os.stat(target).st_mode & 0o777 == 0o755
    finally:
        os.unlink(quiet.backups)
        os.rmdir(target)
    assert quiet.digest() == quiet.initial_digest


def test_a_backup_root_inside_data_is_refused_before_the_lock(quiet):
    before = state_of(quiet)
    inside = data(quiet, "bk")
    result = quiet.playbook("consolidate.yml", "-e", "zoe_backup_root=%s" % inside)
    assert_refused_in_preflight(quiet, result, before, "zoe_backup_root=%s resolves to %s, inside the data directory"
                                % (inside, inside))
    assert not os.path.exists(inside)


def chattr_or_skip(flag, path):
    assert os.path.isfile(path), "%s is missing: an earlier test left the host changed" % path
    if shutil.which("chattr") is None or subprocess.run(["chattr", flag, path], capture_output=True).returncode:
        pytest.skip("the filesystem of %s has no immutable flag" % path)


def test_an_immutable_fold_file_is_refused_in_preflight_by_name(quiet):
    """chattr +i: even root cannot move the file; the retire step inside the window would fail on it."""
    path = data(quiet, "tool_registry.db")
    chattr_or_skip("+i", path)
    try:
        before = state_of(quiet)
        result = quiet.playbook("consolidate.yml")
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
    assert_refused_in_preflight(quiet, result, before, "%s is immutable (chattr; lsattr shows it): the run cannot move it"
                                % path, "Clear the flag (chattr -i)")
    assert "Merge the databases" not in result.stdout


def test_an_immutable_compose_file_is_refused_in_preflight_by_name(quiet):
    path = os.path.join(quiet.root, "docker-compose.yml")
    chattr_or_skip("+i", path)
    try:
        before = state_of(quiet)
        result = quiet.playbook("consolidate.yml")
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
    assert_refused_in_preflight(quiet, result, before, "%s is immutable (chattr; lsattr shows it): the run cannot "
                                "rewrite it" % path)


# The three runs below change the host and roll it back; they come after the refusals.

def test_a_trailing_slash_root_keeps_the_backups_beside_it_and_a_failed_run_rolls_back(quiet):
    """zoe_root=DIR/zoe/: the backups go to DIR/zoe-backups, and the run's own rollback accepts its snapshot.

    The failure comes after the rollback point: an unknown SQLite file in data/ (left alone by the plan) fails
    the smoke test's "only the kept databases remain".
    """
    extra = data(quiet, "extra.db")
    conn = sqlite3.connect(extra)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    try:
        before = quiet.digest()
        result = quiet.playbook("consolidate.yml", "-e", "zoe_root=%s/" % quiet.root)
        out = flat(result.stdout)
        assert result.returncode != 0
        assert "Smoke test failed on the databases" in out, out[-3000:]
        assert "The host was rolled back to snapshot" in out and "would restore paths outside" not in out
        assert quiet.digest() == before, "the failed run was not rolled back byte for byte"
        assert not os.path.exists(os.path.join(quiet.root, "-backups"))
        assert os.path.isdir(quiet.backups)
    finally:
        os.unlink(extra)
    assert quiet.digest() == quiet.initial_digest


def test_a_symlinked_zoe_root_is_resolved_and_rolls_back_under_another_spelling(quiet):
    link = os.path.join(quiet.base, "zoe-link")
    os.symlink(quiet.root, link)
    try:
        result = quiet.playbook("consolidate.yml", "-e", "zoe_root=%s" % link)
        assert result.returncode == 0, flat(result.stdout)[-3000:]
        assert quiet.data_files() == ["memory.db", "zoe.db"]
        assert not os.path.exists(link + "-backups"), "the backups follow the resolved checkout"
        dotted = os.path.join(quiet.base, "reports", "..", "zoe")
        back = quiet.playbook("rollback.yml", "-e", "zoe_root=%s" % dotted)
        assert back.returncode == 0, flat(back.stdout)[-3000:]
    finally:
        os.unlink(link)
    assert quiet.digest() == quiet.initial_digest


def test_an_env_file_that_is_a_symlink_is_followed_and_stays_a_link(quiet):
    """.env -> .env.production: the target is planned, snapshotted, rewritten and restored; the link is kept."""
    env, real = os.path.join(quiet.root, ".env"), os.path.join(quiet.root, ".env.production")
    os.rename(env, real)
    os.symlink(".env.production", env)
    try:
        before, text = quiet.digest(), open(real).read()
        assert "/app/data/satisfaction.db" in text
        result = quiet.playbook("consolidate.yml")
        assert result.returncode == 0, flat(result.stdout)[-3000:]
        assert os.readlink(env) == ".env.production"
        after = open(real).read()
        assert "/app/data/satisfaction.db" not in after and "SATISFACTION_DB=/app/data/zoe.db" in after
        back = quiet.playbook("rollback.yml")
        assert back.returncode == 0, flat(back.stdout)[-3000:]
        assert quiet.digest() == before and os.readlink(env) == ".env.production"
    finally:
        os.unlink(env)
        os.rename(real, env)
    assert quiet.digest() == quiet.initial_digest
