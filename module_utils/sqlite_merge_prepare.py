# -*- coding: utf-8 -*-
"""A merge prepared before the downtime window, written inside it only if nothing moved in between.

Standard library only: this runs on the managed host with its own python3.

Why: the merge is the part of the downtime window that grows with the data (copy every source, insert,
verify). The Zoe play can compute it while the services still run and, once they are stopped, write the
result in one step, provided the result is exactly what a merge in the window would produce:

- prepare_merge() runs plan_merge() (private copies, full verification) and keeps the merged copy and a basis:
  the sha256 of the bytes each source copy and the target copy were taken from (a database and its -wal, as
  one digest and per file), the options and source list, and the accounting. Nothing is written to the target
  or the sources.
- apply_prepared() (with the writers stopped) hashes the target and every source again, and the kept copy.
  A caller that has just hashed the files itself (the rollback point taken in the same window) hands those
  per-file digests over (`known`), and one that checked the kept copy before the stop (check_prepared_copy)
  says so (`copy_checked`): each byte is then hashed once in the window. Equal digests mean the files hold the
  very bytes the prepared merge read, so its result is the result a merge now would compute: it is written into
  the target with the online backup API (one transaction, as apply_merge does). Any difference (a writer
  committed after the preparation, a checkpoint folded a -wal, other options, a damaged copy) makes the prepared
  merge stale: the caller merges from scratch, so the preparation can make the window shorter but never changes
  what is written.

The prepared directory holds the merged copy with password hashes and tokens: it is 0700, its files 0600,
and it is removed once used or found stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.sqlite_merge import (MergeError, MergeOptions, TargetChangedError, _stat_key,
                                               _validate_target, apply_merge, backup_into, file_digest, plan_merge)

BASIS_NAME = "basis.json"
COPY_NAME = "merged.db"
# 2: per-file digests (target_files, sources[].files) beside the combined ones. A basis of another version is
# unreadable: the prepared merge is stale and the merge runs from scratch.
BASIS_VERSION = 2
SUFFIXES = ("", "-wal")
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


class PreparedDirError(MergeError):
    """The prepared directory is unusable: a symlink, not a directory, or inside the data directory."""


# The MergeOptions attributes that decide a merge's result (not workdir, lock_timeout: where and how long it waits).
RESULT_OPTIONS = ("keys", "on_conflict", "newest_column", "table_map", "clash_policy", "references", "secret_columns",
                  "ledger_table", "conflicts_table", "use_ledger", "pragmas")


def options_digest(target, sources, options):
    """sha256 of what decides a merge's result: target, sources in order, and the effective value of every option
    that decides it. Effective values (defaults filled in by MergeOptions): two callers that spell the same merge
    differently, one naming a default and one leaving it out (sqlite_merge and downtime_window), agree."""
    effective = MergeOptions(**{k: v for k, v in options.items() if v is not None})
    relevant = {name: getattr(effective, name) for name in RESULT_OPTIONS}
    blob = json.dumps({"target": os.path.realpath(target), "sources": [os.path.abspath(s) for s in sources],
                       "options": relevant}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_prepared_dir(prepared_dir, target):
    path = os.path.abspath(prepared_dir)
    if os.path.islink(path):
        raise PreparedDirError("%s: prepared_dir is a symlink; give a real directory" % path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreparedDirError("%s: prepared_dir exists and is not a directory" % path)
    data_dir = os.path.dirname(os.path.realpath(target))
    real = os.path.realpath(path)
    if real == data_dir or real.startswith(data_dir + os.sep):
        raise PreparedDirError("%s: prepared_dir is inside the target's directory %s; a merged copy there would be "
                               "one more database in it" % (path, data_dir))
    return path


def discard_prepared(prepared_dir):
    """Remove a prepared directory (no error when it is already gone)."""
    if prepared_dir and os.path.isdir(prepared_dir) and not os.path.islink(prepared_dir):
        shutil.rmtree(prepared_dir, ignore_errors=True)


def plan_prepare(target, sources, prepared_dir, **options):
    """Plan the merge into prepared_dir (its work copies and the merged copy live there); nothing is stored yet.

    Returns the MergePlan (digest of the target's bytes included); store_prepared(plan) keeps it. Closing a plan
    that was not stored removes prepared_dir, as a preparation with nothing to merge leaves no directory.
    """
    prepared_dir = _check_prepared_dir(prepared_dir, target)
    discard_prepared(prepared_dir)
    os.makedirs(prepared_dir, mode=0o700)
    os.chmod(prepared_dir, 0o700)
    options.setdefault("workdir", prepared_dir)  # the merged copy is then renamed, not copied, into place
    try:
        plan = plan_merge(target, sources, digest_target=True, **options)
    except BaseException:
        discard_prepared(prepared_dir)
        raise
    plan.prepared = {"dir": prepared_dir, "options_digest": options_digest(target, sources, options), "kept": False}
    plan.on_close.append(lambda: None if plan.prepared["kept"] else discard_prepared(prepared_dir))
    return plan


def store_prepared(plan):
    """Keep a planned merge (plan_prepare) in its prepared_dir: the merged copy and its basis. Returns the result."""
    prepared_dir = plan.prepared["dir"]
    result, diff = plan.result(), plan.diff()
    copy = os.path.join(prepared_dir, COPY_NAME)
    for suffix in ("", "-wal"):
        if os.path.exists(plan.merged_copy + suffix):
            os.replace(plan.merged_copy + suffix, copy + suffix)
            os.chmod(copy + suffix, 0o600)
    _ready_for_rename(copy, plan.target)
    basis = {
        "version": BASIS_VERSION,
        "target": plan.target,
        "target_digest": plan.target_digest,
        "target_files": plan.target_files,
        "sources": [{"path": s["path"], "status": s["status"], "digest": s.get("digest"), "files": s.get("files")}
                    for s in plan.sources],
        "options_digest": plan.prepared["options_digest"],
        "copy_digest": file_digest([copy, copy + "-wal"]),
        "result": result,
        "diff": diff,
    }
    tmp = os.path.join(prepared_dir, BASIS_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(basis, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(prepared_dir, BASIS_NAME))
    plan.prepared["kept"] = True
    return result


def prepare_merge(target, sources, prepared_dir, **options):
    """Plan the merge now and keep the merged copy and its basis in prepared_dir. The target is not written.

    Returns (result, changed, diff): the plan's accounting (as plan_merge's result), whether a prepared merge was
    stored (only when the merge would change the target), and the plan's diff.
    """
    with plan_prepare(target, sources, prepared_dir, **options) as plan:
        result, diff = plan.result(), plan.diff()
        if plan.changed:
            store_prepared(plan)
        return result, plan.changed, diff


def _load_basis(prepared_dir):
    try:
        with open(os.path.join(prepared_dir, BASIS_NAME)) as handle:
            basis = json.load(handle)
    except (OSError, ValueError):
        return None
    return basis if isinstance(basis, dict) and basis.get("version") == BASIS_VERSION else None


def _normal_known(known):
    """`known` keyed by real path (os.path.realpath): the caller's paths and the basis's may name the same file
    through a symlinked directory (the target is recorded by its real path, the sources as given, abspath).
    Keys that are not absolute paths are left out: they name no file for certain."""
    return {os.path.realpath(path): digest for path, digest in (known or {}).items() if os.path.isabs(path)}


def _known_files(path, known):
    """{suffix: digest or None} of a database and its -wal when `known` covers both, else None."""
    names = {suffix: os.path.realpath(path + suffix) for suffix in SUFFIXES}
    if not all(name in known for name in names.values()):
        return None
    return {suffix: known[name] for suffix, name in names.items()}


def _same(suffix, then, now):
    """Equal per-file digests. An empty -wal and no -wal hold the same content (the combined digest does not tell
    them apart either), so equal per-file digests always mean an equal combined digest."""
    if suffix == "-wal":
        then, now = (None if d == EMPTY_DIGEST else d for d in (then, now))
    return then == now


def _file_change(name, then, now):
    """Why a file differs from the preparation's, in words."""
    if then is None:
        return "%s exists now and did not when the merge was prepared" % name
    if now is None:
        return "%s is gone since the merge was prepared" % name
    return "%s changed since the merge was prepared" % name


def _compare_known(name, path, files, known):
    """(covered, reason): whether `known` covers the database at `path` and its -wal (then no file is read), and
    why they differ from the basis's per-file digests `files`, None when they do not."""
    now = _known_files(path, known) if files else None
    if now is None:
        return False, None
    for suffix in SUFFIXES:
        if not _same(suffix, files.get(suffix), now[suffix]):
            label = path + suffix if name == path else "%s %s" % (name, path + suffix)
            return True, _file_change(label, files.get(suffix), now[suffix])
    return True, None


def exact_basis(prepared_dir, target, sources, options, known=None, copy_checked=False):
    """(basis, None) when the prepared merge in prepared_dir matches the files exactly, else (None, why not).

    known: {absolute path: sha256 hex, or None for "known absent"} of files the caller has just hashed with the
    writers stopped, over the files' own bytes (the rollback point of the same window, taken as a byte copy).
    A database whose path and "-wal" path are both in it is compared per file and not read; any other is hashed.
    copy_checked: the caller checked the kept copy (check_prepared_copy) and it passed; it is not hashed again.
    """
    if not prepared_dir or not os.path.isdir(prepared_dir):
        return None, "no prepared merge"
    basis = _load_basis(prepared_dir)
    if basis is None:
        return None, "no readable basis"
    if basis["options_digest"] != options_digest(target, sources, options):
        return None, "the target, sources or options differ from the preparation's"
    copy = os.path.join(prepared_dir, COPY_NAME)
    checks = [("the target", target, basis["target_digest"], basis.get("target_files"))]
    if not copy_checked:
        checks.append(("the prepared copy", copy, basis["copy_digest"], None))
    elif not os.path.isfile(copy):
        return None, "the prepared copy is gone"  # never a backup from a file that is not there
    for src in basis["sources"]:
        if src["status"] == "retired":
            if os.path.exists(src["path"]):
                return None, "%s was retired at preparation and exists now" % src["path"]
        else:
            checks.append((src["path"], src["path"], src["digest"], src.get("files")))
    known = _normal_known(known)
    to_hash = []
    for check in checks:
        covered, reason = _compare_known(check[0], check[1], check[3], known)
        if reason is not None:
            return None, reason
        if not covered:
            to_hash.append(check)
    # sha256 releases the GIL: two files at a time, as long as the window is short.
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(lambda check: file_digest([check[1], check[1] + "-wal"]), to_hash))
    for (name, _, expected, _), actual in zip(to_hash, digests):
        if expected is None or actual != expected:
            return None, "%s changed since the merge was prepared" % name
    return basis, None


def check_prepared_copy(prepared_dir):
    """None when the kept copy in prepared_dir holds the bytes its basis recorded, else why not.

    The copy is private to the run (a 0700 directory), so a caller can check it before the services stop and
    pass copy_checked=True in the window. On a reason, plan without copy_checked: the prepared merge is then found
    stale, removed, and the reason reported.
    """
    if not prepared_dir or not os.path.isdir(prepared_dir):
        return "no prepared merge"
    basis = _load_basis(prepared_dir)
    if basis is None:
        return "no readable basis"
    copy = os.path.join(prepared_dir, COPY_NAME)
    if file_digest([copy, copy + "-wal"]) != basis["copy_digest"]:
        return "the prepared copy changed since the merge was prepared"
    return None


class PreparedPlan:
    """A prepared merge that is still exact (plan_prepared): the plan of a call that writes it (write_prepared)."""

    changed = True

    def __init__(self, target, prepared_dir, basis, stat, lock_timeout):
        self.target, self.prepared_dir, self.basis = target, prepared_dir, basis
        self.target_stat, self.lock_timeout = stat, lock_timeout

    def result(self):
        return self.basis["result"]

    def diff(self):
        return self.basis["diff"]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def plan_prepared(target, sources, prepared_dir, lock_timeout=5.0, known=None, copy_checked=False, **options):
    """(PreparedPlan, None) when the prepared merge in prepared_dir is still exact, else (None, why not); a stale
    prepared directory is removed (the caller merges from scratch). The target is not written.

    known, copy_checked: digests the caller already has (exact_basis)."""
    options["lock_timeout"] = lock_timeout
    target = os.path.realpath(target)
    _validate_target(target)
    before = _stat_key(target)
    basis, reason = exact_basis(prepared_dir, target, sources, options, known=known, copy_checked=copy_checked)
    if basis is None:
        discard_prepared(prepared_dir)
        return None, reason
    return PreparedPlan(target, prepared_dir, basis, before, lock_timeout), None


def _journal_mode_byte(path):
    """Byte 18 of the database header: 1 rollback journal, 2 WAL (the persistent mode), None when unreadable."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    return header[18] if len(header) == 20 else None


def _fsync(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ready_for_rename(copy, target):
    """Make the kept copy a file that can replace the target by one rename: one file (its -wal folded in), in the
    target's persistent journal mode (a WAL target stays WAL for its services), on disk (fsync). Before the stop."""
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        if _journal_mode_byte(target) == 2:
            conn.execute("PRAGMA journal_mode = WAL")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()   # the last connection of a WAL database checkpoints and removes the -wal
    for suffix in ("-wal", "-shm"):
        if os.path.exists(copy + suffix) and os.path.getsize(copy + suffix) == 0:
            os.unlink(copy + suffix)
    _fsync(copy)
    _fsync(os.path.dirname(copy), os.O_RDONLY | os.O_DIRECTORY)


def _copy_attributes(source, dest):
    """Give `dest` the owner, mode and extended attributes (SELinux label, ACLs) of `source`; False when one of them
    cannot be set (the caller then writes into `source` instead of replacing it)."""
    st = os.lstat(source)
    try:
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        names = os.listxattr(source, follow_symlinks=False) if hasattr(os, "listxattr") else []
        for name in names:
            os.setxattr(dest, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=False)
    except OSError:
        return False
    return True


def rename_into_place(copy, target):
    """Replace the target by the kept copy with one rename, when that is equivalent to writing it: returns True
    when done, False when the caller must write through SQLite (backup_into) instead.

    Why a rename: the online backup writes every page of the merged database into the target, inside the downtime
    window, in time that grows with the data (1.6 s for 580 MB here); a rename takes the same time at any size.
    When it is equivalent: the target is a regular file with one link (no other name would keep the old content),
    the copy lies on the same filesystem, is one file in the target's journal mode (_ready_for_rename), and takes
    the target's owner, mode and extended attributes. The writers are stopped, and every container that mounts the
    data directory or a file in it is recreated or started again afterwards, so each mounts the new file.
    The target's -wal goes first: a checkpoint folds it into the target (an old -wal beside the new file would be
    replayed into it), so a crash before the rename leaves the target whole, one after it leaves the merge.
    """
    st = os.lstat(target)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or os.stat(copy).st_dev != st.st_dev:
        return False
    if os.path.exists(copy + "-wal") or _journal_mode_byte(copy) != (_journal_mode_byte(target) or 1):
        return False
    if os.path.exists(target + "-wal") and os.path.getsize(target + "-wal") > 0:
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.close()
        if busy or (os.path.exists(target + "-wal") and os.path.getsize(target + "-wal") > 0):
            return False
    if not _copy_attributes(target, copy):
        return False
    os.rename(copy, target)
    _fsync(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.unlink(target + suffix)   # an empty -wal, the old wal-index: SQLite makes new ones
    return True


def write_prepared(plan):
    """Write an exact prepared merge (plan_prepared) into the target: one rename when that is equivalent
    (rename_into_place), else one transaction of the online backup. Returns the result, with RV(written_by)."""
    if _stat_key(plan.target) != plan.target_stat:
        raise TargetChangedError("%s: target changed while the prepared merge was checked; run again" % plan.target)
    copy = os.path.join(plan.prepared_dir, COPY_NAME)
    written_by = "rename" if rename_into_place(copy, plan.target) else "backup"
    if written_by == "backup":
        backup_into(copy, plan.target, plan.lock_timeout)
    discard_prepared(plan.prepared_dir)
    return dict(plan.result(), written_by=written_by)


def apply_prepared(target, sources, prepared_dir, lock_timeout=5.0, known=None, copy_checked=False, **options):
    """Write the prepared merge into the target if it is still exact; return (result, diff) or (None, reason).

    The prepared directory is removed in both cases; the caller merges from scratch on (None, reason).
    known, copy_checked: digests the caller already has (exact_basis).
    """
    plan, reason = plan_prepared(target, sources, prepared_dir, lock_timeout, known=known, copy_checked=copy_checked,
                                 **options)
    if plan is None:
        return None, reason
    return write_prepared(plan), plan.diff()


def plan_call(target, sources, prepare, prepared_dir, options, known=None, copy_checked=False):
    """The plan of a sqlite_merge call: (plan, apply, prepared, show_diff). `apply()` writes the plan and returns the
    module result; `prepared` holds RV(prepared) (and RV(prepared_reason)) when nothing is applied.

    With prepare, the merge is planned into prepared_dir and apply() keeps it; else a prepared merge found in
    prepared_dir is used if still exact (known, copy_checked: see exact_basis), and the merge is planned from
    scratch otherwise. Shared by the sqlite_merge module and the modules that run it inside their own task.
    """
    if prepared_dir and prepare:
        plan = plan_prepare(target, sources, prepared_dir, **options)
        return plan, lambda: dict(store_prepared(plan), prepared="stored"), {"prepared": "none"}, False
    prepared = {"prepared": "none"}
    if prepared_dir:
        plan, reason = plan_prepared(target, sources, prepared_dir, known=known, copy_checked=copy_checked, **options)
        if plan is not None:
            return plan, lambda: dict(write_prepared(plan), prepared="used"), prepared, True
        prepared = {"prepared": "stale", "prepared_reason": reason}
    plan = plan_merge(target, sources, **options)
    return plan, lambda: dict(apply_merge(plan), **prepared), prepared, True


__all__ = ["PreparedDirError", "PreparedPlan", "apply_prepared", "check_prepared_copy", "discard_prepared",
           "exact_basis", "options_digest", "plan_call", "plan_prepare", "plan_prepared", "prepare_merge",
           "store_prepared", "write_prepared"]
