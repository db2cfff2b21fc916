# -*- coding: utf-8 -*-
"""The schema side of sqlite_merge: errors, options, table shapes, affinities and SQL text rewriting.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import os

from ansible.module_utils.zoe_secrets import DEFAULT_SECRET_NAMES
from ansible.module_utils.zoe_sqlite import quote_identifier

q = quote_identifier

ON_CONFLICT_CHOICES = ("keep_target", "keep_source", "newest", "fail")
CLASH_POLICY_CHOICES = ("prefix", "refuse")
DEFAULT_LEDGER_TABLE = "_zoe_merge_ledger"
DEFAULT_CONFLICTS_TABLE = "_zoe_merge_conflicts"
INTERNAL_PREFIX = "_zoe_merge_"
# Name fragments that make a key column secret-looking beyond the shared list: guest and invite codes, PINs,
# one-time passwords, passcodes. Keys of such columns are masked wherever a key is shown.
SECRET_KEY_NAMES = ("pass", "code", "pin", "otp", "nonce", "key")


# ---------------------------------------------------------------------------------------------- errors

class MergeError(Exception):
    """Base class of every failure of a merge; the message is one sentence naming the file."""


class NotADatabaseError(MergeError):
    """A source or the target is not a SQLite database."""


class CorruptDatabaseError(MergeError):
    """PRAGMA integrity_check reports problems in a source or the target."""


class DatabaseLockedError(MergeError):
    """A writer holds a lock on a source or the target (or left a hot journal)."""


class MissingSourceError(MergeError):
    """A source file does not exist and was never merged before."""


class MissingTargetError(MergeError):
    """The target database does not exist."""


class SourceIsTargetError(MergeError):
    """A source is the target itself (same path, symlink, hard link)."""


class TargetNotWritableError(MergeError):
    """The target file or its directory cannot be written."""


class ShapeClashError(MergeError):
    """Two tables share a name but not a shape."""


class KeyDefinitionError(MergeError):
    """A key is missing, not unique, or another unique constraint makes rows collide."""


class UnsupportedTableError(MergeError):
    """A table kind the merge cannot account for row by row (virtual, WITHOUT ROWID)."""


class ConflictError(MergeError):
    """on_conflict=fail and rows with the same key differ."""


class TypeConflictError(ConflictError):
    """on_conflict=fail and a source value would change under the target column's type affinity."""


class SchemaObjectError(MergeError):
    """A view, trigger or index of a source cannot be carried into the target."""


class DiskFullError(MergeError):
    """The disk (or SQLite's page limit) filled up during the merge."""


class VerificationError(MergeError):
    """The merged database failed integrity_check, foreign_key_check or the row accounting."""


class TargetChangedError(MergeError):
    """The target changed between plan and apply."""


# ---------------------------------------------------------------------------------------------- options

class MergeOptions:
    """The merge's knobs, validated once."""

    def __init__(self, keys=None, on_conflict="keep_target", newest_column=None, table_map=None,
                 clash_policy="prefix", references=None, secret_columns=None, ledger_table=DEFAULT_LEDGER_TABLE,
                 conflicts_table=DEFAULT_CONFLICTS_TABLE, lock_timeout=2.0, use_ledger=True, workdir=None,
                 pragmas=None):
        if on_conflict not in ON_CONFLICT_CHOICES:
            raise MergeError("on_conflict must be one of %s, got %r" % (", ".join(ON_CONFLICT_CHOICES), on_conflict))
        if on_conflict == "newest" and not newest_column:
            raise MergeError("on_conflict=newest needs newest_column (the timestamp column to compare)")
        if clash_policy not in CLASH_POLICY_CHOICES:
            raise MergeError("clash_policy must be one of %s, got %r" % (", ".join(CLASH_POLICY_CHOICES), clash_policy))
        self.keys = {str(k): [str(c) for c in v] for k, v in (keys or {}).items()}
        self.on_conflict = on_conflict
        self.newest_column = newest_column
        self.table_map = dict(table_map or {})
        self.clash_policy = clash_policy
        self.references = {str(k): dict(v) for k, v in (references or {}).items()}
        self.secret_columns = tuple(secret_columns) if secret_columns is not None else DEFAULT_SECRET_NAMES
        self.ledger_table = ledger_table
        self.conflicts_table = conflicts_table
        self.lock_timeout = float(lock_timeout)
        self.use_ledger = use_ledger
        self.workdir = workdir
        self.pragmas = list(pragmas or [])  # extra PRAGMAs for the work copy (tests: max_page_count)

    def is_internal(self, table):
        low = table.lower()
        return (low.startswith("sqlite_") or low.startswith(INTERNAL_PREFIX)
                or low in (self.ledger_table.lower(), self.conflicts_table.lower()))

    def mapped_name(self, source_path, table):
        """Target table of a source table: per-source map (path, basename or stem), then global, then same."""
        base = os.path.basename(source_path)
        for key in (source_path, base, os.path.splitext(base)[0]):
            per_source = self.table_map.get(key)
            if isinstance(per_source, dict) and table in per_source:
                return str(per_source[table])
        mapped = self.table_map.get(table)
        return str(mapped) if isinstance(mapped, str) else table

    def reference_parent(self, source_path, table, target_table, column):
        """Configured parent of a column (`source.db:table` or `table`), or None.

        `references` is per table ({table: {column: parent}}) or per source ({source: {table: {column: parent}}},
        the source by path, file name or stem); a per-source entry wins.
        """
        base = os.path.basename(source_path)
        for key in (source_path, base, os.path.splitext(base)[0]):
            per_source = self.references.get(key)
            if isinstance(per_source, dict) and per_source and all(isinstance(v, dict) for v in per_source.values()):
                for name in (table, target_table):
                    parent = (per_source.get(name) or {}).get(column)
                    if parent:
                        return str(parent)
        for name in (table, target_table):
            parent = self.references.get(name, {}).get(column)
            if parent and not isinstance(parent, dict):
                return str(parent)
        return None

    def source_dependencies(self, source_path):
        """File names of other sources whose tables this source's configured references name (`other.db:table`)."""
        base = os.path.basename(source_path)
        names = set()
        for key, entry in self.references.items():
            if not isinstance(entry, dict):
                continue
            per_source = entry and all(isinstance(v, dict) for v in entry.values())
            if per_source and key not in (source_path, base, os.path.splitext(base)[0]):
                continue
            for columns in (entry.values() if per_source else [entry]):
                for parent in columns.values():
                    if isinstance(parent, str) and ":" in parent:
                        names.add(os.path.basename(parent.split(":", 1)[0]))
        names.discard(base)
        return names

    def key_secret_names(self):
        """Name fragments whose values are masked in keys and rows shown anywhere (result, diff, messages)."""
        return tuple(self.secret_columns) + SECRET_KEY_NAMES


# ---------------------------------------------------------------------------------------------- shapes

def affinity(decl):
    """SQLite's column type affinity of a declared type (datatype3.html, 3.1)."""
    text = (decl or "").upper()
    if "INT" in text:
        return "INTEGER"
    if "CHAR" in text or "CLOB" in text or "TEXT" in text:
        return "TEXT"
    if "BLOB" in text or not text:
        return "BLOB"
    if "REAL" in text or "FLOA" in text or "DOUB" in text:
        return "REAL"
    return "NUMERIC"


class Shape:
    """What the merge needs to know about one table of one schema."""

    def __init__(self, conn, schema, name):
        row = conn.execute("SELECT sql FROM %s.sqlite_master WHERE type = 'table' AND name = ?" % q(schema),
                           (name,)).fetchone()
        self.name = name
        self.sql = (row[0] if row else "") or ""
        head = self.sql.lstrip().upper()
        self.virtual = head.startswith("CREATE VIRTUAL")
        tail = self.sql[self.sql.rfind(")") + 1:].upper() if ")" in self.sql else ""
        self.without_rowid = "WITHOUT" in tail and "ROWID" in tail
        info = conn.execute("PRAGMA %s.table_xinfo(%s)" % (q(schema), q(name))).fetchall()
        self.columns = [r[1] for r in info if r[6] == 0]
        self.types = {r[1].lower(): r[2] or "" for r in info}
        self.required = [r[1] for r in info if r[3] and r[4] is None and r[6] == 0]
        self.defaults = {r[1].lower(): r[4] for r in info}
        self.pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        self.alias = (self.pk[0] if len(self.pk) == 1 and self.types[self.pk[0].lower()].upper() == "INTEGER"
                      and not self.without_rowid and not self.virtual else None)
        self.uniques = []
        self.indexed = []
        if not self.virtual:
            for idx in conn.execute("PRAGMA %s.index_list(%s)" % (q(schema), q(name))).fetchall():
                cols = [r[2] for r in conn.execute("PRAGMA %s.index_info(%s)" % (q(schema), q(idx[1])))]
                if None in cols:
                    continue
                self.indexed.append(cols)
                if idx[2] and not idx[4]:
                    self.uniques.append(cols)
        self.fks = {}
        for fk in conn.execute("PRAGMA %s.foreign_key_list(%s)" % (q(schema), q(name))).fetchall():
            self.fks.setdefault(fk[0], []).append((fk[2], fk[3], fk[4]))
        self.single_fks = {v[0][1].lower(): (v[0][0], v[0][2]) for v in self.fks.values() if len(v) == 1}

    def has(self, column):
        return column.lower() in self.types and column.lower() in {c.lower() for c in self.columns}

    def actual(self, column):
        low = column.lower()
        for col in self.columns:
            if col.lower() == low:
                return col
        return None

    def has_index_on(self, cols):
        """True when some index (or the rowid alias) starts with these columns, so a join on them is fast."""
        low = [c.lower() for c in cols]
        if self.alias and low == [self.alias.lower()]:
            return True
        return any([c.lower() for c in idx[:len(low)]] == low for idx in self.indexed)


# ---------------------------------------------------------------------------------------------- SQL text

def _closing(sql, j, close):
    """Index of the quote that closes a quoted identifier or string literal starting before `j` (or len(sql)): a
    doubled quote is an escaped one, except in [brackets]."""
    n = len(sql)
    while j < n:
        if sql[j] == close:
            if close != "]" and j + 1 < n and sql[j + 1] == close:
                j += 2
                continue
            break
        j += 1
    return j


def _tokens(sql):
    """Split SQL into (kind, text) tokens: 'ws', 'ident', 'quoted', 'string', 'punct'. Enough to rename."""
    out, i, n = [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            j = i
            while j < n and sql[j].isspace():
                j += 1
            out.append(("ws", sql[i:j]))
        elif ch in "\"`['":
            close = "]" if ch == "[" else ch
            j = _closing(sql, i + 1, close)
            out.append(("string" if ch == "'" else "quoted", sql[i:j + 1]))
            j += 1
        elif ch.isalnum() or ch == "_" or ord(ch) > 127:
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
                j += 1
            out.append(("ident", sql[i:j]))
        else:
            j = i + 1
            out.append(("punct", ch))
        i = j
    return out


_SKIP_WORDS = {"CREATE", "TEMP", "TEMPORARY", "TABLE", "UNIQUE", "INDEX", "VIEW", "TRIGGER", "IF", "NOT", "EXISTS"}


def rename_create(sql, new_name, new_table=None):
    """CREATE TABLE/INDEX text with the object's name replaced (and, for an index, its ON table)."""
    return rename_object(sql, new_name, on_table=new_table)


def unquote(text):
    """The name an identifier token stands for: quotes removed, doubled quotes undone."""
    if text[:1] in "\"`" and text[-1:] == text[:1] and len(text) > 1:
        return text[1:-1].replace(text[0] * 2, text[0])
    if text[:1] == "[" and text[-1:] == "]":
        return text[1:-1]
    return text


def rewrite_references(sql, parents):
    """CREATE TABLE text with its REFERENCES clauses pointed elsewhere.

    `parents` maps a parent table name (lower case) to (new table name, {old column (lower): new column}).
    Everything else keeps its bytes.
    """
    toks = _tokens(sql)
    out, state, colmap = [], None, {}
    for kind, text in toks:
        if kind == "ident" and text.upper() == "REFERENCES":
            state = "table"
        elif state == "table" and kind in ("ident", "quoted"):
            entry = parents.get(unquote(text).lower())
            if entry:
                text, colmap = q(entry[0]), entry[1]
                state = "after"
            else:
                state = None
        elif state == "after" and kind == "punct" and text == "(":
            state = "columns"
        elif state == "columns" and kind in ("ident", "quoted"):
            new = colmap.get(unquote(text).lower())
            if new:
                text = q(new)
        elif state == "columns" and kind == "punct" and text == ")":
            state = None
        elif state == "after" and kind != "ws":
            state = None
        out.append(text)
    return "".join(out)


def rename_object(sql, new_name, tables=None, on_table=None):
    """CREATE TABLE/INDEX/VIEW/TRIGGER text named `new_name`. `on_table` replaces the table after the first ON (an
    index's table); `tables` ({old name lower: new name}) renames every table named in it: a view's or trigger's
    body names tables by plain identifiers, and an identifier spelled like a renamed table is taken to be that
    table. Everything else keeps its bytes."""
    out, named, want_table = [], False, None
    for kind, text in _tokens(sql):
        if not named and kind in ("ident", "quoted") and text.upper() not in _SKIP_WORDS:
            text, named = q(new_name), True
        elif named and on_table is not None and want_table is None and kind == "ident" and text.upper() == "ON":
            want_table = True
        elif want_table and kind in ("ident", "quoted"):
            text, want_table = q(on_table), False
        elif named and tables and kind in ("ident", "quoted") and unquote(text).lower() in tables:
            text = q(tables[unquote(text).lower()])
        out.append(text)
    return "".join(out)


def normalized_sql(sql):
    """SQL text with whitespace collapsed and case folded outside string literals: equal schema objects compare
    equal whatever their formatting."""
    return " ".join(text if kind == "string" else text.lower() for kind, text in _tokens(sql) if kind != "ws")


def _json_object(alias, columns):
    """json_object(...) of a row; BLOBs as x'hex' text because JSON cannot hold them."""
    parts = []
    for col in columns:
        ref = "%s.%s" % (alias, q(col))
        parts.append("'%s', CASE WHEN typeof(%s) = 'blob' THEN 'x''' || hex(%s) || '''' ELSE %s END"
                     % (col.replace("'", "''"), ref, ref, ref))
    return "json_object(%s)" % ", ".join(parts)


