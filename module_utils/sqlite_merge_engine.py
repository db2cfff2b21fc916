# -*- coding: utf-8 -*-
"""The merge engine of sqlite_merge: one source at a time into a private copy of the target, set-based SQL.

Standard library only: this runs on the managed host with its own python3.

Per source table the engine decides, by keys and not by declared type names (schema: _decide):
- the target lacks the table: it is created from the source's schema, its foreign keys pointed at where their
  parents went (the merged parent's key, or the renamed parent);
- the keys correspond (the same primary-key columns, or a configured natural key on both sides): merged. The
  columns are the union (source-only columns added, nullable); a value whose storage class would change under
  the target column's affinity is never converted silently (recorded as a conflict with both versions, or a
  refusal with on_conflict=fail). With a natural key and a primary key that is not it, the target's key wins:
  each source key maps to the key the target holds for that natural key, unmatched rows get a key of the
  target's kind, and every child column pointing at a mapped key is re-pointed through the map;
- the keys do not correspond: kept apart under `<source stem>_<table>` (clash_policy=prefix, the default), or
  refused (clash_policy=refuse).
Views, triggers and indexes of a source are carried over (renamed where their name or table was) or refused by
name; triggers and views are created after every source's rows, so no trigger fires on merged rows.
"""

from __future__ import annotations

import json
import os
import sqlite3

from ansible.module_utils.zoe_secrets import mask_value
from ansible.module_utils.zoe_sqlite import table_names
from ansible.module_utils.sqlite_merge_schema import INTERNAL_PREFIX, SchemaObjectError, Shape, UnsupportedTableError, q
from ansible.module_utils.sqlite_merge_decide import _Decisions
from ansible.module_utils.sqlite_merge_keys import _KeyMaps, _fresh_id
from ansible.module_utils.sqlite_merge_objects import _SchemaObjects
from ansible.module_utils.sqlite_merge_rows import _Rows
from ansible.module_utils.sqlite_merge_types import _TypeProbe


class _Engine(_Decisions, _Rows, _KeyMaps, _TypeProbe, _SchemaObjects):
    """Merges sources, one at a time, into the connection's main database (a private copy of the target).

    One topic a file: this one holds the engine's state, one source's merge and the order of its tables; the
    schema decision per table is in sqlite_merge_decide, the rows in sqlite_merge_rows, matching and key maps in
    sqlite_merge_keys, the type probe in sqlite_merge_types, indexes, triggers and views in sqlite_merge_objects.
    """

    def __init__(self, conn, opts, now):
        self.conn = conn
        self.opts = opts
        self.now = now
        self.maps = {}       # (source basename, source table) -> temp map table name (source key -> target key)
        self.placed = {}     # (source basename, source table) -> {target_table, key_from, key_to}
        self.counter = 0
        self.temp_indexes = []       # match indexes on target tables, dropped by finish()
        self.row_counts = {}         # target table -> rows, see _target_rows
        self.deferred = []           # (source path, kind, name, sql) of triggers and views, created by finish()
        self.reserved = set()        # lower-case names of the deferred objects
        self.map_affinity = {}       # key map -> affinity of the source key it maps (maps with an okey column)
        self.added = {}              # (target table, column) lower case -> SQL of "holds no value yet", see _decide
        conn.create_function("zoe_fresh_id", 4, _fresh_id, deterministic=True)

    def sql(self, text, params=()):
        return self.conn.execute(text, params)

    def one(self, text, params=()):
        return self.conn.execute(text, params).fetchone()[0]

    def _name(self, kind):
        self.counter += 1
        return "%s%s_%d" % (INTERNAL_PREFIX, kind, self.counter)

    def _mask(self, column, value):
        return mask_value(column, value, self.opts.key_secret_names())

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
        shapes = self._source_shapes(source_path)
        decisions = [self._decide(source_path, shapes[name], shapes) for name in self._order(source_path, shapes)]
        tables = [self._merge_rows(source_path, d, shapes) for d in decisions]
        objects = self._schema_objects(source_path, tables)
        totals = {k: sum(t[k] for t in tables) for k in ("source_rows", "inserted", "identical", "conflicts")}
        account = {"path": source_path, "digest": digest, "status": "merged", "tables": tables, "objects": objects}
        account.update(totals)
        self.sql("INSERT OR REPLACE INTO main.%s (source, digest, merged_at, source_rows, inserted, identical, "
                 "conflicts, accounting) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % q(self.opts.ledger_table),
                 (source_path, digest, self.now, totals["source_rows"], totals["inserted"], totals["identical"],
                  totals["conflicts"], json.dumps({"tables": tables, "objects": objects}, sort_keys=True)))
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

    @staticmethod
    def _lookup(shapes, name):
        if name in shapes:
            return shapes[name]
        low = name.lower()
        return next((s for n, s in shapes.items() if n.lower() == low), None)

    def _parent_of(self, source_path, shape, col, shapes):
        """(source basename, source table) whose key map translates this column, or None."""
        base = os.path.basename(source_path)
        target_table = self.opts.mapped_name(source_path, shape.name)
        configured = self.opts.reference_parent(source_path, shape.name, target_table, col)
        if configured:
            if ":" in configured:
                src_db, table = configured.split(":", 1)
                return (os.path.basename(src_db), table)
            parent = self._lookup(shapes, configured)
            return (base, parent.name) if parent is not None else None
        declared = shape.single_fks.get(col.lower())
        if declared:
            parent, to = declared
            pshape = self._lookup(shapes, parent)
            if pshape is not None and len(pshape.pk) == 1 and (to is None or to.lower() == pshape.pk[0].lower()):
                return (base, pshape.name)
        return None

    def _order(self, source_path, shapes):
        """Parents before children (declared foreign keys and configured references), so a child sees its
        parent's key map and where the parent went; cycles by name."""
        base = os.path.basename(source_path)
        deps = {}
        for name, shape in shapes.items():
            parents = set()
            for col in shape.columns:
                parent = self._parent_of(source_path, shape, col, shapes)
                if parent and parent[0] == base:
                    parents.add(parent[1])
            for fk in shape.fks.values():
                pshape = self._lookup(shapes, fk[0][0])
                if pshape is not None:
                    parents.add(pshape.name)
            deps[name] = {p for p in parents if p in shapes and p != name}
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

    # ---- rows

    def _temp_index(self, target, cols):
        """An index the match needs on a target table. It stays until finish(): the next sources merging into
        the same table reuse it (kept current by their inserts) instead of each rebuilding it over the whole,
        growing table."""
        name = self._name("tmp_index")
        self.sql("CREATE INDEX main.%s ON %s (%s)" % (q(name), q(target), ", ".join(q(c) for c in cols)))
        self.temp_indexes.append(name)

    def finish(self):
        """Create the carried-over triggers and views (after every source's rows: no trigger fires on merged rows),
        then drop the match indexes: the merged target has exactly the schema the sources and the target asked for."""
        for source_path, kind, name, sql in self.deferred:
            try:
                self.sql(sql)
                if kind == "view":
                    self.sql("SELECT * FROM main.%s LIMIT 0" % q(name)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise SchemaObjectError("%s: %s %s cannot be carried into the target (%s); drop it from the source "
                                        "or create it by hand after the merge" % (source_path, kind, name, exc))
        self.deferred = []
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

    # ---- values whose storage class the target would change

    def _register_map(self, source_path, shape, name):
        key = (os.path.basename(source_path), shape.name)
        if name:
            self.maps[key] = name
        else:
            self.maps.pop(key, None)

    def _sequence(self, target):
        if not self.one("SELECT count(*) FROM main.sqlite_master WHERE name = 'sqlite_sequence'"):
            return 0
        row = self.sql("SELECT seq FROM main.sqlite_sequence WHERE name = ?", (target,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


__all__ = ["_Engine"]
