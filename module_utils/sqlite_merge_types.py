# -*- coding: utf-8 -*-
"""The type probe of the sqlite_merge engine: values whose storage class the target column's affinity would
change ('007' into a NUMERIC column becomes 7) are found before they are inserted and recorded as conflicts
with both versions, or refused with on_conflict=fail.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import re

from ansible.module_utils.sqlite_merge_schema import TypeConflictError, _json_object, affinity, q

# Storage classes a value can have that the target column's affinity would change (datatype3.html 3.1); a value
# of another class keeps its class and bytes. The probe then asks SQLite itself which of them really change.
_CONVERTIBLE = {"TEXT": ("integer", "real"), "NUMERIC": ("text", "real"), "INTEGER": ("text", "real"),
                "REAL": ("text", "integer"), "BLOB": ()}


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


class _TypeProbe:
    """Methods of sqlite_merge_engine._Engine: values whose storage class the target would change.

    The engine's state is described there.
    """

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
        if checks and not self.one("SELECT EXISTS (SELECT 1 FROM src.%s s%s WHERE %s)" % (
                q(shape.name), joins, " OR ".join(check[4] for check in checks))):
            # no value of the whole source table is a candidate (matched rows included): nothing to store. One
            # scan without the match join or a write: the probe's 1.11 s CPU -> 1.00 s over the 13 sources of the
            # 1M bench (bench/profile_sqlite_merge.py)
            checks = []
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


__all__ = ["_TypeProbe"]
