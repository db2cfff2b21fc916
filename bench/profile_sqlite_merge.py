#!/usr/bin/env python3
"""Where sqlite_merge spends its time, on the data of bench_sqlite_merge.py (run that first with the same --workdir).

The module keeps no timer: the figures come from Profile, which wraps the module's functions from outside while
the merge runs (nothing of it is in module_utils or in the module's result).

1. The merge of the 13 sources into a copy of the target: wall and CPU seconds per phase (the functions the merge
   runs, the background threads' work marked "(background)", the engine's SQL summed per engine method), and
   the CPU seconds of every SQL statement the engine runs (summed per statement shape: numbers and temp names
   folded).
2. The checks on the merged result: quick_check, the full integrity_check, integrity_check per table,
   foreign_key_check.
3. The online backup of the result into a copy of the target (what apply_merge does), with SQLite's default page
   cache and with a 16 MiB one.

    .venv/bin/python bench/profile_sqlite_merge.py --workdir /tmp/bench_sqlite_merge_5M
"""

import argparse
import collections
import functools
import os
import re
import shutil
import sqlite3
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import conftest  # noqa: E402,F401  (module_utils on ansible.module_utils.__path__)
from ansible.module_utils import sqlite_merge as sm  # noqa: E402
from ansible.module_utils import sqlite_merge_engine, sqlite_merge_files, sqlite_merge_verify  # noqa: E402

SOURCES = 13

# (module, attribute, phase): the functions whose calls are timed, each where its callers look it up
PHASES = (
    (sm, "consistent_copy", "target copy"),
    (sm, "_check_integrity", "target integrity_check"),
    (sm, "_fk_counts", "target foreign_key_check"),
    (sqlite_merge_files, "consistent_copy", "source copy (background)"),
    (sqlite_merge_files, "file_digest", "source digest (background)"),
    (sqlite_merge_files, "_check_source", "source integrity_check (background)"),
    (sqlite_merge_files._SourcePipeline, "wait_checked", "wait for source checks"),
    (sqlite_merge_verify, "_check_result_integrity", "result integrity_check (background)"),
    (sqlite_merge_verify, "_check_result_foreign_keys", "result foreign_key_check (background)"),
    (sqlite_merge_verify._Verification, "wait", "wait for result checks"),
    (sm, "_conflict_samples", "conflict samples"),
    (sm, "backup_into", "apply: backup"),
)


class Profile:
    """Times a merge from outside: wall and thread CPU seconds per phase (PHASES, and the engine's statements per
    engine method as "merge: <method>"), CPU seconds per statement shape. A context manager: the wrapped functions
    are put back on exit. A phase nested in another counts in both (the outer one includes it)."""

    def __init__(self):
        self.wall, self.cpu = collections.defaultdict(float), collections.defaultdict(float)
        self.statements = collections.defaultdict(lambda: [0, 0.0])
        self.lock = threading.Lock()
        self.saved = []

    def add(self, phase, wall, cpu):
        with self.lock:
            self.wall[phase] += wall
            self.cpu[phase] += cpu

    def _timed(self, func, phase):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - wall, time.thread_time() - cpu)
        return timed

    def _statement(self, method):
        profile = self

        @functools.wraps(method)
        def timed(engine, text, params=()):
            caller = sys._getframe(1).f_code.co_name
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(engine, text, params)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                profile.add("merge: %s" % caller.lstrip("_"), wall, cpu)
                with profile.lock:
                    entry = profile.statements[re.sub(r"\d+", "N", text)[:100]]
                    entry[0] += 1
                    entry[1] += cpu
        return timed

    def _patch(self, owner, name, replacement):
        original = getattr(owner, name)  # AttributeError: the module moved it; PHASES must follow
        self.saved.append((owner, name, original))
        setattr(owner, name, replacement(original))

    def __enter__(self):
        for owner, name, phase in PHASES:
            self._patch(owner, name, lambda func, phase=phase: self._timed(func, phase))
        for name in ("sql", "one"):
            self._patch(sqlite_merge_engine._Engine, name, self._statement)
        return self

    def __exit__(self, *exc):
        while self.saved:
            owner, name, original = self.saved.pop()
            setattr(owner, name, original)

    def phases(self):
        """{"wall": {phase: s}, "cpu": {phase: s}} as plain dicts (the bench writes them as JSON)."""
        return {"wall": dict(self.wall), "cpu": dict(self.cpu)}


def profile_merge(result_path, target, sources):
    """Merge into a copy of the target under Profile; returns the profile."""
    shutil.copyfile(target, result_path)
    with Profile() as profile:
        with sm.plan_merge(result_path, sources, workdir=os.path.dirname(result_path),
                           keys={"owners": ["name"]}) as plan:
            sm.apply_merge(plan)
    return profile


def timed(func, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    value = func(*args)
    return value, time.perf_counter() - wall, time.process_time() - cpu


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
        profile, wall, _ = timed(profile_merge, result, target, sources)
        print("merge: %.2f s wall (load %.1f); per phase:\n" % (wall, os.getloadavg()[0]))
        print("| phase | wall s | CPU s |\n|---|---:|---:|")
        for phase in sorted(profile.cpu, key=lambda p: -profile.cpu[p]):
            print("| %s | %.2f | %.2f |" % (phase, profile.wall[phase], profile.cpu[phase]))
        print("\nmain-thread CPU per statement shape:\n")
        print("| CPU s | runs | statement |\n|---:|---:|---|")
        spent = profile.statements
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
