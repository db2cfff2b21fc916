#!/usr/bin/env python3
"""Benchmark of volume_snapshot against `cp -a` of the same data dir, in the same run.

Builds >= 1 GB of SQLite databases (WAL mode, with -wal/-shm sidecars) under /tmp, then times, each
after `sync` so no step pays for the previous one's writeback, median of --reps runs:

  cp -a                      baseline, page cache only
  cp -a + sync               baseline, on disk (the fair floor for fsync=true steps)
  sha256 of every file       hashlib, one thread (what a hash-after-copy design would add)
  rollback-point snapshot    sqlite_mode=copy, manifest + verify, fsync false / true
  restore into an empty dir  staging hashed against the manifest + post-restore verify, fsync false / true
  live snapshot              sqlite_mode=backup_api (fsync true), sqlite_mode=read_lock (fsync false / true)
  no-op restore plan         plan_restore on an intact tree (hashes every live file)

Usage: .venv/bin/python bench/bench_volume_snapshot.py [--mb 1024] [--reps 3]
"""

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import ansible.module_utils  # noqa: E402

ansible.module_utils.__path__.append(os.path.join(REPO, "module_utils"))
from ansible.module_utils.volume_snapshot import (  # noqa: E402
    apply_restore, apply_snapshot, plan_restore, plan_snapshot)

SHARES = [0.28, 0.2, 0.14, 0.12, 0.1, 0.08, 0.05, 0.03]  # a few big databases, several small ones


def make_db(path, megabytes):
    """A WAL database of about `megabytes` MB whose last ~2% of rows live only in its -wal."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB)")
    rows = megabytes * 1024 * 1024 // 4096
    bulk = int(rows * 0.98)
    conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                 "INSERT INTO blobs (body) SELECT randomblob(4000) FROM c", (bulk,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                 "INSERT INTO blobs (body) SELECT randomblob(4000) FROM c", (rows - bulk,))
    return conn


def build(data, total_mb):
    os.makedirs(data)
    conns = [make_db(os.path.join(data, "db%d.db" % i), max(1, int(total_mb * share)))
             for i, share in enumerate(SHARES)]
    # Freeze the -wal files as a stopped writer leaves them: copy while open, then swap in the copy.
    frozen = data + ".frozen"
    shutil.copytree(data, frozen)
    for conn in conns:
        conn.close()
    shutil.rmtree(data)
    os.rename(frozen, data)


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def timed(step, setup=None):
    if setup:
        setup()
    os.sync()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def sha_all(root):
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            digest = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb", buffering=0) as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="approximate size of the data dir in MB")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="zoe-bench-vs-", dir="/tmp")
    data, dst, bk = os.path.join(work, "data"), os.path.join(work, "dst"), os.path.join(work, "bk")
    try:
        build(data, args.mb)
        size = du(data)
        files = sum(len(fs) for _d, _s, fs in os.walk(data))
        times = {}

        def rec(name, seconds):
            times.setdefault(name, []).append(seconds)

        def clean(*paths):
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        for _rep in range(args.reps):
            rec("cp -a", timed(lambda: subprocess.run(["cp", "-a", data, dst], check=True), lambda: clean(dst)))
            rec("cp -a + sync", timed(lambda: (subprocess.run(["cp", "-a", data, dst], check=True), os.sync()),
                                      lambda: clean(dst)))
            clean(dst)
            rec("sha256 of every file (1 thread)", timed(lambda: sha_all(data)))
            for fsync in (False, True):
                label = "snapshot, copy mode (fsync=%s)" % str(fsync).lower()
                rec(label, timed(lambda: apply_snapshot(plan_snapshot(bk, [data]), fsync=fsync), lambda: clean(bk)))
                moved = data + ".orig"
                os.rename(data, moved)
                rec("restore into empty dir + verify (fsync=%s)" % str(fsync).lower(),
                    timed(lambda: apply_restore(plan_restore(bk, "latest"), fsync=fsync)))
                clean(data)
                os.rename(moved, data)
            rec("no-op restore plan (hash every live file)", timed(lambda: plan_restore(bk, "latest")))
            rec("snapshot, backup_api mode (fsync=true)",
                timed(lambda: apply_snapshot(plan_snapshot(bk, [data], sqlite_mode="backup_api"), fsync=True),
                      lambda: clean(bk)))
            clean(bk)
            for fsync in (False, True):
                rec("snapshot, read_lock mode (fsync=%s)" % str(fsync).lower(),
                    timed(lambda: apply_snapshot(plan_snapshot(bk, [data], sqlite_mode="read_lock"), fsync=fsync),
                          lambda: clean(bk)))
            clean(bk)
        med = {name: statistics.median(values) for name, values in times.items()}

        def ratio(name, base):
            # Per-run ratio against the baseline measured in the same repetition, then the median:
            # robust to load that drifts between repetitions on a shared machine.
            return statistics.median(a / b for a, b in zip(times[name], times[base]))

        print("data: %d files, %.1f MB of SQLite (WAL, sidecars included); median of %d runs; %d cpus; "
              "load average at end %.2f" % (files, size / 1e6, args.reps, os.cpu_count(), os.getloadavg()[0]))
        print("| step | median s | vs cp -a | vs cp -a + sync | runs (s) |")
        print("|---|---:|---:|---:|---|")
        for name, seconds in med.items():
            print("| %s | %.3f | %.2fx | %.2fx | %s |" % (name, seconds, ratio(name, "cp -a"),
                                                       ratio(name, "cp -a + sync"),
                                                       " ".join("%.2f" % v for v in times[name])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
