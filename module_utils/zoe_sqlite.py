# -*- coding: utf-8 -*-
# Shared SQLite and path helpers of the zoe-consolidate modules. Standard library only (runs on the managed host).

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

SQLITE_HEADER = b"SQLite format 3\x00"


class SQLiteFileError(Exception):
    """A path that should be a SQLite database is missing, unreadable or not a database."""


def quote_identifier(name):
    """Quote an SQL identifier (table, column, index, schema name) for SQLite.

    Every identifier that goes into SQL text goes through here: double quotes, embedded
    double quotes doubled, NUL refused.
    """
    text = str(name)
    if "\x00" in text:
        raise ValueError("identifier contains a NUL byte: %r" % text)
    return '"%s"' % text.replace('"', '""')


def is_sqlite_file(path):
    """True when `path` is a regular file that starts with the SQLite header."""
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except OSError:
        return False


def sidecars(path):
    """The -wal, -shm and -journal files that belong to a database, those that exist."""
    return [path + suffix for suffix in ("-wal", "-shm", "-journal") if os.path.exists(path + suffix)]


def nearest_existing(path):
    """`path` or its nearest existing parent (the backup root may not exist before the first snapshot)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def consistent_copy(path, workdir=None):
    """Copy a database with its -wal into a private temporary directory and return the copy's path.

    Opening a WAL database, even read-only, can rewrite its -shm, and a read-write open checkpoints
    and removes its -wal: reading a copy leaves the source byte for byte as it was while still seeing
    every committed transaction that lives only in the -wal. The caller removes the directory
    (os.path.dirname of the result) when done.
    """
    if not os.path.isfile(path):
        raise SQLiteFileError("%s: no such database file" % path)
    if not is_sqlite_file(path):
        raise SQLiteFileError("%s: not a SQLite database (bad header)" % path)
    tmpdir = tempfile.mkdtemp(prefix="zoe-read-", dir=workdir)
    os.chmod(tmpdir, 0o700)
    copy = os.path.join(tmpdir, os.path.basename(path))
    shutil.copyfile(path, copy)
    if os.path.exists(path + "-wal"):
        shutil.copyfile(path + "-wal", copy + "-wal")
    return copy


def integrity_errors(conn, schema="main"):
    """The rows of PRAGMA integrity_check other than 'ok' (empty list when the database is sound)."""
    rows = conn.execute("PRAGMA %s.integrity_check" % quote_identifier(schema)).fetchall()
    return [row[0] for row in rows if row[0] != "ok"]


def foreign_key_errors(conn, schema="main"):
    """The rows of PRAGMA foreign_key_check as (table, rowid, parent, fk index) tuples."""
    return [tuple(row) for row in conn.execute("PRAGMA %s.foreign_key_check" % quote_identifier(schema))]


def table_names(conn, schema="main"):
    """User tables of a schema, sorted, without sqlite_ internals."""
    rows = conn.execute(
        "SELECT name FROM %s.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%%' ESCAPE '\\' "
        "ORDER BY name" % quote_identifier(schema))
    return [row[0] for row in rows]


def row_counts(path):
    """{table: rows} of a database file, read from a consistent copy so the file is not touched."""
    copy = consistent_copy(path)
    try:
        conn = sqlite3.connect(copy)
        try:
            return {name: conn.execute("SELECT count(*) FROM %s" % quote_identifier(name)).fetchone()[0]
                    for name in table_names(conn)}
        finally:
            conn.close()
    finally:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
