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
import os
import re

from ansible.module_utils.zoe_glob import glob_match as _glob_match, glob_regex as _glob_regex
from ansible.module_utils.zoe_secrets import mask_text

DEFAULT_SKIP_DIRS = (
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache",
    ".pytest_cache", ".cache", ".zoe-consolidate", ".zoe-guard",
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

def glob_match(pattern, relpath):
    """True when a root-relative path matches an include/exclude/exempt glob (the path globs of zoe_glob)."""
    return _glob_match(pattern, relpath)


class GitIgnore(object):
    """The .gitignore rules met while walking a tree (root and nested files, negation, dir-only)."""

    def __init__(self):
        self.rules = []  # (base_relpath, regex, negated, dir_only)

    def load(self, root, reldir):
        self.load_file(os.path.join(root, reldir, ".gitignore"), reldir)

    def load_file(self, path, reldir):
        """The rules of one ignore file, relative to reldir (`.gitignore` of that dir, or .git/info/exclude)."""
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
    {file, reason}. Ignore rules are those of git: the .gitignore files met and .git/info/exclude. Directories in skip_dirs (names, or root-relative paths) are not entered;
    symlinks are not followed.
    """
    files, skipped = [], []
    ignore = GitIgnore()
    if respect_gitignore:
        ignore.load_file(os.path.join(root, ".git", "info", "exclude"), "")
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


# --- files the rewrite must not touch -------------------------------------------------------------
#
# A rewrite is right for code that *uses* a retired database: after the merge its tables live in the
# primary. It is wrong for a file that names a retired database as something other than the primary:
# a migration tool that reads auth.db and writes zoe.db (rewritten, it copies zoe.db onto itself), a
# validator with a forbidden list beside an allowed one (rewritten, it forbids zoe.db), a mapping
# old -> new (rewritten, zoe.db -> zoe.db). Such a file names both a retired name and the primary, and
# one of three signs says their roles differ:
#   together      one line names both (`'auth.db': 'zoe.db'`, `cp auth.db zoe.db`, "merge auth.db into zoe.db");
#   attach        the file runs an SQL ATTACH (a second database on one connection);
#   opposite roles  the words next to a retired name and next to the primary (identifiers and keys left
#                 of the name in its statement, else right of it, else on the nearest less-indented line
#                 above: the list, dict or block it is in) are source/old/forbidden words for one and
#                 target/new/allowed words for the other (`SRC_DB = ...auth.db` / `DST_DB = ...zoe.db`,
#                 `FORBIDDEN = [...auth.db...]` / `ALLOWED = [...zoe.db...]`).
# Code that opens several databases, each for its own tables, shows none of the signs and is rewritten.
# Role words are read from code only: comments and doc files count for `together` alone.

SOURCE_WORDS = frozenset((
    "src", "source", "sources", "from", "old", "legacy", "orig", "original", "input", "retired", "retire",
    "deprecated", "forbidden", "forbid", "banned", "blocked", "denied", "deny", "disallowed", "obsolete",
    "previous", "prev"))
TARGET_WORDS = frozenset((
    "dst", "dest", "destination", "target", "targets", "tgt", "to", "into", "new", "primary", "unified",
    "output", "allowed", "allow", "permitted", "keep", "kept", "current"))
# Keywords of common languages: they count only inside a compound identifier (`from_db`, `NEW_DB`).
BARE_KEYWORDS = frozenset(("from", "to", "new", "in", "into"))
ROLES = {"source": "source/old/forbidden", "target": "target/new/allowed"}
_ATTACH_RE = re.compile(r"\bATTACH\s+(?:DATABASE\s+)?['\"`?:$@{(]", re.IGNORECASE)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def role_words(text):
    """The role words in a piece of code: (source words, target words) found in its identifiers and keys."""
    source, target = set(), set()
    for ident in _IDENT_RE.findall(text):
        parts = [part.lower() for part in _PART_RE.findall(ident)]
        if len(parts) == 1 and parts[0] in BARE_KEYWORDS:
            continue
        source.update(part for part in parts if part in SOURCE_WORDS)
        target.update(part for part in parts if part in TARGET_WORDS)
    return source, target


def _role(words):
    """'source', 'target' or None (no role word, or words of both roles)."""
    source, target = words
    if source and not target:
        return "source", sorted(source)[0]
    if target and not source:
        return "target", sorted(target)[0]
    return None, None


def _code_part(relpath, line, pattern):
    """The line without its comment and without the database names (whose own words are not roles)."""
    start = _comment_start(line, relpath.lower())
    if start is not None:
        line = line[:start]
    return pattern.sub(" ", line)


def _indent(line):
    return len(line) - len(line.lstrip())


def _parent_line(lines, index):
    """Index of the nearest non-blank line above with less indentation (the block or literal around it)."""
    indent = _indent(lines[index])
    for above in range(index - 1, -1, -1):
        if lines[above].strip() and _indent(lines[above]) < indent:
            return above
    return None


def _occurrence_role(relpath, lines, index, column, pattern):
    """The role of the name at lines[index][column]: the words left of it in its statement, else the
    words right of it (a dict value describing it), else those of the line around it."""
    line = lines[index]
    start = _comment_start(line, relpath.lower())
    code = line if start is None else line[:start]
    statement_start = code.rfind(";", 0, column) + 1
    statement_end = code.find(";", column)
    statement_end = len(code) if statement_end == -1 else statement_end
    for piece in (code[statement_start:column], code[column:statement_end]):
        words = role_words(pattern.sub(" ", piece))
        if words != (set(), set()):
            return _role(words)
    parent = _parent_line(lines, index)
    if parent is None:
        return None, None
    return _role(role_words(_code_part(relpath, lines[parent], pattern)))


def review_reason(relpath, text, mapping, pattern):
    """Why a file must be left for review instead of rewritten: {reason, lines}, or None.

    `mapping` is old name -> new name; `pattern` finds every name looked for. Only names the mapping
    rewrites and the names it rewrites them to (the primary) take part.
    """
    primaries = set(str(value) for value in mapping.values())
    retired = set(mapping)
    lines = text.splitlines()
    doc = relpath.lower().endswith(DOC_SUFFIXES) or "/docs/" in "/" + relpath.lower()
    hits = []  # (line index, column, name, 'retired' or 'primary')
    for index, line in enumerate(lines):
        for match in pattern.finditer(line):
            name = match.group(0)
            if name in retired:
                hits.append((index, match.start(), name, "retired"))
            elif name in primaries:
                hits.append((index, match.start(), name, "primary"))
    if not any(h[3] == "retired" for h in hits) or not any(h[3] == "primary" for h in hits):
        return None

    by_line = {}
    for index, _, name, side in hits:
        by_line.setdefault(index, {}).setdefault(side, set()).add(name)
    together = sorted(index for index, sides in by_line.items() if len(sides) == 2)
    if together:
        first = by_line[together[0]]
        old, new = sorted(first["retired"])[0], sorted(first["primary"])[0]
        return {"reason": "line %d names %s and %s together: rewritten, it would name %s twice"
                          % (together[0] + 1, old, new, new),
                "lines": [index + 1 for index in together]}
    if doc:
        return None

    attach = [index for index, line in enumerate(lines)
              if _ATTACH_RE.search(_code_part(relpath, line, pattern))]
    if attach:
        old = sorted({h[2] for h in hits if h[3] == "retired"})[0]
        new = sorted({h[2] for h in hits if h[3] == "primary"})[0]
        return {"reason": "it ATTACHes a second database (line %d) and names %s and %s: rewritten, it would "
                          "attach %s to itself" % (attach[0] + 1, old, new, new),
                "lines": [index + 1 for index in attach]}

    roles = {}  # (side, role) -> first (line index, name, word)
    for index, column, name, side in hits:
        role, word = _occurrence_role(relpath, lines, index, column, pattern)
        if role is not None:
            roles.setdefault((side, role), (index, name, word))
    for old_role, new_role in (("source", "target"), ("target", "source")):
        if ("retired", old_role) in roles and ("primary", new_role) in roles:
            (old_line, old, old_word), (new_line, new, new_word) = roles[("retired", old_role)], \
                roles[("primary", new_role)]
            return {"reason": "%s is named on the %s side (line %d, `%s`) and %s on the %s side (line %d, `%s`): "
                              "rewritten, both sides would be %s"
                              % (old, ROLES[old_role], old_line + 1, old_word, new, ROLES[new_role], new_line + 1,
                                 new_word, new),
                    "lines": sorted({old_line + 1, new_line + 1})}
    return None


# --- plan and apply -------------------------------------------------------------------------------

class FilePlan(object):
    """What one file holds and what a rewrite makes of it."""

    def __init__(self, relpath, path, before, after, references, rewritten, left_alone, review=None):
        self.relpath = relpath
        self.path = path
        self.before = before
        self.after = after
        self.references = references
        self.rewritten = rewritten
        self.left_alone = left_alone
        self.review = review  # {reason, lines} when the file is left for review

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

    def left_for_review(self):
        """The files not rewritten because their rewrite would confuse a retired name with the primary."""
        return [dict(file=item.relpath, **item.review) for item in self.files if item.review]

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
    review_pattern = name_pattern(set(names) | set(mapping) | set(str(new) for new in mapping.values()))
    files, skipped = walk_files(root, include, exclude, skip_dirs, respect_gitignore, max_file_size)
    plans = []
    for relpath in files:
        path = os.path.join(root, relpath)
        with open(path, "rb") as handle:
            before = handle.read().decode("utf-8", "surrogateescape")
        refs = scan_text(relpath, before, pattern)
        after, rewritten, left = before, 0, []
        review = None
        if mode == "rewrite" and refs:
            exempt_file = _is_exempt(relpath, root, exempt)
            if not exempt_file:
                review = review_reason(relpath, before, mapping, review_pattern)
            for ref in refs:
                if exempt_file:
                    left.append(dict(ref, reason="exempt"))
                elif review:
                    left.append(dict(ref, reason="left for review"))
                elif ref["name"] not in mapping:
                    left.append(dict(ref, reason="not in mapping"))
            if not exempt_file and not review:
                after, rewritten = _rewrite_text(before, pattern, mapping)
        plans.append(FilePlan(relpath, path, before, after, refs, rewritten, left, review))
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
