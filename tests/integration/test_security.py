"""Security of a real run: owner-only snapshots, no secret in the play's output or the reports, the guard's hook.

One demo host for the file, made a git checkout first (so the guard's hook has a repository), then run
for real: `consolidate.yml --check --diff`, `consolidate.yml --diff`, `consolidate.yml --tags guard`. The
planted secrets are every value the demo host holds that must never be printed: JWT_SECRET and
API_SECRET_KEY from .env, and every value of the secret columns the generator names (record
"secret_columns": password and passcode hashes, salts, session tokens, API keys) in every database of
the data dir, read before the run.

The hook's refusal of a forbidden database by name is proven in test_guard_role.py
(test_guard_quartet_and_real_commits, through the role on its own); here it is the hook that the play
installs on a consolidated host, for a retired name re-created by a service and for a database under a
name that does not say so.
Run: .venv/bin/pytest -q tests/integration/test_security.py
"""

import glob
import os
import sqlite3
import stat
import subprocess

import pytest

from zoe_host import ZoeHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]

def git(root, *args, check=True):
    return subprocess.run(["git", "-c", "user.email=sec@test", "-c", "user.name=security test"] + list(args),
                          cwd=root, check=check, capture_output=True, text=True)


def planted_secrets(zoe):
    """The .env secrets and every hash/token column value of every database in the data dir.

    Also records on `zoe.secret_columns_found` which (table, column) pairs of the generator's secret columns
    held a value, so a secret column the generator names but no database fills is noticed."""
    found = set(zoe.record["secrets"].values())
    zoe.secret_columns_found = set()
    for path in glob.glob(os.path.join(zoe.root, "data", "*.db")):
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, columns in zoe.record["secret_columns"].items():
                for column in columns if table in tables else ():
                    present = {row[1] for row in conn.execute('PRAGMA table_info("%s")' % table)}
                    if column in present:
                        values = {v for (v,) in conn.execute('SELECT "%s" FROM "%s"' % (column, table)) if v}
                        found |= values
                        if values:
                            zoe.secret_columns_found.add((table, column))
        finally:
            conn.close()
    return found


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("sec"))
    git(zoe.root, "init", "-q")
    git(zoe.root, "add", "-A")
    git(zoe.root, "commit", "-q", "-m", "the host as found")
    zoe.secrets = planted_secrets(zoe)
    zoe.check = zoe.playbook("consolidate.yml", "--check", "--diff")
    zoe.real = zoe.playbook("consolidate.yml", "--diff")
    yield zoe
    zoe.destroy()


def test_the_runs_succeeded(host):
    assert host.check.returncode == 0, host.check.stdout[-3000:]
    assert host.real.returncode == 0, host.real.stdout[-3000:]
    assert host.data_files() == ["memory.db", "zoe.db"]


def test_snapshots_are_owner_only(host):
    """Every directory under the backup root is 0700 and every file 0600 (they hold password hashes)."""
    dirs, files, wrong = 0, 0, []
    for dirpath, dirnames, filenames in os.walk(host.backups):
        for path in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            dirs, files = (dirs + 1, files) if want == 0o700 else (dirs, files + 1)
            if stat.S_IMODE(st.st_mode) != want:
                wrong.append("%s %o" % (os.path.relpath(path, host.backups), stat.S_IMODE(st.st_mode)))
    assert files > 20 and dirs > 3, "the run left no snapshot to check"
    assert wrong == []


def test_the_planted_secrets_are_real(host):
    """The grep below can fail: the secrets exist, and the snapshot (owner-only) does hold them."""
    named = {(table, column) for table, columns in host.record["secret_columns"].items() for column in columns}
    assert host.secret_columns_found == named, "every secret column the generator names holds values"
    assert len(host.secrets) > len(host.record["secrets"]) + len(named)
    with open(os.path.join(host.root, ".env")) as handle:
        env = handle.read()
    assert all(value in env for value in host.record["secrets"].values())
    snapshot_bytes = b"".join(open(p, "rb").read() for p in glob.glob(os.path.join(host.backups, "*", "files", "**",
                                                                                    "auth.db"), recursive=True))
    assert any(s.encode() in snapshot_bytes for s in host.secrets)


@pytest.mark.parametrize("source", ["check --diff", "real --diff", "reports"])
def test_no_secret_in_the_output_or_the_reports(host, source):
    if source == "reports":
        paths = glob.glob(os.path.join(host.reports, "*.json")) + glob.glob(os.path.join(host.reports, "*.md"))
        assert len(paths) >= 4, "expected a JSON and a Markdown report for each run"
        texts = {os.path.basename(p): open(p).read() for p in paths}
    else:
        run = host.check if source.startswith("check") else host.real
        texts = {"stdout": run.stdout, "stderr": run.stderr}
        assert "TASK [consolidate" in run.stdout and "---" in run.stdout, "the run printed no diff to search"
    leaks = sorted({(name, secret[:12] + "...") for name, text in texts.items() for secret in host.secrets
                    if secret in text})
    assert leaks == []


def test_the_installed_hook_refuses_forbidden_databases(host):
    result = host.playbook("consolidate.yml", "--tags", "guard")
    assert result.returncode == 0, result.stdout[-3000:]
    hook = os.path.join(host.root, ".git", "hooks", "pre-commit")
    assert os.access(hook, os.X_OK)
    git(host.root, "add", "-A")
    assert git(host.root, "commit", "-q", "-m", "consolidated", check=False).returncode == 0
    head = git(host.root, "rev-parse", "HEAD").stdout

    # A service re-creates a retired database.
    conn = sqlite3.connect(os.path.join(host.root, "data", "auth.db"))
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT, password_hash TEXT)")
    conn.commit()
    conn.close()
    git(host.root, "add", "-f", "data/auth.db")
    result = git(host.root, "commit", "-m", "auth.db is back", check=False)
    assert result.returncode != 0 and "data/auth.db" in result.stderr and "zoe-guard: refused" in result.stderr
    git(host.root, "rm", "-q", "--cached", "data/auth.db")
    os.unlink(os.path.join(host.root, "data", "auth.db"))

    # A database under a name that does not say so: found by its header.
    conn = sqlite3.connect(os.path.join(host.root, "services", "cache.bin"))
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    git(host.root, "add", "services/cache.bin")
    result = git(host.root, "commit", "-m", "a cache", check=False)
    assert result.returncode != 0 and "services/cache.bin" in result.stderr
    git(host.root, "rm", "-q", "--cached", "services/cache.bin")
    os.unlink(os.path.join(host.root, "services", "cache.bin"))
    assert git(host.root, "rev-parse", "HEAD").stdout == head


# .env lines with secrets, each next to a database line the rewrite edits (so a diff shows them as
# context): a quoted value with a space and a `#`, *PASS names, a short sk- key, credentials inside a URL.
ENV_SECRET_LINES = ['JWT_SECRET_2="Zq9leakA part2B#part3C"', "SMTP_PASS=Hunter2-smtp-passD", "DB_PASS=pw-F-secret",
                    "LITELLM_MASTER_KEY=sk-live-abc123E", "REDIS_URL=redis://:RedisPwG99@redis:6379/0",
                    "WEBHOOK_TARGET=opaque-Q7value"]  # a secret no name or shape gives away
ENV_SECRETS = ["Zq9leakA", "part2B", "part3C", "Hunter2-smtp-passD", "pw-F-secret", "sk-live-abc123E", "RedisPwG99",
               "opaque-Q7value"]


def test_check_diff_vvv_prints_no_env_secret(tmp_path):
    """`consolidate.yml --check --diff -vvv` (module arguments and results at -vvv) prints none of the .env secrets,
    though it prints the diff of the lines around them."""
    zoe = ZoeHost(tmp_path, start=False)
    try:
        path = os.path.join(zoe.root, ".env")
        with open(path) as handle:
            env = handle.read()
        assert "SATISFACTION_DB=/app/data/satisfaction.db\n" in env
        env = env.replace("SATISFACTION_DB=/app/data/satisfaction.db\n",
                          "SATISFACTION_DB=/app/data/satisfaction.db\n" + "\n".join(ENV_SECRET_LINES) + "\n")
        with open(path, "w") as handle:
            handle.write(env)
        secrets = ENV_SECRETS + list(zoe.record["secrets"].values())
        result = zoe.playbook("consolidate.yml", "-e", "zoe_manage_services=false", "--check", "--diff", "-vvv")
        assert result.returncode == 0, result.stdout[-3000:]
        out = result.stdout + result.stderr
        assert "+SATISFACTION_DB=/app/data/zoe.db" in out and " SMTP_PASS=********" in out, "no .env diff printed"
        assert [secret for secret in secrets if secret in out] == []
        reports = "".join(open(p).read() for p in glob.glob(os.path.join(zoe.reports, "*")))
        assert [secret for secret in secrets if secret in reports] == []
    finally:
        zoe.destroy()
