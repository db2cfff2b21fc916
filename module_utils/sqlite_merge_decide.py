# -*- coding: utf-8 -*-
"""The schema decision of the sqlite_merge engine: per source table, create it in the target, merge it
into the target's table of that name (columns added, keys matched), or keep it apart.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import os

from ansible.module_utils.sqlite_merge_schema import (KeyDefinitionError, ShapeClashError, q, rename_create,
                                                      rewrite_references)

_NON_CONSTANT_DEFAULTS = ("CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP")


class _Decisions:
    """Methods of sqlite_merge_engine._Engine: the schema decision per table pair.

    The engine's state is described there.
    """

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


__all__ = ["_Decisions"]
