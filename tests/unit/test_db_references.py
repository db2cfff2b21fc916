"""db_references: audit and rewrite references to database names in a source tree.

The demo host generator (tools/zoe_demo) plants 441 references in 95 files and records each one;
the audit must find exactly those, and a rewrite must leave none outside the exempt files.
"""

import collections
import hashlib
import json
import os
import re
import subprocess

import pytest

from ansible.module_utils.db_references import (
    DEFAULT_SKIP_DIRS, OptionError, RootError, classify, name_pattern, plan_references, walk_files)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tree_digests(root):
    result = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                result[os.path.relpath(path, root)] = (hashlib.sha256(handle.read()).hexdigest(),
                                                       os.stat(path).st_mtime_ns)
    return result


def write(root, relpath, data, mode=0o644):
    path = os.path.join(str(root), relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


# --- matching ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, found", [
    ("/app/data/auth.db", ["auth.db"]),
    ('"auth.db"', ["auth.db"]),
    ("see auth.db.", ["auth.db"]),
    ("auth.db-wal", ["auth.db"]),
    ("auth.db-shm and auth.db-journal", ["auth.db", "auth.db"]),
    ("${DB:-auth.db}", ["auth.db"]),
    ("oauth.db", []),
    ("myauth.db", []),
    ("zoe-auth.db", []),
    (".auth.db", []),
    ("auth.db.bak", []),
    ("auth.db_old", []),
    ("auth.dbx", []),
    ("auth.db-backup", []),
    ("sessions.db,auth.db", ["sessions.db", "auth.db"]),
], ids=["path", "quoted", "sentence-end", "wal-sidecar", "shm-journal", "env-default", "oauth", "myauth",
        "hyphen-prefix", "hidden", "bak-suffix", "underscore-suffix", "longer-ext", "hyphen-suffix", "two"])
def test_name_boundaries(text, found):
    pattern = name_pattern(["auth.db", "sessions.db"])
    assert [m.group(0) for m in pattern.finditer(text)] == found


@pytest.mark.parametrize("relpath, line, kind", [
    ("docs/DATABASES.md", "The `auth.db` file", "doc"),
    ("README.md", "auth.db", "doc"),
    ("services/a/db.py", "# opened auth.db here", "comment"),
    ("services/a/db.py", 'x = 1  # auth.db', "comment"),
    ("services/a/db.py", 'x = "a # b auth.db"', "path_literal"),
    ("web/config.js", "// auth.db", "comment"),
    ("services/a/db.py", 'DB = os.getenv("DB", "/app/data/auth.db")', "env_default"),
    ("services/a/db.py", 'DB = os.environ.get("DB", "auth.db")', "env_default"),
    ("scripts/run.sh", 'DB="${DB:-/app/data/auth.db}"', "env_default"),
    ("services/a/db.py", 'conn = sqlite3.connect("/app/data/auth.db")', "connect_call"),
    ("services/a/db.py", 'engine = create_engine("sqlite:////app/data/auth.db")', "connect_call"),
    ("docker-compose.yml", "  - DATABASE_PATH=/app/data/auth.db", "path_literal"),
    ("services/a/db.py", "SOURCES = ['auth.db']", "path_literal"),
    ("Makefile", "\tcp auth.db out", "other"),
], ids=["doc-dir", "readme", "py-comment", "trailing-comment", "hash-in-string", "js-comment", "getenv",
        "environ-get", "shell-default", "connect", "create-engine", "compose-env", "list-literal", "bare"])
def test_classify(relpath, line, kind):
    column = line.index("auth.db")
    assert classify(relpath, line, column) == kind


def test_include_exclude_and_exempt_are_zoe_glob_path_globs(tmp_path):
    """The globs of include, exclude and exempt mean what zoe_glob says (tests/unit/test_zoe_glob.py holds its
    cases): `*` stays in one component, `**` crosses `/`, a glob without `/` is a name at any depth, an absolute
    exempt path is taken relative to the root."""
    for relpath in ("a.py", "services/x/db.py", "services/x/y/db.py", "docs/a/b.md", "scripts/migration/m.py",
                    "scripts/migration/old/m.py"):
        write(tmp_path, relpath, 'SRC = "auth.db"\n')
    root = str(tmp_path)
    assert walk_files(root, include=["services/*/db.py"])[0] == ["services/x/db.py"]
    assert walk_files(root, include=["services/**/db.py", "*.md"])[0] == [
        "docs/a/b.md", "services/x/db.py", "services/x/y/db.py"]
    assert walk_files(root, exclude=["services", "scripts/*/*.py", "*.md"])[0] == ["a.py", "scripts/migration/old/m.py"]
    plan = plan_references(root, mode="rewrite", mapping={"auth.db": "zoe.db"},
                           exempt=["scripts/migration/*.py", os.path.join(root, "a.py")])
    assert sorted(item.relpath for item in plan.files if item.left_alone) == ["a.py", "scripts/migration/m.py"]


def test_walk_skips_ignored_binary_large_and_skip_dirs(tmp_path):
    write(tmp_path, ".gitignore", "logs/\n*.log\n!keep.log\n/build\n")
    write(tmp_path, "a.py", "auth.db\n")
    write(tmp_path, "logs/x.txt", "auth.db\n")
    write(tmp_path, "sub/y.log", "auth.db\n")
    write(tmp_path, "sub/keep.log", "auth.db\n")
    write(tmp_path, "build/z.py", "auth.db\n")
    write(tmp_path, "sub/build/z.py", "auth.db\n")
    write(tmp_path, "node_modules/m.js", "auth.db\n")
    write(tmp_path, "backups/2025/auth.py", "auth.db\n")
    write(tmp_path, "img.png", b"\x89PNG\x00auth.db")
    write(tmp_path, "big.txt", "auth.db\n" * 200)
    write(tmp_path, "sub/.gitignore", "*.md\n")
    write(tmp_path, "sub/n.md", "auth.db\n")
    os.symlink(os.path.join(str(tmp_path), "a.py"), os.path.join(str(tmp_path), "link.py"))
    files, skipped = walk_files(str(tmp_path), skip_dirs=(".git", "node_modules", "backups"), max_file_size=1000)
    assert files == [".gitignore", "a.py", "sub/.gitignore", "sub/build/z.py", "sub/keep.log"]
    assert sorted((s["file"], s["reason"].split(" ")[0]) for s in skipped) == [("big.txt", "larger"), ("img.png", "binary")]
    files, _ = walk_files(str(tmp_path), respect_gitignore=False, skip_dirs=("backups/2025",), max_file_size=0)
    assert "logs/x.txt" in files and "node_modules/m.js" in files and "backups/2025/auth.py" not in files


def test_walk_honours_git_info_exclude(tmp_path):
    """The repository's own ignore file (the guard adds its install directory there) counts like a .gitignore."""
    write(tmp_path, ".git/info/exclude", "# local\n/tools-local/\n")
    write(tmp_path, "tools-local/copy.py", 'SRC = "auth.db"\n')
    write(tmp_path, "sub/tools-local/copy.py", 'SRC = "auth.db"\n')
    files, _ = walk_files(str(tmp_path))
    assert files == ["sub/tools-local/copy.py"]
    files, _ = walk_files(str(tmp_path), respect_gitignore=False, skip_dirs=())
    assert "tools-local/copy.py" in files


# --- plan on a small tree ----------------------------------------------------------------------------

@pytest.fixture
def small_tree(tmp_path):
    write(tmp_path, "services/auth/db.py",
          'import os, sqlite3\nDB = os.getenv("DATABASE_PATH", "/app/data/auth.db")  # was auth.db\n'
          'conn = sqlite3.connect("/app/data/sessions.db")\nOTHER = "oauth.db.bak"\nBAK = "/app/data/auth.db.bak"\n'
          'KEEP = "memory.db"\n', 0o640)
    write(tmp_path, "docs/DATABASES.md", "See auth.db and sessions.db.\n")
    write(tmp_path, "scripts/migration/merge.py", 'SRC = "/app/data/auth.db"\n')
    write(tmp_path, ".env", "JWT_SECRET=8f14e45fceea167a5a36dedd4bea2543\nDB=/app/data/auth.db\n")
    write(tmp_path, "data/auth.db", b"SQLite format 3\x00auth.db")
    return str(tmp_path)


MAPPING = {"auth.db": "zoe.db", "sessions.db": "zoe.db"}


def test_audit_reports_references_and_writes_nothing(small_tree):
    before = tree_digests(small_tree)
    plan = plan_references(small_tree, names=["auth.db", "sessions.db", "memory.db"])
    assert not plan.changed
    got = [(r["file"], r["line"], r["name"], r["kind"]) for r in plan.references()]
    assert got == [
        (".env", 2, "auth.db", "path_literal"),
        ("docs/DATABASES.md", 1, "auth.db", "doc"), ("docs/DATABASES.md", 1, "sessions.db", "doc"),
        ("scripts/migration/merge.py", 1, "auth.db", "path_literal"),
        ("services/auth/db.py", 2, "auth.db", "env_default"), ("services/auth/db.py", 2, "auth.db", "comment"),
        ("services/auth/db.py", 3, "sessions.db", "connect_call"), ("services/auth/db.py", 6, "memory.db", "path_literal"),
    ]
    assert plan.skipped == [{"file": "data/auth.db", "reason": "binary"}]
    assert tree_digests(small_tree) == before


def test_rewrite_plan_respects_exempt_and_mapping(small_tree):
    before = tree_digests(small_tree)
    plan = plan_references(small_tree, mode="rewrite", mapping=MAPPING, names=["memory.db"],
                           exempt=["scripts/migration/*.py"])
    assert tree_digests(small_tree) == before
    assert [f.relpath for f in plan.changed_files] == [".env", "docs/DATABASES.md", "services/auth/db.py"]
    assert plan.changes() == {".env": 1, "docs/DATABASES.md": 2, "services/auth/db.py": 3}
    assert sorted((r["file"], r["name"], r["reason"]) for r in plan.left_alone()) == [
        ("scripts/migration/merge.py", "auth.db", "exempt"), ("services/auth/db.py", "memory.db", "not in mapping")]
    code = [f for f in plan.files if f.relpath == "services/auth/db.py"][0].after
    assert 'OTHER = "oauth.db.bak"' in code and 'BAK = "/app/data/auth.db.bak"' in code
    assert 'sqlite3.connect("/app/data/zoe.db")' in code
    diffs = json.dumps(plan.diffs()) + plan.unified_diff()
    assert "8f14e45fceea167a5a36dedd4bea2543" not in diffs and "+DB=/app/data/zoe.db" in plan.unified_diff()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"mode": "rewrite", "names": ["auth.db"]}, OptionError, "needs O(mapping)"),
    ({}, OptionError, "nothing to look for"),
    ({"mode": "rewrite", "mapping": {"auth.db": "zoe.db", "zoe.db": "x.db"}}, OptionError, "rerun"),
], ids=["rewrite-without-mapping", "no-names", "chained-mapping"])
def test_option_errors(small_tree, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        plan_references(small_tree, **kwargs)


def test_missing_root():
    with pytest.raises(RootError):
        plan_references("/nonexistent/zoe", names=["auth.db"])


# --- files left for review -------------------------------------------------------------------------
# Each text is a whole file written to a real tree; `sign` is the rule that must leave it for review
# (None: it must be rewritten). The shapes follow the real Zoe repository: consolidate_databases.py's
# docstrings name the source and the primary together, validate_databases.py keeps FORBIDDEN_DATABASES
# beside ALLOWED_DATABASES, update_database_references.py maps each old name to zoe.db, and the guard role
# writes its retired and allowed lists as JSON.

REVIEW_CASES = [
    ("scripts/copy_users.py",
     'import sqlite3\nSOURCE_DB = "/app/data/auth.db"\nTARGET_DB = "/app/data/zoe.db"\n\n\n'
     'def copy_users():\n    src = sqlite3.connect(SOURCE_DB)\n    dst = sqlite3.connect(TARGET_DB)\n'
     '    for row in src.execute("SELECT id, username FROM users"):\n'
     '        dst.execute("INSERT OR IGNORE INTO users (id, username) VALUES (?, ?)", row)\n    dst.commit()\n',
     "opposite roles", [2, 3]),
    ("tools/import_sessions.py",
     'import sqlite3\n\n\ndef main():\n    src = sqlite3.connect("/app/data/sessions.db")\n'
     '    dst = sqlite3.connect("/app/data/zoe.db")\n    dst.executemany("INSERT INTO sessions VALUES (?, ?)",\n'
     '                    src.execute("SELECT id, user_id FROM sessions"))\n',
     "opposite roles", [5, 6]),
    ("scripts/attach_merge.py",
     'import sqlite3\nconn = sqlite3.connect("/app/data/zoe.db")\n'
     'conn.execute("ATTACH DATABASE ? AS a", ("/app/data/auth.db",))\n'
     'conn.execute("INSERT OR IGNORE INTO users SELECT * FROM a.users")\n',
     "attach", [3]),
    ("scripts/attach_merge.sh",
     '#!/bin/sh\nsqlite3 "$DATA/zoe.db" <<SQL\nATTACH DATABASE \'$DATA/learning.db\' AS l;\n'
     'INSERT INTO events SELECT * FROM l.events;\nSQL\n',
     "attach", [3]),
    ("tools/audit/check_databases.py",
     'import os\nimport sys\n\nFORBIDDEN = [\n    "auth.db",\n    "sessions.db",\n]\n'
     'ALLOWED = ["zoe.db", "memory.db"]\n\n'
     'found = [name for name in os.listdir(sys.argv[1]) if name in FORBIDDEN]\nsys.exit(1 if found else 0)\n',
     "opposite roles", [5, 8]),
    ("tools/audit/validate_databases.py",
     'ALLOWED_DATABASES = {\n    "zoe.db": "the primary",\n    "memory.db": "embeddings",\n}\n'
     'FORBIDDEN_DATABASES = {\n    "auth.db": "Consolidated into zoe.db",\n}\n',
     "together", [6]),
    ("scripts/update_references.py",
     'RENAMES = {\n    "auth.db": "zoe.db",\n    "developer_tasks.db": "zoe.db",\n}\n',
     "together", [2, 3]),
    (".guard/validate_databases.json",
     json.dumps({"allowed": ["zoe.db", "memory.db"], "retired": ["auth.db", "sessions.db"], "exempt": []},
                indent=2) + "\n",
     "opposite roles", [3, 7]),
    ("Makefile", "restore-auth:\n\tcp data/auth.db data/zoe.db\n", "together", [2]),
    ("scripts/export_users.py", 'SRC = "/app/data/zoe.db"\nDST = "/app/data/auth.db"\n', "opposite roles", [1, 2]),
    ("docs/MERGE.md", "# Merge\n\nThe users of auth.db are merged into zoe.db.\n", "together", [3]),
    # Rewritten: code that uses the databases, whatever it opens.
    ("services/zoe-auth/db.py", 'import os\nDB = os.getenv("AUTH_DB", "/app/data/auth.db")\n', None, None),
    ("services/zoe-core/stores.py",
     'import os\nimport sqlite3\nUSERS_DB = "/app/data/auth.db"\nTASKS_DB = os.getenv("ZOE_DB", "/app/data/zoe.db")\n'
     'users = sqlite3.connect(USERS_DB)\ntasks = sqlite3.connect(TASKS_DB)\n', None, None),
    ("deploy/stack.yml",
     "services:\n  zoe-auth:\n    environment:\n      - DATABASE_PATH=/app/data/auth.db\n"
     "  zoe-core:\n    environment:\n      DATABASE_PATH: /app/data/zoe.db\n", None, None),
    ("scripts/backup.py",
     'import os\nBACKUP_SOURCES = []\nBACKUP_SOURCES.append("data/auth.db")\nBACKUP_SOURCES.append("data/zoe.db")\n'
     'ZOE_DB = os.environ.get("ZOE_DB", "data/zoe.db")\n', None, None),
    ("services/zoe-core/sync.py",
     'import sqlite3\nrows = sqlite3.connect("/app/data/auth.db").execute("SELECT username FROM users").fetchall()\n'
     'sqlite3.connect("/app/data/zoe.db").executemany("INSERT INTO people (name) VALUES (?)", rows)\n', None, None),
    ("services/zoe-core/tasks.py",
     '# the legacy export still reads auth.db\nTARGET = "/app/data/zoe.db"\n', None, None),
    ("docs/OPERATIONS.md",
     "Back up the source tree before you touch auth.db.\n\nThe current schema of zoe.db is in schema.sql.\n",
     None, None),
]
REVIEW_IDS = ["migration-source-target", "migration-src-dst-handles", "attach-python", "attach-shell",
              "validator-lists", "validator-dicts", "mapping-old-new", "guard-json", "copy-command",
              "export-reversed", "doc-same-line", "service-only-retired", "service-both-databases",
              "compose-like-yaml", "backup-list-same-role", "sql-keywords", "comment-words", "doc-separate-lines"]


@pytest.mark.parametrize("relpath, text, sign, lines", REVIEW_CASES, ids=REVIEW_IDS)
def test_left_for_review(tmp_path, relpath, text, sign, lines):
    """A file naming a retired name and the primary in roles that differ stays byte-identical and is listed
    with its sign and lines; a file that only uses the databases is rewritten."""
    path = write(tmp_path, relpath, text)
    mapping = {"auth.db": "zoe.db", "sessions.db": "zoe.db", "developer_tasks.db": "zoe.db", "learning.db": "zoe.db"}
    plan = plan_references(str(tmp_path), mode="rewrite", mapping=mapping, names=["zoe.db", "memory.db"])
    review = plan.left_for_review()
    if sign is None:
        assert review == [] and plan.changed_files[0].relpath == relpath
        assert "zoe.db" in plan.changed_files[0].after and "auth.db" not in plan.changed_files[0].after
        return
    assert [(r["file"], r["lines"]) for r in review] == [(relpath, lines)]
    assert {"together": "together", "attach": "ATTACH", "opposite roles": "side"}[sign] in review[0]["reason"]
    assert not plan.changed
    assert {r["reason"] for r in plan.left_alone() if r["name"] in mapping} == {"left for review"}
    with open(path, "rb") as handle:
        assert handle.read() == text.encode()


def test_review_is_rewrite_only_and_exempt_wins(tmp_path):
    write(tmp_path, "scripts/migration/copy.py", 'SRC = "/app/data/auth.db"\nDST = "/app/data/zoe.db"\n')
    write(tmp_path, "tools/copy.py", 'SRC = "/app/data/auth.db"\nDST = "/app/data/zoe.db"\n')
    audit = plan_references(str(tmp_path), mapping=MAPPING, names=["zoe.db"])
    assert audit.left_for_review() == []
    plan = plan_references(str(tmp_path), mode="rewrite", mapping=MAPPING, names=["zoe.db"],
                           exempt=["scripts/migration/**"])
    assert [r["file"] for r in plan.left_for_review()] == ["tools/copy.py"]
    assert {(r["file"], r["reason"]) for r in plan.left_alone()} == {
        ("scripts/migration/copy.py", "exempt"), ("tools/copy.py", "left for review")}


def test_guard_validator_keeps_working(tmp_path):
    """The guard's script and configuration in the checkout: skipped where the guard installs them, and
    left for review anywhere else; the validator still refuses auth.db and allows zoe.db afterwards."""
    import shutil
    import sqlite3
    script = os.path.join(REPO, "roles", "guard", "files", "validate_databases.py")
    root = tmp_path / "zoe"
    for name in ("zoe.db", "auth.db"):
        os.makedirs(str(root / "data"), exist_ok=True)
        sqlite3.connect(str(root / "data" / name)).close()
    config = {"root": str(root), "data_dir": str(root / "data"), "allowed": ["zoe.db", "memory.db"],
              "retired": ["auth.db", "sessions.db"], "exempt": []}
    for install in (".zoe-guard", "tools/guard"):
        os.makedirs(str(root / install))
        shutil.copy(script, str(root / install / "validate_databases.py"))
        write(root, install + "/validate_databases.json", json.dumps(config, indent=2) + "\n")
    before = tree_digests(str(root))
    plan = plan_references(str(root), mode="rewrite", mapping=MAPPING, names=["zoe.db", "memory.db"],
                           skip_dirs=DEFAULT_SKIP_DIRS + ("data",))
    assert [r["file"] for r in plan.left_for_review()] == ["tools/guard/validate_databases.json"]
    assert not any(item.relpath.startswith(".zoe-guard/") for item in plan.files)

    class Module(object):
        @staticmethod
        def atomic_move(src, dest):
            os.rename(src, dest)

    from ansible.module_utils.db_references import apply_references
    apply_references(Module(), plan)
    after = tree_digests(str(root))
    for relpath in (".zoe-guard/validate_databases.py", ".zoe-guard/validate_databases.json",
                    "tools/guard/validate_databases.json"):
        assert after[relpath][0] == before[relpath][0]
    for install in (".zoe-guard", "tools/guard"):
        result = subprocess.run(["/usr/bin/python3", str(root / install / "validate_databases.py"), "--json"],
                                capture_output=True, text=True)
        flagged = [os.path.basename(p["path"]) for p in json.loads(result.stdout)["problems"]]
        assert result.returncode == 1 and flagged == ["auth.db"]


# --- the demo host -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from zoe_demo import FOLD_DATABASES, KEEP_DATABASES, UNKNOWN_DATABASES, build_demo_host
    root = str(tmp_path_factory.mktemp("demo") / "zoe")
    record = build_demo_host(root, seed=1)
    names = [os.path.basename(n) for n in KEEP_DATABASES + FOLD_DATABASES + UNKNOWN_DATABASES]
    fold = [os.path.basename(n) for n in FOLD_DATABASES]
    return root, record, names, fold


def test_audit_matches_the_generator_record(demo):
    root, record, names, _ = demo
    plan = plan_references(root, names=names)
    mine = collections.Counter((r["file"], r["line"], r["name"], r["kind"]) for r in plan.references())
    planted = collections.Counter((r["file"], r["line"], r["name"], r["kind"]) for r in record["references"])
    assert mine == planted
    assert len(plan.references()) == 441 and len(plan.counts()) == 95
    assert sorted(plan.counts()) == sorted(record["reference_files"])


def test_rewrite_leaves_retired_names_only_in_exempt_and_review_files(demo, tmp_path):
    """The demo's planted import tool and validator are left for review, byte-identical; every other
    file that names a retired database is rewritten."""
    import shutil
    source, record, names, fold = demo
    root = str(tmp_path / "zoe")
    shutil.copytree(source, root, symlinks=True)
    exempt = record["exempt_files"]
    before = tree_digests(root)
    plan = plan_references(root, mode="rewrite", mapping={name: "zoe.db" for name in fold}, names=names,
                           exempt=exempt)
    assert tree_digests(root) == before

    class Module(object):
        @staticmethod
        def atomic_move(src, dest):
            os.rename(src, dest)

    from ansible.module_utils.db_references import apply_references
    review = record["review_files"]
    assert sorted(r["file"] for r in plan.left_for_review()) == sorted(review)
    apply_references(Module(), plan)
    after = plan_references(root, names=names)
    retired_left = [r for r in after.references() if r["name"] in fold]
    assert retired_left and {r["file"] for r in retired_left} == set(exempt) | set(review)
    for relpath in exempt + review:
        assert tree_digests(root)[relpath][0] == before[relpath][0]
    assert {r["reason"] for r in plan.left_alone()} == {"exempt", "left for review", "not in mapping"}
    again = plan_references(root, mode="rewrite", mapping={name: "zoe.db" for name in fold}, names=names,
                            exempt=exempt)
    assert not again.changed


# --- the module through ansible (bare /usr/bin/python3 on the host side) ----------------------------

def run_module(name, args, *flags):
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", name,
                             "-a", json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"] + list(flags),
                            capture_output=True, text=True, cwd=REPO, env=env)
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.slow
def test_module_quartet(small_tree):
    args = {"root": small_tree, "mode": "rewrite", "mapping": MAPPING, "exempt": ["scripts/migration/*.py"]}
    before = tree_digests(small_tree)

    check = run_module("db_references", args, "--check", "--diff")
    assert check["changed"] is True and check["files_changed"] == [".env", "docs/DATABASES.md", "services/auth/db.py"]
    assert tree_digests(small_tree) == before and len(check["diff"]) == 3
    assert "8f14e45fceea167a5a36dedd4bea2543" not in json.dumps(check)

    real = run_module("db_references", args)
    assert real["changed"] is True and real["total"] == 7 and real["changes"]["services/auth/db.py"] == 3
    assert os.stat(os.path.join(small_tree, "services/auth/db.py")).st_mode & 0o777 == 0o640
    assert real["left_alone"][0]["reason"] == "exempt"

    assert run_module("db_references", args, "--check")["changed"] is False
    final = run_module("db_references", args)
    assert final["changed"] is False and final["total"] == 1  # only the exempt migration script


@pytest.mark.slow
def test_module_audit_on_missing_root_fails_cleanly():
    result = run_module("db_references", {"root": "/nonexistent/zoe", "names": ["auth.db"]})
    assert result.get("failed") is True and result["error"] == "RootError" and "O(root)" in result["msg"]
