#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: take, verify, restore and prune snapshots of files, directories and Docker named volumes.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: volume_snapshot
short_description: Take, verify, restore and prune verified snapshots of files, directories and Docker volumes
description:
  - V(present) copies O(paths) and the Docker named O(volumes) into a new snapshot directory under
    O(backup_root), named by UTC time and a short random id (for example C(20261124T130501Z-3f9a2c)).
    Directories of the snapshot are mode C(0700) and files C(0600) whatever the source's mode; the
    manifest C(manifest.json) keeps every entry's original path, relative path, type, size, mode,
    uid, gid, mtime, sha256 and symlink target, and C(manifest.json.sha256) guards the manifest.
  - Each file is read once; its sha256 is computed over the very bytes written to the snapshot, the stored
    size is checked against the bytes written, and the source is stat'ed again after the copy so a file
    that changed under the copy is caught. The snapshot is written as C(.<id>.partial) and renamed when
    complete, so a failure (including too little free space, checked before writing) leaves nothing.
  - With O(base), V(present) hard-links from that earlier snapshot every file it would byte-copy whose live
    bytes equal, byte for byte, the base's stored copy for the same source path and size (both read, compared
    on two threads, nothing written, no fsync of its data), and copies the rest; a linked file's entry takes the
    base's sha256 and C(linked_from). A torn, stale or damaged base copy differs from the live file and is simply
    copied afresh; every restore also hashes the staged bytes against the manifest before replacing any live
    file. Removing either snapshot leaves the other whole (a prune unlinks names).
  - SQLite databases, O(sqlite_mode=copy) (the rollback point, taken with no writer active) copies the
    database and its C(-wal) and C(-shm) byte for byte and fails if any file changes during the copy.
    O(sqlite_mode=backup_api) (a live snapshot) copies every database through SQLite's online backup API
    in one step, so the copy holds every transaction committed before it began, C(-wal) content included,
    while writers keep running; the copy is self-contained and its sidecars are not kept.
    O(sqlite_mode=read_lock) (a live snapshot, one read of each byte) opens a read transaction on each
    database and, while it is held, copies the database file and (WAL mode) its C(-wal) byte for byte,
    hashing while copying. The held read lock keeps a rollback-journal database file unchanged and, in
    WAL mode, keeps the C(-wal) from being restarted and limits checkpoints to frames the copy's C(-wal)
    holds, so the copy opens on every transaction committed before the snapshot began (the C(-wal) is
    replayed on open, the C(-shm) is never kept). C(sqlite_read_lock_copy) in
    C(module_utils/volume_snapshot_copy.py) gives the argument in full; it holds for writers in other
    processes using SQLite's standard locking, as the backup API's does.
  - V(verified) re-reads a snapshot, compares every file with its sha256, and opens a scratch copy of each
    database for C(PRAGMA integrity_check) and row counts. It never changes anything.
  - V(restored) restores O(snapshot) (or the newest) to the original locations byte for byte (contents,
    mode, owner, times, symlinks, SQLite sidecars), removes entries created since the snapshot inside the
    snapshotted paths, and checks every entry against the manifest afterwards. The manifest is validated
    first and an entry that would write outside the snapshotted paths is refused before anything is
    written; every file is staged and its bytes checked against the manifest before any live file is
    replaced.
  - V(absent) removes the snapshots beyond the O(keep) newest (never the newest, never one locked by a
    running restore or marked with a C(.in-use*) file), or the one named by O(snapshot).
  - Output holds counts, byte totals and paths, never file contents.
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  check_mode:
    details: Reports what would be copied, restored or removed, with counts and bytes; writes nothing.
  diff_mode:
    details: A summary per snapshot, or the list of paths a restore would write, fix or remove.
  idempotent:
    description: Whether the action has the same result when run again.
    support: partial
    details:
      - V(restored) on a tree equal to the snapshot reports C(changed=false); V(absent) with nothing beyond
        O(keep) and V(verified) never change anything.
      - V(present) takes a new snapshot on every run unless O(snapshot) names an id that already exists.
options:
  state:
    description: What to do.
    type: str
    choices: [present, restored, absent, verified]
    default: present
  paths:
    description:
      - Absolute paths of files and directories to snapshot. A SQLite file named here brings its C(-wal),
        C(-shm) and C(-journal) along.
      - With V(restored), when O(paths) or O(volumes) are given, every root of the snapshot must be among
        them (a guard against a manifest that names other places).
    type: list
    elements: path
    default: []
  volumes:
    description: Docker named volumes to snapshot, resolved to their Mountpoint through the C(docker) CLI.
    type: list
    elements: str
    default: []
  backup_root:
    description: Directory that holds the snapshots; created with mode C(0700) when missing. Must lie outside O(paths).
    type: path
    required: true
  snapshot:
    description:
      - Snapshot id. With V(restored) and V(verified), an id or V(latest) (the default there).
      - With V(present), the id to create; when a complete snapshot with that id exists, nothing is done.
      - With V(absent), the one snapshot to remove.
    type: str
  keep:
    description: With V(absent), how many of the newest snapshots to keep (at least 1).
    type: int
    default: 3
  sqlite_mode:
    description: How V(present) copies SQLite databases, V(copy) (byte copy, no writer active), V(backup_api) (live,
      SQLite's online backup API) or V(read_lock) (live, byte copy under a held read transaction).
    type: str
    choices: [copy, backup_api, read_lock]
    default: copy
  label:
    description: Free text stored in the manifest (for example the run id).
    type: str
  base:
    description:
      - With V(present) only (any other state fails), the id of an earlier complete snapshot under O(backup_root)
        whose stored copies are hard-linked for the files whose live bytes they hold, instead of copying them
        again (for example the rollback point taken in the downtime, based on the verified live snapshot
        taken minutes before).
      - A file is linked when the base's manifest has a file entry for the same absolute source path with the
        live file's size and a sha256, and its stored copy holds the live file's bytes; anything else, or a link
        that fails (another filesystem, too many links), is copied. With O(sqlite_mode=backup_api) or O(sqlite_mode=read_lock)
        only files byte-copied (not the databases) can be linked.
      - Refused when it is not a valid id, is O(snapshot) itself, or names no complete snapshot with a valid
        manifest; existence is checked only when a snapshot is taken (not when O(snapshot) already exists).
    type: str
  exclude:
    description:
      - Path globs left out of the snapshot, matched against the path relative to its root with C(/) between
        components (C(module_utils/zoe_glob.py), the one glob meaning of the project); a restore leaves
        matching live paths alone.
      - C(*) and C(?) stay inside one component and C(**) crosses C(/); a pattern without C(/) matches a
        base name at any depth (C(*.log), C(cache)); one with C(/) is anchored at the root (C(data/*.db)
        matches C(data/a.db), not C(data/old/a.db)); a matching directory leaves out everything under it.
    type: list
    elements: str
    default: []
  verify:
    description:
      - V(present), check every stored file's type, mode and size against the bytes written and hashed.
      - V(restored), after restoring, lstat every entry against the manifest (type, size, mode, owner, mtime,
        link target) and look for extra entries. Content is always checked while staging.
    type: bool
    default: true
  checksum:
    description:
      - With V(restored), hash live files whose size matches the snapshot to decide whether they are equal.
        V(false) trusts equal size, mtime, mode and owner (an rsync-style quick check).
    type: bool
    default: true
  fsync:
    description: Flush every written file to disk before returning (a snapshot that a power cut loses is no rollback point).
    type: bool
    default: true
  docker_cli:
    description: The docker CLI used to resolve O(volumes).
    type: str
    default: docker
notes:
  - Standard library only on the managed host; Docker volumes need the docker CLI and access to the Mountpoint (root).
  - Restoring owners needs root; a file whose owner differs cannot be restored by an unprivileged user.
"""

EXAMPLES = r"""
- name: Take the rollback point after the writers stopped
  volume_snapshot:
    paths:
      - /srv/zoe/data
      - /srv/zoe/docker-compose.yml
    backup_root: /srv/zoe-backups
    label: consolidate run 42
  register: backup_register_snapshot

- name: Take a live snapshot while services run
  volume_snapshot:
    paths: [/srv/zoe/data]
    volumes: [zoe_mem_agent]
    backup_root: /srv/zoe-backups
    sqlite_mode: read_lock
  register: backup_register_live

- name: Take the rollback point, linking the files the verified live snapshot already holds
  volume_snapshot:
    paths:
      - /srv/zoe/data
      - /srv/zoe/docker-compose.yml
    backup_root: /srv/zoe-backups
    base: "{{ backup_register_live.snapshot_id }}"

- name: Re-read the snapshot and check every database
  volume_snapshot:
    state: verified
    backup_root: /srv/zoe-backups
    snapshot: "{{ backup_register_snapshot.snapshot_id }}"

- name: Roll back to the latest snapshot
  volume_snapshot:
    state: restored
    backup_root: /srv/zoe-backups
    snapshot: latest

- name: Keep the five newest snapshots
  volume_snapshot:
    state: absent
    backup_root: /srv/zoe-backups
    keep: 5
"""

RETURN = r"""
snapshot_id:
  description: Id of the snapshot taken, verified or restored.
  returned: when state is present, restored or verified
  type: str
  sample: 20261124T130501Z-3f9a2c
snapshot_path:
  description: Directory of that snapshot (for V(absent), the removed one when exactly one was removed).
  returned: always
  type: str
  sample: /srv/zoe-backups/20261124T130501Z-3f9a2c
manifest:
  description: Path of the snapshot's manifest.
  returned: when state is present, restored or verified
  type: str
  sample: /srv/zoe-backups/20261124T130501Z-3f9a2c/manifest.json
roots:
  description: Absolute paths the snapshot covers (volumes as their Mountpoint).
  returned: when state is present, restored or verified
  type: list
  elements: str
  sample: [/srv/zoe/data]
files:
  description: Regular files in the snapshot.
  returned: when state is present, restored or verified
  type: int
  sample: 42
dirs:
  description: Directories in the snapshot.
  returned: when state is present, restored or verified
  type: int
  sample: 3
symlinks:
  description: Symbolic links in the snapshot.
  returned: when state is present, restored or verified
  type: int
  sample: 0
bytes:
  description: Bytes of file content in the snapshot.
  returned: when state is present, restored or verified
  type: int
  sample: 6291456
databases:
  description: Number of SQLite databases (V(present), V(restored)); for V(verified), one item per database.
  returned: when state is present, restored or verified
  type: raw
  sample: [{path: /srv/zoe/data/zoe.db, integrity: ok, tables: 12, rows: {users: 4}}]
skipped:
  description: Special files (sockets, fifos, devices) left out of the snapshot.
  returned: when state is present
  type: int
  sample: 0
changed_during_copy:
  description: Paths of non-database files that changed while a live (V(backup_api), V(read_lock)) snapshot copied them
    (recorded as copied, flagged in the manifest, and warned about).
  returned: when state is present and a snapshot was taken
  type: list
  elements: str
  sample: []
linked:
  description: Files hard-linked from O(base) instead of copied (0 without O(base)); null in check mode and when
    O(snapshot) already existed (nothing written; how much matches is only known once the files are hashed).
  returned: when state is present
  type: int
  sample: 40
linked_bytes:
  description: Bytes of the files hard-linked from O(base); null when RV(linked) is.
  returned: when state is present
  type: int
  sample: 419430400
copied_bytes:
  description: Bytes copied into the snapshot (RV(bytes) minus RV(linked_bytes)); null when RV(linked) is.
  returned: when state is present
  type: int
  sample: 20480
verified:
  description: Whether the verification described under O(verify) (or V(verified)) ran and passed.
  returned: when something was written, or state is verified
  type: bool
  sample: true
files_restored:
  description: Files written by the restore.
  returned: when state is restored
  type: int
  sample: 3
files_removed:
  description: Entries removed because the snapshot does not hold them.
  returned: when state is restored
  type: int
  sample: 1
files_unchanged:
  description: Files already equal to the snapshot.
  returned: when state is restored
  type: int
  sample: 38
metadata_fixed:
  description: Entries whose content was equal but whose mode, owner or times were restored.
  returned: when state is restored
  type: int
  sample: 1
bytes_written:
  description: Bytes of file content written by the restore.
  returned: when state is restored
  type: int
  sample: 1048576
actions:
  description: Every path the restore writes (V(write), V(replace)), fixes (V(meta)) or removes (V(remove)).
  returned: when state is restored
  type: list
  elements: dict
  sample: [{path: /srv/zoe/data/zoe.db, action: write}]
removed:
  description: Ids of the snapshots removed.
  returned: when state is absent
  type: list
  elements: str
  sample: [20261120T010000Z-aa11bb]
kept:
  description: Ids of the snapshots kept.
  returned: when state is absent
  type: list
  elements: str
  sample: [20261124T130501Z-3f9a2c]
protected:
  description: Ids of the snapshots locked by a restore or marked in use.
  returned: when state is absent
  type: list
  elements: str
  sample: []
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.volume_snapshot import (
    LockedError, ManifestError, NoSpaceError, SnapshotError, SnapshotNotFoundError, SourceChangedError,
    SourceError, UnusableBaseError, VerifyError, VolumeError, apply_prune, apply_restore, apply_snapshot, plan_prune,
    plan_restore, plan_snapshot, plan_verify, resolve_volume)

FAILURES = (
    (NoSpaceError, "not enough free space"),
    (ManifestError, "unsafe or damaged manifest"),
    (VerifyError, "verification failed"),
    (SourceChangedError, "a source changed during the snapshot"),
    (UnusableBaseError, "unusable base snapshot"),
    (SnapshotNotFoundError, "snapshot not found"),
    (VolumeError, "docker volume not resolved"),
    (LockedError, "snapshot in use"),
    (SourceError, "bad source path"),
    (SnapshotError, "volume_snapshot failed"),
)


def run(module):
    """Dispatch on state: plan, then apply once under the single check-mode guard."""
    p = module.params
    state = p["state"]
    allowed = None
    if p["base"] is not None and state != "present":
        raise UnusableBaseError("O(base) only applies to O(state=present), not O(state=%s)" % state)
    if state == "present":
        if not (p["paths"] or p["volumes"]):
            raise SourceError("O(state=present) needs O(paths) or O(volumes)")
        plan = plan_snapshot(p["backup_root"], p["paths"], p["volumes"], p["snapshot"], p["sqlite_mode"],
                             p["exclude"], p["label"], p["docker_cli"], p["base"])
        apply = lambda: apply_snapshot(plan, fsync=p["fsync"], verify=p["verify"])  # noqa: E731
    elif state == "restored":
        if p["paths"] or p["volumes"]:
            # The paths may be gone (that is why we restore): normalise, do not require them to exist.
            allowed = [os.path.normpath(path) for path in p["paths"]]
            allowed += [os.path.normpath(resolve_volume(name, p["docker_cli"])) for name in p["volumes"]]
        plan = plan_restore(p["backup_root"], p["snapshot"] or "latest", allowed, p["checksum"], p["docker_cli"])
        apply = lambda: apply_restore(plan, fsync=p["fsync"], verify=p["verify"])  # noqa: E731
    elif state == "verified":
        plan = plan_verify(p["backup_root"], p["snapshot"] or "latest")
        apply = None
    elif state == "absent":
        plan = plan_prune(p["backup_root"], p["keep"], p["snapshot"])
        apply = lambda: apply_prune(plan)  # noqa: E731
    else:
        raise AssertionError("unreachable state %s" % state)
    result = dict(plan.result, changed=plan.changed)
    if plan.changed and not module.check_mode:
        result = dict(apply(), changed=True)
        for path in result.get("changed_during_copy", []):
            module.warn("%s changed while the live snapshot copied it" % path)
    if module._diff and plan.changed:
        result["diff"] = plan.diff
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "restored", "absent", "verified"]),
            paths=dict(type="list", elements="path", default=[]),
            volumes=dict(type="list", elements="str", default=[]),
            backup_root=dict(type="path", required=True),
            snapshot=dict(type="str"),
            keep=dict(type="int", default=3),
            sqlite_mode=dict(type="str", default="copy", choices=["copy", "backup_api", "read_lock"]),
            label=dict(type="str"),
            base=dict(type="str"),
            exclude=dict(type="list", elements="str", default=[]),
            verify=dict(type="bool", default=True),
            checksum=dict(type="bool", default=True),
            fsync=dict(type="bool", default=True),
            docker_cli=dict(type="str", default="docker"),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except SnapshotError as exc:
        kind = next(text for cls, text in FAILURES if isinstance(exc, cls))
        module.fail_json(msg="%s: %s" % (kind, exc), error=type(exc).__name__)
    except OSError as exc:
        module.fail_json(msg="volume_snapshot failed on %s: %s" % (exc.filename, exc.strerror),
                         error=type(exc).__name__)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
