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

import hashlib
import json
import os
import re
import sqlite3

from ansible.module_utils.zoe_secrets import mask_value
from ansible.module_utils.zoe_sqlite import table_names
from ansible.module_utils.sqlite_merge_schema import (
    INTERNAL_PREFIX, ConflictError, KeyDefinitionError, SchemaObjectError, Shape,
    ShapeClashError, TypeConflictError, UnsupportedTableError, VerificationError, _json_object, affinity,
    normalized_sql, q, rename_create, rename_object, rewrite_references)

# Storage classes a value can have that the target column's affinity would change (datatype3.html 3.1); a value
# of another class keeps its class and bytes. The probe then asks SQLite itself which of them really change.
_CONVERTIBLE = {"TEXT": ("integer", "real"), "NUMERIC": ("text", "real"), "INTEGER": ("text", "real"),
                "REAL": ("text", "integer"), "BLOB": ()}
CONTENT_INDEX_COLUMNS = 4
_NON_CONSTANT_DEFAULTS = ("CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP")


# Text that a numeric affinity could turn into a number is made of digits, signs, points, exponents and white
# space only (a superset: the probe decides); '2025-01-01 10:00' and 'abc' are not, and skip the probe. rtrim()
# stops at the first other character from the end: half the CPU of NOT GLOB '*[^...]*', which tries every
# position (bench/profile_sqlite_merge.py: 0.115 -> 0.052 s over 71,428 dates).
_NUMERIC_TEXT = "(typeof(%s) = 'text' AND rtrim(%s, '0123456789.eE+- \t\n\r') = '' AND %s GLOB '*[0-9]*')"


def _candidate(value, target_affinity):
    """SQL true for a value whose storage class the target affinity may change (a superset of those it changes)."""
    numeric_text = _NUMERIC_TEXT % (value, value, value)
    if target_affinity == "TEXT":
        return "typeof(%s) IN ('integer', 'real')" % value
    if target_affinity == "REAL":
        return "(typeof(%s) = 'integer' OR %s)" % (value, numeric_text)
    return "((typeof(%s) = 'real' AND %s = CAST(%s AS INTEGER)) OR %s)" % (value, value, value, numeric_text)


def _fresh_id(prefix, source, table, old):
    """A key of the target's kind for an unmatched row: the target's prefix and 16 hex digits derived from the
    source and its key, so a dry run and the real run choose the same key."""
    digest = hashlib.sha256(("%s\0%s\0%r" % (source, table, old)).encode("utf-8")).hexdigest()
    return "%s%s" % (prefix or "", digest[:16])


class _Engine:
    """Merges sources, one at a time, into the connection's main database (a private copy of the target)."""

    def __init__(self, conn, opts, now, timings):
        self.conn = conn
        self.timings = timings
        self.opts = opts
        self.now = now
        self.maps = {}       # (source basename, source table) -> temp map table name (source key -> target key)
        self.placed = {}     # (source basename, source table) -> {target_table, key_from, key_to}
        self.counter = 0
        self.phase = "merge: other"  # the timings bucket sql() adds to
        self.temp_indexes = []       # match indexes on target tables, dropped by finish()
        self.row_counts = {}         # target table -> rows, see _target_rows
        self.deferred = []           # (source path, kind, name, sql) of triggers and views, created by finish()
        self.reserved = set()        # lower-case names of the deferred objects
        self.map_affinity = {}       # key map -> affinity of the source key it maps (maps with an okey column)
        self.added = {}              # (target table, column) lower case -> SQL of "holds no value yet", see _decide
        conn.create_function("zoe_fresh_id", 4, _fresh_id, deterministic=True)

    def sql(self, text, params=()):
        with self.timings.span(self.phase):
            return self.conn.execute(text, params)

    def one(self, text, params=()):
        with self.timings.span(self.phase):
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
        with self.timings.span("merge: schema"):
            shapes = self._source_shapes(source_path)
            decisions = [self._decide(source_path, shapes[name], shapes) for name in self._order(source_path, shapes)]
        tables = [self._merge_rows(source_path, d, shapes) for d in decisions]
        with self.timings.span("merge: schema"):
            objects = self._schema_objects(source_path, tables)
        totals = {k: sum(t[k] for t in tables) for k in ("source_rows", "inserted", "identical", "conflicts")}
        account = {"path": source_path, "digest": digest, "status": "merged", "tables": tables, "objects": objects}
        account.update(totals)
        self.sql("INSERT OR REPLACE INTO main.%s (source, digest, merged_at, source_rows, inserted, identical, "
                 "conflicts, accounting) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % q(self.opts.ledger_table),
                 (source_path, digest, self.now, totals["source_rows"], totals["inserted"], totals["identical"],
                  totals["conflicts"], json.dumps({"tables": tables, "objects": objects}, sort_keys=True)))
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

    # ---- schema decision per table pair

    def _correspond(self, source_path, shape, tshape, target, shapes):
        """(None, key plan) when the source table can merge into the target table, else (why not, None).

        The key plan says how rows are matched: a configured natural key (then `tr`, the target's own key column
        when it is not the natural key, wins, and `sr`, the source's, is mapped to it), or the shared primary key.
        """
        base = os.path.basename(source_path)
        natural = self.opts.keys.get(target) or self.opts.keys.get(shape.name)
        spk, tpk = [c.lower() for c in shape.pk], [c.lower() for c in tshape.pk]
        same_pk = spk == tpk and bool(shape.alias) == bool(tshape.alias)
        plan = {"natural": None, "tr": None, "sr": None, "consumed": None}
        if natural:
            missing = [c for c in natural if not tshape.has(c) or not shape.has(c)]
            if missing and same_pk:
                raise KeyDefinitionError("key column(s) %s of table %s missing in the target or the source"
                                         % (", ".join(missing), target))
            if missing:
                return ("primary keys differ (source %s, target %s) and natural key column(s) %s are missing"
                        % (shape.pk or "rowid", tshape.pk or "rowid", ", ".join(missing))), None
            low = [c.lower() for c in natural]
            plan["natural"] = [tshape.actual(c) for c in natural]
            sr = shape.pk[0] if len(shape.pk) == 1 else None
            if len(tshape.pk) == 1 and not (tpk[0] in low and (sr is None or sr.lower() == tpk[0])):
                plan["tr"], plan["sr"] = tshape.pk[0], sr
                if sr and spk[0] != tpk[0] and spk[0] not in low:
                    plan["consumed"] = sr
            elif len(tshape.pk) > 1 and not set(tpk) <= set(low):
                return ("the target's primary key (%s) is neither the natural key (%s) nor one column"
                        % (", ".join(tshape.pk), ", ".join(natural))), None
        elif not same_pk:
            return ("primary keys differ (source %s, target %s) and no natural key is configured for %s"
                    % (shape.pk or "rowid", tshape.pk or "rowid", target)), None
        for fk in shape.fks.values():
            pshape = self._lookup(shapes, fk[0][0])
            placed = self.placed.get((base, pshape.name)) if pshape is not None else None
            if placed and placed["target_table"] != self.opts.mapped_name(source_path, pshape.name):
                return "its parent table %s is kept apart as %s" % (pshape.name, placed["target_table"]), None
        scols = {c.lower() for c in shape.columns}
        filled = {(plan["tr"] or "").lower(), (tshape.alias or "").lower()}
        missing = [c for c in tshape.required if c.lower() not in scols and c.lower() not in filled]
        # rows matched by a natural key or a non-integer primary key need no value there; integer ids are surrogate
        key = plan["natural"] or (tshape.pk if same_pk and not tshape.alias else [])
        if missing and self._unmatched(shape, tshape, key):
            return ("target column %s is NOT NULL without default and the source has no such column to fill it for "
                    "its new rows" % missing[0]), None
        return None, plan

    def _unmatched(self, shape, tshape, key):
        """True when some source row has no target row with its key (it would be inserted), or there is no key."""
        key = [c for c in key if shape.has(c) and tshape.has(c)]
        if not key:
            return True
        on = " AND ".join("t.%s = s.%s" % (q(tshape.actual(c)), q(shape.actual(c))) for c in key)
        return bool(self.one("SELECT EXISTS (SELECT 1 FROM src.%s s WHERE NOT EXISTS (SELECT 1 FROM main.%s t WHERE "
                             "%s))" % (q(shape.name), q(tshape.name), on)))

    def _decide(self, source_path, shape, shapes):
        """Schema step for one source table: create it, merge it (adding the missing columns) or keep it apart."""
        base = os.path.basename(source_path)
        stem = os.path.splitext(base)[0]
        target = self.opts.mapped_name(source_path, shape.name)
        decision = {"source_table": shape.name, "target_table": target, "action": "merge", "decision": "merged",
                    "columns_added": [], "clash": None}
        tshape = self._target_shape(target)
        plan = None
        if tshape is not None:
            reason, plan = self._correspond(source_path, shape, tshape, target, shapes)
            if reason and self.opts.clash_policy == "refuse":
                raise ShapeClashError(
                    "%s: table %s cannot merge into table %s of the target: %s, and clash_policy=refuse. Ways out: "
                    "configure its natural key with keys, map it to another name with table_map (e.g. {%s: {%s: "
                    "%s_%s}}) or set clash_policy=prefix to keep it apart" % (
                        source_path, shape.name, target, reason, base, shape.name, stem, shape.name))
            if reason:
                decision["clash"] = reason
                target = "%s_%s" % (stem, shape.name)
                decision["target_table"] = target
                tshape = self._target_shape(target)
                if tshape is not None:
                    again, plan = self._correspond(source_path, shape, tshape, target, shapes)
                    if again:
                        raise ShapeClashError("%s: table %s is kept apart as %s, and the target's table %s does not "
                                              "match it either: %s" % (source_path, shape.name, target, target, again))
        if tshape is None:
            self.sql(self._create_sql(source_path, shape, target, shapes))
            decision["action"] = "create"
            decision["decision"] = "kept_apart" if decision["clash"] else "created"
            self.placed[(base, shape.name)] = {"target_table": target, "key_from": shape.pk[0] if shape.pk else None,
                                               "key_to": shape.pk[0] if shape.pk else None}
            return decision
        if decision["clash"]:
            decision["decision"] = "kept_apart"
        decision["_plan"] = plan
        mark = self.one("SELECT coalesce(max(rowid), 0) FROM main.%s" % q(target))
        for col in shape.columns:
            if not tshape.has(col) and col != plan["consumed"]:
                decl = shape.types[col.lower()]
                default = shape.defaults.get(col.lower())
                constant = default is not None and not default.strip().startswith("(") and \
                    default.strip().upper() not in _NON_CONSTANT_DEFAULTS
                self.sql("ALTER TABLE main.%s ADD COLUMN %s %s%s" % (
                    q(target), q(col), decl, " DEFAULT %s" % default if constant else ""))
                decision["columns_added"].append(col)
                # The rows the target had read NULL or the default there: no value, which a matched source row fills.
                # A row filled once holds a value from then on (temp table `filled`), even one equal to the default.
                filled = self._name("filled")
                self.sql("CREATE TEMP TABLE %s (trow INTEGER PRIMARY KEY)" % q(filled))
                self.added[(target.lower(), col.lower())] = (
                    "(t.rowid <= %d AND (t.%s IS NULL%s) AND t.rowid NOT IN (SELECT trow FROM temp.%s))" % (
                        mark, q(col), " OR t.%s IS %s" % (q(col), default) if constant else "", q(filled)), filled)
        if plan["consumed"]:
            decision["source_key_mapped"] = "%s -> %s" % (plan["sr"], plan["tr"])
        tr = plan["tr"] or (tshape.pk[0] if len(tshape.pk) == 1 else None)
        self.placed[(base, shape.name)] = {"target_table": target,
                                           "key_from": plan["sr"] or (shape.pk[0] if len(shape.pk) == 1 else None),
                                           "key_to": tr}
        return decision

    def _create_sql(self, source_path, shape, target, shapes):
        """The source's CREATE TABLE, renamed when kept apart, its foreign keys pointed where their parents went."""
        base = os.path.basename(source_path)
        sql = rename_create(shape.sql, target) if target != shape.name else shape.sql
        parents = {}
        for fk in shape.fks.values():
            pshape = self._lookup(shapes, fk[0][0])
            placed = self.placed.get((base, pshape.name)) if pshape is not None else None
            if not placed and pshape is None:
                placed = self._outside_parent(source_path, fk)
            if not placed:
                continue
            columns = {}
            if placed["key_from"] and placed["key_to"] and placed["key_from"].lower() != placed["key_to"].lower():
                columns[placed["key_from"].lower()] = placed["key_to"]
            parents[fk[0][0].lower()] = (placed["target_table"], columns)
        return rewrite_references(sql, parents) if parents else sql

    def _outside_parent(self, source_path, fk):
        """Where a foreign key points whose parent table is not in the source: the target's table of that name,
        at its own primary key when the referenced columns are not a key there (a REFERENCES users(id) beside a
        target users keyed by user_id would be a foreign key mismatch)."""
        parent = self.opts.mapped_name(source_path, fk[0][0])
        tparent = self._target_shape(parent)
        if tparent is None or len(fk) != 1 or len(tparent.pk) != 1:
            return None
        to = fk[0][2]
        keys = [[c.lower() for c in u] for u in tparent.uniques] + [[tparent.pk[0].lower()]]
        if to is None or [to.lower()] in keys:
            return None
        return {"target_table": parent, "key_from": to, "key_to": tparent.pk[0]}

    # ---- rows

    def _map_of(self, source_path, shape, shapes, col, self_rid=None):
        if self_rid is not None and col == self_rid:
            return self.maps.get((os.path.basename(source_path), shape.name))
        parent = self._parent_of(source_path, shape, col, shapes)
        return self.maps.get(parent) if parent else None

    def _expr(self, source_path, shape, shapes, col, alias="s"):
        """The source value of `col`, translated through the parent's key map when it points at mapped keys."""
        ref = "%s.%s" % (alias, q(col))
        mapping = self._map_of(source_path, shape, shapes, col)
        if not mapping:
            return ref
        return "COALESCE((SELECT new FROM temp.%s m WHERE %s), %s)" % (q(mapping), self._on(mapping, shape, col, "m",
                                                                                      ref), ref)

    def _on(self, mapping, shape, col, alias, ref):
        """Join condition of a child value with its parent's key map. A child column of another affinity than the
        parent's key (INTEGER pointing into TEXT, TEXT holding '8' for the integer 8) is matched by the values'
        text, through the map's okey column: `=` on the map's key alone compares storage classes."""
        key_affinity = self.map_affinity.get(mapping)
        if key_affinity is None or affinity(shape.types[col.lower()]) == key_affinity:
            return "%s.old = %s" % (alias, ref)
        return "%s.okey = CAST(%s AS TEXT)" % (alias, ref)

    def _mapped_select(self, source_path, shape, shapes, cols, self_rid=None, start=0):
        """Source values of `cols` for an INSERT ... SELECT from `s`, keys translated through the key maps with one
        LEFT JOIN per mapped column (a seek per row; _expr's correlated subquery costs more per row). `self_rid`
        follows this table's own map. Returns (expressions, joins)."""
        values, joins = [], []
        for col in cols:
            ref = "s.%s" % q(col)
            mapping = self._map_of(source_path, shape, shapes, col, self_rid)
            if not mapping:
                values.append(ref)
                continue
            alias = "_zm_j%d" % (start + len(joins))
            joins.append(" LEFT JOIN temp.%s %s ON %s" % (q(mapping), alias, self._on(mapping, shape, col, alias, ref)))
            values.append("COALESCE(%s.new, %s)" % (alias, ref))
        return values, "".join(joins)

    def _key_for(self, tshape, shape, target, plan):
        """(mode, key columns, target key column): natural key, declared non-rowid key, unique, surrogate id,
        content."""
        if plan and plan["natural"]:
            if plan["tr"]:
                return "key", plan["natural"], plan["tr"]
            return "key", plan["natural"], (tshape.alias if tshape.alias and shape.has(tshape.alias) else None)
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
        """Create the carried-over triggers and views (after every source's rows: no trigger fires on merged rows),
        then drop the match indexes: the merged target has exactly the schema the sources and the target asked for."""
        self.phase = "merge: schema objects"
        for source_path, kind, name, sql in self.deferred:
            try:
                self.sql(sql)
                if kind == "view":
                    self.sql("SELECT * FROM main.%s LIMIT 0" % q(name)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise SchemaObjectError("%s: %s %s cannot be carried into the target (%s); drop it from the source "
                                        "or create it by hand after the merge" % (source_path, kind, name, exc))
        self.deferred = []
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
        plan = d.pop("_plan", None)
        target = d["target_table"]
        tshape = Shape(self.conn, "main", target)
        S, T = "src.%s" % q(shape.name), "main.%s" % q(target)
        self.phase = "merge: count"
        counts = dict(d, source_rows=self.one("SELECT count(*) FROM %s" % S), inserted=0, identical=0, conflicts=0,
                      conflicts_source_won=0, remapped=0, repointed=0, converted=0, mode="copy",
                      target_rows_before=self._target_rows(target))
        consumed = plan["consumed"] if plan else None
        cols = [c for c in shape.columns if c != consumed]
        tcol = {c: tshape.actual(c) for c in cols}
        if d["action"] == "create":
            self.phase = "merge: insert new"
            values, joins = self._mapped_select(source_path, shape, shapes, cols)
            converted = self._probe(source_path, shape, shapes, tshape, target, cols, values, joins, None, counts)
            self.sql("INSERT INTO %s (%s) SELECT %s FROM %s s%s ORDER BY s.rowid" % (
                T, ", ".join(q(tcol[c]) for c in cols), ", ".join(values), S, joins))
            counts["inserted"] = self.one("SELECT changes()")
            self._inserted(target, counts["inserted"])
            self._record_converted(source_path, shape, target, converted, shape.pk or [], counts)
            self._register_map(source_path, shape, None)
            self._children(source_path, shape, shapes, cols, counts)
            return self._check_accounting(source_path, counts)

        mode, key, rid = self._key_for(tshape, shape, target, plan)
        counts["mode"] = mode
        if plan and plan["tr"]:
            src_rid = plan["sr"]
        else:
            src_rid = shape.actual(rid) if rid and shape.has(rid) else None
            if rid and not src_rid:
                rid = None
        skip = {c.lower() for c in key} | ({rid.lower()} if rid else set()) | ({src_rid.lower()} if src_rid else set())
        compare = [c for c in cols if c.lower() not in skip and tcol[c]]
        expr = {c: self._expr(source_path, shape, shapes, c) for c in cols}
        # only rows matched by a key are the same entity; an equal surrogate id or equal content is not enough
        fill = [c for c in compare if (target.lower(), tcol[c].lower()) in self.added] if mode == "key" else []
        cmp_sql = self._compare_sql(shape, tshape, compare, tcol, expr, fill)
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
            if fill:
                counts["filled"] = self._fill(target, fill, tcol, expr, S, T, M)
            self.phase = "merge: id map"
            natural_map = bool(plan and plan["tr"]) and not (
                tshape.alias and shape.alias and src_rid and rid.lower() == tshape.alias.lower()
                and src_rid.lower() == shape.alias.lower())  # integer ids on both sides: _build_map keeps free ids
            if plan and plan["tr"]:
                counts["natural_key"] = plan["natural"]
                counts["keys_to_existing"] = counts["identical"] + counts["conflicts"]
            if natural_map:
                _, counts["repointed"], counts["remapped"] = self._build_key_map(source_path, shape, tshape, target,
                                                                               plan, S, T, M)
            elif rid:
                counts["repointed"], counts["remapped"] = self._build_map(source_path, shape, tshape, target, rid,
                                                                          src_rid, S, T, M)
            else:
                self._register_map(source_path, shape, None)
            if rid:
                expr = {c: self._expr(source_path, shape, shapes, c) for c in cols}
            dup = rid.lower() if rid and natural_map else None  # the target key column, filled from the map
            natural_low = {c.lower() for c in (plan["natural"] if plan and plan["natural"] else [])}
            # the source key goes into the target's key column through the map; a source key that is the natural
            # key itself also goes in as itself
            rest = [c for c in cols if (not (src_rid and c == src_rid) or c.lower() in natural_low)
                    and (not dup or tcol[c].lower() != dup)]
            values, joins = self._mapped_select(source_path, shape, shapes, [src_rid] if src_rid else [], src_rid)
            more, more_joins = self._mapped_select(source_path, shape, shapes, rest, None, start=len(values))
            insert_cols, values, joins = ([src_rid] if src_rid else []) + rest, values + more, joins + more_joins
            names = [q(rid)] * bool(src_rid) + [q(tcol[c]) for c in rest]
            if natural_map and not src_rid:
                names, values = [q(rid)] + names, [self._new_key_sql(source_path, shape, tshape, plan, T)] + values
            ignore = mode == "key" and self._key_enforced(tshape, key, rid, target)
            probe_cols, probe_values = rest, values[len(values) - len(rest):]
            converted = self._probe(source_path, shape, shapes, tshape, target, probe_cols, probe_values, joins, M,
                                    counts)
            self.phase = "merge: insert new"
            order = self._insert_order(shape, key, rid)
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
                    "the merge key, or break a NOT NULL/CHECK constraint (%s); configure keys for %s"
                    % (source_path, shape.name, target, exc, target))
            counts["inserted"] = self.one("SELECT changes()")
            unmatched = counts["source_rows"] - counts["identical"] - counts["conflicts"]
            if ignore and counts["inserted"] != unmatched:
                raise KeyDefinitionError(
                    "%s: %d new row(s) of table %s collide with rows of target table %s on a unique column that is "
                    "not the merge key (or break a NOT NULL/CHECK constraint); configure keys for %s"
                    % (source_path, unmatched - counts["inserted"], shape.name, target, target))
            self._inserted(target, counts["inserted"])
            if plan and plan["tr"]:
                counts["keys_new"] = counts["inserted"]
            self._record_converted(source_path, shape, target, converted, key or shape.pk or [], counts)
            self._children(source_path, shape, shapes, cols, counts)
            self.phase = "merge: conflicts"
            if counts["conflicts"]:
                counts["conflicts_source_won"] = self._conflicts(source_path, shape, tshape, target, key, compare,
                                                                 tcol, expr, S, T, M)
        finally:
            self.phase = "merge: cleanup"
            self.sql("DROP TABLE IF EXISTS %s" % M)
        return self._check_accounting(source_path, counts)

    def _compare_sql(self, shape, tshape, compare, tcol, expr, fill):
        """Rows are identical when every compared value is the same value of the same storage class: where the
        affinities differ or a column has none, `IS` alone would let '007' equal 7 or 3 equal 3.0. A column this
        merge added (`fill`) holds NULL in the rows the target had before: NULL there is no value, not a
        difference (_fill copies the source's value in)."""
        parts = []
        for c in compare:
            saff, taff = affinity(shape.types[c.lower()]), affinity(tshape.types[tcol[c].lower()])
            # a column without affinity holds 3 and 3.0 side by side, and 3 IS 3.0
            # a value translated through a key map is the target's key, stored as the target column stores it
            # (recorded as converted when that changes it): compared as stored, by `IS` under the column's affinity
            exact = (saff != taff or "BLOB" in (saff, taff)) and expr[c] == "s.%s" % q(c)
            t = "t.%s" % q(tcol[c])
            part = ("(%s IS %s AND typeof(%s) = typeof(%s))" % (t, expr[c], t, expr[c]) if exact
                    else "%s IS %s" % (t, expr[c]))
            parts.append("(%s OR %s)" % (self.added[(tshape.name.lower(), tcol[c].lower())][0], part) if c in fill
                         else part)
        return " AND ".join(parts) or "1"

    def _fill(self, target, fill, tcol, expr, S, T, M):
        """Matched target rows take the source's value in the columns this merge added, where they hold no value
        yet (see _decide). Returns how many values were filled."""
        filled = 0
        for c in fill:
            empty, done = self.added[(target.lower(), tcol[c].lower())]
            batch = self._name("fill")
            self.sql("CREATE TEMP TABLE %s (trow INTEGER PRIMARY KEY, v)" % q(batch))
            self.sql("INSERT INTO temp.%s (trow, v) SELECT t.rowid, %s FROM %s m JOIN %s s ON s.rowid = m.srow "
                     "JOIN %s t ON t.rowid = m.trow WHERE %s AND %s IS NOT NULL"
                     % (q(batch), expr[c], M, S, T, empty, expr[c]))
            self.sql("UPDATE %s SET %s = (SELECT v FROM temp.%s b WHERE b.trow = %s.rowid) WHERE rowid IN "
                     "(SELECT trow FROM temp.%s)" % (T, q(tcol[c]), q(batch), T, q(batch)))
            filled += self.one("SELECT changes()")
            self.sql("INSERT INTO temp.%s (trow) SELECT trow FROM temp.%s" % (q(done), q(batch)))
            self.sql("DROP TABLE temp.%s" % q(batch))
        return filled

    # ---- values whose storage class the target would change

    def _probe(self, source_path, shape, shapes, tshape, target, cols, values, joins, M, counts):
        """Which new rows hold a value the target column's affinity would change ('007' into NUMERIC becomes 7).

        Only columns whose affinity differs from the value's (declared types of another affinity, values
        translated through a key map) can change; their candidate rows are stored once into a probe table typed
        like the target columns, and SQLite says which values changed class. Returns the probe (name, [(column,
        probe column)]) or None; with on_conflict=fail a changed value is a TypeConflictError.
        """
        checks, differences = [], []
        for c, value in zip(cols, values):
            tname = tshape.actual(c)
            if tname is None:
                continue
            sdecl, tdecl = shape.types[c.lower()], tshape.types[tname.lower()]
            same_name = " ".join(sdecl.upper().split()) == " ".join(tdecl.upper().split())
            if not same_name and counts["action"] == "merge":
                differences.append({"column": c, "source_type": sdecl or "(none)", "target_type": tdecl or "(none)",
                                    "source_affinity": affinity(sdecl), "target_affinity": affinity(tdecl)})
            mapped = value != "s.%s" % q(c)
            if tshape.alias and tname.lower() == tshape.alias.lower():
                continue
            if (affinity(sdecl) != affinity(tdecl) or mapped) and _CONVERTIBLE[affinity(tdecl)]:
                candidate = _candidate(value, affinity(tdecl))
                join = re.match(r"COALESCE\((_zm_j\d+)\.new, (.+)\)$", value) if mapped else None
                if join and not self.one("SELECT EXISTS (SELECT 1 FROM temp.%s WHERE %s)" % (
                        q(self._map_of(source_path, shape, shapes, c)), _candidate("new", affinity(tdecl)))):
                    # no key in the map changes class there: only values the map does not translate can
                    candidate = "(%s.new IS NULL AND %s)" % (join.group(1), _candidate(join.group(2),
                                                                                       affinity(tdecl)))
                checks.append((c, tname, tdecl, value, candidate))
        probe = None
        if checks:
            probe = self._name("probe")
            spec = ", ".join("c%d %s, o%d" % (i, check[2], i) for i, check in enumerate(checks))
            self.sql("CREATE TEMP TABLE %s (srow INTEGER PRIMARY KEY, %s)" % (q(probe), spec))
            candidate = " OR ".join(check[4] for check in checks)
            head = "SELECT s.rowid, %s FROM %s s" % (", ".join("%s, %s" % (check[3], check[3]) for check in checks),
                                                     "src.%s" % q(shape.name))
            if M:
                self.sql("INSERT INTO temp.%s %s LEFT JOIN %s m ON m.srow = s.rowid%s WHERE m.srow IS NULL AND (%s)"
                         % (q(probe), head, M, joins, candidate))
            else:
                self.sql("INSERT INTO temp.%s %s%s WHERE %s" % (q(probe), head, joins, candidate))
        changed = []
        for i, (c, tname, tdecl, _, _) in enumerate(checks):
            n = self.one("SELECT count(*) FROM temp.%s WHERE typeof(c%d) != typeof(o%d)" % (q(probe), i, i))
            if n:
                changed.append((i, c, n))
            entry = next((e for e in differences if e["column"] == c), None)
            if entry is None and n:
                entry = {"column": c, "source_type": shape.types[c.lower()] or "(none)", "target_type": tdecl or
                         "(none)", "source_affinity": "(key map)", "target_affinity": affinity(tdecl)}
                differences.append(entry)
            if entry is not None:
                entry["values_converted"] = n
        for entry in differences:
            n = entry.setdefault("values_converted", 0)
            if entry["source_affinity"] == entry["target_affinity"]:
                entry["handling"] = "same affinity: every value kept as it is"
            elif n:
                entry["handling"] = ("%d new row(s) hold a value the target's type changes: inserted as the target "
                                     "stores it, both versions recorded as conflicts (converted)" % n)
            else:
                entry["handling"] = "every new value keeps its type and bytes"
        if differences:
            counts["type_differences"] = differences
        if not changed:
            if probe:
                self.sql("DROP TABLE temp.%s" % q(probe))
            return None
        if self.opts.on_conflict == "fail":
            i, c, n = changed[0]
            key_cols = [k for k in (self.opts.keys.get(target) or shape.pk) if shape.has(k)]
            row = self.sql("SELECT %s p.o%d, p.c%d FROM temp.%s p JOIN src.%s s ON s.rowid = p.srow WHERE "
                           "typeof(p.c%d) != typeof(p.o%d) LIMIT 1" % (
                               "".join("s.%s, " % q(k) for k in key_cols), i, i, q(probe), q(shape.name), i,
                               i)).fetchone()
            key = ", ".join("%s=%s" % (k, self._mask(k, v)) for k, v in zip(key_cols, row)) or "rowid"
            raise TypeConflictError(
                "%s: table %s, column %s: %d value(s) would change under the target's type %s (e.g. %r would be "
                "stored as %r, key %s) and on_conflict=fail; nothing was written" % (
                    source_path, shape.name, c, n, tshape.types[tshape.actual(c).lower()] or "(none)",
                    self._mask(c, row[-2]), self._mask(c, row[-1]), key))
        return probe, [(i, c) for i, c, _ in changed], [(i, check[0]) for i, check in enumerate(checks)]

    def _record_converted(self, source_path, shape, target, converted, key, counts):
        """Both versions of every inserted row whose value the target's affinity changed, as conflicts
        (resolution 'converted'): the source row as it was, and the converted columns as the target stores them."""
        if not converted:
            return
        probe, changed, checks = converted
        key = [k for k in key if shape.has(k)]
        where = " OR ".join("typeof(p.c%d) != typeof(p.o%d)" % (i, i) for i, _ in changed)
        key_json = ("json_object(%s)" % ", ".join("'%s', s.%s" % (k.replace("'", "''"), q(k)) for k in key)
                    if key else "json_object('rowid', s.rowid)")
        stored = "json_object(%s)" % ", ".join("'%s', p.c%d" % (c.replace("'", "''"), i) for i, c in checks)
        self.sql("INSERT OR IGNORE INTO main.%s (merged_at, source, source_table, target_table, key, target_row, "
                 "source_row, resolution) SELECT ?, ?, ?, ?, %s, %s, %s, 'converted' FROM temp.%s p JOIN src.%s s "
                 "ON s.rowid = p.srow WHERE %s" % (q(self.opts.conflicts_table), key_json, stored,
                                                   _json_object("s", shape.columns), q(probe), q(shape.name), where),
                 (self.now, source_path, shape.name, target))
        counts["converted"] = self.one("SELECT count(*) FROM temp.%s p WHERE %s" % (q(probe), where))
        self.sql("DROP TABLE temp.%s" % q(probe))

    def _children(self, source_path, shape, shapes, cols, counts):
        """Per column pointing at a mapped key: the parent and how many of this table's rows it re-points."""
        out = []
        for c in cols:
            parent = self._parent_of(source_path, shape, c, shapes)
            mapping = self.maps.get(parent) if parent else None
            if not mapping or parent == (os.path.basename(source_path), shape.name):
                continue
            n = self.one("SELECT count(*) FROM src.%s s JOIN temp.%s m ON %s WHERE m.new IS NOT s.%s OR "
                         "typeof(m.new) != typeof(s.%s)" % (q(shape.name), q(mapping),
                                                           self._on(mapping, shape, c, "m", "s.%s" % q(c)), q(c), q(c)))
            out.append({"column": c, "parent": "%s:%s" % parent, "rows": n})
        if out:
            counts["children_repointed"] = out

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

    def _build_map(self, source_path, shape, tshape, target, rid, src_rid, S, T, M):
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

    def _new_key_sql(self, source_path, shape, tshape, plan, T):
        """SQL of the key an unmatched source row gets in the target: the natural key itself where the target's
        key holds it (every target row has key = natural key), a fresh integer where the key is a rowid, the
        source's own key where it is free and of the target's kind, a fresh id with the target's prefix otherwise."""
        tr, sr, natural = plan["tr"], plan["sr"], plan["natural"]
        if tshape.alias and tr.lower() == tshape.alias.lower():
            return "NULL"  # SQLite assigns the next rowid
        if len(natural) == 1:
            nat = "s.%s" % q(shape.actual(natural[0]))
            rows = self.one("SELECT count(*) FROM %s" % T)
            differ = self.one("SELECT count(*) FROM %s WHERE %s IS NOT %s" % (T, q(tr), q(natural[0])))
            if (rows and not differ) or (not rows and affinity(tshape.types[tr.lower()]) ==
                                         affinity(tshape.types[natural[0].lower()])):
                return nat
        prefix = self._key_prefix(tr, T)
        old = "s.%s" % q(sr) if sr else "s.rowid"
        fresh = "zoe_fresh_id(%s, %s, %s, %s)" % (_literal(prefix), _literal(source_path), _literal(shape.name), old)
        if sr and affinity(shape.types[sr.lower()]) == affinity(tshape.types[tr.lower()]):
            return ("CASE WHEN %s IS NOT NULL AND substr(%s, 1, %d) = %s AND NOT EXISTS (SELECT 1 FROM %s t "
                    "WHERE t.%s = %s) THEN %s ELSE %s END" % (old, old, len(prefix), _literal(prefix), T, q(tr), old,
                                                            old, fresh))
        return fresh

    def _key_prefix(self, tr, T):
        """The prefix every key of the target shares up to its first '_' or '-' (`usr_`), or ''."""
        first = self.sql("SELECT %s FROM %s WHERE typeof(%s) = 'text' LIMIT 1" % (q(tr), T, q(tr))).fetchone()
        if not first:
            return ""
        text = first[0]
        cut = min([i for i in (text.find("_"), text.find("-")) if i > 0] or [-1])
        if cut < 0:
            return ""
        prefix = text[:cut + 1]
        if self.one("SELECT count(*) FROM %s WHERE substr(%s, 1, ?) IS NOT ?" % (T, q(tr)), (len(prefix), prefix)):
            return ""
        return prefix

    def _build_key_map(self, source_path, shape, tshape, target, plan, S, T, M):
        """Source key -> target key through the natural key: matched rows map to the key the target holds, unmatched
        rows to a key of the target's kind (_new_key_sql). Returns (new keys, matched keys that changed, new keys
        that differ from the source's)."""
        tr, sr = plan["tr"], plan["sr"]
        unmatched = self.one("SELECT count(*) FROM %s s LEFT JOIN %s m ON m.srow = s.rowid WHERE m.srow IS NULL"
                             % (S, M))
        if not sr:
            self._register_map(source_path, shape, None)
            return unmatched, 0, 0
        name = self._name("map")
        # `old` has the source key's affinity, so a child column of that affinity seeks the map's index
        key_type = "INTEGER" if shape.alias and sr.lower() == shape.alias.lower() else \
            {"BLOB": ""}.get(affinity(shape.types[sr.lower()]), affinity(shape.types[sr.lower()]))
        self.sql("CREATE TEMP TABLE %s (old %s PRIMARY KEY, new, fresh INTEGER NOT NULL, okey TEXT)"
                 % (q(name), key_type))
        self.sql("INSERT INTO temp.%s (old, new, fresh) SELECT s.%s, t.%s, 0 FROM %s m JOIN %s s ON s.rowid = m.srow "
                 "JOIN %s t ON t.rowid = m.trow WHERE s.%s IS NOT NULL" % (q(name), q(sr), q(tr), M, S, T, q(sr)))
        repointed = self.one("SELECT count(*) FROM temp.%s WHERE old IS NOT new OR typeof(old) != typeof(new)"
                             % q(name))
        new_key = self._new_key_sql(source_path, shape, tshape, plan, T)
        if new_key == "NULL":
            base = max(self.one("SELECT coalesce(max(%s), 0) FROM %s" % (q(tr), T)) or 0, self._sequence(target))
            new_key = "? + row_number() OVER (ORDER BY s.rowid)"
            params = (int(base),)
        else:
            params = ()
        self.sql("INSERT INTO temp.%s (old, new, fresh) SELECT s.%s, %s, 1 FROM %s s LEFT JOIN %s m "
                 "ON m.srow = s.rowid WHERE m.srow IS NULL AND s.%s IS NOT NULL"
                 % (q(name), q(sr), new_key, S, M, q(sr)), params)
        taken = self.sql("SELECT new FROM temp.%s k WHERE fresh = 1 AND EXISTS (SELECT 1 FROM %s t WHERE t.%s = k.new) "
                         "LIMIT 1" % (q(name), T, q(tr))).fetchone()
        if taken:
            raise KeyDefinitionError("%s: table %s: the key %s=%s a new row would get in target table %s is taken by "
                                     "a row with another natural key; configure keys for %s"
                                     % (source_path, shape.name, tr, self._mask(tr, taken[0]), target, target))
        remapped = self.one("SELECT count(*) FROM temp.%s WHERE fresh = 1 AND (old IS NOT new OR typeof(old) != "
                            "typeof(new))" % q(name))
        if not repointed and not remapped:
            # every source key is the target's key already: nothing to re-point, no join for the children
            self._register_map(source_path, shape, None)
            self.sql("DROP TABLE temp.%s" % q(name))
            return unmatched, 0, 0
        self.sql("UPDATE temp.%s SET okey = CAST(old AS TEXT)" % q(name))
        self.sql("CREATE INDEX temp.%s ON %s (okey)" % (q(self._name("okey")), q(name)))
        self.map_affinity[name] = affinity(shape.types[sr.lower()])
        self._register_map(source_path, shape, name)
        return unmatched, repointed, remapped

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
            shown = ["(%s)" % ", ".join("%s=%s" % (c, self._mask(c, v)) for c, v in zip(key, row)) for row in rows]
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

    # ---- views, triggers, indexes

    def _taken(self, name):
        return name.lower() in self.reserved or self.one(
            "SELECT count(*) FROM main.sqlite_master WHERE lower(name) = lower(?)", (name,))

    def _same_object(self, kind, name, sql):
        row = self.sql("SELECT sql FROM main.sqlite_master WHERE type = ? AND lower(name) = lower(?)",
                       (kind, name)).fetchone()
        return bool(row and row[0] and normalized_sql(row[0]) == normalized_sql(sql))

    def _free_name(self, stem, name):
        candidate = "%s_%s" % (stem, name)
        n = 2
        while self._taken(candidate):
            candidate = "%s_%s_%d" % (stem, name, n)
            n += 1
        return candidate

    def _schema_objects(self, source_path, tables):
        """Every table, index, trigger and view of the source and what became of it in the target.

        Indexes are created now (after the rows: faster), unless the target's table already has the same index;
        a UNIQUE index the merged rows violate is refused by name. Triggers and views, their bodies' table names
        renamed like the tables, are created by finish(), after every source's rows.
        """
        base = os.path.basename(source_path)
        stem = os.path.splitext(base)[0]
        by_table = {t["source_table"].lower(): t for t in tables}
        renames = {t["source_table"].lower(): t["target_table"] for t in tables
                   if t["target_table"] != t["source_table"]}
        objects = [{"type": "table", "name": t["source_table"], "target_name": t["target_table"],
                    "action": t["decision"]} for t in tables]
        rows = self.sql("SELECT type, name, tbl_name, sql FROM src.sqlite_master WHERE type IN ('index', 'trigger', "
                        "'view') ORDER BY CASE type WHEN 'index' THEN 0 WHEN 'view' THEN 1 ELSE 2 END, name").fetchall()
        for kind, name, table, sql in rows:
            if sql is None or self.opts.is_internal(name) or (kind != "view" and self.opts.is_internal(table)):
                continue  # automatic indexes of UNIQUE/PRIMARY KEY constraints belong to their table
            entry = {"type": kind, "name": name}
            owner = by_table.get(table.lower()) if kind != "view" else None
            if kind == "index":
                entry["table"] = owner["target_table"]
                moved = owner["target_table"] != owner["source_table"]
                probe = rename_create(sql, "_zoe_same", owner["target_table"])
                same = [n for n, s in self.sql("SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND "
                                               "tbl_name = ? AND sql IS NOT NULL", (owner["target_table"],))
                        if normalized_sql(rename_create(s, "_zoe_same", owner["target_table"])) ==
                        normalized_sql(probe)]
                if same:
                    entry.update(target_name=same[0], action="present")
                else:
                    new = self._free_name(owner["target_table"], name) if (moved or self._taken(name)) else name
                    try:
                        self.sql(rename_create(sql, new, owner["target_table"] if moved else None))
                    except sqlite3.IntegrityError as exc:
                        raise SchemaObjectError(
                            "%s: index %s on table %s cannot be carried into target table %s: the merged rows "
                            "violate it (%s); merge by hand or drop the index from the source" % (
                                source_path, name, table, owner["target_table"], exc))
                    entry.update(target_name=new, action="created")
            else:
                if kind == "trigger":
                    entry["table"] = owner["target_table"] if owner else table
                body = rename_object(sql, name, renames)
                if self._same_object(kind, name, body):
                    entry.update(target_name=name, action="present")
                else:
                    new = self._free_name(stem, name) if self._taken(name) else name
                    self.deferred.append((source_path, kind, new, rename_object(sql, new, renames)))
                    self.reserved.add(new.lower())
                    entry.update(target_name=new, action="created")
            objects.append(entry)
        return objects


def _literal(text):
    return "'%s'" % str(text).replace("'", "''")


__all__ = ["_Engine"]
