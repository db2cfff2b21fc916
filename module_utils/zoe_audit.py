# -*- coding: utf-8 -*-
"""Read-only audit of a Zoe host tree: every SQLite file, classified, checked and counted.

Standard library only: this runs on the managed host with its own python3.

Why it works the way it does:
- SQLite files are found by their 16-byte header, not by extension: the Zoe host has databases named
  *.db, *.sqlite and with no extension at all, and a file named *.db that is not a database is a finding
  of its own (`not_databases`). -wal, -shm and -journal sidecars are never databases of their own.
- Every database is read through zoe_sqlite.consistent_copy: the source, its -wal and its -shm are never
  opened by SQLite, so an audit of a live host changes no byte and no mtime, and still sees the committed
  transactions that live only in the -wal.
- The primary database's merge ledger is read from the same copy, so a rerun knows what is already merged
  even after the fold files left data/.
- Only regular files are opened, and with O_NONBLOCK: a FIFO, socket or device would block a read forever (a
  FIFO named like a database hung the audit). Such a file named like a database is a finding (`special_files`).
- The temporary files of an audit (its copies of the databases, and the module payload Ansible unpacks into the
  temporary directory) carry a mark that the live audit holds an flock on; the next audit removes those whose
  mark nobody holds, which is what an audit killed with SIGKILL leaves. SIGTERM and SIGHUP end the module
  through its normal cleanup.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import stat
import tempfile

from ansible.module_utils.zoe_glob import any_match
from ansible.module_utils.zoe_sqlite import (SQLITE_HEADER, SQLiteFileError, consistent_copy, foreign_key_errors,
                                             integrity_errors, nearest_existing, quote_identifier, table_names)

DEFAULT_LEDGER_TABLE = "_zoe_merge_ledger"
DEFAULT_PRIMARY = "zoe.db"
SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
ALWAYS_SKIPPED_DIRS = (".git",)
CLASSES = ("keep", "fold", "unknown")
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3")
SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
LIVE_MARK = ".zoe-live"
WORKDIR_PREFIX = "zoe-audit-"
PAYLOAD_PREFIX = "ansible_zoe_audit_payload_"


class AuditError(Exception):
    """Base class of every failure of the audit; the message is one sentence naming the path."""


class RootMissingError(AuditError):
    """The root of the tree is missing or not a directory."""


class DataDirMissingError(AuditError):
    """The data directory is missing or not a directory."""


class AuditOptions:
    """The audit's inputs, normalised: absolute real paths and sets of names."""

    def __init__(self, root, data_dir, keep=(), fold=(), exclude=(), integrity=True, counts=True, backup_root=None,
                 foreign_keys=False, ledger_table=DEFAULT_LEDGER_TABLE, primary=DEFAULT_PRIMARY):
        if not root or not os.path.isdir(root):
            raise RootMissingError("root %s does not exist or is not a directory" % root)
        if not data_dir or not os.path.isdir(data_dir):
            raise DataDirMissingError("data_dir %s does not exist or is not a directory" % data_dir)
        self.root = os.path.realpath(root)
        self.data_dir = os.path.realpath(data_dir)
        self.keep = set(keep or ())
        self.fold = set(fold or ())
        self.integrity = integrity
        self.counts = counts
        self.foreign_keys = foreign_keys
        self.backup_root = os.path.abspath(backup_root) if backup_root else None
        self.ledger_table = ledger_table or DEFAULT_LEDGER_TABLE
        self.primary = primary or DEFAULT_PRIMARY
        self.exclude_globs, self.exclude_paths = _split_excludes(self.root, exclude or (), self.backup_root)


def _split_excludes(root, exclude, backup_root):
    """Absolute excludes become real paths (pruned with everything below); the rest stay path globs (zoe_glob)
    matched on the path relative to the root."""
    globs, paths = [], []
    for item in exclude:
        if os.path.isabs(item):
            paths.append(os.path.realpath(item))
        else:
            globs.append(item)
    if backup_root:
        # A snapshot holds copies of retired databases: they are the backup, not databases of the host.
        paths.append(os.path.realpath(backup_root))
    return globs, paths


def _is_under(path, parent):
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def is_excluded(path, opts):
    """True when a real path matches an exclude: an absolute path (or below it), or a path glob of zoe_glob on
    the path relative to the root (`*` stays in one component, `**` crosses `/`, a glob without `/` is a name at
    any depth, a glob with `/` is anchored at the root). Below a data_dir outside the root the globs are matched on
    the path relative to data_dir, so no component of the path above it is read as a name."""
    if any(_is_under(path, p) for p in opts.exclude_paths):
        return True
    top = opts.root if _is_under(path, opts.root) else opts.data_dir
    rel = os.path.relpath(path, top).replace(os.sep, "/")
    return any_match(opts.exclude_globs, rel)


def is_sidecar(name):
    return name.endswith(SIDECAR_SUFFIXES)


def walk_files(top, opts):
    """Every regular file below `top` that is not excluded, as real paths (.git and excluded dirs pruned)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ALWAYS_SKIPPED_DIRS and not is_excluded(os.path.join(dirpath, d), opts))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not is_excluded(path, opts):
                yield path


def special_kind(st):
    """'a named pipe (FIFO)', 'a socket', ... for a file that is neither regular nor a directory, else None."""
    return next((kind for test, kind in SPECIAL_KINDS if test(st.st_mode)), None)


def looks_like_database(name, opts):
    return name.endswith(DATABASE_SUFFIXES) or name in opts.keep or name in opts.fold


def has_sqlite_header(path):
    """True when `path` is a regular file that starts with the SQLite header.

    Opened with O_NONBLOCK and checked with fstat before reading: a file swapped for a FIFO after the walk's
    stat cannot block the audit.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False
    finally:
        os.close(fd)


def find_sqlite_files(opts):
    """(databases, not_databases, special_files): SQLite files of the tree (and of data_dir when it lies outside
    the tree), each file once even when reached through a hard or symbolic link; the data_dir files named *.db
    that are not SQLite; and the special files (FIFO, socket, device) named like a database, as (path, kind).
    Only regular files are ever opened."""
    tops = [opts.root] if _is_under(opts.data_dir, opts.root) else [opts.root, opts.data_dir]
    seen, found, not_databases, special = set(), [], [], []
    for top in tops:
        for path in walk_files(top, opts):
            name = os.path.basename(path)
            if is_sidecar(name):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling symlink, or a file removed while walking
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if not stat.S_ISREG(st.st_mode):
                if looks_like_database(name, opts):
                    special.append((path, special_kind(st) or "not a regular file"))
            elif has_sqlite_header(path):
                found.append(path)
            elif name.endswith(".db") and os.path.dirname(path) == opts.data_dir:
                not_databases.append(path)
    return found, not_databases, special


def classify(path, opts):
    """keep / fold for the configured names directly inside data_dir; anything else is unknown."""
    if os.path.dirname(path) != opts.data_dir:
        return "unknown"
    name = os.path.basename(path)
    if name in opts.keep:
        return "keep"
    if name in opts.fold:
        return "fold"
    return "unknown"


def database_size(path):
    """Bytes of the database and its -wal: what a snapshot of it holds."""
    size = os.path.getsize(path)
    if os.path.exists(path + "-wal"):
        size += os.path.getsize(path + "-wal")
    return size


def read_ledger(conn, table):
    """The rows of the merge ledger as dicts (every column as stored), [] when the table does not exist."""
    if table not in table_names(conn):
        return []
    cursor = conn.execute("SELECT * FROM %s" % quote_identifier(table))
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _inspect_copy(copy, opts, want_ledger):
    """journal_mode, integrity, tables and (for the primary) ledger rows of a private copy."""
    info = {"journal_mode": None, "integrity": None, "tables": {}, "ledger": []}
    if opts.foreign_keys:
        info["foreign_keys"] = None
    conn = sqlite3.connect(copy)
    try:
        info["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if opts.integrity:
            errors = integrity_errors(conn)
            info["integrity"] = errors or "ok"
        if opts.foreign_keys:
            violations = foreign_key_errors(conn)
            info["foreign_keys"] = [list(v) for v in violations[:20]] if violations else "ok"
            info["foreign_key_violations"] = len(violations)
        if opts.counts:
            info["tables"] = {name: conn.execute("SELECT count(*) FROM %s" % quote_identifier(name)).fetchone()[0]
                              for name in table_names(conn)}
        if want_ledger:
            info["ledger"] = read_ledger(conn, opts.ledger_table)
    finally:
        conn.close()
    return info


def inspect_database(path, opts, workdir):
    """One database's entry of the audit. A file SQLite cannot read is reported, never raised."""
    entry = {"path": path, "relpath": os.path.relpath(path, opts.root), "name": os.path.basename(path),
             "class": classify(path, opts), "size": database_size(path),
             "sidecars": [os.path.basename(s) for s in (path + x for x in SIDECAR_SUFFIXES) if os.path.exists(s)],
             "journal_mode": None, "integrity": None, "tables": {}}
    want_ledger = entry["class"] == "keep" and entry["name"] == opts.primary
    ledger = []
    copy = None
    try:
        copy = consistent_copy(path, workdir=workdir)
        info = _inspect_copy(copy, opts, want_ledger)
        ledger = info.pop("ledger")
        entry.update(info)
    except (sqlite3.Error, SQLiteFileError, OSError) as exc:
        entry["integrity"] = ["cannot read the database: %s" % exc]
    finally:
        if copy:
            shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
    return entry, ledger


def directory_bytes(path):
    """Bytes of every regular file below `path`: what a snapshot of the directory has to hold."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def free_bytes(path):
    """Bytes an unprivileged writer may still use on the filesystem of `path` (or its nearest parent)."""
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


# ------------------------------------------------------------------------------------ temporary files

def make_live_dir(prefix, parent=None):
    """A new private directory holding a live mark this process keeps an flock on; returns (path, mark fd).

    The mark is locked before it is renamed into place, so a sweep never sees an unlocked mark of a live
    process. The kernel drops the flock when the process dies, however it dies.
    """
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    return path, hold_live_mark(path)


def hold_live_mark(directory):
    """Put a live mark into `directory` (its owner is this process as long as the returned fd stays open)."""
    fd, tmp = tempfile.mkstemp(prefix=".zoe-mark-", dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, os.path.join(directory, LIVE_MARK))
    return fd


def payload_dir(module_file):
    """The directory Ansible unpacked this module's payload into (the parent of `*_payload.zip`), or None
    when the module does not run from an Ansible payload (unit tests)."""
    parts = os.path.abspath(module_file).split(os.sep)
    for index, part in enumerate(parts):
        if part.endswith("_payload.zip"):
            directory = os.sep.join(parts[:index]) or os.sep
            return directory if os.path.basename(directory).startswith(PAYLOAD_PREFIX) else None
    return None


def sweep_dead(tmpdir, prefixes=(PAYLOAD_PREFIX, WORKDIR_PREFIX)):
    """Remove the directories of `tmpdir` named with one of `prefixes`, owned by this user, whose live mark no
    process holds: what an audit killed with SIGKILL left. A directory without a mark is left alone."""
    removed = []
    try:
        names = sorted(os.listdir(tmpdir))
    except OSError:
        return removed
    for name in names:
        path = os.path.join(tmpdir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not name.startswith(tuple(prefixes)) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        try:
            fd = os.open(os.path.join(path, LIVE_MARK), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live audit holds it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def end_on_signals():
    """SIGTERM and SIGHUP end the module through SystemExit, so every `finally` (the removal of the copies and of
    Ansible's payload directory) runs, as it does for SIGINT."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def audit_host(opts):
    """The whole audit as one result dict (see the module's RETURN). Reads only private copies."""
    paths, not_databases, special = find_sqlite_files(opts)
    workdir, mark = make_live_dir(WORKDIR_PREFIX)
    try:
        pairs = [inspect_database(p, opts, workdir) for p in paths]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.close(mark)
    databases = [entry for entry, _ in pairs]
    merged = [row for _, ledger in pairs for row in ledger]
    in_data = {d["name"] for d in databases if os.path.dirname(d["path"]) == opts.data_dir}
    failures = [{"relpath": d["relpath"], "errors": d["integrity"]}
                for d in databases if isinstance(d["integrity"], list)]
    fk_failures = [{"relpath": d["relpath"], "violations": d["foreign_key_violations"], "sample": d["foreign_keys"]}
                   for d in databases if d.get("foreign_key_violations")]
    result = {
        "root": opts.root,
        "data_dir": opts.data_dir,
        "databases": databases,
        "fold_present": sorted(opts.fold & in_data),
        "fold_missing": sorted(opts.fold - in_data),
        "keep_missing": sorted(opts.keep - in_data),
        "merged": merged,
        "merged_names": sorted({os.path.basename(str(r["source"])) for r in merged if r.get("source")}),
        "unknown": [d["relpath"] for d in databases if d["class"] == "unknown"],
        "data_bytes": directory_bytes(opts.data_dir),
        "free_bytes": None,
        "free_path": None,
        "data_free_bytes": free_bytes(opts.data_dir),
        "integrity_failures": failures,
        "foreign_key_failures": fk_failures,
        "not_databases": [os.path.relpath(p, opts.root) for p in not_databases],
        "special_files": [{"relpath": os.path.relpath(p, opts.root), "kind": kind} for p, kind in special],
    }
    if opts.backup_root:
        result["free_path"] = nearest_existing(opts.backup_root)
        result["free_bytes"] = free_bytes(opts.backup_root)
    return result
