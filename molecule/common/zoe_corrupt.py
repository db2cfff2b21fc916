#!/usr/bin/env python3
"""Damage a SQLite database so that PRAGMA integrity_check fails while its header stays valid.

    zoe_corrupt.py DATABASE

Overwrites cell pointers in the middle of the file: the file is still recognised as SQLite and a plain
count(*) still answers, but integrity_check reports the damage; this is the "source that fails preflight"
of the fleet scenario.
"""

import sqlite3
import sys


def corrupt(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    page_size, pages = (conn.execute("PRAGMA %s" % p).fetchone()[0] for p in ("page_size", "page_count"))
    conn.close()
    if pages < 3:
        raise SystemExit("%s has %d pages: too small to damage in the middle" % (path, pages))
    with open(path, "r+b") as handle:
        handle.seek(page_size * (pages // 2) + 8)
        handle.write(b"\xff" * 64)


if __name__ == "__main__":
    corrupt(sys.argv[1])
