# -*- coding: utf-8 -*-
"""Merge SQLite source databases into a target database so that every source row is accounted for.

Standard library only: this runs on the managed host with its own python3.

How it works (and why):
- plan_merge() reads every source and the target through private copies (zoe_sqlite.consistent_copy), so
  no source file, -wal or -shm is touched, not even its mtime. It runs the whole merge on the target's copy
  with set-based SQL (one ATTACH per source, INSERT ... SELECT with joins on indexed keys, temp id maps), so
  the plan is exact: the accounting it returns is what apply_merge() writes, byte for byte.
- apply_merge() copies the merged result into the real target with SQLite's online backup API, which writes
  the destination in one transaction: on any error or interruption the target is unchanged. (A single
  ATTACH-everything transaction on the target itself is not possible: SQLite attaches at most 10 databases
  per connection and cannot DETACH inside a transaction, and there are 13 sources on the Zoe host.)
- The merged copy's integrity_check and foreign_key_check run in background threads beside the backup, whose
  committing step waits for them: a failed check aborts the backup and SQLite rolls the target back.
- Every source table ends with source_rows = inserted + identical + conflicts, checked, or the merge fails.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.zoe_secrets import DEFAULT_SECRET_NAMES, mask_row, mask_value
from ansible.module_utils.zoe_sqlite import (SQLiteFileError, consistent_copy, foreign_key_errors, integrity_errors,
                                             is_sqlite_file, quote_identifier, table_names)

q = quote_identifier

ON_CONFLICT_CHOICES = ("keep_target", "keep_source", "newest", "fail")
CLASH_POLICY_CHOICES = ("fail", "prefix")
DEFAULT_LEDGER_TABLE = "_zoe_merge_ledger"
DEFAULT_CONFLICTS_TABLE = "_zoe_merge_conflicts"
INTERNAL_PREFIX = "_zoe_merge_"
MIN_SQLITE = (3, 33, 0)  # UPDATE ... FROM
CONTENT_INDEX_COLUMNS = 4
CONFLICT_SAMPLES = 20
BACKUP_STEP_PAGES = 4096  # pages per backup step (16 MiB of 4 KiB pages)
MERGE_CACHE_KIB = 16384   # page cache of the work copy during the merge (SQLite's default is 2000 KiB)


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
                 clash_policy="fail", references=None, secret_columns=None, ledger_table=DEFAULT_LEDGER_TABLE,
                 conflicts_table=DEFAULT_CONFLICTS_TABLE, lock_timeout=2.0, use_ledger=True, workdir=None, pragmas=None):
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
        """Configured parent of a column (`source.db:table` or `table`), or None."""
        for name in (table, target_table):
            parent = self.references.get(name, {}).get(column)
            if parent:
                return str(parent)
        return None


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


def shape_clash(src, tgt):
    """Why two same-named tables are not the same thing, or None when the source can merge into the target.

    Columns the target lacks are fine (they get added) and columns the source lacks are fine (they stay
    NULL/default); a clash is a different primary key, a different type for a shared column, columns missing
    on both sides at once, or a required target column the source cannot fill.
    """
    if [c.lower() for c in src.pk] != [c.lower() for c in tgt.pk]:
        return "primary keys differ (source %s, target %s)" % (src.pk or "rowid", tgt.pk or "rowid")
    tcols = {c.lower() for c in tgt.columns}
    scols = {c.lower() for c in src.columns}
    for col in sorted(scols & tcols):
        if affinity(src.types[col]) != affinity(tgt.types[col]):
            return "column %s is %s in the source and %s in the target" % (
                col, src.types[col] or "untyped", tgt.types[col] or "untyped")
    only_src, only_tgt = sorted(scols - tcols), sorted(tcols - scols)
    if only_src and only_tgt:
        return "each has columns the other lacks (source only: %s; target only: %s)" % (
            ", ".join(only_src), ", ".join(only_tgt))
    for col in tgt.required:
        if col.lower() not in scols and (not tgt.alias or col.lower() != tgt.alias.lower()):
            return "target column %s is NOT NULL without default and the source has no such column" % col
    return None


# ---------------------------------------------------------------------------------------------- SQL text

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
        elif ch in "\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2
                        continue
                    break
                j += 1
            out.append(("quoted", sql[i:j + 1]))
            j += 1
        elif ch == "'":
            j = i + 1
            while j < n:
                if sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            out.append(("string", sql[i:j + 1]))
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


_SKIP_WORDS = {"CREATE", "TEMP", "TEMPORARY", "TABLE", "UNIQUE", "INDEX", "IF", "NOT", "EXISTS"}


def rename_create(sql, new_name, new_table=None):
    """CREATE TABLE/INDEX text with the object's name replaced (and, for an index, its ON table)."""
    toks = _tokens(sql)
    out, named, want_table = [], False, False
    for kind, text in toks:
        if not named and kind in ("ident", "quoted") and text.upper() not in _SKIP_WORDS:
            out.append(q(new_name))
            named = True
            continue
        if named and new_table is not None and kind == "ident" and text.upper() == "ON" and not want_table:
            want_table = True
            out.append(text)
            continue
        if want_table and kind in ("ident", "quoted"):
            out.append(q(new_table))
            want_table = None  # done
            continue
        out.append(text)
    return "".join(out)


def _json_object(alias, columns):
    """json_object(...) of a row; BLOBs as x'hex' text because JSON cannot hold them."""
    parts = []
    for col in columns:
        ref = "%s.%s" % (alias, q(col))
        parts.append("'%s', CASE WHEN typeof(%s) = 'blob' THEN 'x''' || hex(%s) || '''' ELSE %s END"
                     % (col.replace("'", "''"), ref, ref, ref))
    return "json_object(%s)" % ", ".join(parts)


# ---------------------------------------------------------------------------------------------- file checks

def file_digest(paths):
    """sha256 over the bytes of a database copy and its -wal: the identity of a source's content."""
    digest = hashlib.sha256()
    for path in paths:
        if os.path.exists(path):
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _lock_probe(path, offset):
    """True when another process holds a write lock on byte `offset` of `path` (POSIX advisory locks).

    The file is opened read-only and only tested, so neither its bytes nor its mtime change.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


PENDING_BYTE = 0x40000000
WAL_WRITE_LOCK_BYTE = 120


def writer_holds_lock(path):
    """True when a connection is writing `path`: RESERVED/PENDING lock, WAL write lock, or a hot journal."""
    journal = path + "-journal"
    if os.path.exists(journal) and os.path.getsize(journal) > 0:
        return True
    if _lock_probe(path, PENDING_BYTE) or _lock_probe(path, PENDING_BYTE + 1):
        return True
    shm = path + "-shm"
    return os.path.exists(shm) and _lock_probe(shm, WAL_WRITE_LOCK_BYTE)


def _stat_key(path):
    result = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
            result.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            result.append(None)
    return result


def _translate(exc, path):
    """sqlite3/OS errors -> the named MergeError for `path`."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return DiskFullError("%s: disk full during the merge (%s)" % (path, text))
    if "full" in low:
        return DiskFullError("%s: database or disk is full during the merge" % path)
    if "locked" in low or "busy" in low:
        return DatabaseLockedError("%s: database is locked by another writer" % path)
    if "not a database" in low or "file is encrypted" in low:
        return NotADatabaseError("%s: not a SQLite database (%s)" % (path, text))
    if "malformed" in low or "corrupt" in low:
        return CorruptDatabaseError("%s: database is corrupt (%s)" % (path, text))
    if "readonly" in low or "read-only" in low or "permission" in low:
        return TargetNotWritableError("%s: cannot write (%s)" % (path, text))
    return MergeError("%s: %s" % (path, text))


def _check_integrity(path, conn):
    try:
        errors = integrity_errors(conn)
    except sqlite3.DatabaseError as exc:
        raise _translate(exc, path)
    if errors:
        raise CorruptDatabaseError("%s: integrity_check failed: %s" % (path, "; ".join(errors[:3])))


# ---------------------------------------------------------------------------------------------- the engine

class _Engine:
    """Merges sources, one at a time, into the connection's main database (a private copy of the target)."""

    def __init__(self, conn, opts, now, timings):
        self.conn = conn
        self.timings = timings
        self.opts = opts
        self.now = now
        self.maps = {}       # (source basename, source table) -> temp map table name
        self.counter = 0
        self.phase = "merge: other"  # the timings bucket sql() adds to
        self.temp_indexes = []       # match indexes on target tables, dropped by finish()
        self.row_counts = {}         # target table -> rows, see _target_rows

    def sql(self, text, params=()):
        with self.timings.span(self.phase):
            return self.conn.execute(text, params)

    def one(self, text, params=()):
        with self.timings.span(self.phase):
            return self.conn.execute(text, params).fetchone()[0]

    def _name(self, kind):
        self.counter += 1
        return "%s%s_%d" % (INTERNAL_PREFIX, kind, self.counter)

    # ---- bookkeeping tables

    def ensure_bookkeeping(self):
        self.sql("CREATE TABLE IF NOT EXISTS main.%s (id INTEGER PRIMARY KEY, source TEXT NOT NULL, "
                 "digest TEXT NOT NULL, merged_at TEXT NOT NULL, source_rows INTEGER NOT NULL, "
                 "inserted INTEGER NOT NULL, identical INTEGER NOT NULL, conflicts INTEGER NOT NULL, "
                 "accounting TEXT NOT NULL, UNIQUE (source, digest))" % q(self.opts.ledger_table))
        self.sql("CREATE TABLE IF NOT EXISTS main.%s (id INTEGER PRIMARY KEY, merged_at TEXT NOT NULL, "
                 "source TEXT NOT NULL, source_table TEXT NOT NULL, target_table TEXT NOT NULL, key TEXT NOT NULL, "
                 "target_row TEXT NOT NULL, source_row TEXT NOT NULL, resolution TEXT NOT NULL, "
                 "UNIQUE (source, target_table, key, target_row, source_row))" % q(self.opts.conflicts_table))

    # ---- one source

    def merge_source(self, source_path, copy_path, digest):
        self.sql("ATTACH DATABASE ? AS src", (copy_path,))
        # On error the whole work copy is discarded: no cleanup here that could mask the error.
        self.sql("BEGIN")
        with self.timings.span("merge: schema"):
            shapes = self._source_shapes(source_path)
            decisions = [self._decide(source_path, shapes[name]) for name in self._order(source_path, shapes)]
        tables = [self._merge_rows(source_path, d, shapes) for d in decisions]
        with self.timings.span("merge: schema"):
            for d in decisions:
                if d["action"] == "create":
                    self._copy_indexes_and_triggers(d)
        totals = {k: sum(t[k] for t in tables) for k in ("source_rows", "inserted", "identical", "conflicts")}
        account = {"path": source_path, "digest": digest, "status": "merged", "tables": tables}
        account.update(totals)
        self.sql("INSERT OR REPLACE INTO main.%s (source, digest, merged_at, source_rows, inserted, identical, "
                 "conflicts, accounting) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % q(self.opts.ledger_table),
                 (source_path, digest, self.now, totals["source_rows"], totals["inserted"], totals["identical"],
                  totals["conflicts"], json.dumps(tables, sort_keys=True)))
        with self.timings.span("merge: commit"):
            self.sql("COMMIT")
        self.sql("DETACH DATABASE src")
        return account

    def _source_shapes(self, source_path):
        shapes = {}
        for name in table_names(self.conn, "src"):
            if self.opts.is_internal(name):
                continue
            shape = Shape(self.conn, "src", name)
            if shape.virtual or shape.without_rowid:
                raise UnsupportedTableError(
                    "%s: table %s is a %s table, which the merge does not support; merge it by hand or exclude "
                    "the source" % (source_path, name, "virtual" if shape.virtual else "WITHOUT ROWID"))
            shapes[name] = shape
        # shadow tables of virtual tables never reach here: a virtual table fails above
        return shapes

    def _parents(self, source_path, shape, shapes):
        """Source tables this table's integer references point at (declared FKs + configured references)."""
        parents = {}
        for col in shape.columns:
            parent = self._parent_of(source_path, shape, col, shapes)
            if parent:
                parents[col] = parent
        return parents

    def _parent_of(self, source_path, shape, col, shapes):
        """(source basename, source table) whose id map translates this column, or None."""
        base = os.path.basename(source_path)
        target_table = self.opts.mapped_name(source_path, shape.name)
        configured = self.opts.reference_parent(source_path, shape.name, target_table, col)
        if configured:
            if ":" in configured:
                src_db, table = configured.split(":", 1)
                return (os.path.basename(src_db), table)
            return (base, configured) if configured in shapes else None
        declared = shape.single_fks.get(col.lower())
        if declared:
            parent, to = declared
            pshape = shapes.get(parent)
            if pshape is not None and pshape.alias and (to is None or to.lower() == pshape.alias.lower()):
                return (base, parent)
        return None

    def _order(self, source_path, shapes):
        """Parents before children, so a child's references see the parent's id map; cycles by name."""
        deps = {}
        for name, shape in shapes.items():
            deps[name] = {p[1] for p in self._parents(source_path, shape, shapes).values()
                          if p[0] == os.path.basename(source_path) and p[1] in shapes and p[1] != name}
        order, done = [], set()
        while len(order) < len(shapes):
            ready = sorted(n for n in shapes if n not in done and deps[n] <= done)
            if not ready:
                ready = [sorted(n for n in shapes if n not in done)[0]]
            for name in ready:
                order.append(name)
                done.add(name)
        return order

    def _target_shape(self, name):
        exists = self.one("SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return Shape(self.conn, "main", name) if exists else None

    def _decide(self, source_path, shape):
        """Schema step for one source table: create it, or check its shape and add the missing columns."""
        target = self.opts.mapped_name(source_path, shape.name)
        decision = {"source_table": shape.name, "target_table": target, "action": "merge", "columns_added": [],
                    "clash": None}
        tshape = self._target_shape(target)
        if tshape is not None:
            reason = shape_clash(shape, tshape)
            if reason and self.opts.clash_policy == "prefix":
                decision["clash"] = reason
                target = "%s_%s" % (os.path.splitext(os.path.basename(source_path))[0], shape.name)
                decision["target_table"] = target
                tshape = self._target_shape(target)
                reason = shape_clash(shape, tshape) if tshape is not None else None
            if reason:
                raise ShapeClashError(
                    "%s: table %s clashes with table %s of the target: %s. Ways out: map it to another name with "
                    "table_map (e.g. {%s: {%s: %s_%s}}) or set clash_policy=prefix to keep it apart"
                    % (source_path, shape.name, target, reason, os.path.basename(source_path), shape.name,
                       os.path.splitext(os.path.basename(source_path))[0], shape.name))
        if tshape is None:
            self.sql(rename_create(shape.sql, target) if target != shape.name else shape.sql)
            decision["action"] = "create"
            return decision
        for col in shape.columns:
            if not tshape.has(col):
                decl = shape.types[col.lower()]
                default = shape.defaults.get(col.lower())
                self.sql("ALTER TABLE main.%s ADD COLUMN %s %s%s" % (
                    q(target), q(col), decl, "" if default is None or default.strip().startswith("(")
                    else " DEFAULT %s" % default))
                decision["columns_added"].append(col)
        return decision

    # ---- rows

    def _expr(self, source_path, shape, shapes, col, alias="s"):
        """The source value of `col`, translated through the parent's id map when it points at remapped ids."""
        ref = "%s.%s" % (alias, q(col))
        parent = self._parent_of(source_path, shape, col, shapes)
        mapping = self.maps.get(parent) if parent else None
        if not mapping:
            return ref
        return "COALESCE((SELECT new FROM temp.%s WHERE old = %s), %s)" % (q(mapping), ref, ref)

    def _mapped_select(self, source_path, shape, shapes, cols, self_rid=None):
        """Source values of `cols` for an INSERT ... SELECT from `s`, ids translated through the id maps with one
        LEFT JOIN per mapped column (a seek per row; _expr's correlated subquery costs more per row). `self_rid`
        follows this table's own map. Returns (expressions, joins)."""
        values, joins = [], []
        for col in cols:
            ref = "s.%s" % q(col)
            if self_rid is not None and col == self_rid:
                mapping = self.maps.get((os.path.basename(source_path), shape.name))
            else:
                parent = self._parent_of(source_path, shape, col, shapes)
                mapping = self.maps.get(parent) if parent else None
            if not mapping:
                values.append(ref)
                continue
            alias = "_zm_j%d" % len(joins)
            joins.append(" LEFT JOIN temp.%s %s ON %s.old = %s" % (q(mapping), alias, alias, ref))
            values.append("COALESCE(%s.new, %s)" % (alias, ref))
        return values, "".join(joins)

    def _key_for(self, tshape, shape, target):
        """(mode, key columns): configured natural key, declared non-rowid key, unique, surrogate id, content."""
        configured = self.opts.keys.get(target) or self.opts.keys.get(shape.name)
        if configured:
            missing = [c for c in configured if not tshape.has(c) or not shape.has(c)]
            if missing:
                raise KeyDefinitionError("key column(s) %s of table %s missing in the target or the source"
                                         % (", ".join(missing), target))
            if tshape.alias and [c.lower() for c in configured] == [tshape.alias.lower()]:
                return "key", configured, None
            return "key", configured, tshape.alias
        if tshape.pk and not tshape.alias:
            return "key", tshape.pk, None
        usable = [u for u in tshape.uniques if all(shape.has(c) for c in u)
                  and not (tshape.alias and [c.lower() for c in u] == [tshape.alias.lower()])]
        if usable:
            return "key", sorted(usable, key=lambda u: (len(u), u))[0], tshape.alias
        if tshape.alias:
            return "surrogate", [], tshape.alias
        return "content", [], None

    def _temp_index(self, target, cols):
        """An index the match needs on a target table. It stays until finish(): the next sources merging into
        the same table reuse it (kept current by their inserts) instead of each rebuilding it over the whole,
        growing table."""
        name = self._name("tmp_index")
        self.sql("CREATE INDEX main.%s ON %s (%s)" % (q(name), q(target), ", ".join(q(c) for c in cols)))
        self.temp_indexes.append(name)

    def finish(self):
        """Drop the match indexes: the merged target has exactly the schema the sources and the target asked for."""
        self.phase = "merge: cleanup"
        for name in self.temp_indexes:
            self.sql("DROP INDEX main.%s" % q(name))
        self.temp_indexes = []

    def _target_rows(self, target):
        """Rows of a target table now. count(*) walks a whole index, and the target grows to the sum of all
        sources: it is counted once and then advanced by the rows this merge inserts, unless a trigger or an
        ON CONFLICT REPLACE clause in the target could add or remove rows behind the merge's back."""
        triggers = self.one("SELECT count(*) FROM main.sqlite_master WHERE type = 'trigger'")
        sql = self.one("SELECT group_concat(sql, ' ') FROM main.sqlite_master WHERE tbl_name = ?", (target,)) or ""
        if triggers or "REPLACE" in sql.upper():
            self.row_counts.pop(target, None)
            return self.one("SELECT count(*) FROM main.%s" % q(target))
        if target not in self.row_counts:
            self.row_counts[target] = self.one("SELECT count(*) FROM main.%s" % q(target))
        return self.row_counts[target]

    def _inserted(self, target, rows):
        if target in self.row_counts:
            self.row_counts[target] += rows

    def _merge_rows(self, source_path, d, shapes):
        shape = shapes[d["source_table"]]
        target = d["target_table"]
        tshape = Shape(self.conn, "main", target)
        S, T = "src.%s" % q(shape.name), "main.%s" % q(target)
        self.phase = "merge: count"
        counts = dict(d, source_rows=self.one("SELECT count(*) FROM %s" % S), inserted=0, identical=0, conflicts=0,
                      conflicts_source_won=0, remapped=0, repointed=0, mode="copy",
                      target_rows_before=self._target_rows(target))
        cols = shape.columns
        tcol = {c: tshape.actual(c) for c in cols}
        expr = {c: self._expr(source_path, shape, shapes, c) for c in cols}
        if d["action"] == "create":
            self.phase = "merge: insert new"
            values, joins = self._mapped_select(source_path, shape, shapes, cols)
            self.sql("INSERT INTO %s (%s) SELECT %s FROM %s s%s ORDER BY s.rowid" % (
                T, ", ".join(q(tcol[c]) for c in cols), ", ".join(values), S, joins))
            counts["inserted"] = self.one("SELECT changes()")
            self._inserted(target, counts["inserted"])
            self._register_map(source_path, shape, None)
            return self._check_accounting(source_path, counts)

        mode, key, rid = self._key_for(tshape, shape, target)
        counts["mode"] = mode
        src_rid = shape.actual(rid) if rid and shape.has(rid) else None
        if rid and not src_rid:
            rid = None
        skip = {c.lower() for c in key} | ({rid.lower()} if rid else set())
        compare = [c for c in cols if c.lower() not in skip]
        cmp_sql = " AND ".join("t.%s IS %s" % (q(tcol[c]), expr[c]) for c in compare) or "1"
        match = self._name("match")
        self.sql("CREATE TEMP TABLE %s (srow INTEGER PRIMARY KEY, trow INTEGER NOT NULL, same INTEGER NOT NULL)"
                 % q(match))
        M = "temp.%s" % q(match)
        try:
            self.phase = "merge: match"
            if mode == "key":
                self._match_by_key(source_path, shape, tshape, key, S, T, M, cmp_sql)
            else:
                if rid:
                    self.sql("INSERT INTO %s (srow, trow, same) SELECT s.rowid, t.rowid, 1 FROM %s s JOIN %s t "
                             "ON t.%s = s.%s WHERE %s" % (M, S, T, q(rid), q(src_rid), cmp_sql))
                self._match_by_content(shape, tshape, compare, tcol, S, T, M, cmp_sql)
            counts["identical"] = self.one("SELECT count(*) FROM %s WHERE same = 1" % M)
            counts["conflicts"] = self.one("SELECT count(*) FROM %s WHERE same = 0" % M)
            self.phase = "merge: id map"
            if rid:
                counts["repointed"], counts["remapped"] = self._build_map(source_path, shape, target, rid, src_rid,
                                                                          S, T, M)
                expr = {c: self._expr(source_path, shape, shapes, c) for c in cols}
            else:
                self._register_map(source_path, shape, None)
            insert_cols = ([src_rid] if src_rid else []) + [c for c in cols if not (src_rid and c == src_rid)]
            values, joins = self._mapped_select(source_path, shape, shapes, insert_cols, src_rid)
            names = [q(rid) if src_rid and c == src_rid else q(tcol[c]) for c in insert_cols]
            self.phase = "merge: insert new"
            order = self._insert_order(shape, key, rid)
            ignore = mode == "key" and self._key_enforced(tshape, key, rid, target)
            try:
                if ignore:
                    # The target's own unique index on the key skips the matched rows: no anti-join per row (20%
                    # less CPU on the biggest statement, bench). Checked below: exactly the unmatched rows went in.
                    self.sql("INSERT OR IGNORE INTO %s (%s) SELECT %s FROM %s s%s ORDER BY %s"
                             % (T, ", ".join(names), ", ".join(values), S, joins, order))
                else:
                    # LEFT JOIN ... IS NULL rather than NOT EXISTS: same rows, ~8% less CPU per row (bench)
                    self.sql("INSERT INTO %s (%s) SELECT %s FROM %s s LEFT JOIN %s m ON m.srow = s.rowid%s "
                             "WHERE m.srow IS NULL ORDER BY %s" % (T, ", ".join(names), ", ".join(values), S, M, joins,
                                                                   order))
            except sqlite3.IntegrityError as exc:
                raise KeyDefinitionError(
                    "%s: new rows of table %s collide with rows of target table %s on a unique column that is not "
                    "the merge key (%s); configure keys for %s" % (source_path, shape.name, target, exc, target))
            counts["inserted"] = self.one("SELECT changes()")
            unmatched = counts["source_rows"] - counts["identical"] - counts["conflicts"]
            if ignore and counts["inserted"] != unmatched:
                raise KeyDefinitionError(
                    "%s: %d new row(s) of table %s collide with rows of target table %s on a unique column that is "
                    "not the merge key (or break a NOT NULL/CHECK constraint); configure keys for %s"
                    % (source_path, unmatched - counts["inserted"], shape.name, target, target))
            self._inserted(target, counts["inserted"])
            self.phase = "merge: conflicts"
            if counts["conflicts"]:
                counts["conflicts_source_won"] = self._conflicts(source_path, shape, tshape, target, key, compare,
                                                                 tcol, expr, S, T, M)
        finally:
            self.phase = "merge: cleanup"
            self.sql("DROP TABLE IF EXISTS %s" % M)
        return self._check_accounting(source_path, counts)

    @staticmethod
    def _insert_order(shape, key, rid):
        """ORDER BY of the new rows: the key when the target assigns rowids itself (no INTEGER PRIMARY KEY) and a
        source index already yields that order, else the source's rowid order. Rows arriving in key order land
        next to each other in the target's key index instead of at random leaves: 15% less CPU on the biggest
        statement of the bench (TEXT primary keys), and no sorter (without a source index the rowid order stays)."""
        if key and not rid and shape.has_index_on(key):
            return ", ".join("s.%s" % q(shape.actual(c)) for c in key)
        return "s.rowid"

    def _key_enforced(self, tshape, key, rid, target):
        """True when INSERT OR IGNORE skips exactly the rows whose key is taken: the target's own PRIMARY KEY or
        UNIQUE index is the key, ids are not remapped, and no trigger (a BEFORE trigger fires for skipped rows too)
        or ON CONFLICT REPLACE clause (IGNORE would override it) changes what a plain INSERT does."""
        if rid:
            return False
        low = sorted(c.lower() for c in key)
        if not (tshape.alias and low == [tshape.alias.lower()]) and not any(
                sorted(c.lower() for c in u) == low for u in tshape.uniques):
            return False
        if "REPLACE" in tshape.sql.upper():
            return False
        return not self.one("SELECT count(*) FROM main.sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                            (target,))

    def _match_by_key(self, source_path, shape, tshape, key, S, T, M, cmp_sql):
        if not tshape.has_index_on(key):
            self._temp_index(tshape.name, [tshape.actual(c) for c in key])
        if not any([c.lower() for c in u] == [c.lower() for c in key] for u in tshape.uniques):
            dup = self.sql("SELECT 1 FROM %s WHERE %s GROUP BY %s HAVING count(*) > 1 LIMIT 1" % (
                T, " AND ".join("%s IS NOT NULL" % q(c) for c in key), ", ".join(q(c) for c in key))).fetchone()
            if dup:
                raise KeyDefinitionError("key (%s) of target table %s is not unique in the target"
                                         % (", ".join(key), tshape.name))
        on = " AND ".join("t.%s = s.%s" % (q(tshape.actual(c)), q(shape.actual(c))) for c in key)
        self.sql("INSERT INTO %s (srow, trow, same) SELECT s.rowid, t.rowid, CASE WHEN %s THEN 1 ELSE 0 END "
                 "FROM %s s JOIN %s t ON %s" % (M, cmp_sql, S, T, on))
        if self.sql("SELECT 1 FROM %s GROUP BY trow HAVING count(*) > 1 LIMIT 1" % M).fetchone():
            raise KeyDefinitionError("%s: key (%s) of table %s is not unique in the source"
                                     % (source_path, ", ".join(key), shape.name))
        if not any([c.lower() for c in u] == [c.lower() for c in key] for u in shape.uniques):
            dup = self.sql("SELECT 1 FROM %s WHERE %s GROUP BY %s HAVING count(*) > 1 LIMIT 1" % (
                S, " AND ".join("%s IS NOT NULL" % q(c) for c in key), ", ".join(q(c) for c in key))).fetchone()
            if dup:
                raise KeyDefinitionError("%s: key (%s) of table %s is not unique in the source"
                                         % (source_path, ", ".join(key), shape.name))

    def _match_by_content(self, shape, tshape, compare, tcol, S, T, M, cmp_sql):
        """Rows without a key are identical when some target row has the same content (ids aside)."""
        if not compare:
            return
        left = self.one("SELECT count(*) FROM %s s WHERE NOT EXISTS (SELECT 1 FROM %s m WHERE m.srow = s.rowid)"
                        % (S, M))
        if not left or not self.one("SELECT EXISTS (SELECT 1 FROM %s)" % T):
            return
        lead = [tcol[c] for c in compare[:CONTENT_INDEX_COLUMNS]]
        if not tshape.has_index_on(lead[:1]):
            self._temp_index(tshape.name, lead)
        self.sql("INSERT INTO %s (srow, trow, same) SELECT srow, trow, 1 FROM (SELECT s.rowid AS srow, "
                 "(SELECT t.rowid FROM %s t WHERE %s LIMIT 1) AS trow FROM %s s WHERE NOT EXISTS "
                 "(SELECT 1 FROM %s m WHERE m.srow = s.rowid)) WHERE trow IS NOT NULL" % (M, T, cmp_sql, S, M))

    def _register_map(self, source_path, shape, name):
        key = (os.path.basename(source_path), shape.name)
        if name:
            self.maps[key] = name
        else:
            self.maps.pop(key, None)

    def _build_map(self, source_path, shape, target, rid, src_rid, S, T, M):
        """Old source id -> target id: matched rows point at the target row, new rows with a taken id get a new one."""
        name = self._name("map")
        self.sql("CREATE TEMP TABLE %s (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)" % q(name))
        self.sql("INSERT INTO temp.%s (old, new) SELECT s.%s, m.trow FROM %s m JOIN %s s ON s.rowid = m.srow "
                 "WHERE s.%s IS NOT m.trow" % (q(name), q(src_rid), M, S, q(src_rid)))
        repointed = self.one("SELECT changes()")
        base = max(self.one("SELECT coalesce(max(%s), 0) FROM %s" % (q(rid), T)) or 0,
                   self.one("SELECT coalesce(max(%s), 0) FROM %s" % (q(src_rid), S)) or 0,
                   self._sequence(target))
        # unmatched rows whose id is taken in the target; joins rather than (NOT) EXISTS: ~30% less CPU (bench)
        self.sql("INSERT INTO temp.%s (old, new) SELECT s.%s, ? + row_number() OVER (ORDER BY s.%s) FROM %s s "
                 "LEFT JOIN %s m ON m.srow = s.rowid JOIN %s t ON t.%s = s.%s WHERE m.srow IS NULL"
                 % (q(name), q(src_rid), q(src_rid), S, M, T, q(rid), q(src_rid)), (int(base),))
        remapped = self.one("SELECT changes()")
        if repointed or remapped:
            self._register_map(source_path, shape, name)
        else:
            self._register_map(source_path, shape, None)
            self.sql("DROP TABLE temp.%s" % q(name))
        return repointed, remapped

    def _sequence(self, target):
        if not self.one("SELECT count(*) FROM main.sqlite_master WHERE name = 'sqlite_sequence'"):
            return 0
        row = self.sql("SELECT seq FROM main.sqlite_sequence WHERE name = ?", (target,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _conflicts(self, source_path, shape, tshape, target, key, compare, tcol, expr, S, T, M):
        """Record every conflict (both versions) and resolve it by policy; return how many the source won."""
        policy = self.opts.on_conflict
        if policy == "fail":
            rows = self.sql("SELECT %s FROM %s m JOIN %s s ON s.rowid = m.srow WHERE m.same = 0 LIMIT 3" % (
                ", ".join("s.%s" % q(shape.actual(c)) for c in key), M, S)).fetchall()
            shown = ["(%s)" % ", ".join("%s=%s" % (c, mask_value(c, v, self.opts.secret_columns))
                                        for c, v in zip(key, row)) for row in rows]
            raise ConflictError("%s: %d row(s) of table %s conflict with target table %s on key %s (first: %s) and "
                                "on_conflict=fail" % (source_path, self.one("SELECT count(*) FROM %s WHERE same = 0"
                                                                            % M), shape.name, target, key,
                                                      ", ".join(shown)))
        newer = "0"
        if policy == "keep_source":
            newer = "1"
        elif policy == "newest":
            col = self.opts.newest_column
            if not (shape.has(col) and tshape.has(col)):
                raise KeyDefinitionError("%s: on_conflict=newest but table %s has no column %s to compare"
                                         % (source_path, shape.name, col))
            s_col, t_col = "s.%s" % q(shape.actual(col)), "t.%s" % q(tshape.actual(col))
            newer = "(%s > %s OR (%s IS NULL AND %s IS NOT NULL))" % (s_col, t_col, t_col, s_col)
        key_json = "json_object(%s)" % ", ".join("'%s', t.%s" % (c.replace("'", "''"), q(tshape.actual(c)))
                                                 for c in key)
        self.sql("INSERT OR IGNORE INTO main.%s (merged_at, source, source_table, target_table, key, target_row, "
                 "source_row, resolution) SELECT ?, ?, ?, ?, %s, %s, %s, CASE WHEN %s THEN 'took_source' ELSE "
                 "'kept_target' END FROM %s m JOIN %s s ON s.rowid = m.srow JOIN %s t ON t.rowid = m.trow "
                 "WHERE m.same = 0" % (q(self.opts.conflicts_table), key_json, _json_object("t", tshape.columns),
                                       _json_object("s", shape.columns), newer, M, S, T),
                 (self.now, source_path, shape.name, target))
        if newer == "0" or not compare:
            return 0
        aliases = ["_zm_c%d" % i for i in range(len(compare))]
        self.sql("UPDATE %s AS t SET (%s) = (%s) FROM (SELECT m.trow AS _zm_trow, %s FROM %s m JOIN %s s "
                 "ON s.rowid = m.srow JOIN %s t ON t.rowid = m.trow WHERE m.same = 0 AND %s) AS x "
                 "WHERE t.rowid = x._zm_trow" % (
                     T, ", ".join(q(tcol[c]) for c in compare), ", ".join("x.%s" % a for a in aliases),
                     ", ".join("%s AS %s" % (expr[c], a) for c, a in zip(compare, aliases)), M, S, T, newer))
        return self.one("SELECT changes()")

    def _check_accounting(self, source_path, counts):
        if counts["source_rows"] != counts["inserted"] + counts["identical"] + counts["conflicts"]:
            raise VerificationError(
                "%s: table %s: source_rows %d != inserted %d + identical %d + conflicts %d" % (
                    source_path, counts["source_table"], counts["source_rows"], counts["inserted"],
                    counts["identical"], counts["conflicts"]))
        if counts.get("clash") is None:
            counts.pop("clash", None)
        return counts

    def _copy_indexes_and_triggers(self, d):
        """Indexes (after the data: faster) and triggers of a table this merge created, from the source schema."""
        renamed = d["target_table"] != d["source_table"]
        rows = self.sql("SELECT type, name, sql FROM src.sqlite_master WHERE tbl_name = ? AND type IN "
                        "('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name", (d["source_table"],))
        for kind, name, sql in rows.fetchall():
            taken = self.one("SELECT count(*) FROM main.sqlite_master WHERE name = ?", (name,))
            if kind == "index":
                new_name = "%s_%s" % (d["target_table"], name) if (taken or renamed) else name
                self.sql(rename_create(sql, new_name, d["target_table"] if renamed else None))
            elif renamed or taken:
                # A trigger body names tables; renaming those safely needs a parser. Say so instead of guessing.
                d.setdefault("triggers_skipped", []).append(name)
            else:
                self.sql(sql)


# ---------------------------------------------------------------------------------------------- plan / apply

class Timings(dict):
    """Wall seconds per phase of one merge ({phase: seconds}, summed over sources), for the benchmark's profile.

    .cpu holds the CPU seconds of the thread that ran each phase: on a shared machine the wall clock is mostly
    waiting for a core, the CPU time says what the phase costs.
    """

    def __init__(self):
        dict.__init__(self)
        self.cpu = {}

    def span(self, phase):
        return _Span(self, phase)

    def add(self, phase, wall, cpu):
        self[phase] = self.get(phase, 0.0) + wall
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu


class _Span:
    def __init__(self, timings, phase):
        self.timings, self.phase = timings, phase

    def __enter__(self):
        self.start, self.start_cpu = time.perf_counter(), time.thread_time()

    def __exit__(self, *exc):
        self.timings.add(self.phase, time.perf_counter() - self.start, time.thread_time() - self.start_cpu)


class MergePlan:
    """The result of plan_merge: accounting, and the merged copy of the target that apply_merge writes."""

    def __init__(self, target, options):
        self.target = target
        self.options = options
        self.sources = []          # accounting per source (status merged / already_merged / retired)
        self.changed = False
        self.workdir = None
        self.merged_copy = None
        self.target_stat = None
        self.conflict_samples = []
        self.schema_changes = {"tables_created": [], "columns_added": []}
        self.timings = Timings()   # per-phase seconds; not part of the module result
        self.fk_before = {}
        self.verification = None   # the result checks, running in the background until verified()

    def verified(self):
        """Wait for the result checks (integrity_check, foreign_key_check) of the merged copy; raise if they failed."""
        if self.verification is not None:
            self.verification.wait(self.timings)

    def close(self):
        if self.verification is not None:
            self.verification.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def totals(self):
        keys = ("source_rows", "inserted", "identical", "conflicts", "remapped", "repointed")
        out = {k: 0 for k in keys}
        for src in self.sources:
            for table in src.get("tables", []):
                for k in keys:
                    out[k] += table.get(k, 0)
        out["sources_merged"] = sum(1 for s in self.sources if s["status"] == "merged")
        return out

    def result(self):
        """Machine-readable accounting for the module result: no secret values (conflicts are masked).

        Waits for the result checks first, so no caller (check mode included) gets an accounting that failed them.
        """
        self.verified()
        return {"target": self.target, "sources": self.sources, "totals": self.totals(),
                "schema_changes": self.schema_changes, "conflicts": self.conflict_samples}

    def diff(self):
        """Headed, readable, masked summary for Ansible's diff."""
        before, after, seen = [], [], set()
        for src in self.sources:
            if src["status"] != "merged":
                after.append("# %s: %s" % (src["path"], src["status"]))
                continue
            after.append("# %s (sha256 %s)" % (src["path"], src["digest"][:12]))
            for t in src["tables"]:
                if t["target_table"] not in seen:
                    seen.add(t["target_table"])
                    before.append("%s: %s" % (t["target_table"], "%d rows" % t.get("target_rows_before", 0)
                                              if t["action"] != "create" else "(no such table)"))
                line = "%s <- %s: %d source rows = %d inserted + %d identical + %d conflicts" % (
                    t["target_table"], t["source_table"], t["source_rows"], t["inserted"], t["identical"],
                    t["conflicts"])
                extra = []
                if t["action"] == "create":
                    extra.append("table created")
                if t.get("columns_added"):
                    extra.append("columns added: %s" % ", ".join(t["columns_added"]))
                if t.get("remapped"):
                    extra.append("%d new ids" % t["remapped"])
                if t.get("repointed"):
                    extra.append("%d re-pointed to target ids" % t["repointed"])
                after.append(line + (" (%s)" % "; ".join(extra) if extra else ""))
        for c in self.conflict_samples:
            after.append("conflict %s %s: %s" % (c["target_table"], json.dumps(c["key"], sort_keys=True),
                                                 c["resolution"]))
        return {"before_header": "%s (before)" % self.target, "before": "\n".join(sorted(before)) + "\n",
                "after_header": "%s (after merge)" % self.target, "after": "\n".join(after) + "\n"}


def _validate_target(target):
    if not os.path.exists(target):
        raise MissingTargetError("%s: target database does not exist" % target)
    if not is_sqlite_file(target):
        raise NotADatabaseError("%s: target is not a SQLite database" % target)
    if not os.access(target, os.W_OK) or not os.access(os.path.dirname(target) or ".", os.W_OK):
        raise TargetNotWritableError("%s: target (or its directory, for the journal) is not writable" % target)
    if writer_holds_lock(target):
        raise DatabaseLockedError("%s: target is locked by a writer; stop the services that write it" % target)


def _ledger(conn, opts):
    if not opts.use_ledger or opts.ledger_table not in table_names(conn):
        return set(), set()
    rows = conn.execute("SELECT source, digest FROM main.%s" % q(opts.ledger_table)).fetchall()
    return {r[0] for r in rows}, {(r[0], r[1]) for r in rows}


def _refuse_target_as_source(path, target):
    if os.path.samefile(path, target):
        raise SourceIsTargetError("%s: source is the target %s itself (same file); refusing to merge a database "
                                  "into itself" % (path, target))


def _copy_source(path, workdir, timings):
    """Lock probe, then the source's private copy and its digest. Raises the named error for the file."""
    if writer_holds_lock(path):
        raise DatabaseLockedError("%s: source is locked by a writer (or has a hot journal); stop its service"
                                  % path)
    try:
        with timings.span("source copy (background)"):
            copy = consistent_copy(path, workdir=workdir)
    except SQLiteFileError as exc:
        raise NotADatabaseError(str(exc))
    except OSError as exc:
        raise _translate(exc, path)
    with timings.span("source digest (background)"):
        digest = file_digest([copy, copy + "-wal"])
    return copy, digest


def _check_source(path, copy, timings):
    """Full integrity_check of a source's copy (its own connection: runs beside the merge that reads the copy)."""
    conn = sqlite3.connect(copy)
    try:
        with timings.span("source integrity_check (background)"):
            _check_integrity(path, conn)
    finally:
        conn.close()


class _SourcePipeline:
    """Copies, digests and integrity-checks the sources in one background thread while the main thread merges.

    Why: the full integrity_check of every source was the second biggest cost of a merge, and it only reads the
    source's private copy; SQLite and hashlib release the GIL, so it runs on a second core beside the merge of the
    sources already copied. Nothing is weakened: every check has finished, and passed, before plan_merge returns
    (apply_merge is the only writer of the target), and errors are raised in the order a sequential
    copy-check-copy-check run would raise them (first_error), so the same bad input gives the same message.
    The worker copies the next source before checking the current one, so the merge rarely waits for a copy.
    """

    def __init__(self, paths, workdir, timings):
        self.paths = list(paths)
        self.timings = timings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoe-merge-source")
        self.copied, self.checked = [], []
        for i, path in enumerate(self.paths):
            if i == 0:
                self.copied.append(self.executor.submit(_copy_source, path, workdir, timings))
            if i + 1 < len(self.paths):
                self.copied.append(self.executor.submit(_copy_source, self.paths[i + 1], workdir, timings))
            self.checked.append(self.executor.submit(self._check, i))

    def _check(self, i):
        copy, _ = self.copied[i].result()
        _check_source(self.paths[i], copy, self.timings)

    def copy_of(self, i):
        """(copy path, digest) of source i, once copied; raises the first error a sequential run would raise."""
        try:
            return self.copied[i].result()
        except Exception:
            raise self.first_error() or MergeError("%s: source copy failed" % self.paths[i])

    def release(self, i):
        """The merge is done with source i: remove its copy once its check is done too (keeps disk use flat)."""
        copy, _ = self.copied[i].result()
        self.checked[i].add_done_callback(lambda _: shutil.rmtree(os.path.dirname(copy), ignore_errors=True))

    def wait_checked(self):
        """Block until every source passed its integrity_check; raise the first error otherwise."""
        with self.timings.span("wait for source checks"):
            for i in range(len(self.paths)):
                if self.checked[i].exception() is not None:
                    raise self.first_error()

    def first_error(self):
        """The error of the first failing step in sequential order (copy 1, check 1, copy 2, ...), or None."""
        for i in range(len(self.paths)):
            for future in (self.copied[i], self.checked[i]):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    self.close()
                    return exc
        return None

    def close(self):
        for future in self.copied + self.checked:
            future.cancel()
        self.executor.shutdown(wait=True)


def plan_merge(target, sources, **options):
    """Compute the exact merge without touching any file but private copies. Caller closes the plan.

    Returns a MergePlan: per source and table the rows to insert, identical, conflicts, remaps and schema
    changes, plus the merged copy apply_merge() writes.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise MergeError("SQLite %s is too old; the merge needs %s or later" % (
            sqlite3.sqlite_version, ".".join(map(str, MIN_SQLITE))))
    digest_target = bool(options.pop("digest_target", False))
    opts = options.pop("options", None) or MergeOptions(**options)
    target = os.path.realpath(target)
    _validate_target(target)
    plan = MergePlan(target, opts)
    # digest_target: sha256 of the bytes the target copy was taken from (sqlite_merge_prepare compares it with
    # the target as it is in the downtime window before it writes a merge prepared before the stop).
    plan.target_digest = None
    plan.digest_target = digest_target
    plan.workdir = tempfile.mkdtemp(prefix="zoe-merge-", dir=opts.workdir)
    os.chmod(plan.workdir, 0o700)
    try:
        _plan_into(plan, target, sources, opts)
    except BaseException:
        plan.close()
        raise
    return plan


def _plan_into(plan, target, sources, opts):
    plan.target_stat = _stat_key(target)
    timings = plan.timings
    try:
        with timings.span("target copy"):
            plan.merged_copy = consistent_copy(target, workdir=plan.workdir)
            if plan.digest_target:
                plan.target_digest = file_digest([plan.merged_copy, plan.merged_copy + "-wal"])
    except OSError as exc:
        raise _translate(exc, target)
    conn = sqlite3.connect(plan.merged_copy, isolation_level=None)
    try:
        with timings.span("target integrity_check"):
            _check_integrity(target, conn)
        merged_paths, merged_pairs = _ledger(conn, opts)
        present = []
        for raw in sources:
            path = os.path.abspath(raw)
            if not os.path.exists(path):
                if path in merged_paths or os.path.realpath(path) in merged_paths:
                    plan.sources.append({"path": path, "status": "retired", "tables": []})
                    continue
                raise MissingSourceError("%s: source does not exist and is not in the ledger %s of %s"
                                         % (path, opts.ledger_table, target))
            _refuse_target_as_source(path, target)
            present.append(path)
        if present:
            _merge_present(plan, conn, present, merged_pairs, opts)
    except sqlite3.DatabaseError as exc:
        raise _translate(exc, target)
    except OSError as exc:
        raise _translate(exc, target)
    finally:
        conn.close()


def _merge_present(plan, conn, present, merged_pairs, opts):
    """Merge the existing sources as the pipeline copies them; skip those the ledger has with the same digest.

    An error of a source's copy or check wins over an error of the merge (first_error), as when every source
    was copied and checked before the merge started.
    """
    pipeline = _SourcePipeline(present, plan.workdir, plan.timings)
    merged, engine = [], None
    try:
        for i, path in enumerate(present):
            copy, digest = pipeline.copy_of(i)
            if (path, digest) in merged_pairs:
                plan.sources.append({"path": path, "digest": digest, "status": "already_merged", "tables": []})
                pipeline.release(i)
                continue
            if engine is None:
                engine = _start_engine(plan, conn, opts)
            merged.append(engine.merge_source(path, copy, digest))
            pipeline.release(i)
        pipeline.wait_checked()
    except BaseException as exc:
        first = pipeline.first_error() if isinstance(exc, Exception) else None
        pipeline.close()
        if first is not None and first is not exc:
            raise first
        raise
    pipeline.close()
    plan.sources.extend(merged)
    if engine is not None:
        _finish_engine(plan, conn, engine, opts)


def _start_engine(plan, conn, opts):
    conn.execute("PRAGMA foreign_keys = OFF")      # whole merge: no cascade can fire; checked at the end
    conn.execute("PRAGMA journal_mode = OFF")      # private copy, discarded on error: no journal needed
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA temp_store = FILE")
    conn.execute("PRAGMA main.cache_size = %d" % -MERGE_CACHE_KIB)  # bounded: the same for 1M rows or 5M
    for pragma in opts.pragmas:
        conn.execute("PRAGMA %s" % pragma)
    with plan.timings.span("target foreign_key_check"):
        plan.fk_before = _fk_counts(conn)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    engine = _Engine(conn, opts, now, plan.timings)
    conn.execute("BEGIN")
    engine.ensure_bookkeeping()
    conn.execute("COMMIT")
    return engine


def _finish_engine(plan, conn, engine, opts):
    engine.finish()
    for src in plan.sources:
        for t in src.get("tables", []):
            if t["action"] == "create":
                plan.schema_changes["tables_created"].append(t["target_table"])
            for col in t.get("columns_added", []):
                plan.schema_changes["columns_added"].append("%s.%s" % (t["target_table"], col))
    plan.verification = _Verification(plan.target, plan.merged_copy, plan.fk_before, plan.timings)
    with plan.timings.span("conflict samples"):
        plan.conflict_samples = _conflict_samples(conn, opts, engine.now)
    plan.changed = True


def _fk_counts(conn):
    counts = {}
    for row in foreign_key_errors(conn):
        counts[(row[0], row[2])] = counts.get((row[0], row[2]), 0) + 1
    return counts


def _check_result_integrity(target, conn, timings):
    with timings.span("result integrity_check (background)"):
        errors = integrity_errors(conn)
    if errors:
        raise VerificationError("%s: merged database fails integrity_check: %s" % (target, "; ".join(errors[:3])))


def _check_result_foreign_keys(target, conn, fk_before, timings):
    """foreign_key_check of the merged result; violations the target already had are not ours."""
    with timings.span("result foreign_key_check (background)"):
        after = _fk_counts(conn)
    new = {k: v for k, v in after.items() if v > fk_before.get(k, 0)}
    if new:
        raise VerificationError("%s: merged database fails foreign_key_check: %s" % (
            target, "; ".join("%s -> %s: %d row(s)" % (k[0], k[1], v - fk_before.get(k, 0))
                              for k, v in sorted(new.items()))))


class _Verification:
    """integrity_check and foreign_key_check of the merged copy, each on its own connection and thread.

    Why: the full integrity_check of the merged result is the biggest cost after the inserts, and it only reads
    the finished copy. It runs beside the conflict samples and beside apply_merge's backup into the target, whose
    last step (the one that commits) waits for it: a failed check aborts the backup, and SQLite rolls the target's
    transaction back (its rollback journal restores every page written so far). Nothing is weakened: no result
    is returned and nothing is committed before both checks passed (MergePlan.verified()), and errors come in the
    order of the sequential checks (integrity first).
    """

    def __init__(self, target, path, fk_before, timings):
        self.target, self.path = target, path
        self.lock = threading.Lock()
        self.conns = []
        self.closed = False
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zoe-merge-verify")
        self.futures = [self.executor.submit(self._run, _check_result_integrity, target, timings),
                        self.executor.submit(self._run, _check_result_foreign_keys, target, fk_before, timings)]

    def _run(self, check, *args):
        with self.lock:
            if self.closed:
                raise VerificationError("%s: verification cancelled" % self.target)
            # used by this thread only; close() may interrupt() it from another thread, which SQLite allows
            conn = sqlite3.connect(self.path, check_same_thread=False)
            self.conns.append(conn)
        try:
            check(args[0], conn, *args[1:])
        except sqlite3.DatabaseError as exc:
            raise VerificationError("%s: merged database fails verification: %s" % (self.target, exc))
        finally:
            with self.lock:
                self.conns.remove(conn)
                conn.close()

    def wait(self, timings):
        """Block until both checks are done; raise the first failure (integrity before foreign keys)."""
        with timings.span("wait for result checks"):
            for future in self.futures:
                future.result()

    def close(self):
        """Stop the checks (interrupt a running PRAGMA) and join the threads."""
        with self.lock:
            self.closed = True
            for conn in self.conns:
                conn.interrupt()
        self.executor.shutdown(wait=True)


def _conflict_samples(conn, opts, now):
    """The conflicts this merge recorded, masked, at most CONFLICT_SAMPLES of them."""
    rows = conn.execute("SELECT source, source_table, target_table, key, target_row, source_row, resolution "
                        "FROM main.%s WHERE merged_at = ? ORDER BY id LIMIT ?" % q(opts.conflicts_table),
                        (now, CONFLICT_SAMPLES)).fetchall()
    out = []
    for source, stable, ttable, key, trow, srow, resolution in rows:
        tdict, sdict = json.loads(trow), json.loads(srow)
        differ = sorted(c for c in sdict if c in tdict and sdict[c] != tdict[c])
        out.append({"source": source, "source_table": stable, "target_table": ttable,
                    "key": mask_row(json.loads(key), opts.secret_columns), "columns_differ": differ,
                    "target_row": mask_row(tdict, opts.secret_columns),
                    "source_row": mask_row(sdict, opts.secret_columns), "resolution": resolution})
    return out


def backup_into(merged_path, target, lock_timeout, pages=-1, progress=None):
    """Write the database at `merged_path` into `target` in one transaction (SQLite online backup).

    BEGIN IMMEDIATE first: a writer holding the target makes this wait up to `lock_timeout` seconds and then
    fail with DatabaseLockedError, before a page is copied. An error or an exception raised by `progress`
    aborts the backup, and SQLite rolls the target's transaction back: its content stays byte for byte.
    """
    merged = sqlite3.connect(merged_path)
    try:
        dest = sqlite3.connect(target, timeout=lock_timeout, isolation_level=None)
        try:
            dest.execute("BEGIN IMMEDIATE")
            dest.execute("ROLLBACK")
            merged.backup(dest, pages=pages, progress=progress)
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, target)
        finally:
            dest.close()
    finally:
        merged.close()


def apply_merge(plan):
    """Write the planned result into the target in one transaction (SQLite online backup). Returns the result.

    The backup runs in steps of BACKUP_STEP_PAGES beside the result checks; the step that commits starts only
    once they passed. A failed check raises out of the progress callback, which aborts the backup: SQLite rolls
    the target's transaction back, so the target keeps its content byte for byte (its mtime changes).
    """
    if not plan.changed:
        return plan.result()
    target = plan.target
    if _stat_key(target) != plan.target_stat:
        raise TargetChangedError("%s: target changed since the merge was planned; run again" % target)
    merged = sqlite3.connect(plan.merged_copy)
    try:
        pages = merged.execute("PRAGMA page_count").fetchone()[0]
    finally:
        merged.close()
    if pages <= BACKUP_STEP_PAGES:
        plan.verified()  # the first step would copy everything and commit at once

    def before_commit(status, remaining, total):
        if remaining <= BACKUP_STEP_PAGES:
            plan.verified()  # the next step copies the rest and commits

    with plan.timings.span("apply: backup"):
        backup_into(plan.merged_copy, target, plan.options.lock_timeout, pages=BACKUP_STEP_PAGES,
                    progress=before_commit)
    return plan.result()


def merge_databases(target, sources, **options):
    """plan_merge + apply_merge, for callers that do not need check mode (tests, the benchmark)."""
    with plan_merge(target, sources, **options) as plan:
        apply_merge(plan)
        result = plan.result()
        result["changed"] = plan.changed
        return result
