# -*- coding: utf-8 -*-
# O(base) of volume_snapshot state=present: hard-link the files an earlier snapshot already holds.
# Standard library only: this runs on the managed host with its system python3.
"""A snapshot taken with a base reuses the base's stored copy of every file whose live bytes it holds.

For a regular file that would be byte-copied, when the base's manifest has a file entry for the same
absolute source path (matched on `path`: the roots lists of two snapshots may differ) with a sha256 and
the live file's size, the base's stored file is hard-linked into the new snapshot and compared with the
live file byte for byte (both read, nothing written; a large file in parts on two threads); equal, the link
stays and the entry takes the base's sha256. Anything else (another size or byte, no entry, no sha256, a
link that fails: EXDEV, EMLINK, EPERM, the base pruned meanwhile) falls back to the ordinary copy of that
one file.

Why a link holds the live bytes:
- The stored bytes are compared with the live bytes themselves, so the link holds exactly the live bytes.
  Whether the base was consistent does not matter: a torn or stale base copy simply differs from the live
  file and is copied.
- Why compare instead of hashing the live file: a comparison reads both from the page cache and runs at
  memory speed on two threads, several times faster than a sha256 of the same bytes (bench/README.md,
  volume_snapshot, `--profile`), and it is done inside the downtime window.
- The sha256 recorded is the base manifest's for the stored bytes. The base's stored files were re-read
  against that manifest by its restore test (state=verified) before the writers stopped (and were hashed
  while written in any case), and every restore hashes the staged bytes against the manifest before any
  live file is replaced, so a stored file damaged since is refused at restore, never restored silently.
- The link needs no fsync of its data: the base fsynced it when it was taken; the new snapshot's
  directories are fsynced as for a copy. Stored files are never written after they are taken, and a
  prune unlinks names, so removing either snapshot leaves the other whole.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.volume_snapshot_common import ID_RE, MANIFEST, SnapshotError, UnusableBaseError
from ansible.module_utils.volume_snapshot_manifest import load_manifest, stored_path, validate_manifest


def check_base_id(base, snapshot_id):
    """Refuse a base id that is not a plain snapshot id, or that is the snapshot being taken. Reads nothing."""
    if not ID_RE.match(base or ""):
        raise UnusableBaseError("O(base) %r is not a valid snapshot id: letters, digits, '.', '_', '-', not "
                                "starting with '.' or '-'" % (base,))
    if base == snapshot_id:
        raise UnusableBaseError("O(base) %s is the snapshot being taken; name an earlier snapshot" % base)
    return base


def load_base(backup_root, base):
    """The base snapshot, as {id, dir, files: {source path: manifest entry}}; refuse one that is not complete.

    Only file entries with a sha256 can be linked from. The manifest is checked against its .sha256 and
    validated like a restore's, so every stored path derived from it lies inside the base's files/.
    """
    base_dir = os.path.join(backup_root, base)
    if os.path.islink(base_dir) or not os.path.isfile(os.path.join(base_dir, MANIFEST)):
        raise UnusableBaseError("O(base) %s is not a complete snapshot under %s" % (base, backup_root))
    try:
        manifest = validate_manifest(load_manifest(base_dir), base_dir)
    except SnapshotError as exc:
        raise UnusableBaseError("O(base) %s has an unusable manifest: %s" % (base, exc))
    files = {entry["path"]: entry for entry in manifest["entries"]
             if entry["type"] == "file" and entry.get("sha256")}
    return {"id": base, "dir": base_dir, "files": files}


# Files above this size are compared in two halves on two threads.
SPLIT_BYTES = 32 << 20
# Read size of the comparison: small enough that each read's buffer comes from the allocator's free lists (a read of
# 1 MiB is served by a fresh mmap each time in the main thread, and each of its pages is faulted in again).
COMPARE_BLOCK = 64 << 10


def _same_range(path_a, path_b, offset, length):
    """True when `length` bytes at `offset` are the same in both files (a file shorter than that is not)."""
    fd_a, fd_b = os.open(path_a, os.O_RDONLY), os.open(path_b, os.O_RDONLY)
    try:
        end = offset + length
        while offset < end:
            count = min(COMPARE_BLOCK, end - offset)
            chunk = os.pread(fd_a, count, offset)
            if len(chunk) != count or chunk != os.pread(fd_b, count, offset):
                return False
            offset += count
        return True
    finally:
        os.close(fd_a)
        os.close(fd_b)


def same_bytes(path_a, path_b, size):
    """True when both files hold the same `size` bytes; a large file in two halves on two threads."""
    if size < SPLIT_BYTES:
        return _same_range(path_a, path_b, 0, size)
    half = size // 2
    with ThreadPoolExecutor(2) as pool:
        parts = [pool.submit(_same_range, path_a, path_b, 0, half),
                 pool.submit(_same_range, path_a, path_b, half, size - half)]
        return all(part.result() for part in parts)


def link_from_base(entry, dest, base):
    """Hard-link the base's stored copy of `entry` at dest when it holds the live bytes: (bytes, sha256), or None.

    None (dest not left behind) when the base has no usable entry, the link fails, or the bytes differ; the
    caller then copies. The caller re-stats the source after this, as after a copy.
    """
    found = base["files"].get(entry["path"])
    if found is None or found.get("size") != entry["size"]:
        return None
    try:
        os.link(stored_path(base["dir"], found), dest, follow_symlinks=False)
    except OSError:
        return None
    st = os.lstat(dest)
    if (not stat.S_ISREG(st.st_mode) or st.st_size != found["size"] or stat.S_IMODE(st.st_mode) != 0o600
            or os.path.getsize(entry["path"]) != found["size"] or not same_bytes(entry["path"], dest, found["size"])):
        os.unlink(dest)  # not the live bytes, or not the stored copy the base's manifest describes: copy instead
        return None
    return found["size"], found["sha256"]
