# -*- coding: utf-8 -*-
# Copy primitives of volume_snapshot: one-pass copy + sha256 + fsync, and the live SQLite copies.
# Standard library only: this runs on the managed host with its system python3.
"""How volume_snapshot copies one file: byte copies hashed while written, SQLite's online backup API,
byte copies under a held read transaction, and private copies of databases no other connection has open."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sqlite3
import threading
from urllib.parse import quote

from ansible.module_utils.volume_snapshot_common import (
    BUFFER, SHARED_FIRST, SHARED_SIZE, SHM_DMS_BYTE, SIDECAR_SUFFIXES, WAL_HEADER, VerifyError)
from ansible.module_utils.zoe_sqlite import consistent_copy


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


def _fsync_path(path):
    """fsync a file written and closed earlier: its dirty pages reach the disk whichever descriptor asks."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
