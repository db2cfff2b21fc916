# -*- coding: utf-8 -*-
"""A merge prepared before the downtime window, written inside it only if nothing moved in between.

Standard library only: this runs on the managed host with its own python3.

Why: the merge is the part of the downtime window that grows with the data (copy every source, insert,
verify). The Zoe play can compute it while the services still run and, once they are stopped, write the
result in one step, provided the result is exactly what a merge in the window would produce:

- prepare_merge() runs plan_merge() (private copies, full verification) and keeps the merged copy and a basis:
  the sha256 of the bytes each source copy and the target copy were taken from (a database and its -wal),
  the options and source list, and the accounting. Nothing is written to the target or the sources.
- apply_prepared() (with the writers stopped) hashes the target and every source again, and the kept copy.
  Equal digests mean the files hold the very bytes the prepared merge read, so its result is the result a
  merge now would compute: it is written into the target with the online backup API (one transaction, as
  apply_merge does). Any difference (a writer committed after the preparation, a checkpoint folded a -wal,
  other options, a damaged copy) makes the prepared merge stale: the caller merges from scratch, so the
  preparation can make the window shorter but never changes what is written.

The prepared directory holds the merged copy with password hashes and tokens: it is 0700, its files 0600,
and it is removed once used or found stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.sqlite_merge import (MergeError, TargetChangedError, _stat_key, _validate_target, backup_into,
                                               file_digest, plan_merge)

BASIS_NAME = "basis.json"
COPY_NAME = "merged.db"
BASIS_VERSION = 1


class PreparedDirError(MergeError):
    """The prepared directory is unusable: a symlink, not a directory, or inside the data directory."""


def options_digest(target, sources, options):
    """sha256 of what decides a merge's result: target, sources in order, and every option but workdir/lock_timeout."""
    relevant = {k: v for k, v in sorted(options.items()) if k not in ("workdir", "lock_timeout")}
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
    basis = {
        "version": BASIS_VERSION,
        "target": plan.target,
        "target_digest": plan.target_digest,
        "sources": [{"path": s["path"], "status": s["status"], "digest": s.get("digest")} for s in plan.sources],
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


def exact_basis(prepared_dir, target, sources, options):
    """(basis, None) when the prepared merge in prepared_dir matches the files exactly, else (None, why not)."""
    if not prepared_dir or not os.path.isdir(prepared_dir):
        return None, "no prepared merge"
    basis = _load_basis(prepared_dir)
    if basis is None:
        return None, "no readable basis"
    if basis["options_digest"] != options_digest(target, sources, options):
        return None, "the target, sources or options differ from the preparation's"
    checks = [("the target", target, basis["target_digest"]),
              ("the prepared copy", os.path.join(prepared_dir, COPY_NAME), basis["copy_digest"])]
    for src in basis["sources"]:
        if src["status"] == "retired":
            if os.path.exists(src["path"]):
                return None, "%s was retired at preparation and exists now" % src["path"]
        else:
            checks.append((src["path"], src["path"], src["digest"]))
    # sha256 releases the GIL: two files at a time, as long as the window is short.
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(lambda check: file_digest([check[1], check[1] + "-wal"]), checks))
    for (name, _, expected), actual in zip(checks, digests):
        if expected is None or actual != expected:
            return None, "%s changed since the merge was prepared" % name
    return basis, None


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


def plan_prepared(target, sources, prepared_dir, lock_timeout=5.0, **options):
    """(PreparedPlan, None) when the prepared merge in prepared_dir is still exact, else (None, why not); a stale
    prepared directory is removed (the caller merges from scratch). The target is not written."""
    options["lock_timeout"] = lock_timeout
    target = os.path.realpath(target)
    _validate_target(target)
    before = _stat_key(target)
    basis, reason = exact_basis(prepared_dir, target, sources, options)
    if basis is None:
        discard_prepared(prepared_dir)
        return None, reason
    return PreparedPlan(target, prepared_dir, basis, before, lock_timeout), None


def write_prepared(plan):
    """Write an exact prepared merge (plan_prepared) into the target in one transaction; returns the result."""
    if _stat_key(plan.target) != plan.target_stat:
        raise TargetChangedError("%s: target changed while the prepared merge was checked; run again" % plan.target)
    backup_into(os.path.join(plan.prepared_dir, COPY_NAME), plan.target, plan.lock_timeout)
    discard_prepared(plan.prepared_dir)
    return plan.result()


def apply_prepared(target, sources, prepared_dir, lock_timeout=5.0, **options):
    """Write the prepared merge into the target if it is still exact; return (result, diff) or (None, reason).

    The prepared directory is removed in both cases; the caller merges from scratch on (None, reason).
    """
    plan, reason = plan_prepared(target, sources, prepared_dir, lock_timeout, **options)
    if plan is None:
        return None, reason
    return write_prepared(plan), plan.diff()


__all__ = ["PreparedDirError", "PreparedPlan", "apply_prepared", "discard_prepared", "exact_basis", "options_digest",
           "plan_prepare", "plan_prepared", "prepare_merge", "store_prepared", "write_prepared"]
