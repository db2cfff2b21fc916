# -*- coding: utf-8 -*-
# Snapshots of files, directories and Docker named volumes: take, verify, restore, prune.
# Standard library only: this runs on the managed host with its system python3.
"""Logic of the volume_snapshot module.

Layout of one snapshot (all directories 0700, all files 0600, whatever the source's mode):

    <backup_root>/<id>/manifest.json          every entry: path, rel, type, size, mode, uid, gid,
                                               mtime_ns, atime_ns, sha256, symlink target
    <backup_root>/<id>/manifest.json.sha256   `sha256sum -c` format, catches a damaged manifest
    <backup_root>/<id>/files/<root index>/<rel>

A snapshot is written under `.<id>.partial` and renamed into place only once complete, so a
directory named by an id always holds a whole snapshot, and a failure leaves nothing behind.

What "verified" means, honestly:
- present: each file's sha256 is computed over the exact bytes handed to write() for the snapshot
  copy (one read of every source byte), the stored size is checked with fstat against the byte
  count, and the source is stat'ed again after the copy to detect a writer (a torn copy). Reading
  the snapshot back right away would only read the page cache, so it would prove nothing more
  about the disk; that re-read is state=verified, run later.
- present, with a base: a file whose live bytes hash to the sha256 an earlier snapshot stored for the same
  source path is hard-linked from that snapshot instead of copied (manifest `linked_from`); why that is
  sound: volume_snapshot_base.py.
- present, live: sqlite_mode=backup_api copies each database through SQLite's online backup API and
  hashes the finished copy (the backup rewrites page 1 last, so it cannot be hashed while written);
  sqlite_mode=read_lock copies the database file and its -wal byte for byte, hashed while copied,
  under a held read transaction (why that is consistent: sqlite_read_lock_copy() in
  volume_snapshot_copy.py). A database that no other connection has open (POSIX locks of SQLite's unix
  VFS, held through the copy) is read from a private byte copy instead, so the live files keep every
  byte, the -shm included (manifest `read_from`: copy/live).
- verified: re-reads every snapshot file and compares its sha256 with the manifest, then opens a
  scratch copy of every database and runs PRAGMA integrity_check and counts rows.
- restored: the snapshot's bytes are hashed while they are copied into a staging file beside the
  destination; a mismatch with the manifest aborts before any live file is replaced. Staged files
  are renamed into place (so the restored inode holds exactly the hashed bytes), then every entry
  is lstat'ed and compared with the manifest (type, size, mode, owner, mtime, link target) and
  the snapshotted directories are checked for extra entries.

This file holds the four states' plan/apply entry points and re-exports the public names; the parts:
volume_snapshot_common.py (constants, errors, Plan, ids), volume_snapshot_copy.py (copy primitives),
volume_snapshot_scan.py (roots, scanning, exclude), volume_snapshot_manifest.py (manifest storage and
safety, the check of stored copies), volume_snapshot_base.py (linking from a base), volume_snapshot_restore.py
(the steps of a restore).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.volume_snapshot_common import (  # noqa: F401 (re-exported)
    BLOCK, FILES_DIR, FORMAT, LOCK_NAMES, MANIFEST, STAGING_PREFIX, LockedError, ManifestError, NoSpaceError, Plan,
    SnapshotError, SnapshotNotFoundError, SourceChangedError, SourceError, UnusableBaseError, VerifyError, VolumeError,
    _blocks, _workers, check_snapshot_id, new_snapshot_id)
from ansible.module_utils.volume_snapshot_base import check_base_id, link_from_base, load_base
from ansible.module_utils.volume_snapshot_copy import (  # noqa: F401 (re-exported)
    _fsync_dir, _fsync_path, _quiet_copy, copy_and_hash, sqlite_backup_and_hash, sqlite_read_lock_copy)
from ansible.module_utils.volume_snapshot_manifest import (  # noqa: F401 (re-exported)
    _is_locked, find_snapshot, list_snapshots, load_manifest, snapshot_dir, stored_path, validate_manifest,
    verify_stored, write_manifest)
from ansible.module_utils.volume_snapshot_restore import (
    _extras, _live_action, _put_in_place, _remove, _set_meta, _stage, _staging_dir, verify_live)
from ansible.module_utils.volume_snapshot_scan import (  # noqa: F401 (re-exported)
    EXCLUDE_SYNTAX, LIVE_MODES, _entry_for, _mark_databases, _totals, resolve_roots, resolve_volume, scan_root)
from ansible.module_utils.zoe_sqlite import (
    consistent_copy, integrity_errors, nearest_existing, quote_identifier, table_names)


# ----------------------------------------------------------------------------------------------
# state=present

# Threads that wait for the fsyncs of a snapshot's byte copies (they wait on the disk, not the CPU).
SYNC_WORKERS = 4


def plan_snapshot(backup_root, paths=None, volumes=None, snapshot=None, sqlite_mode="copy", exclude=None,
                  label=None, docker_cli="docker", base=None):
    """Scan the sources, check the free space, and say what a snapshot would copy. Writes nothing.

    With `base`, the id of an earlier complete snapshot under backup_root, files whose live bytes it holds
    are linked from it (volume_snapshot_base.py). The base is refused here, so check mode reports it too;
    its existence is only checked when a snapshot is to be taken (a rerun naming an existing snapshot does
    nothing and needs no base). How much is linked is only known once the files are hashed: the plan's
    `linked`, `linked_bytes` and `copied_bytes` are None.
    """
    if not os.path.isabs(backup_root):
        raise SourceError("O(backup_root) %s is not an absolute path" % backup_root)
    backup_root = os.path.normpath(backup_root)
    snapshot_id = check_snapshot_id(snapshot) if snapshot else new_snapshot_id()
    if base is not None:
        check_base_id(base, snapshot_id)
    target = os.path.join(backup_root, snapshot_id)
    unknown = dict(linked=None, linked_bytes=None, copied_bytes=None)
    if snapshot and os.path.lexists(target):
        if not os.path.isfile(os.path.join(target, MANIFEST)):
            raise SnapshotError("%s exists but is not a complete snapshot" % target)
        manifest = load_manifest(target)
        result = dict(snapshot_id=snapshot_id, snapshot_path=target, manifest=os.path.join(target, MANIFEST),
                      roots=[root["path"] for root in manifest["roots"]], skipped=0, **manifest["totals"])
        result.update(unknown)
        return Plan(False, result)
    base_data = load_base(backup_root, base) if base is not None else None
    roots = resolve_roots(paths, volumes, docker_cli)
    # Compared as real paths: a backup root that is a symlink into a source lies inside it.
    real_backup = os.path.realpath(backup_root)
    for root in roots:
        real = os.path.realpath(root["path"])
        if real == real_backup or real_backup.startswith(real + os.sep):
            raise SourceError("O(backup_root) %s lies inside the snapshotted path %s" % (backup_root, root["path"]))
    entries, skipped = [], 0
    for index, root in enumerate(roots):
        found, skip = scan_root(index, root, exclude or [])
        entries.extend(found)
        skipped += skip
    # Space for every scanned file, sidecars included: a live copy may hold the -wal's pages too.
    needed = sum(_blocks(e.get("size", 0)) + BLOCK for e in entries) + 512 * len(entries) + 2 * BLOCK
    entries = _mark_databases(entries, sqlite_mode)
    totals = _totals(entries)
    free = shutil.disk_usage(nearest_existing(backup_root)).free
    if needed > free:
        raise NoSpaceError("the snapshot needs %d bytes under %s but only %d are free; nothing was written"
                           % (needed, backup_root, free))
    result = dict(snapshot_id=snapshot_id, snapshot_path=target, manifest=os.path.join(target, MANIFEST),
                  roots=[root["path"] for root in roots], skipped=skipped, bytes_needed=needed, bytes_free=free,
                  **totals)
    result.update(unknown)
    after = "snapshot %s: %d files (%d databases), %d dirs, %d symlinks, %d bytes\n" % (
        snapshot_id, totals["files"], totals["databases"], totals["dirs"], totals["symlinks"], totals["bytes"])
    after += "".join("  from %s\n" % root["path"] for root in roots)
    if base_data:
        after += "  unchanged files linked from %s\n" % base
    diff = {"before_header": target, "before": "", "after_header": target, "after": after}
    data = {"backup_root": backup_root, "roots": roots, "entries": entries, "sqlite_mode": sqlite_mode,
            "exclude": list(exclude or []), "label": label, "base": base_data}
    return Plan(True, result, diff, data)


def _wal_entry(entry, size, digest, st):
    """Manifest entry of the -wal copied beside a database by sqlite_read_lock_copy()."""
    wal = _entry_for(entry["root"], entry["rel"] + "-wal", entry["path"] + "-wal", st)
    wal.pop("ino", None)
    wal.update(size=size, sha256=digest, source_size=wal["size"], sqlite_wal=True)
    return wal


def _copy_live_database(entry, dest, fsync):
    """backup_api or read_lock copy of one database: from a private byte copy when no other connection has it
    open (so the live files, -shm included, keep every byte), else from the live database."""
    scratch = tempfile.mkdtemp(prefix=".zoe-source-", dir=os.path.dirname(dest))
    try:
        quiet = _quiet_copy(entry["path"], scratch)
        source = quiet or entry["path"]
        if entry["sqlite"] == "backup_api":
            database, wal = sqlite_backup_and_hash(source, dest, fsync), None
        else:
            database, wal = sqlite_read_lock_copy(source, dest, fsync)
            if wal and quiet:
                wal = wal[:2] + (os.lstat(entry["path"] + "-wal"),)  # the live -wal's metadata, not the copy's
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    entry["source_size"] = entry["size"]
    entry.update(size=database[0], sha256=database[1], read_from="copy" if quiet else "live")
    return [], [_wal_entry(entry, *wal)] if wal else []


def _copy_entry(entry, dest, sqlite_mode, fsync, sync_later=None, base=None):
    """Copy one file into the snapshot; returns (warnings (a file changed under a live snapshot), extra entries).

    With `sync_later`, a byte copy's fsync is handed to it (the caller waits for every one before it writes the
    manifest) instead of being waited for here: the next file is copied while the disk writes this one back.
    With `base`, a byte copy is first tried as a link from the base (link_from_base()); a linked file's data was
    fsynced when the base was taken.
    """
    if entry.get("sqlite") in LIVE_MODES:
        return _copy_live_database(entry, dest, fsync)
    linked = link_from_base(entry, dest, base) if base else None
    if linked:
        size, digest = linked
        entry["linked_from"] = base["id"]
    else:
        size, digest = copy_and_hash(entry["path"], dest, fsync and sync_later is None)
        if fsync and sync_later is not None:
            sync_later(dest)
    # Re-stat the source after it was read (copied, or compared for a link): a writer moved it meanwhile.
    after = os.lstat(entry["path"])
    moved = (after.st_size, after.st_mtime_ns, after.st_ino) != (entry["size"], entry["mtime_ns"], entry["ino"])
    if moved or size != entry["size"]:
        if sqlite_mode == "copy":
            raise SourceChangedError("%s changed while it was copied: a writer is active; stop it, or take a live "
                                     "snapshot with O(sqlite_mode=read_lock) or O(sqlite_mode=backup_api)" % entry["path"])
        entry.update(changed_during_copy=True, size=size, sha256=digest)
        return [entry["path"]], []
    entry["sha256"] = digest
    return [], []


def _link_counts(entries):
    """`linked`, `linked_bytes` and `copied_bytes` (bytes written into the snapshot) of a snapshot's entries."""
    files = [e for e in entries if e["type"] == "file"]
    linked = [e["size"] for e in files if e.get("linked_from")]
    copied = sum(e["size"] for e in files) - sum(linked)
    return dict(linked=len(linked), linked_bytes=sum(linked), copied_bytes=copied)


def apply_snapshot(plan, fsync=True, verify=True):
    """Write the snapshot planned by plan_snapshot(); on any failure remove everything written."""
    data, result = plan.data, dict(plan.result)
    backup_root, snapshot_id = data["backup_root"], result["snapshot_id"]
    if not os.path.isdir(backup_root):
        os.makedirs(backup_root, mode=0o700)
    partial = os.path.join(backup_root, ".%s.partial" % snapshot_id)
    final = result["snapshot_path"]
    if os.path.lexists(final):
        raise SnapshotError("%s already exists" % final)
    started = time.time()
    os.mkdir(partial, 0o700)
    try:
        os.chmod(partial, 0o700)
        entries = data["entries"]
        os.mkdir(os.path.join(partial, FILES_DIR), 0o700)
        made = [os.path.join(partial, FILES_DIR)]
        for index, root in enumerate(data["roots"]):
            made.append(os.path.join(partial, FILES_DIR, str(index)))
            os.mkdir(made[-1], 0o700)
        for entry in entries:
            if entry["type"] == "dir" and entry["rel"] != ".":
                made.append(stored_path(partial, entry))
                os.mkdir(made[-1], 0o700)
        for path in made:
            os.chmod(path, 0o700)  # whatever the umask
        files = sorted((e for e in entries if e["type"] == "file"), key=lambda e: -e["size"])
        # Copy (and hash) on _workers() threads; each byte copy's fsync runs on another pool while the next file
        # is copied (fsync and hashlib release the GIL), and every fsync has returned before the manifest is written.
        syncs = []
        with ThreadPoolExecutor(_workers()) as pool, ThreadPoolExecutor(SYNC_WORKERS) as sync_pool:
            def sync_later(path):
                syncs.append(sync_pool.submit(_fsync_path, path))

            outcomes = list(pool.map(lambda e: _copy_entry(e, stored_path(partial, e), data["sqlite_mode"], fsync,
                                                           sync_later, data.get("base")), files))
            for job in syncs:
                job.result()
        warnings = [w for ws, _extra in outcomes for w in ws]
        extra = {entry["path"]: more for entry, (_ws, more) in zip(files, outcomes) if more}
        if extra:
            # The -wal copied with a database goes right after it (same parent, so parents stay first).
            entries = [e for entry in entries for e in [entry] + extra.get(entry["path"], [])]
        for entry in files:
            entry.pop("ino", None)
        if verify:
            verify_stored(partial, entries, rehash=False)
        manifest = {"format": FORMAT, "id": snapshot_id, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                 time.gmtime(started)),
                    "created_ns": int(started * 1e9), "label": data["label"], "sqlite_mode": data["sqlite_mode"],
                    "exclude": data["exclude"], "exclude_syntax": EXCLUDE_SYNTAX, "roots": data["roots"],
                    "entries": entries, "totals": _totals(entries)}
        write_manifest(partial, manifest)
        for dirpath, _dirs, _files in os.walk(partial):
            _fsync_dir(dirpath)
        os.rename(partial, final)
        _fsync_dir(backup_root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result.update(manifest["totals"], changed=True, changed_during_copy=warnings, verified=bool(verify),
                  **_link_counts(entries))
    return result


# ----------------------------------------------------------------------------------------------
# state=restored


def plan_restore(backup_root, snapshot="latest", allowed_roots=None, checksum=True, docker_cli="docker"):
    """Compare the live tree with a snapshot and list what a restore would do. Writes nothing."""
    snap_dir = find_snapshot(os.path.normpath(backup_root), snapshot)
    manifest = load_manifest(snap_dir)
    for root in manifest.get("roots", []):
        if root.get("volume"):
            current = os.path.normpath(resolve_volume(root["volume"], docker_cli))
            if current != root.get("path"):
                raise ManifestError("docker volume %s now lives at %s, the snapshot recorded %s"
                                    % (root["volume"], current, root.get("path")))
    validate_manifest(manifest, snap_dir, allowed_roots)
    verify_stored(snap_dir, manifest["entries"], rehash=False)
    actions, counts = [], {"write": 0, "replace": 0, "meta": 0}
    rebuilt = set()
    for entry in manifest["entries"]:
        # Under a directory that is rebuilt (missing, or a symlink/file now), lstat would look through
        # whatever is there: everything below is written afresh.
        if os.path.dirname(entry["path"]) in rebuilt and entry["rel"] != ".":
            action = "write"
        else:
            action = _live_action(entry, checksum)
        if entry["type"] == "dir" and action in ("write", "replace"):
            rebuilt.add(entry["path"])
        if action:
            actions.append((entry, action))
            counts[action] += 1
    extras = _extras(manifest)
    writes = [e for e, a in actions if a in ("write", "replace") and e["type"] == "file"]
    result = {"snapshot_id": os.path.basename(snap_dir), "snapshot_path": snap_dir,
              "manifest": os.path.join(snap_dir, MANIFEST), "roots": [r["path"] for r in manifest["roots"]],
              "files_restored": len(writes),
              "files_removed": len(extras), "metadata_fixed": counts["meta"],
              "entries_restored": counts["write"] + counts["replace"],
              "files_unchanged": sum(1 for e in manifest["entries"] if e["type"] == "file") - len(writes) - sum(
                  1 for e, a in actions if a == "meta" and e["type"] == "file"),
              "bytes_written": sum(e["size"] for e in writes),
              "actions": [{"path": e["path"], "action": a} for e, a in actions] +
                         [{"path": p, "action": "remove"} for p in extras]}
    result.update(manifest["totals"])
    before = "".join("%s %s\n" % (a, e["path"]) for e, a in actions) + "".join("remove %s\n" % p for p in extras)
    diff = {"before_header": "live tree", "before": before,
            "after_header": "snapshot %s" % result["snapshot_id"],
            "after": "%d files restored, %d removed, %d metadata fixed\n" % (
                len(writes), len(extras), counts["meta"])}
    changed = bool(actions or extras)
    return Plan(changed, result, diff, {"snap_dir": snap_dir, "manifest": manifest, "actions": actions,
                                         "extras": extras, "writes": writes})


def apply_restore(plan, fsync=True, verify=True):
    """Restore: stage and verify every file first, then remove extras, put entries in place, set metadata."""
    data = plan.data
    snap_dir, manifest = data["snap_dir"], data["manifest"]
    lock = os.path.join(snap_dir, LOCK_NAMES[0])
    with open(lock, "w") as handle:
        handle.write("%d\n" % os.getpid())
    stagings, created, times = {}, [], {}
    live_touched = False
    try:
        free_needed = {}
        for entry in data["writes"]:
            root = manifest["roots"][entry["root"]]
            key = _staging_dir(root)
            free_needed[key] = free_needed.get(key, 0) + _blocks(entry["size"])
        for key, needed in free_needed.items():
            probe = nearest_existing(key)
            if shutil.disk_usage(probe).free < needed + BLOCK:
                raise NoSpaceError("restoring needs %d bytes of staging space under %s; nothing was restored"
                                   % (needed, key))
        for key in free_needed:
            if not os.path.isdir(key):
                os.makedirs(key, mode=0o700)
                created.append(key)
            st = os.stat(key)
            times[key] = (st.st_atime_ns, st.st_mtime_ns)
            stagings[key] = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=key)
        staged = {}
        with ThreadPoolExecutor(_workers()) as pool:
            jobs = [(e, pool.submit(_stage, e, snap_dir, stagings[_staging_dir(manifest["roots"][e["root"]])],
                                    fsync)) for e in data["writes"]]
            for entry, job in jobs:
                staged[entry["path"]] = job.result()
        for path in data["extras"]:
            _remove(path)
        live_touched = True
        for entry, action in data["actions"]:
            _put_in_place(entry, action, staged)
        for entry, action in data["actions"]:
            if entry["type"] != "dir":
                _set_meta(entry)
    except BaseException:
        # Failed before touching a live file (bad bytes in the snapshot, no space): leave no trace.
        if not live_touched:
            for key, staging in stagings.items():
                shutil.rmtree(staging, ignore_errors=True)
                os.utime(key, ns=times[key])
            for key in reversed(created):
                shutil.rmtree(key, ignore_errors=True)
        raise
    finally:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
        if os.path.exists(lock):
            os.unlink(lock)
    # Writing children and removing the staging directories moved directory mtimes: set them all,
    # deepest first.
    for entry in sorted((e for e in manifest["entries"] if e["type"] == "dir"), key=lambda e: -e["path"].count("/")):
        _set_meta(entry)
    if verify:
        verify_live(manifest)
    result = dict(plan.result, changed=True, verified=bool(verify))
    return result


# ----------------------------------------------------------------------------------------------
# state=verified


def plan_verify(backup_root, snapshot="latest"):
    """Re-read a snapshot: every sha256 against the manifest, integrity_check and row counts of each database.

    Read-only (the databases are opened from a scratch copy in the system temporary directory), so changed
    is always false.
    """
    backup_root = os.path.normpath(backup_root)
    snap_dir = find_snapshot(backup_root, snapshot)
    manifest = load_manifest(snap_dir)
    validate_manifest(manifest, snap_dir)
    verify_stored(snap_dir, manifest["entries"], rehash=True)
    databases = []
    for entry in manifest["entries"]:
        if entry["type"] != "file" or not entry.get("sqlite"):
            continue
        copy = consistent_copy(stored_path(snap_dir, entry))
        try:
            conn = sqlite3.connect(copy)
            try:
                errors = integrity_errors(conn)
                rows = {name: conn.execute("SELECT count(*) FROM %s" % quote_identifier(name)).fetchone()[0]
                        for name in table_names(conn)} if not errors else {}
            finally:
                conn.close()
        finally:
            shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        if errors:
            raise VerifyError("%s in snapshot %s fails integrity_check: %s" % (entry["path"], manifest["id"],
                                                                                 errors[0]))
        databases.append({"path": entry["path"], "integrity": "ok", "tables": len(rows), "rows": rows})
    result = {"snapshot_id": manifest["id"], "snapshot_path": snap_dir, "manifest": os.path.join(snap_dir, MANIFEST),
              "roots": [r["path"] for r in manifest["roots"]], "verified": True}
    result.update(manifest["totals"])
    result["databases"] = databases
    return Plan(False, result)


# ----------------------------------------------------------------------------------------------
# state=absent


def plan_prune(backup_root, keep=3, snapshot=None):
    """Snapshots to remove: beyond `keep` newest (never the newest, never a locked one), or one named."""
    backup_root = os.path.normpath(backup_root)
    found = list_snapshots(backup_root)
    protected = [sid for _ns, sid, path in found if _is_locked(path)]
    if snapshot:
        path = snapshot_dir(backup_root, snapshot)
        if not os.path.exists(path):
            remove = []
        elif snapshot in protected:
            raise LockedError("snapshot %s is in use (restore lock or in-use marker); not removed" % snapshot)
        else:
            remove = [snapshot]
    else:
        if keep < 1:
            raise SnapshotError("O(keep) must be at least 1: the newest snapshot is never pruned")
        candidates = [sid for _ns, sid, _path in found[:-keep]] if len(found) > keep else []
        remove = [sid for sid in candidates if sid not in protected]
    kept = [sid for _ns, sid, _path in found if sid not in remove]
    result = {"removed": remove, "kept": kept, "protected": protected,
              "snapshot_path": os.path.join(backup_root, remove[0]) if len(remove) == 1 else None}
    diff = {"before_header": backup_root, "before": "".join("%s\n" % sid for _ns, sid, _p in found),
            "after_header": backup_root, "after": "".join("%s\n" % sid for sid in kept)}
    return Plan(bool(remove), result, diff, {"backup_root": backup_root})


def apply_prune(plan):
    backup_root = plan.data["backup_root"]
    for sid in plan.result["removed"]:
        path = snapshot_dir(backup_root, sid)
        if _is_locked(path):
            raise LockedError("snapshot %s became in use; not removed" % sid)
        # Rename first so a half-removed snapshot never looks complete.
        doomed = os.path.join(backup_root, ".%s.removing" % sid)
        os.rename(path, doomed)
        shutil.rmtree(doomed)
    return dict(plan.result, changed=bool(plan.result["removed"]))


__all__ = ["Plan", "SnapshotError", "SourceError", "VolumeError", "NoSpaceError", "SnapshotNotFoundError",
           "ManifestError", "VerifyError", "SourceChangedError", "LockedError", "UnusableBaseError", "plan_snapshot",
           "apply_snapshot", "plan_restore", "apply_restore", "plan_verify", "plan_prune", "apply_prune",
           "copy_and_hash", "sqlite_backup_and_hash", "sqlite_read_lock_copy",
           "resolve_volume", "validate_manifest", "load_manifest", "list_snapshots", "new_snapshot_id"]
