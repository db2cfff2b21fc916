# -*- coding: utf-8 -*-
# Names every part of volume_snapshot shares: layout constants, the errors, Plan, snapshot ids.
# Standard library only: this runs on the managed host with its system python3.
"""Shared names of the volume_snapshot module_utils (see volume_snapshot.py for the design)."""

from __future__ import annotations

import os
import re
import secrets
import time

FORMAT = 1
MANIFEST = "manifest.json"
FILES_DIR = "files"
LOCK_NAMES = (".restore-lock",)
IN_USE_PREFIX = ".in-use"
STAGING_PREFIX = ".zoe-restore-"
SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BUFFER = 1 << 20
BLOCK = 4096
WAL_HEADER = 32
# Lock bytes of SQLite's unix VFS (os_unix.c): every connection read-locks the -shm's dead-man-switch byte
# while it has a WAL database open, and a rollback-journal writer write-locks the database's shared range.
SHM_DMS_BYTE = 128
SHARED_FIRST = 0x40000000 + 2
SHARED_SIZE = 510


class SnapshotError(Exception):
    """Base class of every failure this module reports."""


class SourceError(SnapshotError):
    """A path to snapshot is missing, not absolute or of an unsupported type."""


class VolumeError(SnapshotError):
    """A Docker named volume cannot be resolved through the docker CLI."""


class NoSpaceError(SnapshotError):
    """The snapshot (or the staged restore) does not fit the free space."""


class SnapshotNotFoundError(SnapshotError):
    """No complete snapshot with that id (or none at all for `latest`)."""


class ManifestError(SnapshotError):
    """The manifest is damaged or holds an entry that would write outside the snapshotted paths."""


class VerifyError(SnapshotError):
    """Bytes or metadata do not match the manifest."""


class SourceChangedError(SnapshotError):
    """A source file changed while it was being copied (a writer is active)."""


class LockedError(SnapshotError):
    """The snapshot is in use by a restore or marked in use."""


class UnusableBaseError(SnapshotError):
    """O(base) names no complete, valid snapshot under the backup root, or the snapshot being taken."""


class Plan(object):
    """What a state would do: `changed`, the result accounting, the diff, and private data for apply."""

    def __init__(self, changed, result, diff=None, data=None):
        self.changed = changed
        self.result = result
        self.diff = diff or {"before_header": "", "before": "", "after_header": "", "after": ""}
        self.data = data or {}


def _workers():
    return min(4, max(2, os.cpu_count() or 2))


def new_snapshot_id(now=None):
    """UTC time plus a short random id: sortable by name, unique without coordination."""
    now = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


def check_snapshot_id(snapshot_id):
    if not ID_RE.match(snapshot_id or ""):
        raise SnapshotError("O(snapshot) %r is not a valid id: letters, digits, '.', '_', '-', not starting "
                            "with '.' or '-'" % (snapshot_id,))
    return snapshot_id


def _blocks(size):
    return (size + BLOCK - 1) // BLOCK * BLOCK
