#!/usr/bin/env python3
"""Refuse forbidden SQLite databases and new references to retired database names.

Installed on the Zoe host's checkout by the `guard` role (zoe-consolidate), next to a JSON
configuration written by the same role, so that the consolidation is not undone by a service that
re-creates `auth.db` or a commit that points code at `learning.db` again.

Two modes:

  validate_databases.py [--data-dir D] [--allowed zoe.db ...]
      Tree mode: every SQLite file under the data directory (found by its header, or by a
      *.db / *.sqlite / *.sqlite3 name, or a -wal/-shm/-journal sidecar of one) that is not an
      allowed database is listed; exit 1 when there is any.

  validate_databases.py --staged
      Pre-commit mode: what the commit adds. Refused are new SQLite files anywhere in the tree
      (databases do not belong in git: they carry password hashes and tokens) and added lines that
      name a retired database. Paths matching an `exempt` glob are not checked.

Options given on the command line replace the configuration's values; without `--config` the file
`validate_databases.json` beside this script is read when it exists. Exit status: 0 clean,
1 refused (the list is printed), 2 the check itself could not run. Standard library only: the
host's own python3 runs it.
"""

import argparse
import json
import os
import re
import subprocess
import sys

CONFIG_NAME = "validate_databases.json"
SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
HUNK_RE = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
BYPASS_HINT = ("Remove them from the commit (git rm --cached <file>), or add the path to the guard's "
               "`exempt` globs if it keeps the old names on purpose.")


class GuardError(Exception):
    """The check could not run (not a git work tree, unreadable configuration): exit 2."""


class Problem(object):
    """One refused item: where it is and why, in one sentence."""

    def __init__(self, path, reason, line=None, text=None):
        self.path = path
        self.reason = reason
        self.line = line
        self.text = text

    def as_dict(self):
        return {"path": self.path, "line": self.line, "reason": self.reason, "text": self.text}

    def __str__(self):
        where = self.path if self.line is None else "%s:%d" % (self.path, self.line)
        text = "" if self.text is None else ": %s" % self.text.strip()[:160]
        return "  %s: %s%s" % (where, self.reason, text)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------

def reference_pattern(names):
    """A regex that finds a database name standing on its own, or None for no names.

    Same semantics as the audit (tools/zoe_demo/tree.py REFERENCE_RE and db_references): a name is
    not preceded by a file-name character (`oauth.db`, `myauth.db` are other files) and not
    followed by one or by `.` + alphanumeric (`auth.db.bak`, `auth.db_old` are other files), while
    a sentence-ending `auth.db.` still counts.
    """
    names = sorted({n for n in names if n}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![A-Za-z0-9_.-])(?P<name>%s)(?![A-Za-z0-9_-]|\.[A-Za-z0-9])"
                      % "|".join(re.escape(n) for n in names))


def glob_regex(pattern):
    """Translate a path glob to a regex: `**` crosses directories, `*` and `?` do not.

    `scripts/migration/**` matches everything below scripts/migration; `**/fixtures/*.db` matches
    at any depth. fnmatch is not used because its `*` also crosses `/`.
    """
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^%s$" % "".join(out))


def is_exempt(relpath, exempt_res):
    """True when a repository-relative path matches one of the exempt globs."""
    relpath = relpath.replace(os.sep, "/")
    return any(rx.match(relpath) for rx in exempt_res)


def database_name_kind(name):
    """'database' for a *.db/*.sqlite/*.sqlite3 name, 'sidecar' for its -wal/-shm/-journal, else None."""
    lower = name.lower()
    for suffix in SIDECAR_SUFFIXES:
        if lower.endswith(suffix) and lower[:-len(suffix)].endswith(DATABASE_SUFFIXES):
            return "sidecar"
    if lower.endswith(DATABASE_SUFFIXES):
        return "database"
    return None


def file_has_sqlite_header(path):
    """True when a regular file starts with the SQLite header (its name does not matter)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Tree mode: the data directory
# ---------------------------------------------------------------------------------------------

def check_data_dir(data_dir, allowed):
    """Every SQLite file under `data_dir` that is not an allowed database (or its sidecar).

    `allowed` names are relative to the data directory: `zoe.db` allows data/zoe.db, not a copy in
    data/old/zoe.db, which a service could open just as well.
    """
    if not os.path.isdir(data_dir):
        raise GuardError("the data directory %s does not exist" % data_dir)
    allowed = {a.replace(os.sep, "/") for a in allowed}
    allowed_with_sidecars = allowed | {a + s for a in allowed for s in SIDECAR_SUFFIXES}
    problems = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, data_dir).replace(os.sep, "/")
            if rel in allowed_with_sidecars:
                continue
            kind = database_name_kind(name)
            if file_has_sqlite_header(full):
                problems.append(Problem(full, "SQLite database that is not allowed in the data directory"))
            elif kind == "database":
                problems.append(Problem(full, "database file name that is not allowed in the data directory"))
            elif kind == "sidecar":
                problems.append(Problem(full, "SQLite sidecar of a database that is not allowed"))
    return problems


# ---------------------------------------------------------------------------------------------
# Staged mode: what the commit adds
# ---------------------------------------------------------------------------------------------

def git(root, *args):
    """Run git in `root` and return its stdout bytes; a failure is a GuardError."""
    try:
        proc = subprocess.run(["git", "-c", "core.quotepath=off"] + list(args), cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as err:
        raise GuardError("cannot run git: %s" % err)
    if proc.returncode != 0:
        raise GuardError("git %s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace").strip()))
    return proc.stdout


def work_tree_root(start):
    """The top of the git work tree that contains `start`."""
    return git(start, "rev-parse", "--show-toplevel").decode("utf-8", "replace").strip()


def blob_header(root, spec):
    """The first 16 bytes of a blob (`:path` for the index, `HEAD:path`), b'' when there is none."""
    try:
        proc = subprocess.Popen(["git", "cat-file", "blob", spec], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as err:
        raise GuardError("cannot run git: %s" % err)
    head = proc.stdout.read(len(SQLITE_HEADER))
    proc.stdout.close()
    proc.wait()  # git may die of SIGPIPE after the first bytes: only the bytes matter
    return head


def staged_changes(root):
    """(status, path) for every path the commit adds or changes, renames split into delete + add."""
    out = git(root, "diff", "--cached", "--name-status", "-z", "--no-renames", "--diff-filter=AMT")
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    return [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]


def added_lines(diff_text):
    """(path, line number, text) for every line the staged diff adds.

    Parses `git diff -U0` by counting each hunk's lines, so an added line that itself starts with
    `+++ ` is content, not a file header.
    """
    path, old_left, new_left, lineno = None, 0, 0, 0
    for raw in diff_text.split("\n"):
        if old_left > 0 or new_left > 0:
            if raw.startswith("+"):
                yield path, lineno, raw[1:]
                lineno += 1
                new_left -= 1
            elif raw.startswith("-"):
                old_left -= 1
            elif raw.startswith(" "):
                old_left -= 1
                new_left -= 1
                lineno += 1
            continue
        if raw.startswith("diff --git "):
            path = None
        elif raw.startswith("+++ "):
            target = raw[4:]
            path = None if target == "/dev/null" else (target[2:] if target.startswith("b/") else target)
        elif raw.startswith("@@ "):
            match = HUNK_RE.match(raw)
            if match:
                old_left = int(match.group(1)) if match.group(1) is not None else 1
                lineno = int(match.group(2))
                new_left = int(match.group(3)) if match.group(3) is not None else 1


def check_staged(root, retired, exempt_res):
    """Problems in what the index would commit: new SQLite files and new retired-name references."""
    problems = []
    for status, path in staged_changes(root):
        if is_exempt(path, exempt_res):
            continue
        header_is_sqlite = blob_header(root, ":" + path) == SQLITE_HEADER
        kind = database_name_kind(os.path.basename(path))
        if status in ("M", "T"):
            # Changed, not new: refused only when it becomes a database in this commit.
            if header_is_sqlite and blob_header(root, "HEAD:" + path) != SQLITE_HEADER:
                problems.append(Problem(path, "file turned into a SQLite database"))
            continue
        if os.path.basename(path) in retired:
            problems.append(Problem(path, "new file named after retired database %s" % os.path.basename(path)))
        elif header_is_sqlite:
            problems.append(Problem(path, "new SQLite database file"))
        elif kind == "database":
            problems.append(Problem(path, "new database file (by its name)"))
        elif kind == "sidecar":
            problems.append(Problem(path, "new SQLite sidecar file (by its name)"))
    pattern = reference_pattern(retired)
    if pattern is not None:
        diff = git(root, "diff", "--cached", "-U0", "--no-color", "--no-ext-diff", "--no-renames",
                   "--src-prefix=a/", "--dst-prefix=b/", "--diff-filter=AMT")
        for path, lineno, text in added_lines(diff.decode("utf-8", "replace")):
            if path is None or is_exempt(path, exempt_res):
                continue
            for match in pattern.finditer(text):
                problems.append(Problem(path, "new reference to retired database %s" % match.group("name"),
                                        line=lineno, text=text))
    return problems


# ---------------------------------------------------------------------------------------------
# Configuration and entry point
# ---------------------------------------------------------------------------------------------

def load_config(path, explicit):
    """The JSON configuration written by the role; {} when the default file is absent."""
    if not os.path.exists(path):
        if explicit:
            raise GuardError("the configuration %s does not exist" % path)
        return {}
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as err:
        raise GuardError("cannot read the configuration %s: %s" % (path, err))
    if not isinstance(config, dict):
        raise GuardError("the configuration %s is not a JSON object" % path)
    return config


def self_exempt(root):
    """Globs for the guard's own directory when it lies inside the work tree: it names every retired database."""
    here = os.path.dirname(os.path.realpath(__file__))
    rel = os.path.relpath(here, os.path.realpath(root))
    if rel == os.curdir or rel.startswith(os.pardir):
        return []
    return [rel.replace(os.sep, "/") + "/**"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--staged", action="store_true",
                        help="check what the commit adds (pre-commit hook mode)")
    parser.add_argument("--config", help="JSON configuration (default: %s beside this script)" % CONFIG_NAME)
    parser.add_argument("--root", help="the checkout (default: the configuration's, else the current work tree)")
    parser.add_argument("--data-dir", help="the data directory checked in tree mode")
    parser.add_argument("--allowed", action="append", help="an allowed database, relative to the data dir (repeat)")
    parser.add_argument("--retired", action="append", help="a retired database name (repeat)")
    parser.add_argument("--exempt", action="append", help="a path glob that is not checked (repeat)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def run(args):
    """Check and return (mode, problems)."""
    config_path = args.config or os.path.join(os.path.dirname(os.path.realpath(__file__)), CONFIG_NAME)
    config = load_config(config_path, explicit=bool(args.config))
    exempt = args.exempt if args.exempt is not None else config.get("exempt", [])
    if args.staged:
        root = work_tree_root(args.root or os.getcwd())
        retired = args.retired if args.retired is not None else config.get("retired", [])
        exempt_res = [glob_regex(g) for g in list(exempt) + self_exempt(root)]
        return "staged", check_staged(root, retired, exempt_res)
    data_dir = args.data_dir or config.get("data_dir")
    if not data_dir:
        raise GuardError("no data directory: pass --data-dir or set data_dir in the configuration")
    allowed = args.allowed if args.allowed is not None else config.get("allowed", [])
    return "tree", check_data_dir(data_dir, allowed)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        mode, problems = run(args)
    except GuardError as err:
        if args.json:
            print(json.dumps({"ok": False, "error": str(err)}))
        else:
            sys.stderr.write("zoe-guard: cannot check: %s\n" % err)
        return 2
    if args.json:
        print(json.dumps({"ok": not problems, "mode": mode, "problems": [p.as_dict() for p in problems]}, indent=2))
    elif problems:
        what = "this commit" if mode == "staged" else "the data directory"
        sys.stderr.write("zoe-guard: refused, %d problem(s) in %s:\n" % (len(problems), what))
        sys.stderr.write("\n".join(str(p) for p in problems) + "\n")
        sys.stderr.write(("%s\n" % BYPASS_HINT) if mode == "staged" else
                         "Only the allowed databases belong in the data directory; move the others out.\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
