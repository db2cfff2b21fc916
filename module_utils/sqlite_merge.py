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
import json
import os
import shutil
import sqlite3
import tempfile

from ansible.module_utils.zoe_secrets import mask_row
from ansible.module_utils.zoe_sqlite import consistent_copy, quote_identifier, table_names  # noqa: F401
from ansible.module_utils.sqlite_merge_schema import (  # noqa: F401  (the public names of sqlite_merge)
    CLASH_POLICY_CHOICES, DEFAULT_CONFLICTS_TABLE, DEFAULT_LEDGER_TABLE, INTERNAL_PREFIX, ON_CONFLICT_CHOICES,
    ConflictError, CorruptDatabaseError, DatabaseLockedError, DiskFullError, KeyDefinitionError, MergeError,
    MergeOptions, MissingSourceError, MissingTargetError, NotADatabaseError, SchemaObjectError, Shape,
    ShapeClashError, SourceIsTargetError, TargetChangedError, TargetNotWritableError, TypeConflictError,
    UnsupportedTableError, VerificationError, affinity, rename_create, rewrite_references)
from ansible.module_utils.sqlite_merge_files import (  # noqa: F401  (file_digest, writer_holds_lock: public too)
    _SourcePipeline, _check_integrity, _refuse_target_as_source, _stat_key, _translate, _validate_target, file_digest,
    file_digests, writer_holds_lock)
from ansible.module_utils.sqlite_merge_verify import _Verification, _fk_counts
from ansible.module_utils.sqlite_merge_engine import _Engine

q = quote_identifier

MIN_SQLITE = (3, 33, 0)  # UPDATE ... FROM
CONFLICT_SAMPLES = 20
BACKUP_STEP_PAGES = 4096  # pages per backup step (16 MiB of 4 KiB pages)
MERGE_CACHE_KIB = 16384   # page cache of the work copy during the merge (SQLite's default is 2000 KiB)


# ---------------------------------------------------------------------------------------------- plan / apply

class MergePlan:
    """The result of plan_merge: accounting, and the merged copy of the target that apply_merge writes."""

    def __init__(self, target, options):
        self.target = target
        self.options = options
        # accounting per source (status merged / already_merged / retired); a present source's entry also has its
        # per-file digests ("files", file_digests) for the basis of a prepared merge
        self.sources = []
        self.changed = False
        self.workdir = None
        self.merged_copy = None
        self.target_stat = None
        self.conflict_samples = []
        self.schema_changes = {"tables_created": [], "columns_added": []}
        self.fk_before = {}
        self.verification = None   # the result checks, running in the background until verified()
        self.on_close = []         # callables close() runs last (sqlite_merge_prepare: remove an unused prepared_dir)

    def verified(self):
        """Wait for the result checks (integrity_check, foreign_key_check) of the merged copy; raise if they failed."""
        if self.verification is not None:
            self.verification.wait()

    def close(self):
        if self.verification is not None:
            self.verification.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        while self.on_close:
            self.on_close.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def totals(self):
        keys = ("source_rows", "inserted", "identical", "conflicts", "remapped", "repointed", "converted")
        out = {k: 0 for k in keys}
        for src in self.sources:
            for table in src.get("tables", []):
                for k in keys:
                    out[k] += table.get(k, 0)
        out["sources_merged"] = sum(1 for s in self.sources if s["status"] == "merged")
        out["tables_kept_apart"] = sum(1 for s in self.sources for t in s.get("tables", [])
                                       if t.get("decision") == "kept_apart")
        return out

    def result(self):
        """Machine-readable accounting for the module result: no secret values (conflicts are masked).

        Waits for the result checks first, so no caller (check mode included) gets an accounting that failed them.
        The per-file digests ("files") stay out: the module's documented result has the combined digest, and
        zoe_plan compares a plan's sources with a run's field by field.
        """
        self.verified()
        sources = [{k: v for k, v in src.items() if k != "files"} for src in self.sources]
        return {"target": self.target, "sources": sources, "totals": self.totals(),
                "schema_changes": self.schema_changes, "conflicts": self.conflict_samples,
                "plan": plan_lines(self.sources)}

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
                after.append("%s <- %s" % (t["target_table"], describe_table(t)))
            for o in src.get("objects", []):
                if o["type"] != "table":
                    after.append("%s %s -> %s: %s" % (o["type"], o["name"], o["target_name"], o["action"]))
        for c in self.conflict_samples:
            after.append("conflict %s %s: %s" % (c["target_table"], json.dumps(c["key"], sort_keys=True),
                                                 c["resolution"]))
        return {"before_header": "%s (before)" % self.target, "before": "\n".join(sorted(before)) + "\n",
                "after_header": "%s (after merge)" % self.target, "after": "\n".join(after) + "\n"}


def describe_table(t):
    """One line: what the merge does with a source table (the plan's words for the dry run and the report)."""
    line = "%s: %d source rows = %d inserted + %d identical + %d conflicts" % (
        t["source_table"], t["source_rows"], t["inserted"], t["identical"], t["conflicts"])
    extra = []
    decision = t.get("decision", "created" if t["action"] == "create" else "merged")
    if decision == "kept_apart":
        extra.append("kept apart as %s (%s)" % (t["target_table"], t.get("clash") or "mapped"))
    else:
        extra.append("table created" if decision == "created" else "merged")
    if t.get("natural_key"):
        extra.append("matched by %s%s: %d key(s) to existing rows, %d new" % (
            ", ".join(t["natural_key"]), " (source key %s)" % t["source_key_mapped"] if t.get("source_key_mapped")
            else "", t.get("keys_to_existing", 0), t.get("keys_new", 0)))
    if t.get("columns_added"):
        extra.append("columns added: %s" % ", ".join(t["columns_added"]))
    if t.get("filled"):
        extra.append("%d value(s) of added columns filled into matched rows" % t["filled"])
    for d in t.get("type_differences", []):
        extra.append("%s is %s here, %s in the target: %s" % (d["column"], d["source_type"], d["target_type"],
                                                               d["handling"]))
    if t.get("remapped"):
        extra.append("%d new ids" % t["remapped"])
    if t.get("repointed"):
        extra.append("%d re-pointed to target ids" % t["repointed"])
    for c in t.get("children_repointed", []):
        extra.append("%s -> %s: %d row(s) re-pointed" % (c["column"], c["parent"], c["rows"]))
    return line + " (%s)" % "; ".join(extra)


def plan_lines(sources):
    """The plan in words, per source: every table (created, merged or kept apart, and why) and every index,
    trigger and view (created, already present)."""
    out = []
    for src in sources:
        name = os.path.basename(src["path"])
        if src["status"] != "merged":
            out.append("%s: %s" % (name, src["status"].replace("_", " ")))
            continue
        for t in src["tables"]:
            out.append("%s %s -> %s" % (name, t["target_table"], describe_table(t)))
        for o in src.get("objects", []):
            if o["type"] != "table":
                out.append("%s %s %s -> %s: %s" % (name, o["type"], o["name"], o["target_name"], o["action"]))
    return out


def _ledger(conn, opts):
    if not opts.use_ledger or opts.ledger_table not in table_names(conn):
        return set(), set()
    rows = conn.execute("SELECT source, digest FROM main.%s" % q(opts.ledger_table)).fetchall()
    return {r[0] for r in rows}, {(r[0], r[1]) for r in rows}


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
    # digest_target: sha256 of the bytes the target copy was taken from, combined and per file (file_digests;
    # sqlite_merge_prepare compares them with the target as it is in the downtime window before it writes a merge
    # prepared before the stop).
    plan.target_digest, plan.target_files = None, None
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
    try:
        plan.merged_copy = consistent_copy(target, workdir=plan.workdir)
        if plan.digest_target:
            plan.target_digest, plan.target_files = file_digests(plan.merged_copy)
    except OSError as exc:
        raise _translate(exc, target)
    conn = sqlite3.connect(plan.merged_copy, isolation_level=None)
    try:
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
        present = source_order(present, opts)
        if present:
            _merge_present(plan, conn, present, merged_pairs, opts)
    except sqlite3.DatabaseError as exc:
        raise _translate(exc, target)
    except OSError as exc:
        raise _translate(exc, target)
    finally:
        conn.close()


def source_order(paths, opts):
    """The sources in their given order, except that a source whose configured references name a table of another
    source (`other.db:table`) comes after that source: parents before children, whatever the order given."""
    pending, out = list(paths), []
    while pending:
        names = {os.path.basename(p) for p in pending}
        ready = [p for p in pending if not (opts.source_dependencies(p) & names)] or pending[:1]
        out.append(ready[0])
        pending.remove(ready[0])
    return out


def _merge_present(plan, conn, present, merged_pairs, opts):
    """Merge the existing sources as the pipeline copies them; skip those the ledger has with the same digest.

    An error of a source's copy or check wins over an error of the merge (first_error), as when every source
    was copied and checked before the merge started.
    """
    pipeline = _SourcePipeline(present, plan.workdir)
    merged, engine = [], None
    try:
        for i, path in enumerate(present):
            copy, digest, files = pipeline.copy_of(i)
            if (path, digest) in merged_pairs:
                plan.sources.append({"path": path, "digest": digest, "files": files, "status": "already_merged",
                                     "tables": []})
                pipeline.release(i)
                continue
            if engine is None:
                engine = _start_engine(plan, conn, opts)
            merged.append(dict(engine.merge_source(path, copy, digest), files=files))
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
    plan.fk_before = _fk_counts(conn)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    engine = _Engine(conn, opts, now)
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
    plan.verification = _Verification(plan.target, plan.merged_copy, plan.fk_before)
    plan.conflict_samples = _conflict_samples(conn, opts, engine.now)
    plan.changed = True


def _conflict_samples(conn, opts, now):
    """The conflicts this merge recorded, masked, at most CONFLICT_SAMPLES of them."""
    rows = conn.execute("SELECT source, source_table, target_table, key, target_row, source_row, resolution "
                        "FROM main.%s WHERE merged_at = ? ORDER BY id LIMIT ?" % q(opts.conflicts_table),
                        (now, CONFLICT_SAMPLES)).fetchall()
    names = opts.key_secret_names()
    out = []
    for source, stable, ttable, key, trow, srow, resolution in rows:
        tdict, sdict = json.loads(trow), json.loads(srow)
        differ = sorted(c for c in sdict if c in tdict and (sdict[c] != tdict[c] or type(sdict[c]) is not
                                                            type(tdict[c])))
        out.append({"source": source, "source_table": stable, "target_table": ttable,
                    "key": mask_row(json.loads(key), names), "columns_differ": differ,
                    "target_row": mask_row(tdict, names), "source_row": mask_row(sdict, names),
                    "resolution": resolution})
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

    backup_into(plan.merged_copy, target, plan.options.lock_timeout, pages=BACKUP_STEP_PAGES, progress=before_commit)
    return plan.result()


def merge_databases(target, sources, **options):
    """plan_merge + apply_merge, for callers that do not need check mode (tests, the benchmark)."""
    with plan_merge(target, sources, **options) as plan:
        apply_merge(plan)
        result = plan.result()
        result["changed"] = plan.changed
        return result
