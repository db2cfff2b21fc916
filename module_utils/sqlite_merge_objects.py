# -*- coding: utf-8 -*-
"""The schema objects of the sqlite_merge engine: what becomes of each index, trigger and view of a source
(carried over, renamed where its name or table was, or refused by name).

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import os
import sqlite3

from ansible.module_utils.sqlite_merge_schema import SchemaObjectError, normalized_sql, rename_create, rename_object

class _SchemaObjects:
    """Methods of sqlite_merge_engine._Engine: views, triggers, indexes. The engine's state is described there."""

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


__all__ = ["_SchemaObjects"]
