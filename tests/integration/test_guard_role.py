"""The guard role through a real ansible-playbook run against real git checkouts on this machine.

The quartet: check mode writes nothing (the tree's digest, .git included, is identical), the real run
installs the script, its config and the hook, the rerun reports changed=0; then real `git commit`s
show the hook refusing a forbidden database and letting a clean commit through. Results are read from
the json stdout callback (ANSIBLE_STDOUT_CALLBACK=json), not scraped from the recap.
"""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join("tests", "integration", "playbooks", "guard.yml")
ANSIBLE_PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
HOOK_MARKER = "zoe-guard pre-commit hook, managed by the guard role of zoe-consolidate"

pytestmark = pytest.mark.slow


def git(root, *args, check=True):
    return subprocess.run(["git"] + list(args), cwd=str(root), check=check, capture_output=True, text=True)


def make_db(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.close()


def tree_digest(root):
    """(path, mode, sha256) of every file and directory under root, .git included, symlinks as their target."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                content = os.readlink(full).encode()
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    content = handle.read()
            else:
                content = b""
            entries.append((os.path.relpath(full, str(root)), st.st_mode, hashlib.sha256(content).hexdigest()))
    return entries


def run_role(root, check=False, extra_vars=None):
    """Run the guard playbook with the json callback; return (returncode, stats of localhost, task results)."""
    cmd = [ANSIBLE_PLAYBOOK, PLAYBOOK, "-e", "zoe_root=%s" % root,
           "-e", "ansible_python_interpreter=/usr/bin/python3"]
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", json.dumps({key: value})]
    if check:
        cmd += ["--check", "--diff"]
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_PIPELINING="1", ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook printed no JSON:\n%s\n%s" % (proc.stdout, proc.stderr))
    tasks = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            tasks[task["task"]["name"]] = task["hosts"].get("localhost", {})
    return proc.returncode, result["stats"]["localhost"], tasks


def task(tasks, prefix):
    """The result of the one task whose name starts with `prefix`."""
    found = [result for name, result in tasks.items() if name.split(" : ", 1)[-1].startswith(prefix)]
    assert len(found) == 1, (prefix, sorted(tasks))
    return found[0]


@pytest.fixture()
def checkout(tmp_path):
    """A real git work tree with a data dir and one commit."""
    root = tmp_path / "zoe"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "guard@test")
    git(root, "config", "user.name", "guard test")
    (root / "README.md").write_text("zoe\n")
    (root / ".gitignore").write_text("data/\n")
    make_db(str(root / "data" / "zoe.db"))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    return root


def commit(root, message):
    return git(root, "commit", "-m", message, check=False)


def test_guard_quartet_and_real_commits(checkout):
    root = checkout
    hook = root / ".git" / "hooks" / "pre-commit"
    install = root / ".zoe-guard"

    before = tree_digest(root)
    rc, stats, tasks = run_role(root, check=True)
    assert rc == 0, tasks
    assert stats["failures"] == 0 and stats["changed"] > 0
    assert tree_digest(root) == before, "check mode changed the checkout"

    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["failures"] == 0 and stats["changed"] > 0
    assert HOOK_MARKER in hook.read_text()
    assert oct(hook.stat().st_mode & 0o777) == "0o755"
    assert oct((install / "validate_databases.py").stat().st_mode & 0o777) == "0o755"
    assert oct((install / "validate_databases.json").stat().st_mode & 0o777) == "0o644"
    config = json.loads((install / "validate_databases.json").read_text())
    assert config["allowed"] == ["zoe.db", "memory.db"]
    assert len(config["retired"]) == 13 and "auth.db" in config["retired"]
    assert config["data_dir"] == "%s/data" % root
    assert "/.zoe-guard/" in (root / ".git" / "info" / "exclude").read_text().splitlines()
    assert git(root, "status", "--porcelain").stdout == "", "the guard's files show up as untracked"

    rc, stats, tasks = run_role(root, check=True)
    assert rc == 0 and stats["changed"] == 0, "idempotent check"
    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["changed"] == 0, "idempotent"

    # A forbidden database: refused by the hook, nothing committed.
    make_db(str(root / "services" / "auth.db"))
    git(root, "add", "services/auth.db")
    head = git(root, "rev-parse", "HEAD").stdout
    result = commit(root, "add auth.db")
    assert result.returncode != 0
    assert "services/auth.db" in result.stderr and "zoe-guard: refused" in result.stderr
    assert git(root, "rev-parse", "HEAD").stdout == head

    # A new reference to a retired name: refused too.
    git(root, "rm", "-q", "--cached", "services/auth.db")
    os.remove(str(root / "services" / "auth.db"))
    (root / "services" / "config.py").write_text('DB = "/app/data/learning.db"\n')
    git(root, "add", "services/config.py")
    result = commit(root, "point at learning.db")
    assert result.returncode != 0 and "services/config.py:1" in result.stderr

    # A clean commit goes through.
    (root / "services" / "config.py").write_text('DB = "/app/data/zoe.db"  # was oauth.db.bak\n')
    git(root, "add", "services/config.py")
    result = commit(root, "point at zoe.db")
    assert result.returncode == 0, result.stderr
    assert git(root, "rev-parse", "HEAD").stdout != head

    # Tree mode with no arguments reads the config: a stray database in the data dir is listed.
    make_db(str(root / "data" / "sessions.db"))
    tree = subprocess.run(["/usr/bin/python3", str(install / "validate_databases.py")], capture_output=True, text=True)
    assert tree.returncode == 1 and "data/sessions.db" in tree.stderr


def test_existing_hook_is_kept_and_chained(checkout):
    root = checkout
    hooks = root / ".git" / "hooks"
    foreign = "#!/bin/sh\necho foreign-hook-ran >&2\nexit 0\n"
    (hooks / "pre-commit").write_text(foreign)
    os.chmod(str(hooks / "pre-commit"), 0o755)

    before = tree_digest(root)
    rc, stats, tasks = run_role(root, check=True)
    assert rc == 0 and tree_digest(root) == before

    rc, stats, tasks = run_role(root)
    assert rc == 0, tasks
    assert task(tasks, "Keep the existing pre-commit hook as pre-commit.local")["changed"] is True
    assert (hooks / "pre-commit.local").read_text() == foreign
    assert HOOK_MARKER in (hooks / "pre-commit").read_text()
    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["changed"] == 0

    (root / "notes.md").write_text("fine\n")
    git(root, "add", "notes.md")
    result = commit(root, "notes")
    assert result.returncode == 0 and "foreign-hook-ran" in result.stderr

    # The chained hook's refusal stops the commit before the guard even runs.
    (hooks / "pre-commit.local").write_text("#!/bin/sh\necho local-refuses >&2\nexit 3\n")
    (root / "more.md").write_text("fine\n")
    git(root, "add", "more.md")
    result = commit(root, "more")
    assert result.returncode != 0 and "local-refuses" in result.stderr


def test_two_foreign_hooks_are_refused(checkout):
    hooks = checkout / ".git" / "hooks"
    for name in ("pre-commit", "pre-commit.local"):
        (hooks / name).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(str(hooks / name), 0o755)
    rc, stats, tasks = run_role(checkout)
    assert rc != 0 and stats["failures"] == 1
    assert "will not overwrite" in task(tasks, "Refuse to chain")["msg"]
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"


def test_no_git_dir_installs_the_script_and_skips_the_hook(tmp_path):
    root = tmp_path / "plain"
    (root / "data").mkdir(parents=True)
    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["failures"] == 0
    assert "pre-commit hook is skipped" in task(tasks, "Skip the pre-commit hook")["msg"]
    assert (root / ".zoe-guard" / "validate_databases.py").is_file()
    assert not (root / ".git").exists()
    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["changed"] == 0


def test_missing_checkout_fails_clearly(tmp_path):
    rc, stats, tasks = run_role(tmp_path / "nope")
    assert rc != 0
    assert "is not a directory" in task(tasks, "Refuse a checkout that does not exist")["msg"]


def test_demo_host_checkout(tmp_path):
    """The demo host's tree made into a git checkout: the tree check lists every database but the two kept,
    a reference to a retired name in service code is refused, the same in the exempt migration script is not."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    demo = pytest.importorskip("zoe_demo")
    root = tmp_path / "zoe"
    record = demo.build_demo_host(str(root))
    git(root, "init", "-q")
    git(root, "config", "user.email", "guard@test")
    git(root, "config", "user.name", "guard test")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the host as found")

    rc, stats, tasks = run_role(root)
    assert rc == 0 and stats["failures"] == 0

    tree = subprocess.run(["/usr/bin/python3", str(root / ".zoe-guard" / "validate_databases.py"), "--json"],
                          capture_output=True, text=True)
    flagged = {os.path.relpath(p["path"], str(root / "data")) for p in json.loads(tree.stdout)["problems"]}
    on_disk = set(os.listdir(str(root / "data")))
    assert tree.returncode == 1
    assert flagged == on_disk - {"zoe.db", "memory.db", "zoe.db-wal", "zoe.db-shm", "memory.db-wal", "memory.db-shm"}

    exempt = record["exempt_files"][0]
    with open(str(root / exempt), "a") as handle:
        handle.write("\n# auth.db and learning.db are folded into zoe.db\n")
    git(root, "add", exempt)
    result = commit(root, "migration notes")
    assert result.returncode == 0, result.stderr

    code = sorted(f for f in record["reference_files"] if f.startswith("services/") and f.endswith(".py"))[0]
    with open(str(root / code), "a") as handle:
        handle.write('\nEXTRA_DB = "/app/data/tool_registry.db"\n')
    git(root, "add", code)
    result = commit(root, "new reference")
    assert result.returncode != 0 and "tool_registry.db" in result.stderr
