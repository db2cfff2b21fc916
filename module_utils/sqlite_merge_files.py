# -*- coding: utf-8 -*-
"""The file checks of sqlite_merge: lock probes, digests, the target's checks, and the private copies of the
sources, copied, hashed and integrity-checked in a background thread while the merge runs.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.zoe_sqlite import SQLiteFileError, consistent_copy, integrity_errors, is_sqlite_file
from ansible.module_utils.sqlite_merge_schema import (CorruptDatabaseError, DatabaseLockedError, DiskFullError,
                                                      MergeError, MissingTargetError, NotADatabaseError,
                                                      SourceIsTargetError, TargetNotWritableError)


def _read_into(path, digests):
    """Feed the bytes of `path` to every hash in `digests`, in one read pass."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            for digest in digests:
                digest.update(block)


def file_digest(paths, files=None):
    """sha256 over the bytes of a database copy and its -wal: the identity of a source's content.

    files: a dict that also gets each path's own sha256 (None when it does not exist), from the same read. The
    first file's own digest is the combined one's state after it (hashlib copy()): only later files are hashed twice.
    """
    digest, fed = hashlib.sha256(), False
    for path in paths:
        own = None
        if os.path.exists(path):
            if files is None:
                _read_into(path, [digest])
            elif not fed:
                _read_into(path, [digest])
                own = digest.copy().hexdigest()
            else:
                alone = hashlib.sha256()
                _read_into(path, [digest, alone])
                own = alone.hexdigest()
            fed = True
        if files is not None:
            files[path] = own
    return digest.hexdigest()


def file_digests(path):
    """(combined, files) of a database and its -wal, read once.

    combined is file_digest([path, path + "-wal"]) itself, the digest the merge ledger stores and reruns compare.
    files is {"": sha256 of the database, "-wal": sha256 of the -wal, None when there is none}: a caller that
    holds per-file digests of the same files (a rollback point's manifest) compares them without reading the
    files again.
    """
    own = {}
    combined = file_digest([path, path + "-wal"], own)
    return combined, {"": own[path], "-wal": own[path + "-wal"]}


def _lock_probe(path, offset):
    """True when another process holds a write lock on byte `offset` of `path` (POSIX advisory locks).

    The file is opened read-only and only tested, so neither its bytes nor its mtime change.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


PENDING_BYTE = 0x40000000


WAL_WRITE_LOCK_BYTE = 120


def writer_holds_lock(path):
    """True when a connection is writing `path`: RESERVED/PENDING lock, WAL write lock, or a hot journal."""
    journal = path + "-journal"
    if os.path.exists(journal) and os.path.getsize(journal) > 0:
        return True
    if _lock_probe(path, PENDING_BYTE) or _lock_probe(path, PENDING_BYTE + 1):
        return True
    shm = path + "-shm"
    return os.path.exists(shm) and _lock_probe(shm, WAL_WRITE_LOCK_BYTE)


def _stat_key(path):
    result = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
            result.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            result.append(None)
    return result


def _translate(exc, path):
    """sqlite3/OS errors -> the named MergeError for `path`."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        return DiskFullError("%s: disk full during the merge (%s)" % (path, text))
    if "full" in low:
        return DiskFullError("%s: database or disk is full during the merge" % path)
    if "locked" in low or "busy" in low:
        return DatabaseLockedError("%s: database is locked by another writer" % path)
    if "not a database" in low or "file is encrypted" in low:
        return NotADatabaseError("%s: not a SQLite database (%s)" % (path, text))
    if "malformed" in low or "corrupt" in low:
        return CorruptDatabaseError("%s: database is corrupt (%s)" % (path, text))
    if "readonly" in low or "read-only" in low or "permission" in low:
        return TargetNotWritableError("%s: cannot write (%s)" % (path, text))
    return MergeError("%s: %s" % (path, text))


def _check_integrity(path, conn):
    try:
        errors = integrity_errors(conn)
    except sqlite3.DatabaseError as exc:
        raise _translate(exc, path)
    if errors:
        raise CorruptDatabaseError("%s: integrity_check failed: %s" % (path, "; ".join(errors[:3])))


def _validate_target(target):
    if not os.path.exists(target):
        raise MissingTargetError("%s: target database does not exist" % target)
    if not is_sqlite_file(target):
        raise NotADatabaseError("%s: target is not a SQLite database" % target)
    if not os.access(target, os.W_OK) or not os.access(os.path.dirname(target) or ".", os.W_OK):
        raise TargetNotWritableError("%s: target (or its directory, for the journal) is not writable" % target)
    if writer_holds_lock(target):
        raise DatabaseLockedError("%s: target is locked by a writer; stop the services that write it" % target)


def _refuse_target_as_source(path, target):
    if os.path.samefile(path, target):
        raise SourceIsTargetError("%s: source is the target %s itself (same file); refusing to merge a database "
                                  "into itself" % (path, target))


def _copy_source(path, workdir):
    """Lock probe, then the source's private copy, its combined digest and its per-file digests (file_digests).

    Returns (copy, digest, files). Raises the named error for the file.
    """
    if writer_holds_lock(path):
        raise DatabaseLockedError("%s: source is locked by a writer (or has a hot journal); stop its service"
                                  % path)
    try:
        copy = consistent_copy(path, workdir=workdir)
    except SQLiteFileError as exc:
        raise NotADatabaseError(str(exc))
    except OSError as exc:
        raise _translate(exc, path)
    digest, files = file_digests(copy)
    return copy, digest, files


def _check_source(path, copy):
    """Full integrity_check of a source's copy (its own connection: runs beside the merge that reads the copy)."""
    conn = sqlite3.connect(copy)
    try:
        _check_integrity(path, conn)
    finally:
        conn.close()


class _SourcePipeline:
    """Copies, digests and integrity-checks the sources in one background thread while the main thread merges.

    Why: the full integrity_check of every source was the second biggest cost of a merge, and it only reads the
    source's private copy; SQLite and hashlib release the GIL, so it runs on a second core beside the merge of the
    sources already copied. Nothing is weakened: every check has finished, and passed, before plan_merge returns
    (apply_merge is the only writer of the target), and errors are raised in the order a sequential
    copy-check-copy-check run would raise them (first_error), so the same bad input gives the same message.
    The worker copies the next source before checking the current one, so the merge rarely waits for a copy.
    """

    def __init__(self, paths, workdir):
        self.paths = list(paths)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoe-merge-source")
        self.copied, self.checked = [], []
        for i, path in enumerate(self.paths):
            if i == 0:
                self.copied.append(self.executor.submit(_copy_source, path, workdir))
            if i + 1 < len(self.paths):
                self.copied.append(self.executor.submit(_copy_source, self.paths[i + 1], workdir))
            self.checked.append(self.executor.submit(self._check, i))

    def _check(self, i):
        copy = self.copied[i].result()[0]
        _check_source(self.paths[i], copy)

    def copy_of(self, i):
        """(copy path, digest, files) of source i (_copy_source), once copied; raises the first error a sequential
        run would raise."""
        try:
            return self.copied[i].result()
        except Exception:
            raise self.first_error() or MergeError("%s: source copy failed" % self.paths[i])

    def release(self, i):
        """The merge is done with source i: remove its copy once its check is done too (keeps disk use flat)."""
        copy = self.copied[i].result()[0]
        self.checked[i].add_done_callback(lambda _: shutil.rmtree(os.path.dirname(copy), ignore_errors=True))

    def wait_checked(self):
        """Block until every source passed its integrity_check; raise the first error otherwise."""
        for i in range(len(self.paths)):
            if self.checked[i].exception() is not None:
                raise self.first_error()

    def first_error(self):
        """The error of the first failing step in sequential order (copy 1, check 1, copy 2, ...), or None."""
        for i in range(len(self.paths)):
            for future in (self.copied[i], self.checked[i]):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    self.close()
                    return exc
        return None

    def close(self):
        for future in self.copied + self.checked:
            future.cancel()
        self.executor.shutdown(wait=True)

