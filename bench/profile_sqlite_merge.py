#!/usr/bin/env python3
"""Where sqlite_merge spends its time, on the data of bench_sqlite_merge.py (run that first with the same --workdir).

1. The merge of the 13 sources into a copy of the target, with the CPU seconds of every SQL statement the engine
   runs on the main thread (summed per statement shape: numbers and temp names folded).
2. The checks on the merged result: quick_check, the full integrity_check, integrity_check per table,
   foreign_key_check.
3. The online backup of the result into a copy of the target (what apply_merge does), with SQLite's default page
   cache and with a 16 MiB one (the module keeps the default: bench/README.md, sqlite_merge, shows no difference).

    .venv/bin/python bench/profile_sqlite_merge.py --workdir /tmp/bench_sqlite_merge_5M
"""

import argparse
import collections
import os
import re
import shutil
import sqlite3
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import conftest  # noqa: E402,F401  (module_utils on ansible.module_utils.__path__)
from ansible.module_utils import sqlite_merge as sm  # noqa: E402

SOURCES = 13


def timed(func, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    value = func(*args)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def profile_statements(result_path, target, sources):
    """Merge with every engine statement timed (thread CPU); returns {statement shape: [count, cpu s]}."""
    spent = collections.defaultdict(lambda: [0, 0.0])

    def wrap(method):
        def timed_method(self, text, params=()):
            start = time.thread_time()
            try:
                return method(self, text, params)
            finally:
                entry = spent[re.sub(r"\d+", "N", text)[:100]]
                entry[0] += 1
                entry[1] += time.thread_time() - start
        return timed_method

    sql, one = sm._Engine.sql, sm._Engine.one
    sm._Engine.sql, sm._Engine.one = wrap(sql), wrap(one)
    try:
        shutil.copyfile(target, result_path)
        with sm.plan_merge(result_path, sources, workdir=os.path.dirname(result_path),
                           keys={"owners": ["name"]}) as plan:
            sm.apply_merge(plan)
    finally:
        sm._Engine.sql, sm._Engine.one = sql, one
    return spent


def check(path, pragma):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA %s" % pragma).fetchall()
    finally:
        conn.close()


def backup(source, dest, cache_kib):
    merged, conn = sqlite3.connect(source), sqlite3.connect(dest, isolation_level=None)
    try:
        if cache_kib:
            conn.execute("PRAGMA cache_size = %d" % -cache_kib)
        merged.backup(conn, pages=sm.BACKUP_STEP_PAGES)
    finally:
        conn.close()
        merged.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench_sqlite_merge")
    parser.add_argument("--top", type=int, default=12, help="statement shapes to list")
    args = parser.parse_args()
    target = os.path.join(args.workdir, "target.db")
    sources = [os.path.join(args.workdir, "src%02d.db" % n) for n in range(1, SOURCES + 1)]
    if not all(os.path.exists(p) for p in [target] + sources):
        raise SystemExit("no bench data in %s: run bench/bench_sqlite_merge.py --workdir %s first"
                         % (args.workdir, args.workdir))
    result = os.path.join(args.workdir, "profile-result.db")
    dest = os.path.join(args.workdir, "profile-dest.db")
    try:
        spent, wall, _ = timed(profile_statements, result, target, sources)
        print("merge: %.2f s wall; main-thread CPU per statement shape (load %.1f):\n" % (wall, os.getloadavg()[0]))
        print("| CPU s | runs | statement |\n|---:|---:|---|")
        for text, (count, cpu) in sorted(spent.items(), key=lambda kv: -kv[1][1])[:args.top]:
            print("| %.3f | %d | `%s` |" % (cpu, count, text.replace("|", "\\|")))
        print("| %.3f | | (all statements) |" % sum(cpu for _, cpu in spent.values()))

        print("\nchecks of the merged result (%.0f MB):\n" % (os.path.getsize(result) / 1e6))
        print("| check | wall s | CPU s |\n|---|---:|---:|")
        conn = sqlite3.connect(result)
        tables = sm.table_names(conn)
        conn.close()
        for pragma in ["quick_check", "integrity_check"] + ["integrity_check(%s)" % sm.q(t) for t in tables] + [
                "foreign_key_check"]:
            _, wall, cpu = timed(check, result, pragma)
            print("| %s | %.2f | %.2f |" % (pragma, wall, cpu))

        print("\nonline backup of the result into a copy of the target, %d-page steps:\n" % sm.BACKUP_STEP_PAGES)
        print("| target page cache | wall s | CPU s |\n|---|---:|---:|")
        for label, cache in (("SQLite default", 0), ("16384 KiB", 16384)) * 2:
            shutil.copyfile(target, dest)
            _, wall, cpu = timed(backup, result, dest, cache)
            print("| %s | %.2f | %.2f |" % (label, wall, cpu))
    finally:
        for path in (result, dest):
            if os.path.exists(path):
                os.remove(path)


if __name__ == "__main__":
    main()
