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
- present, live: sqlite_mode=backup_api copies each database through SQLite's online backup API and
  hashes the finished copy (the backup rewrites page 1 last, so it cannot be hashed while written);
  sqlite_mode=read_lock copies the database file and its -wal byte for byte, hashed while copied,
  under a held read transaction (why that is consistent: sqlite_read_lock_copy()). A database that no
  other connection has open (POSIX locks of SQLite's unix VFS, held through the copy) is read from a private
  byte copy instead, so the live files keep every byte, the -shm included (manifest `read_from`: copy/live).
- verified: re-reads every snapshot file and compares its sha256 with the manifest, then opens a
  scratch copy of every database and runs PRAGMA integrity_check and counts rows.
- restored: the snapshot's bytes are hashed while they are copied into a staging file beside the
  destination; a mismatch with the manifest aborts before any live file is replaced. Staged files
  are renamed into place (so the restored inode holds exactly the hashed bytes), then every entry
  is lstat'ed and compared with the manifest (type, size, mode, owner, mtime, link target) and
  the snapshotted directories are checked for extra entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from ansible.module_utils.zoe_sqlite import consistent_copy, integrity_errors, is_sqlite_file, quote_identifier
from ansible.module_utils.zoe_sqlite import nearest_existing, table_names

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


class Plan(object):
    """What a state would do: `changed`, the result accounting, the diff, and private data for apply."""

    def __init__(self, changed, result, diff=None, data=None):
        self.changed = changed
        self.result = result
        self.diff = diff or {"before_header": "", "before": "", "after_header": "", "after": ""}
        self.data = data or {}


# ----------------------------------------------------------------------------------------------
# Small helpers


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


def _sha256_file(path):
    digest = hashlib.sha256()
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buf)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def _write_all(fd, view):
    pos = 0
    while pos < len(view):
        pos += os.write(fd, view[pos:])


def copy_and_hash(src_path, dst_path, fsync=True):
    """Copy src to a new file dst (0600) and return (bytes, sha256 of the bytes written).

    One pass: each chunk is read once, hashed and written from the same buffer, so the hash
    describes exactly what went into the copy. hashlib and os.write release the GIL on large
    buffers, so several of these run in parallel threads and hashing overlaps copying.
    """
    src_fd = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return _copy_fd_and_hash(src_fd, dst_path, fsync)
    finally:
        os.close(src_fd)


def _copy_fd_and_hash(src_fd, dst_path, fsync):
    """copy_and_hash() from an open descriptor, read from its offset (0 if fresh) to EOF; the caller closes it."""
    digest = hashlib.sha256()
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    written = 0
    dst_fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            count = os.readv(src_fd, [buf])
            if not count:
                break
            chunk = view[:count]
            digest.update(chunk)
            _write_all(dst_fd, chunk)
            written += count
        if fsync:
            os.fsync(dst_fd)
        stored = os.fstat(dst_fd).st_size
    finally:
        os.close(dst_fd)
    if stored != written:
        raise VerifyError("%s: wrote %d bytes but the file holds %d" % (dst_path, written, stored))
    return written, digest.hexdigest()


def _open_for_read(src_path):
    """A connection to a live database that never checkpoints or removes its -wal when closed.

    Read-only when possible; a read-only open of a WAL database needs its -shm (and cannot roll back
    a hot journal), so fall back to a normal connection then.
    """
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % quote(src_path), uri=True, timeout=30, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            conn.close()
            raise
        return conn
    except sqlite3.Error:
        return sqlite3.connect(src_path, timeout=30, isolation_level=None)


def _fsync_and_hash(path, fsync):
    """(size, sha256) of a file just written; its fsync runs in a second thread while it is hashed.

    The hash reads the page cache (hashlib releases the GIL) while the disk writes the same pages
    back, so the two costs overlap instead of adding up (measured ~0.2 s less per GB here).
    """
    failure = []

    def sync():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            failure.append(exc)

    worker = threading.Thread(target=sync) if fsync else None
    if worker:
        worker.start()
    try:
        digest = _sha256_file(path)
    finally:
        if worker:
            worker.join()
    if failure:
        raise failure[0]
    return os.path.getsize(path), digest


def sqlite_backup_and_hash(src_path, dst_path, fsync=True):
    """Live copy of a database through SQLite's online backup API, then (bytes, sha256) of the copy.

    One backup step (pages=-1) runs inside one read transaction: the copy holds every transaction
    committed before the step began, -wal content included, and a concurrent WAL writer is not
    blocked. The source is opened read-only so closing it never checkpoints or removes its -wal.
    The backup rewrites page 1 of the copy when it finishes, so the copy can only be hashed after.
    """
    os.close(os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    source = _open_for_read(src_path)
    try:
        # Read pages through a memory map: the backup copies page by page and pread() per page is
        # most of its cost (measured ~25% faster on the benchmark's databases).
        source.execute("PRAGMA mmap_size=%d" % (1 << 40))
        target = sqlite3.connect(dst_path)
        try:
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            target.execute("PRAGMA locking_mode=EXCLUSIVE")
            target.execute("PRAGMA cache_size=-2048")
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    for suffix in SIDECAR_SUFFIXES:
        if os.path.lexists(dst_path + suffix):
            os.unlink(dst_path + suffix)
    return _fsync_and_hash(dst_path, fsync)


def sqlite_read_lock_copy(src_path, dst_path, fsync=True, _while_locked=None):
    """Live byte copy of a database (and, in WAL mode, its -wal) under a held read transaction.

    Returns ((bytes, sha256) of the database copy, (bytes, sha256, stat) of the -wal copy or None). Each
    file is copied and hashed in one pass, like copy_and_hash(). Why the copy is consistent, with a
    read transaction open on the source (BEGIN and a read) for the whole copy:

    - Rollback-journal modes: the read holds a SHARED lock, and a writer needs EXCLUSIVE to write
      the database file, so the file does not change until we end the transaction; it holds every
      commit made before the BEGIN. A journal is not needed (a hot one is rolled back before SHARED).
    - WAL mode: writers append to the -wal, only a checkpoint writes the database file. Our reader
      holds either read slot 0 (everything in the -wal was already checkpointed when it began): then
      no checkpoint may write the database file at all, so the database file alone is the snapshot;
      or a slot i >= 1 with mark K (its snapshot is the database file plus -wal frames 1..K): then
      a checkpoint only copies frames <= K into the database file, and the -wal cannot be restarted
      or truncated (that needs every slot i >= 1), so the -wal header and frames 1..K stay as they
      were. Pages that a checkpoint rewrites while we copy are all in frames <= K, and opening the
      copy replays the copied -wal (recovery stops at the last valid commit frame, so a frame being
      appended while we read is ignored), so the copy holds frames 1..M for some M >= K, a
      consistent state at or after the BEGIN.
    - The -wal header (salts, checkpoint sequence) is read right after the BEGIN and again after
      the -wal was copied; if it differs from those, or from the copy's own first bytes, the -wal
      was restarted or truncated while we held the transaction, which proves we held slot 0: the
      -wal copy is dropped and the database file (not written since the BEGIN) is the snapshot.

    POSIX locks belong to the process, and closing any descriptor of a file drops them all, so our
    raw descriptors are closed only after the connection (and with it the read transaction) is.
    `_while_locked`, for tests, is called after the database file is copied, the lock still held.
    """
    wal_path, wal_dst = src_path + "-wal", dst_path + "-wal"
    fds = []
    conn = _open_for_read(src_path)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        wal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        fds.append(os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW))
        header = None
        if wal_mode:
            try:
                fds.append(os.open(wal_path, os.O_RDONLY | os.O_NOFOLLOW))
                header = os.pread(fds[1], WAL_HEADER, 0)
            except FileNotFoundError:
                header = None
        database = _copy_fd_and_hash(fds[0], dst_path, fsync)
        if _while_locked:
            _while_locked()
        wal = None
        if header is not None and len(header) == WAL_HEADER:
            wal = _copy_fd_and_hash(fds[1], wal_dst, fsync) + (os.fstat(fds[1]),)
            with open(wal_dst, "rb") as handle:
                copied = handle.read(WAL_HEADER)
            if not copied == header == os.pread(fds[1], WAL_HEADER, 0):
                os.unlink(wal_dst)
                wal = None
        conn.execute("COMMIT")
    finally:
        conn.close()
        for fd in fds:
            os.close(fd)
    return database, wal


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blocks(size):
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _excluded(rel, patterns):
    name = os.path.basename(rel)
    return any(fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(name, pat) for pat in patterns)


# ----------------------------------------------------------------------------------------------
# Sources: paths and Docker named volumes


def resolve_volume(name, docker_cli="docker"):
    """Mountpoint of a Docker named volume, asked of the engine through the docker CLI."""
    try:
        proc = subprocess.run([docker_cli, "volume", "inspect", "--format", "{{json .Mountpoint}}", name],
                              capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise VolumeError("cannot run the docker CLI (%s) to resolve volume %s: %s" % (docker_cli, name, exc))
    if proc.returncode != 0:
        raise VolumeError("docker volume %s cannot be inspected: %s" % (name, proc.stderr.strip()))
    mountpoint = json.loads(proc.stdout.strip() or '""')
    if not mountpoint or not os.path.isabs(mountpoint):
        raise VolumeError("docker volume %s has no local mountpoint" % name)
    return mountpoint


def resolve_roots(paths, volumes, docker_cli="docker"):
    """The snapshot roots, in option order: [{path, kind (dir/file), volume}]."""
    roots = []
    for path in paths or []:
        if not os.path.isabs(path):
            raise SourceError("O(paths) entry %s is not an absolute path" % path)
        path = os.path.normpath(path)
        if os.path.islink(path) or not os.path.exists(path):
            raise SourceError("O(paths) entry %s does not exist or is a symlink" % path)
        kind = "dir" if os.path.isdir(path) else "file"
        if kind == "file" and not os.path.isfile(path):
            raise SourceError("O(paths) entry %s is neither a regular file nor a directory" % path)
        roots.append({"path": path, "kind": kind, "volume": None})
    for name in volumes or []:
        roots.append({"path": os.path.normpath(resolve_volume(name, docker_cli)), "kind": "dir", "volume": name})
    seen = set()
    for root in roots:
        for other in seen:
            if root["path"] == other or root["path"].startswith(other + os.sep) or \
                    other.startswith(root["path"] + os.sep):
                raise SourceError("snapshot paths overlap: %s and %s" % (other, root["path"]))
        seen.add(root["path"])
    return roots


def _entry_for(index, rel, path, st):
    entry = {"root": index, "rel": rel, "path": path, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
             "gid": st.st_gid, "mtime_ns": st.st_mtime_ns, "atime_ns": st.st_atime_ns}
    if stat.S_ISDIR(st.st_mode):
        entry["type"] = "dir"
    elif stat.S_ISLNK(st.st_mode):
        entry["type"] = "symlink"
        entry["target"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        entry.update(type="file", size=st.st_size, ino=st.st_ino)
    else:
        return None
    return entry


def scan_root(index, root, exclude):
    """Entries of one root (parents before children) and the count of skipped special files.

    A file root brings its SQLite sidecars (-wal, -shm, -journal) along: they are part of the database.
    """
    entries, skipped = [], 0
    if root["kind"] == "file":
        base = os.path.basename(root["path"])
        for name in [base] + [base + suffix for suffix in SIDECAR_SUFFIXES]:
            path = os.path.join(os.path.dirname(root["path"]), name)
            try:
                entry = _entry_for(index, name, path, os.lstat(path))
            except FileNotFoundError:
                if name == base:
                    raise SourceError("O(paths) entry %s disappeared" % path)
                continue  # no such sidecar (or a live one came and went)
            if entry is not None:
                entries.append(entry)
        return entries, skipped
    top = root["path"]
    entries.append(_entry_for(index, ".", top, os.lstat(top)))
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        kept = []
        for name in dirnames + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if _excluded(rel, exclude):
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if name.endswith(SIDECAR_SUFFIXES):
                    continue  # a live database's -journal (or -wal) came and went while we listed
                raise
            entry = _entry_for(index, rel, path, st)
            if entry is None:
                skipped += 1
                continue
            entries.append(entry)
            if name in dirnames and entry["type"] == "dir":
                kept.append(name)
        dirnames[:] = kept
    return entries, skipped


LIVE_MODES = ("backup_api", "read_lock")


def _mark_databases(entries, sqlite_mode):
    """Flag SQLite databases; in a live mode, drop their sidecars.

    backup_api writes a self-contained copy; read_lock copies the -wal itself, under the same read
    transaction as the database, and only when the copy needs it (see sqlite_read_lock_copy()).
    """
    by_path = {entry["path"]: entry for entry in entries}
    for entry in entries:
        if entry["type"] == "file" and is_sqlite_file(entry["path"]):
            entry["sqlite"] = sqlite_mode
    if sqlite_mode not in LIVE_MODES:
        return entries
    dropped = set()
    for entry in entries:
        for suffix in SIDECAR_SUFFIXES:
            if entry["path"].endswith(suffix) and by_path.get(entry["path"][:-len(suffix)], {}).get("sqlite"):
                dropped.add(entry["path"])
    return [entry for entry in entries if entry["path"] not in dropped]


def _totals(entries):
    files = [e for e in entries if e["type"] == "file"]
    return {"files": len(files), "dirs": sum(1 for e in entries if e["type"] == "dir"),
            "symlinks": sum(1 for e in entries if e["type"] == "symlink"),
            "bytes": sum(e["size"] for e in files), "databases": sum(1 for e in files if e.get("sqlite"))}


# ----------------------------------------------------------------------------------------------
# Snapshots on disk


def snapshot_dir(backup_root, snapshot_id):
    return os.path.join(backup_root, check_snapshot_id(snapshot_id))


def stored_path(snap_dir, entry):
    """Where an entry's bytes live inside a snapshot; derived from root index + rel, never trusted."""
    base = os.path.join(snap_dir, FILES_DIR, str(int(entry["root"])))
    return base if entry["rel"] == "." else os.path.join(base, entry["rel"])


def load_manifest(snap_dir):
    """Read a manifest and check it against its .sha256 file."""
    path = os.path.join(snap_dir, MANIFEST)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise SnapshotNotFoundError("%s: no manifest (%s)" % (snap_dir, exc.strerror))
    try:
        with open(path + ".sha256") as handle:
            expected = handle.read().split()[0]
    except (OSError, IndexError):
        raise ManifestError("%s: the manifest checksum file is missing" % snap_dir)
    if hashlib.sha256(raw).hexdigest() != expected:
        raise ManifestError("%s: the manifest does not match its checksum (damaged or edited)" % snap_dir)
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ManifestError("%s: the manifest is not valid JSON: %s" % (snap_dir, exc))


def write_manifest(snap_dir, manifest):
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    path = os.path.join(snap_dir, MANIFEST)
    for name, data in ((path, raw), (path + ".sha256", ("%s  %s\n" % (hashlib.sha256(raw).hexdigest(),
                                                                     MANIFEST)).encode())):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def list_snapshots(backup_root):
    """Complete snapshots under backup_root, oldest first: [(created_ns, id, dir)]."""
    found = []
    if not os.path.isdir(backup_root):
        return found
    for name in os.listdir(backup_root):
        path = os.path.join(backup_root, name)
        if not ID_RE.match(name) or not os.path.isfile(os.path.join(path, MANIFEST)):
            continue
        try:
            manifest = load_manifest(path)
        except SnapshotError:
            continue
        found.append((int(manifest.get("created_ns", 0)), name, path))
    return sorted(found)


def find_snapshot(backup_root, snapshot):
    """Directory of a named snapshot, or of the newest one for `latest`."""
    if snapshot in (None, "", "latest"):
        found = list_snapshots(backup_root)
        if not found:
            raise SnapshotNotFoundError("no complete snapshot under %s" % backup_root)
        return found[-1][2]
    path = snapshot_dir(backup_root, snapshot)
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        raise SnapshotNotFoundError("no complete snapshot %s under %s" % (snapshot, backup_root))
    return path


def _is_locked(snap_dir):
    try:
        names = os.listdir(snap_dir)
    except OSError:
        return False
    return any(name in LOCK_NAMES or name.startswith(IN_USE_PREFIX) for name in names)


# ----------------------------------------------------------------------------------------------
# state=present


def plan_snapshot(backup_root, paths=None, volumes=None, snapshot=None, sqlite_mode="copy", exclude=None,
                  label=None, docker_cli="docker"):
    """Scan the sources, check the free space, and say what a snapshot would copy. Writes nothing."""
    if not os.path.isabs(backup_root):
        raise SourceError("O(backup_root) %s is not an absolute path" % backup_root)
    backup_root = os.path.normpath(backup_root)
    snapshot_id = check_snapshot_id(snapshot) if snapshot else new_snapshot_id()
    target = os.path.join(backup_root, snapshot_id)
    if snapshot and os.path.lexists(target):
        if not os.path.isfile(os.path.join(target, MANIFEST)):
            raise SnapshotError("%s exists but is not a complete snapshot" % target)
        manifest = load_manifest(target)
        result = dict(snapshot_id=snapshot_id, snapshot_path=target, manifest=os.path.join(target, MANIFEST),
                      roots=[root["path"] for root in manifest["roots"]], skipped=0, **manifest["totals"])
        return Plan(False, result)
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
    after = "snapshot %s: %d files (%d databases), %d dirs, %d symlinks, %d bytes\n" % (
        snapshot_id, totals["files"], totals["databases"], totals["dirs"], totals["symlinks"], totals["bytes"])
    after += "".join("  from %s\n" % root["path"] for root in roots)
    diff = {"before_header": target, "before": "", "after_header": target, "after": after}
    data = {"backup_root": backup_root, "roots": roots, "entries": entries, "sqlite_mode": sqlite_mode,
            "exclude": list(exclude or []), "label": label}
    return Plan(True, result, diff, data)


def _wal_entry(entry, size, digest, st):
    """Manifest entry of the -wal copied beside a database by sqlite_read_lock_copy()."""
    wal = _entry_for(entry["root"], entry["rel"] + "-wal", entry["path"] + "-wal", st)
    wal.pop("ino", None)
    wal.update(size=size, sha256=digest, source_size=wal["size"], sqlite_wal=True)
    return wal


def _file_state(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@contextlib.contextmanager
def _no_other_connection(src_path):
    """Yield True while POSIX locks held by this process keep every other SQLite connection from opening the
    database in WAL mode (write lock on the -shm's dead-man-switch byte: an opener gets SQLITE_BUSY) and from
    writing it in rollback-journal mode (read lock on the shared range: no writer gets EXCLUSIVE); yield False
    when another connection has it open, or a hot -journal needs a rollback that only SQLite may do.

    Opening a live WAL database, even read-only, rewrites its -shm (the first connection rebuilds the
    wal-index); a database nobody has open can be read from a byte copy instead, leaving every byte as it was.
    A connection that opens it meanwhile gets SQLITE_BUSY, which SQLite hands to its busy handler (Python's
    sqlite3 waits up to 5 s by default): it waits for the copy of that one database, it does not fail.
    """
    fds = []
    try:
        if os.path.lexists(src_path + "-journal"):
            yield False
            return
        try:
            fds.append(os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW))
            fcntl.lockf(fds[-1], fcntl.LOCK_SH | fcntl.LOCK_NB, SHARED_SIZE, SHARED_FIRST)
            if os.path.lexists(src_path + "-shm"):
                fds.append(os.open(src_path + "-shm", os.O_RDWR | os.O_NOFOLLOW))
                fcntl.lockf(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_BYTE)
        except OSError:
            yield False
            return
        yield True
    finally:
        for fd in fds:
            os.close(fd)


def _quiet_copy(src_path, scratch):
    """A private byte copy (database and -wal) of a database no other connection has open, or None.

    None when another connection has it open, or when the database, its -wal or the presence of its -shm
    changed while it was copied (an opener that created the -shm after the check): then read it live.
    """
    with _no_other_connection(src_path) as alone:
        if not alone:
            return None
        before = [_file_state(src_path + suffix) for suffix in ("", "-wal", "-shm")]
        copy = consistent_copy(src_path, workdir=scratch)
        after = [_file_state(src_path + suffix) for suffix in ("", "-wal", "-shm")]
    if before != after:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        return None
    return copy


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


def _copy_entry(entry, dest, sqlite_mode, fsync):
    """Copy one file into the snapshot; returns (warnings (a file changed under a live snapshot), extra entries)."""
    if entry.get("sqlite") in LIVE_MODES:
        return _copy_live_database(entry, dest, fsync)
    size, digest = copy_and_hash(entry["path"], dest, fsync)
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
        with ThreadPoolExecutor(_workers()) as pool:
            outcomes = list(pool.map(lambda e: _copy_entry(e, stored_path(partial, e), data["sqlite_mode"], fsync),
                                     files))
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
                    "exclude": data["exclude"], "roots": data["roots"], "entries": entries,
                    "totals": _totals(entries)}
        write_manifest(partial, manifest)
        for dirpath, _dirs, _files in os.walk(partial):
            _fsync_dir(dirpath)
        os.rename(partial, final)
        _fsync_dir(backup_root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result.update(manifest["totals"], changed=True, changed_during_copy=warnings, verified=bool(verify))
    return result


def verify_stored(snap_dir, entries, rehash):
    """Check the stored copy of every file: regular, 0600, manifest size; with rehash, its sha256 too."""
    problems = []
    for entry in entries:
        path = stored_path(snap_dir, entry)
        if entry["type"] == "dir":
            if not os.path.isdir(path) or os.path.islink(path):
                problems.append("%s: directory missing from the snapshot" % entry["path"])
            continue
        if entry["type"] != "file":
            continue
        try:
            st = os.lstat(path)
        except OSError:
            problems.append("%s: missing from the snapshot" % entry["path"])
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"] or stat.S_IMODE(st.st_mode) != 0o600:
            problems.append("%s: stored copy has the wrong type, size or mode" % entry["path"])
        elif not entry.get("sha256") and not entry.get("changed_during_copy"):
            problems.append("%s: no checksum recorded" % entry["path"])
        elif rehash and entry.get("sha256") and _sha256_file(path) != entry["sha256"]:
            problems.append("%s: stored copy does not match its sha256" % entry["path"])
    if problems:
        raise VerifyError("%d snapshot entries fail verification, first: %s" % (len(problems), problems[0]))


# ----------------------------------------------------------------------------------------------
# Manifest safety


def validate_manifest(manifest, snap_dir, allowed_roots=None):
    """Refuse a manifest that would write anywhere but inside its snapshotted paths.

    Every root must be absolute and normalised (and among allowed_roots when given); every rel must be
    a plain relative path without '..', '.', or empty parts; an entry's path must equal root + rel;
    every entry's parent must be a directory entry of the same root, so no entry can be written
    through a symlink the manifest itself creates; a file root may only hold the file and its
    sidecars. Nothing is written before this passes.
    """
    if manifest.get("format") != FORMAT:
        raise ManifestError("manifest format %r is not supported" % manifest.get("format"))
    roots = manifest.get("roots")
    if not isinstance(roots, list) or not roots:
        raise ManifestError("the manifest has no roots")
    for root in roots:
        path = root.get("path")
        if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path or \
                "\x00" in path or root.get("kind") not in ("dir", "file") or path == "/":
            raise ManifestError("manifest root %r is not a normalised absolute path" % (path,))
        if allowed_roots is not None and path not in allowed_roots:
            raise ManifestError("manifest root %s is not among O(paths)/O(volumes)" % path)
    seen, dirs = set(), set()
    for entry in manifest.get("entries", []):
        index, rel, kind = entry.get("root"), entry.get("rel"), entry.get("type")
        if not isinstance(index, int) or not 0 <= index < len(roots) or not isinstance(rel, str):
            raise ManifestError("manifest entry %r has a bad root or rel" % (entry.get("path"),))
        root = roots[index]
        if kind not in ("file", "dir", "symlink"):
            raise ManifestError("manifest entry %r has an unknown type" % (entry.get("path"),))
        if root["kind"] == "file":
            base = os.path.basename(root["path"])
            if rel not in [base] + [base + s for s in SIDECAR_SUFFIXES] or kind == "dir":
                raise ManifestError("manifest entry %r escapes the file %s" % (rel, root["path"]))
            expected = os.path.join(os.path.dirname(root["path"]), rel)
        elif rel == ".":
            if kind != "dir":
                raise ManifestError("manifest root entry of %s is not a directory" % root["path"])
            expected = root["path"]
        else:
            parts = rel.split("/")
            if rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
                raise ManifestError("manifest entry %r escapes the snapshotted path %s" % (rel, root["path"]))
            parent = "/".join(parts[:-1]) or "."
            if (index, parent) not in dirs:
                raise ManifestError("manifest entry %r does not sit under a directory entry of %s"
                                    % (rel, root["path"]))
            expected = os.path.join(root["path"], rel)
        if entry.get("path") != expected:
            raise ManifestError("manifest entry %r claims path %r outside %s" % (rel, entry.get("path"),
                                                                                root["path"]))
        if expected in seen:
            raise ManifestError("manifest entry %s appears twice" % expected)
        seen.add(expected)
        if kind == "dir":
            dirs.add((index, rel))
        if kind == "file" and not (isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            raise ManifestError("manifest entry %s has no size or sha256" % expected)
        for key in ("mode", "uid", "gid", "mtime_ns"):
            if not isinstance(entry.get(key), int):
                raise ManifestError("manifest entry %s has no integer %s" % (expected, key))
        stored = os.path.normpath(stored_path(snap_dir, entry))
        if not (stored + os.sep).startswith(os.path.join(snap_dir, FILES_DIR) + os.sep):
            raise ManifestError("manifest entry %s would be read from outside the snapshot" % expected)
    return manifest


# ----------------------------------------------------------------------------------------------
# state=restored


def _meta_differs(entry, st):
    if entry["type"] != "symlink" and stat.S_IMODE(st.st_mode) != entry["mode"]:
        return True
    return (st.st_uid, st.st_gid, st.st_mtime_ns) != (entry["uid"], entry["gid"], entry["mtime_ns"])


def _live_action(entry, checksum):
    """What restoring one entry needs: None (equal), 'meta', 'write' or 'replace' (+ write)."""
    try:
        st = os.lstat(entry["path"])
    except FileNotFoundError:
        return "write"
    kind = entry["type"]
    if kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            return "replace"
        return "meta" if _meta_differs(entry, st) else None
    if kind == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            return "replace"
        if os.readlink(entry["path"]) != entry["target"]:
            return "write"
        return "meta" if _meta_differs(entry, st) else None
    if not stat.S_ISREG(st.st_mode):
        return "replace"
    if st.st_size != entry["size"]:
        return "write"
    quick_equal = not _meta_differs(entry, st)
    if quick_equal and not checksum:
        return None
    if _sha256_file(entry["path"]) != entry["sha256"]:
        return "write"
    return None if quick_equal else "meta"


def _extras(manifest):
    """Live paths inside the snapshotted paths that the snapshot does not hold (not excluded)."""
    known = {entry["path"] for entry in manifest["entries"]}
    dir_paths = {entry["path"] for entry in manifest["entries"] if entry["type"] == "dir"}
    exclude = manifest.get("exclude") or []
    extras = []
    for index, root in enumerate(manifest["roots"]):
        if root["kind"] == "file":
            base = os.path.basename(root["path"])
            for name in [base] + [base + s for s in SIDECAR_SUFFIXES]:
                path = os.path.join(os.path.dirname(root["path"]), name)
                if path not in known and os.path.lexists(path):
                    extras.append(path)
            continue
        stack = [root["path"]] if root["path"] in dir_paths else []
        while stack:
            current = stack.pop()
            if os.path.islink(current) or not os.path.isdir(current):
                continue
            for name in sorted(os.listdir(current)):
                path = os.path.join(current, name)
                if _excluded(os.path.relpath(path, root["path"]), exclude):
                    continue
                if path not in known:
                    extras.append(path)
                elif path in dir_paths:
                    stack.append(path)
    return extras


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


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _set_meta(entry):
    path, link = entry["path"], entry["type"] == "symlink"
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (entry["uid"], entry["gid"]):
        os.lchown(path, entry["uid"], entry["gid"])
    if not link:
        os.chmod(path, entry["mode"])
    atime = entry.get("atime_ns", entry["mtime_ns"])
    os.utime(path, ns=(atime, entry["mtime_ns"]), follow_symlinks=not link)


def _staging_dir(root):
    return root["path"] if root["kind"] == "dir" else os.path.dirname(root["path"])


def _stage(entry, snap_dir, staging, fsync):
    """Copy one snapshot file to the staging dir, hashing as it goes; refuse bytes that do not match."""
    dest = os.path.join(staging, "%d-%s" % (entry["root"], hashlib.sha256(entry["path"].encode()).hexdigest()[:24]))
    size, digest = copy_and_hash(stored_path(snap_dir, entry), dest, fsync)
    if size != entry["size"] or digest != entry["sha256"]:
        raise VerifyError("snapshot copy of %s does not match its manifest sha256; nothing was restored"
                          % entry["path"])
    return dest


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


def _put_in_place(entry, action, staged):
    path = entry["path"]
    if action == "meta":
        return
    if entry["type"] == "dir":
        if action == "replace":
            _remove(path)
        if not (os.path.isdir(path) and not os.path.islink(path)):
            os.makedirs(path, 0o700) if entry["rel"] == "." else os.mkdir(path, 0o700)
        return
    parent = os.path.dirname(path)
    if os.path.islink(parent) or not os.path.isdir(parent):
        raise ManifestError("%s: parent is not a real directory at restore time" % path)
    if entry["type"] == "symlink":
        _remove(path)
        os.symlink(entry["target"], path)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.replace(staged[path], path)


def verify_live(manifest):
    """After a restore: every entry's type, size, mode, owner, mtime and link target match; no extras."""
    problems = []
    for entry in manifest["entries"]:
        try:
            st = os.lstat(entry["path"])
        except OSError:
            problems.append("%s is missing" % entry["path"])
            continue
        kind = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "symlink": stat.S_ISLNK}[entry["type"]]
        if not kind(st.st_mode) or _meta_differs(entry, st):
            problems.append("%s has the wrong type or metadata" % entry["path"])
        elif entry["type"] == "file" and st.st_size != entry["size"]:
            problems.append("%s has the wrong size" % entry["path"])
        elif entry["type"] == "symlink" and os.readlink(entry["path"]) != entry["target"]:
            problems.append("%s points elsewhere" % entry["path"])
    problems.extend("%s should not exist" % path for path in _extras(manifest))
    if problems:
        raise VerifyError("restore verification failed for %d entries, first: %s" % (len(problems), problems[0]))


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
           "ManifestError", "VerifyError", "SourceChangedError", "LockedError", "plan_snapshot", "apply_snapshot",
           "plan_restore", "apply_restore", "plan_verify", "plan_prune", "apply_prune", "copy_and_hash",
           "sqlite_backup_and_hash", "sqlite_read_lock_copy",
           "resolve_volume", "validate_manifest", "load_manifest", "list_snapshots", "new_snapshot_id"]
