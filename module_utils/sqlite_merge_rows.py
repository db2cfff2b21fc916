# -*- coding: utf-8 -*-
"""The rows of the sqlite_merge engine: per table, match the source rows to the target's, insert the new ones
(keys translated through the parents' key maps), fill added columns, record and resolve conflicts, and
check that every source row is accounted for.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import os
import sqlite3

from ansible.module_utils.sqlite_merge_schema import (ConflictError, KeyDefinitionError, Shape, VerificationError,
                                                      _json_object, affinity, q)

class _Rows:
    """Methods of sqlite_merge_engine._Engine: the rows of one table. The engine's state is described there."""

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

    def _merge_rows(self, source_path, d, shapes):
        shape = shapes[d["source_table"]]
        plan = d.pop("_plan", None)
        target = d["target_table"]
        tshape = Shape(self.conn, "main", target)
        S, T = "src.%s" % q(shape.name), "main.%s" % q(target)
        counts = dict(d, source_rows=self.one("SELECT count(*) FROM %s" % S), inserted=0, identical=0, conflicts=0,
                      conflicts_source_won=0, remapped=0, repointed=0, converted=0, mode="copy",
                      target_rows_before=self._target_rows(target))
        consumed = plan["consumed"] if plan else None
        cols = [c for c in shape.columns if c != consumed]
        tcol = {c: tshape.actual(c) for c in cols}
        if d["action"] == "create":
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
            values, joins = values + more, joins + more_joins
            names = [q(rid)] * bool(src_rid) + [q(tcol[c]) for c in rest]
            if natural_map and not src_rid:
                names, values = [q(rid)] + names, [self._new_key_sql(source_path, shape, tshape, plan, T)] + values
            ignore = mode == "key" and self._key_enforced(tshape, key, rid, target)
            probe_cols, probe_values = rest, values[len(values) - len(rest):]
            converted = self._probe(source_path, shape, shapes, tshape, target, probe_cols, probe_values, joins, M,
                                    counts)
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
            if counts["conflicts"]:
                counts["conflicts_source_won"] = self._conflicts(source_path, shape, tshape, target, key, compare,
                                                                 tcol, expr, S, T, M)
        finally:
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


__all__ = ["_Rows"]
