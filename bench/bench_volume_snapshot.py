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

--module: the rollback point as the play takes it, through Ansible. Builds a data dir of
15 WAL-mode databases (-wal and -shm beside each; about 437 MB on disk with the default --mb 422), then times in one run, median of
--reps (default 5), each step after `sync`:

  cp -a + sync               the floor
  ansible ... -m ansible.builtin.ping        Ansible's own start-up (a no-op module)
  ansible ... -m volume_snapshot -a {...}    state=present, sqlite_mode=copy, a snapshot id and a label,
                                             verify and fsync at their defaults: a rollback point with no base
  ansible ... -m volume_snapshot base=live   the same with base= a live read_lock snapshot of the data dir taken
                                             before the timing: the rollback point as the play's downtime_window
                                             takes it (unchanged files compared and hard-linked)
  apply_snapshot in-process                  the same snapshot without Ansible, for the split

and reports the module minus the no-op against cp -a + sync. --profile also times
plan_snapshot + apply_snapshot split into timed spans (in-process). Run from the repository root:
  ANSIBLE_CONFIG=ansible.cfg .venv/bin/python bench/bench_volume_snapshot.py --module [--reps 5] [--profile]
"""

import argparse
import hashlib
import json
import resource
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
from ansible.module_utils.volume_snapshot_base import same_bytes  # noqa: E402

SHARES = [0.28, 0.2, 0.14, 0.12, 0.1, 0.08, 0.05, 0.03]  # a few big databases, several small ones
# The rollback point: 15 databases, as the Zoe host's data dir (two big, a long tail).
MODULE_SHARES = [0.25, 0.16, 0.12, 0.09, 0.07, 0.06, 0.05, 0.04, 0.035, 0.03, 0.025, 0.025, 0.02, 0.015, 0.01]


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


def build(data, total_mb, shares=SHARES):
    os.makedirs(data)
    conns = [make_db(os.path.join(data, "db%d.db" % i), max(1, int(total_mb * share)))
             for i, share in enumerate(shares)]
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


def compare_all(root, copy_root):
    """Every file of root compared byte for byte with its twin under copy_root, as volume_snapshot's base does."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            twin = os.path.join(copy_root, os.path.relpath(path, root))
            assert same_bytes(path, twin, os.path.getsize(path)), path


def sha_all(root):
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            digest = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb", buffering=0) as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)


def ansible_run(module, args):
    """Run one module through `ansible localhost` as a task of the play would: JSON callback, system python3."""
    cmd = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", module,
           "-e", "ansible_python_interpreter=/usr/bin/python3"]
    if args is not None:
        cmd += ["-a", json.dumps(args)]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json",
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise SystemExit("ansible %s failed: %s %s" % (module, proc.stdout[-2000:], proc.stderr[-2000:]))
    if result.get("failed"):
        raise SystemExit("ansible %s failed: %s" % (module, result.get("msg")))
    return result


def cpu_seconds():
    """User + system CPU of this process (all its threads) and of its waited-for children."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def module_bench(args):
    """The rollback point through `ansible -m volume_snapshot`, against cp -a + sync and a no-op."""
    work = tempfile.mkdtemp(prefix="zoe-bench-vsm-", dir="/tmp")
    data, dst, bk = os.path.join(work, "data"), os.path.join(work, "dst"), os.path.join(work, "bk")
    try:
        build(data, args.mb, MODULE_SHARES)
        size = du(data)
        files = sum(len(fs) for _d, _s, fs in os.walk(data))
        times = {}

        cpu = {}

        def rec(name, step, setup=None):
            before = [cpu_seconds()]

            def run():
                before[0] = cpu_seconds()  # after setup() and its sync
                step()

            times.setdefault(name, []).append(timed(run, setup))
            cpu.setdefault(name, []).append(cpu_seconds() - before[0])

        def clean(*paths):
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        def snapshot_args(rep):
            return {"state": "present", "snapshot": "bench-%d" % rep, "paths": [data], "backup_root": bk,
                    "sqlite_mode": "copy", "label": "rollback point, run bench-%d" % rep}

        # The play's rollback point has a base: the live snapshot (read_lock) taken before the stop, whose unchanged
        # files it hard-links after comparing them byte for byte. Taken once here, outside the timing.
        live_root = os.path.join(work, "bk-live")
        live = apply_snapshot(plan_snapshot(live_root, [data], sqlite_mode="read_lock", label="live"))["snapshot_id"]

        outcome = {}
        for rep in range(args.reps):
            rec("cp -a + sync", lambda: (subprocess.run(["cp", "-a", data, dst], check=True), os.sync()),
                lambda: clean(dst))
            clean(dst)
            rec("ansible -m ansible.builtin.ping (no-op)", lambda: ansible_run("ansible.builtin.ping", None))
            rec("ansible -m volume_snapshot (rollback point)",
                lambda: outcome.update(ansible_run("volume_snapshot", snapshot_args(rep))), lambda: clean(bk))
            assert outcome["changed"] and outcome["files"] == files, outcome
            clean(bk)
            based = os.path.join(live_root, "bench-base-%d" % rep)
            rec("ansible -m volume_snapshot (rollback point, base: the live snapshot)",
                lambda: outcome.update(ansible_run("volume_snapshot", dict(
                    snapshot_args(rep), backup_root=live_root, snapshot="bench-base-%d" % rep, base=live))),
                lambda: clean(based))
            assert outcome["changed"] and outcome["linked"], outcome
            clean(based)
            rec("apply_snapshot in-process (fsync, verify)",
                lambda: apply_snapshot(plan_snapshot(bk, [data], snapshot="bench-%d" % rep, sqlite_mode="copy",
                                                     label="bench")), lambda: clean(bk))
            clean(bk)
        module, noop, floor = (times["ansible -m volume_snapshot (rollback point)"],
                               times["ansible -m ansible.builtin.ping (no-op)"], times["cp -a + sync"])
        based = times["ansible -m volume_snapshot (rollback point, base: the live snapshot)"]
        times["module minus no-op"] = [m - n for m, n in zip(module, noop)]
        cpu["module minus no-op"] = [m - n for m, n in zip(cpu["ansible -m volume_snapshot (rollback point)"],
                                                           cpu["ansible -m ansible.builtin.ping (no-op)"])]
        times["module with base minus no-op"] = [m - n for m, n in zip(based, noop)]
        cpu["module with base minus no-op"] = [
            m - n for m, n in zip(cpu["ansible -m volume_snapshot (rollback point, base: the live snapshot)"],
                                  cpu["ansible -m ansible.builtin.ping (no-op)"])]
        print("data: %d files (%d databases, WAL, -wal and -shm beside each), %.1f MB; median of %d runs; %d cpus; "
              "load average at end %.2f" % (files, len(MODULE_SHARES), size / 1e6, args.reps, os.cpu_count(),
                                            os.getloadavg()[0]))
        print("| step | median s | vs cp -a + sync | CPU s (user+sys) | runs (s) |")
        print("|---|---:|---:|---:|---|")
        for name, values in times.items():
            # Per-run ratio against the floor of the same repetition, then the median (load drifts).
            ratio = statistics.median(a / b for a, b in zip(values, floor))
            print("| %s | %.3f | %.2fx | %.3f | %s |" % (name, statistics.median(values), ratio,
                                                         statistics.median(cpu[name]),
                                                         " ".join("%.2f" % v for v in values)))
        if args.profile:
            profile_snapshot(data, bk, args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def profile_snapshot(data, bk, reps):
    """Where the in-process snapshot's time goes, by timing spans of the public steps (median of `reps`)."""
    spans = {}

    def span(name, step, setup=None):
        before = [0.0]

        def run():
            before[0] = cpu_seconds()
            step()

        spans.setdefault(name, []).append((timed(run, setup), cpu_seconds() - before[0]))

    def clean():
        shutil.rmtree(bk, ignore_errors=True)

    dst = bk + ".cp"
    live_root = bk + ".live"
    live = apply_snapshot(plan_snapshot(live_root, [data], sqlite_mode="read_lock", label="live"))["snapshot_id"]
    for rep in range(reps):
        span("cp -a (page cache, no sync)", lambda: subprocess.run(["cp", "-a", data, dst], check=True),
             lambda: shutil.rmtree(dst, ignore_errors=True))
        span("same_bytes of every file against that copy (what a link from a base compares)",
             lambda: compare_all(data, dst))
        shutil.rmtree(dst, ignore_errors=True)
        span("sha256 of every file (1 thread)", lambda: sha_all(data))
        based = os.path.join(live_root, "b%d" % rep)
        span("apply_snapshot with base (the rollback point on a live snapshot)",
             lambda: apply_snapshot(plan_snapshot(live_root, [data], snapshot="b%d" % rep, base=live), fsync=True),
             lambda: shutil.rmtree(based, ignore_errors=True))
        shutil.rmtree(based, ignore_errors=True)
        span("plan_snapshot (scan, free space)", lambda: plan_snapshot(bk, [data], snapshot="p"), clean)
        span("apply_snapshot, fsync=false (copy + hash on 2 threads)",
             lambda: apply_snapshot(plan_snapshot(bk, [data], snapshot="p"), fsync=False), clean)
        span("apply_snapshot, fsync=true (+ every file's fsync)",
             lambda: apply_snapshot(plan_snapshot(bk, [data], snapshot="p"), fsync=True), clean)
        clean()
    shutil.rmtree(live_root, ignore_errors=True)
    print("where the time goes (in-process, median of %d; load average at end %.2f):" % (reps, os.getloadavg()[0]))
    print("| span | median s | CPU s (user+sys) |")
    print("|---|---:|---:|")
    for name, values in spans.items():
        print("| %s | %.3f | %.3f |" % (name, statistics.median(v[0] for v in values),
                                        statistics.median(v[1] for v in values)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=None, help="approximate size of the data dir in MB "
                        "(default 1024; 422 with --module: 437 MB on disk)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 5 with --module)")
    parser.add_argument("--module", action="store_true", help="the rollback point as the play takes it, through ansible -m volume_snapshot")
    parser.add_argument("--profile", action="store_true",
                        help="with --module: timed spans of the in-process snapshot")
    args = parser.parse_args()
    if args.module:
        args.mb, args.reps = args.mb or 422, args.reps or 5
        return module_bench(args)
    args.mb, args.reps = args.mb or 1024, args.reps or 3
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
