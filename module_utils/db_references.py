# -*- coding: utf-8 -*-
# Audit and rewrite references to database file names in a source tree (the db_references module).
# Standard library only: this runs on the managed host.
#
# Matching is by name with file-name boundaries: `auth.db` matches `/app/data/auth.db`, `"auth.db"`,
# `auth.db-wal` (a SQLite sidecar names the same database) and `auth.db.` at the end of a sentence, and
# does not match `oauth.db`, `myauth.db`, `zoe-auth.db`, `.auth.db` or `auth.db.bak` (another file).
# A `-` before the name only breaks the match after a file-name character (`zoe-auth.db`), not in
# `${DB:-auth.db}`.

from __future__ import annotations

import difflib
import fnmatch
import os
import re

from ansible.module_utils.zoe_secrets import mask_text

DEFAULT_SKIP_DIRS = (
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache",
    ".pytest_cache", ".cache", ".zoe-consolidate",
)
DEFAULT_MAX_FILE_SIZE = 2 * 1024 * 1024
BINARY_SNIFF_BYTES = 8192
SIDECAR_SUFFIXES = ("wal", "shm", "journal")
KINDS = ("path_literal", "env_default", "connect_call", "comment", "doc", "other")
DOC_SUFFIXES = (".md", ".markdown", ".rst", ".txt", ".adoc", ".html")

_WORD = r"A-Za-z0-9_"


class ReferencesError(Exception):
    """Base class of the db_references failures."""


class RootError(ReferencesError):
    """The tree root is missing or is not a directory."""


class OptionError(ReferencesError):
    """The options contradict each other (names, mapping)."""


def name_pattern(names):
    """One compiled regex that finds any of `names` with file-name boundaries.

    Longest names first so a name that contains another wins. A boundary is only demanded on a side
    whose end character is a word character (a fragment that starts with `/` needs none before it).
    """
    parts = []
    for name in sorted(set(names), key=lambda item: (-len(item), item)):
        piece = re.escape(name)
        if re.match(r"[%s]" % _WORD, name[0]):
            piece = r"(?<![%s.])(?<![%s.]-)" % (_WORD, _WORD) + piece
        if re.match(r"[%s]" % _WORD, name[-1]):
            piece += r"(?![%s]|[.\-](?!(?:%s)\b)[%s])" % (_WORD, "|".join(SIDECAR_SUFFIXES), _WORD)
        parts.append("(?:%s)" % piece)
    if not parts:
        return None
    return re.compile("|".join(parts))


# --- file selection -------------------------------------------------------------------------------

def _glob_regex(pattern):
    """Translate a gitignore/glob pattern (`*`, `?`, `**`, `[...]`) into a regex over `/` paths."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
                i += 1
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[%s]" % body)
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def glob_match(pattern, relpath):
    """True when a root-relative path matches an include/exclude/exempt glob.

    A pattern without `/` matches the base name at any depth (`*.md`); otherwise it is anchored at
    the root (`services/*/migrate.py`, `docs/**`). A plain directory path also matches what is under it.
    """
    pattern = pattern.strip()
    if pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.lstrip("/")
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(os.path.basename(relpath), pattern.rstrip("/")) or any(
            fnmatch.fnmatchcase(part, pattern.rstrip("/")) for part in relpath.split("/")[:-1])
    regex = _glob_regex(pattern.rstrip("/"))
    return re.fullmatch(regex + "(?:/.*)?", relpath) is not None


class GitIgnore(object):
    """The .gitignore rules met while walking a tree (root and nested files, negation, dir-only)."""

    def __init__(self):
        self.rules = []  # (base_relpath, regex, negated, dir_only)

    def load(self, root, reldir):
        path = os.path.join(root, reldir, ".gitignore")
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:]
            if line.startswith("\\"):
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            anchored = "/" in line
            line = line.lstrip("/")
            regex = _glob_regex(line)
            if not anchored:
                regex = "(?:.*/)?" + regex
            self.rules.append((reldir, re.compile(regex + "$"), negated, dir_only))

    def ignored(self, relpath, is_dir):
        verdict = False
        for base, regex, negated, dir_only in self.rules:
            if base:
                if not relpath.startswith(base + "/"):
                    continue
                sub = relpath[len(base) + 1:]
            else:
                sub = relpath
            if dir_only and not is_dir:
                continue
            if regex.match(sub):
                verdict = not negated
        return verdict


def _skip_dir(relpath, name, skip_dirs):
    for entry in skip_dirs:
        entry = entry.strip("/")
        if "/" in entry:
            if relpath == entry:
                return True
        elif name == entry:
            return True
    return False


def walk_files(root, include=(), exclude=(), skip_dirs=DEFAULT_SKIP_DIRS, respect_gitignore=True,
               max_file_size=DEFAULT_MAX_FILE_SIZE):
    """The text files under root to look at, and the files skipped with the reason.

    Returns (files, skipped): files is a sorted list of root-relative paths; skipped a list of
    {file, reason}. Directories in skip_dirs (names, or root-relative paths) are not entered;
    symlinks are not followed.
    """
    files, skipped = [], []
    ignore = GitIgnore()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        reldir = os.path.relpath(dirpath, root)
        reldir = "" if reldir == "." else reldir.replace(os.sep, "/")
        if respect_gitignore:
            ignore.load(root, reldir)
        keep = []
        for name in sorted(dirnames):
            rel = (reldir + "/" + name) if reldir else name
            if _skip_dir(rel, name, skip_dirs) or os.path.islink(os.path.join(dirpath, name)):
                continue
            if respect_gitignore and ignore.ignored(rel, True):
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = (reldir + "/" + name) if reldir else name
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            if respect_gitignore and ignore.ignored(rel, False):
                continue
            if include and not any(glob_match(pattern, rel) for pattern in include):
                continue
            if any(glob_match(pattern, rel) for pattern in exclude):
                continue
            size = os.path.getsize(full)
            if max_file_size and size > max_file_size:
                skipped.append({"file": rel, "reason": "larger than max_file_size (%d bytes)" % size})
                continue
            with open(full, "rb") as handle:
                head = handle.read(BINARY_SNIFF_BYTES)
            if b"\x00" in head:
                skipped.append({"file": rel, "reason": "binary"})
                continue
            files.append(rel)
    return sorted(files), skipped


# --- classification -------------------------------------------------------------------------------

_HASH_COMMENT_SUFFIXES = (".py", ".sh", ".bash", ".yml", ".yaml", ".env", ".toml", ".cfg", ".ini",
                          ".conf", ".rb", ".pl", ".r", "dockerfile", "makefile", ".txt")
_SLASH_COMMENT_SUFFIXES = (".js", ".ts", ".jsx", ".tsx", ".go", ".c", ".h", ".cpp", ".java", ".rs",
                           ".swift", ".kt", ".css", ".scss", ".php")
_CONNECT_RE = re.compile(r"(\bconnect\s*\(|create_engine\s*\(|\bDatabase\s*\(|open_database\s*\()")
_ENV_DEFAULT_RE = re.compile(r"(getenv\s*\(|environ\.get\s*\(|environ\[|\$\{[A-Za-z_][A-Za-z0-9_]*:?[-=]|"
                             r"process\.env\.[A-Za-z_0-9]+\s*(\|\||\?\?))")


def _comment_start(line, lower_name):
    """Column where a line comment starts (or None), ignoring markers inside quotes."""
    hash_ok = lower_name.endswith(_HASH_COMMENT_SUFFIXES) or lower_name.startswith(".env") or \
        "." not in os.path.basename(lower_name)
    slash_ok = lower_name.endswith(_SLASH_COMMENT_SUFFIXES)
    sql_ok = lower_name.endswith(".sql")
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == "\\":
                continue
            if char == quote:
                quote = None
            continue
        if char in "'\"`":
            quote = char
        elif char == "#" and hash_ok and (index == 0 or line[index - 1] in " \t"):
            return index
        elif slash_ok and line.startswith("//", index) and (index == 0 or line[index - 1] != ":"):
            return index
        elif slash_ok and line.startswith("/*", index):
            return index
        elif sql_ok and line.startswith("--", index):
            return index
    stripped = line.lstrip()
    if slash_ok and stripped.startswith("*"):
        return len(line) - len(stripped)
    return None


def classify(relpath, line, column):
    """The kind of one reference: doc, comment, env_default, connect_call, path_literal or other.

    Order matters: a doc file is all `doc`; text after a comment marker is a `comment`; an env
    default (`os.getenv("DB", "auth.db")`, `${DB:-/app/data/auth.db}`) is more specific than the
    connect call around it (`sqlite3.connect(`, `create_engine(`); anything else in a quoted string or
    after a `/` is a path literal, including `DB=/app/data/auth.db` assignments (a value, not a default).
    """
    lower = relpath.lower()
    if lower.endswith(DOC_SUFFIXES) or "/docs/" in "/" + lower:
        return "doc"
    start = _comment_start(line, lower)
    if start is not None and column >= start:
        return "comment"
    before = line[:column]
    if _ENV_DEFAULT_RE.search(before):
        return "env_default"
    if _CONNECT_RE.search(line):
        return "connect_call"
    if before.count('"') % 2 == 1 or before.count("'") % 2 == 1 or before.count("`") % 2 == 1 \
            or before.endswith("/"):
        return "path_literal"
    return "other"


# --- plan and apply -------------------------------------------------------------------------------

class FilePlan(object):
    """What one file holds and what a rewrite makes of it."""

    def __init__(self, relpath, path, before, after, references, rewritten, left_alone):
        self.relpath = relpath
        self.path = path
        self.before = before
        self.after = after
        self.references = references
        self.rewritten = rewritten
        self.left_alone = left_alone

    @property
    def changed(self):
        return self.after != self.before


class ReferencesPlan(object):
    def __init__(self, root, files, skipped):
        self.root = root
        self.files = files
        self.skipped = skipped

    @property
    def changed_files(self):
        return [item for item in self.files if item.changed]

    @property
    def changed(self):
        return bool(self.changed_files)

    def references(self):
        return [ref for item in self.files for ref in item.references]

    def left_alone(self):
        return [ref for item in self.files for ref in item.left_alone]

    def counts(self):
        return {item.relpath: len(item.references) for item in self.files if item.references}

    def changes(self):
        return {item.relpath: item.rewritten for item in self.files if item.rewritten}

    def diffs(self):
        """One headed, masked diff per changed file (core's before/after form)."""
        result = []
        for item in self.changed_files:
            result.append({
                "before_header": item.relpath, "after_header": item.relpath,
                "before": mask_text(item.before), "after": mask_text(item.after),
            })
        return result

    def unified_diff(self):
        """A masked unified diff of every changed file, for reports."""
        chunks = []
        for item in self.changed_files:
            chunks.extend(difflib.unified_diff(
                mask_text(item.before).splitlines(True), mask_text(item.after).splitlines(True),
                "a/" + item.relpath, "b/" + item.relpath))
        return "".join(chunks)


def _is_exempt(relpath, root, exempt):
    for pattern in exempt:
        if os.path.isabs(pattern):
            pattern = os.path.relpath(pattern, root).replace(os.sep, "/")
        if glob_match(pattern, relpath):
            return True
    return False


def scan_text(relpath, text, pattern):
    """Every reference in a text: dicts of file, line (1-based), column (1-based), name, kind."""
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in pattern.finditer(line):
            refs.append({"file": relpath, "line": number, "column": match.start() + 1,
                         "name": match.group(0), "kind": classify(relpath, line, match.start())})
    return refs


def plan_references(root, mode="audit", mapping=None, names=None, include=(), exclude=(), exempt=(),
                    skip_dirs=DEFAULT_SKIP_DIRS, respect_gitignore=True,
                    max_file_size=DEFAULT_MAX_FILE_SIZE):
    """Find every reference (audit) and compute the rewritten texts (rewrite). Writes nothing.

    The names looked for are `names` plus the keys of `mapping`; only mapped names are rewritten.
    """
    mapping = dict(mapping or {})
    if not os.path.isdir(root):
        raise RootError("O(root) %s is not a directory" % root)
    names = list(names or mapping.keys())
    if not names:
        raise OptionError("nothing to look for: give O(names) or O(mapping)")
    if mode == "rewrite" and not mapping:
        raise OptionError("O(mode=rewrite) needs O(mapping)")
    for old, new in mapping.items():
        if not old or new is None or str(new) == "":
            raise OptionError("O(mapping) entry %r -> %r: names must be non-empty" % (old, new))
    pattern = name_pattern(set(names) | set(mapping))
    mapped = name_pattern(mapping.keys()) if mapping else None
    for new in mapping.values():
        if mapped and mapped.search(str(new)):
            raise OptionError("O(mapping) value %r is itself a mapped name: a rerun would rewrite it again" % new)
    files, skipped = walk_files(root, include, exclude, skip_dirs, respect_gitignore, max_file_size)
    plans = []
    for relpath in files:
        path = os.path.join(root, relpath)
        with open(path, "rb") as handle:
            before = handle.read().decode("utf-8", "surrogateescape")
        refs = scan_text(relpath, before, pattern)
        after, rewritten, left = before, 0, []
        if mode == "rewrite" and refs:
            exempt_file = _is_exempt(relpath, root, exempt)
            for ref in refs:
                if exempt_file:
                    left.append(dict(ref, reason="exempt"))
                elif ref["name"] not in mapping:
                    left.append(dict(ref, reason="not in mapping"))
            if not exempt_file:
                after, rewritten = _rewrite_text(before, pattern, mapping)
        plans.append(FilePlan(relpath, path, before, after, refs, rewritten, left))
    return ReferencesPlan(root, plans, skipped)


def _rewrite_text(text, pattern, mapping):
    """Replace every bounded occurrence of a mapped name; returns (new_text, count)."""
    count = [0]

    def _sub(match):
        name = match.group(0)
        if name in mapping:
            count[0] += 1
            return mapping[name]
        return name

    return pattern.sub(_sub, text), count[0]


def apply_references(module, plan):
    """Write every changed file atomically (temp file in the same directory, mode and owner kept)."""
    import tempfile
    written = []
    for item in plan.changed_files:
        directory = os.path.dirname(item.path)
        handle, tmp = tempfile.mkstemp(prefix=".db_references.", dir=directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(item.after.encode("utf-8", "surrogateescape"))
            module.atomic_move(tmp, item.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(item.relpath)
    return written
