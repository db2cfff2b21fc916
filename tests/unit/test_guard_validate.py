"""The guard's validate_databases.py, run as the hook runs it: a bare python3 in a real git repository.

Each commit case stages real files (real SQLite databases made with sqlite3) in a fresh `git init`
repository and runs the script in `--staged` mode; the tree case runs it on a real data directory.
A few pure functions (name matching, globs, diff parsing) are tested directly.
"""

import importlib.util
import json
import os
import sqlite3
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "roles", "guard", "files", "validate_databases.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"

RETIRED = ["auth.db", "developer_tasks.db", "sessions.db", "satisfaction.db", "self_awareness.db", "learning.db",
           "agent_planning.db", "tool_registry.db", "snapshots.db", "model_performance.db", "context_cache.db",
           "knowledge.db", "aider_conversations.db"]
ALLOWED = ["zoe.db", "memory.db"]
EXEMPT = ["scripts/migration/**", "docs/migration/**"]


def load_script():
    spec = importlib.util.spec_from_file_location("validate_databases", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guard = load_script()


def make_db(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT)")
        conn.execute("INSERT INTO users (username) VALUES ('admin')")
    conn.close()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def git(repo, *args):
    return subprocess.run(["git"] + list(args), cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path):
    """A real git repository with one clean commit, and the guard's config file beside a copy of the script."""
    root = tmp_path / "zoe"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "guard@test")
    git(root, "config", "user.name", "guard test")
    write(str(root / "services" / "core" / "app.py"), 'DATABASE = "/app/data/zoe.db"\n')
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture()
def config(tmp_path, repo):
    path = tmp_path / "validate_databases.json"
    path.write_text(json.dumps({"root": str(repo), "data_dir": str(repo / "data"), "allowed": ALLOWED,
                                "retired": RETIRED, "exempt": EXEMPT}))
    return str(path)


def run_script(cwd, *args):
    return subprocess.run([PYTHON, SCRIPT] + list(args), cwd=cwd, capture_output=True, text=True)


def stage(repo, files):
    """Create each file (a SQLite database for ('db', ...) entries, else text) and `git add` it."""
    for relpath, content in files.items():
        full = str(repo / relpath)
        if content is None:
            make_db(full)
        else:
            write(full, content)
        git(repo, "add", "--", relpath)


# (id, files to stage (None = a real SQLite database), refused?, expected words in the output)
COMMIT_CASES = [
    ("retired-db-in-data", {"data/auth.db": None}, True, ["data/auth.db", "retired database auth.db"]),
    ("sqlite-named-bin", {"assets/foo.bin": None}, True, ["assets/foo.bin", "new SQLite database file"]),
    ("allowed-name-still-not-in-git", {"data/zoe.db": None}, True, ["data/zoe.db"]),
    ("empty-file-db-name", {"cache/state.sqlite3": ""}, True, ["cache/state.sqlite3", "by its name"]),
    ("sidecar-name", {"data/x.db-wal": "junk"}, True, ["data/x.db-wal", "sidecar"]),
    ("retired-reference", {"services/core/config.py": 'DB = "/app/data/learning.db"\n'}, True,
     ["services/core/config.py:1", "retired database learning.db"]),
    ("reference-on-later-line", {"docs/ops.md": "# Ops\n\nBack up sessions.db first.\n"}, True,
     ["docs/ops.md:3", "sessions.db"]),
    ("decoy-oauth-bak", {"services/core/config.py": 'BACKUP = "/backups/oauth.db.bak"\n'}, False, []),
    ("decoy-myauth-and-bak", {"notes.txt": "myauth.db and auth.db.bak and auth.db_old are other files\n"},
     False, []),
    ("exempt-migration-script", {"scripts/migration/consolidate_databases.py": 'OLD = ["auth.db", "learning.db"]\n'},
     False, []),
    ("exempt-migration-db", {"docs/migration/fixtures/auth.db": None}, False, []),
    ("clean-commit", {"services/core/util.py": 'DATABASE = "/app/data/zoe.db"\n', "README.md": "zoe\n"},
     False, []),
]


@pytest.mark.parametrize("files,refused,words", [c[1:] for c in COMMIT_CASES], ids=[c[0] for c in COMMIT_CASES])
def test_staged_commit(repo, config, files, refused, words):
    stage(repo, files)
    result = run_script(str(repo), "--staged", "--config", config)
    assert result.returncode == (1 if refused else 0), result.stderr
    for word in words:
        assert word in result.stderr
    if not refused:
        assert result.stderr == ""


def test_staged_modified_line_is_only_the_new_text(repo, config):
    """Only added lines count: a line that already named a retired database is not re-reported."""
    write(str(repo / "legacy.py"), 'OLD = "auth.db"\nx = 1\n')
    git(repo, "add", "legacy.py")
    git(repo, "commit", "-q", "--no-verify", "-m", "legacy")
    write(str(repo / "legacy.py"), 'OLD = "auth.db"\nx = 2\n')
    git(repo, "add", "legacy.py")
    assert run_script(str(repo), "--staged", "--config", config).returncode == 0


def test_staged_file_turned_into_database(repo, config):
    """An existing text file replaced by a SQLite database in this commit is refused."""
    os.remove(str(repo / "services" / "core" / "app.py"))
    make_db(str(repo / "services" / "core" / "app.py"))
    git(repo, "add", "services/core/app.py")
    result = run_script(str(repo), "--staged", "--config", config)
    assert result.returncode == 1
    assert "turned into a SQLite database" in result.stderr


def test_staged_json_output(repo, config):
    stage(repo, {"data/auth.db": None, "app.py": 'A = "knowledge.db"\n'})
    result = run_script(str(repo), "--staged", "--config", config, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["mode"] == "staged"
    assert sorted((p["path"], p["line"]) for p in report["problems"]) == [("app.py", 1), ("data/auth.db", None)]


def test_staged_uses_the_config_beside_the_script(tmp_path, repo):
    """The hook passes no arguments: the config is read from beside the installed script."""
    install = repo / ".zoe-guard"
    install.mkdir()
    script = install / "validate_databases.py"
    script.write_bytes(open(SCRIPT, "rb").read())
    (install / "validate_databases.json").write_text(json.dumps({"retired": ["learning.db"], "exempt": []}))
    stage(repo, {"app.py": 'DB = "/app/data/learning.db"\n'})
    result = subprocess.run([PYTHON, str(script), "--staged"], cwd=str(repo / "services"),
                            capture_output=True, text=True)
    assert result.returncode == 1 and "app.py:1" in result.stderr
    # The guard's own files name every retired database; they are exempt even when staged.
    git(repo, "rm", "-q", "--cached", "app.py")
    git(repo, "add", "-f", ".zoe-guard")
    result = subprocess.run([PYTHON, str(script), "--staged"], cwd=str(repo), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_staged_outside_a_git_repo_cannot_check(tmp_path, config):
    outside = tmp_path / "plain"
    outside.mkdir()
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path))
    result = subprocess.run([PYTHON, SCRIPT, "--staged", "--config", config], cwd=str(outside),
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "cannot check" in result.stderr


def test_tree_mode_flags_a_stray_database(repo):
    data = repo / "data"
    for name in ("zoe.db", "memory.db", "sessions.db"):
        make_db(str(data / name))
    write(str(data / "zoe.db-wal"), "")
    write(str(data / "notes.txt"), "sessions.db was folded\n")
    result = run_script(str(repo), "--data-dir", str(data), "--allowed", "zoe.db", "--allowed", "memory.db")
    assert result.returncode == 1
    assert str(data / "sessions.db") in result.stderr
    assert "zoe.db" not in result.stderr.replace(str(data / "sessions.db"), "")
    assert "notes.txt" not in result.stderr


@pytest.mark.parametrize("layout,flagged", [
    ({"zoe.db": "db", "memory.db": "db"}, []),
    ({"zoe.db": "db", "blob.bin": "db"}, ["blob.bin"]),
    ({"zoe.db": "db", "old/zoe.db": "db"}, ["old/zoe.db"]),
    ({"zoe.db": "db", "empty.sqlite": ""}, ["empty.sqlite"]),
    ({"zoe.db": "db", "auth.db-journal": ""}, ["auth.db-journal"]),
], ids=["clean", "by-header", "copy-in-subdir", "by-name", "stray-sidecar"])
def test_tree_mode_layouts(tmp_path, layout, flagged):
    data = tmp_path / "data"
    for rel, kind in layout.items():
        if kind == "db":
            make_db(str(data / rel))
        else:
            write(str(data / rel), kind)
    result = run_script(str(tmp_path), "--data-dir", str(data), "--allowed", "zoe.db", "--allowed", "memory.db",
                        "--json")
    report = json.loads(result.stdout)
    assert sorted(os.path.relpath(p["path"], str(data)) for p in report["problems"]) == flagged
    assert result.returncode == (1 if flagged else 0)


def test_tree_mode_reads_the_config(tmp_path, config, repo):
    make_db(str(repo / "data" / "learning.db"))
    result = run_script(str(tmp_path), "--config", config)
    assert result.returncode == 1 and "learning.db" in result.stderr


def test_tree_mode_missing_data_dir(tmp_path):
    result = run_script(str(tmp_path), "--data-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("text,found", [
    ('DB = "/app/data/learning.db"', ["learning.db"]),
    ("auth.db", ["auth.db"]),
    ("see auth.db.", ["auth.db"]),
    ("`sessions.db`,knowledge.db;", ["sessions.db", "knowledge.db"]),
    ("oauth.db.bak", []),
    ("myauth.db", []),
    ("auth.db.bak", []),
    ("auth.db_old", []),
    ("auth.db-wal", []),
    ("backup.auth.db", []),
    ("/app/data/developer_tasks.db", ["developer_tasks.db"]),
], ids=["quoted-path", "bare", "sentence-end", "punctuation", "oauth-bak", "myauth", "auth-bak", "underscore-suffix",
        "sidecar", "dotted-prefix", "long-name"])
def test_reference_pattern(text, found):
    pattern = guard.reference_pattern(RETIRED)
    assert [m.group("name") for m in pattern.finditer(text)] == found


def test_reference_pattern_matches_the_demo_audit():
    """Same semantics as tools/zoe_demo/tree.py REFERENCE_RE, on the decoys the demo host plants."""
    tree = pytest.importorskip("zoe_demo.tree")
    names = [n for n in tree.ALL_NAMES if n in RETIRED]
    ours = guard.reference_pattern(names)
    samples = ["x = 'auth.db'", "oauth.db.bak", "auth.db.bak", "myauth.db", "see knowledge.db.", "a/learning.db:ro"]
    for text in samples:
        theirs = [m.group("name") for m in tree.REFERENCE_RE.finditer(text) if m.group("name") in names]
        assert [m.group("name") for m in ours.finditer(text)] == theirs, text


@pytest.mark.parametrize("pattern,path,match", [
    ("scripts/migration/**", "scripts/migration/consolidate_databases.py", True),
    ("scripts/migration/**", "scripts/migration/sub/dir/x.py", True),
    ("scripts/migration/**", "scripts/migrationx/x.py", False),
    ("docs/*.md", "docs/a.md", True),
    ("docs/*.md", "docs/sub/a.md", False),
    ("**/fixtures/*.db", "tests/unit/fixtures/auth.db", True),
    ("**/fixtures/*.db", "fixtures/auth.db", True),
    ("data/?.db", "data/a.db", True),
], ids=["doublestar", "doublestar-deep", "prefix-not-dir", "star", "star-no-slash", "leading-doublestar",
        "leading-doublestar-top", "question"])
def test_glob_regex(pattern, path, match):
    assert bool(guard.glob_regex(pattern).match(path)) is match


def test_added_lines_counts_hunks():
    """A added line that looks like a file header is content; line numbers follow the hunk header."""
    diff = "\n".join([
        "diff --git a/x.py b/x.py",
        "--- a/x.py",
        "+++ b/x.py",
        "@@ -1,0 +2,2 @@",
        "++++ b/evil auth.db",
        "+second",
        "@@ -10 +11 @@",
        "-old",
        "+new",
        "\\ No newline at end of file",
        "diff --git a/gone.py b/gone.py",
        "--- a/gone.py",
        "+++ /dev/null",
        "@@ -1 +0,0 @@",
        "-bye",
    ])
    assert list(guard.added_lines(diff)) == [("x.py", 2, "+++ b/evil auth.db"), ("x.py", 3, "second"),
                                             ("x.py", 11, "new")]


@pytest.mark.parametrize("name,kind", [
    ("auth.db", "database"), ("X.SQLITE", "database"), ("a.sqlite3", "database"), ("zoe.db-wal", "sidecar"),
    ("a.sqlite-journal", "sidecar"), ("auth.db.bak", None), ("db", None), ("notes-wal", None),
], ids=["db", "upper-sqlite", "sqlite3", "wal", "journal", "bak", "bare-db", "wal-not-db"])
def test_database_name_kind(name, kind):
    assert guard.database_name_kind(name) == kind
