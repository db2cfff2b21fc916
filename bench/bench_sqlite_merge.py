#!/usr/bin/env python3
"""Benchmark sqlite_merge against the floor, row-by-row Python and sqlite-utils, in the same run.

Data: a target and 13 sources, table records(id TEXT PRIMARY KEY, owner, value, note, updated_at), a child table
notes(id INTEGER PRIMARY KEY, record_id TEXT REFERENCES records(id), body) and owners, the entity keyed by its
name. About 3% of each source's keys collide with the target (half identical rows, half different content). The
odd-numbered sources are drifted the way the Zoe databases are: owners keyed by an INTEGER id (the target's by a
TEXT owner_id holding the name), records.owner an INTEGER foreign key into it (the module re-points it to the
name through the natural key), updated_at declared TEXT where the target says TIMESTAMP (the values fit), and a
column `tag` the target lacks. Every approach runs in its own process on a fresh copy of the target (peak RSS and
CPU seconds per process from wait4), timing the merge only. With --repeat the approaches run interleaved and
medians are reported; the module's per-phase profile follows (Profile of bench/profile_sqlite_merge.py, which
times the module's functions from outside: the module itself keeps no timer).

    .venv/bin/python bench/bench_sqlite_merge.py --rows 1000000 --repeat 3 --only floor floor_verified module
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import conftest  # noqa: E402,F401  (module_utils on ansible.module_utils.__path__)
from ansible.module_utils.sqlite_merge import apply_merge, plan_merge  # noqa: E402
from profile_sqlite_merge import Profile  # noqa: E402  (beside this file)

SOURCES = 13
COLLIDE = 0.03


OWNERS = 97


def drifted(n):
    return n % 2 == 1


def generate(workdir, total):
    per = total // (SOURCES + 1)
    os.makedirs(workdir, exist_ok=True)
    paths = []
    for n in range(SOURCES + 1):
        path = os.path.join(workdir, "target.db" if n == 0 else "src%02d.db" % n)
        if os.path.exists(path):
            os.remove(path)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=OFF")
        if drifted(n):
            conn.execute("CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
            conn.execute("CREATE TABLE records (id TEXT PRIMARY KEY, owner INTEGER REFERENCES owners(id), value "
                         "INTEGER, note TEXT, updated_at TEXT, tag TEXT)")
            owner = "1000 * %d + (EXPR) %% %d" % (n, OWNERS)
        else:
            conn.execute("CREATE TABLE owners (owner_id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
            conn.execute("CREATE TABLE records (id TEXT PRIMARY KEY, owner TEXT REFERENCES owners(owner_id), value "
                         "INTEGER, note TEXT, updated_at %s)" % ("TIMESTAMP" if n == 0 else "TEXT"))
            owner = "'owner' || ((EXPR) %% %d)" % OWNERS
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, record_id TEXT REFERENCES records(id), body TEXT)")
        ncoll = int(per * COLLIDE) if n else 0
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO owners VALUES (?, ?)",
                         [(1000 * n + j if drifted(n) else "owner%d" % j, "owner%d" % j) for j in range(OWNERS)])
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO records (id, owner, value, note, updated_at) "
            "SELECT CASE WHEN i < ? THEN 'r00-' || (i * 7) ELSE printf('r%02d-%d', ?, i) END, "
            + owner.replace("EXPR", "CASE WHEN i < ? THEN i * 7 ELSE i END") + ", "
            "CASE WHEN i < ? AND i % 2 = 1 THEN -1 WHEN i < ? THEN i * 49 ELSE i * 7 END, "
            "CASE WHEN i < ? THEN 'note ' || (i * 7) ELSE 'note ' || i END, '2024-01-01 10:00' FROM c",
            (per - 1, ncoll, n, ncoll, ncoll, ncoll, ncoll))
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO notes SELECT i, printf('r%02d-%d', ?, ? + (i * 9) % ?), 'body ' || i FROM c",
            (per // 10, n, ncoll, per - ncoll))
        conn.execute("COMMIT")
        conn.close()
        paths.append(path)
    return paths[0], paths[1:]


def floor(target, sources):
    """ATTACH + INSERT OR IGNORE ... SELECT of the target's columns; a drifted source's owners and records.owner
    go through the one join that turns its integer owner ids into the names the target keys owners by."""
    conn = sqlite3.connect(target, isolation_level=None)
    # SQLite attaches at most 10 databases and cannot DETACH inside a transaction: 13 sources need 2 transactions
    for start in range(0, len(sources), 10):
        batch = sources[start:start + 10]
        for i, src in enumerate(batch):
            conn.execute("ATTACH ? AS s%d" % i, (src,))
        conn.execute("BEGIN")
        for i, src in enumerate(batch):
            conn.execute("INSERT OR IGNORE INTO main.owners (owner_id, name) SELECT name, name FROM s%d.owners" % i)
            if drifted(int(os.path.basename(src)[3:5])):
                conn.execute("INSERT OR IGNORE INTO main.records (id, owner, value, note, updated_at) SELECT r.id, "
                             "o.name, r.value, r.note, r.updated_at FROM s%d.records r LEFT JOIN s%d.owners o "
                             "ON o.id = r.owner" % (i, i))
            else:
                conn.execute("INSERT OR IGNORE INTO main.records (id, owner, value, note, updated_at) SELECT id, "
                             "owner, value, note, updated_at FROM s%d.records" % i)
            conn.execute("INSERT OR IGNORE INTO main.notes (id, record_id, body) SELECT id, record_id, body "
                         "FROM s%d.notes" % i)
        conn.execute("COMMIT")
        for i in range(len(batch)):
            conn.execute("DETACH s%d" % i)
    conn.close()


def floor_verified(target, sources):
    """The floor, then the verification every merge of the module makes: PRAGMA integrity_check and
    foreign_key_check of the result. No merge that verifies its result can beat this without running the
    check beside the inserts, so its ratio to the floor is the lower bound of the module's ratio."""
    floor(target, sources)
    conn = sqlite3.connect(target)
    if conn.execute("PRAGMA integrity_check").fetchall() != [("ok",)] or conn.execute(
            "PRAGMA foreign_key_check").fetchone() is not None:
        raise SystemExit("floor result fails its checks")
    conn.close()


def row_by_row(target, sources):
    """What hand-written migration scripts do: look each row up, insert, skip or record a conflict."""
    conn = sqlite3.connect(target)
    conn.execute("CREATE TABLE IF NOT EXISTS conflicts (tbl TEXT, key TEXT, source_row TEXT)")
    for src in sources:
        sconn = sqlite3.connect(src)
        for row in sconn.execute("SELECT * FROM records"):
            have = conn.execute("SELECT * FROM records WHERE id = ?", (row[0],)).fetchone()
            if have is None:
                conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)", row)
            elif tuple(have) != tuple(row):
                conn.execute("INSERT INTO conflicts VALUES ('records', ?, ?)", (row[0], repr(row)))
        id_map = {}
        new_id = conn.execute("SELECT coalesce(max(id), 0) FROM notes").fetchone()[0]
        for row in sconn.execute("SELECT * FROM notes"):
            if conn.execute("SELECT 1 FROM notes WHERE id = ?", (row[0],)).fetchone():
                new_id += 1
                id_map[row[0]] = new_id
                row = (new_id,) + tuple(row[1:])
            conn.execute("INSERT INTO notes VALUES (?, ?, ?)", row)
        sconn.close()
    conn.commit()
    conn.close()


def sqlite_utils_way(target, sources):
    import sqlite_utils
    db = sqlite_utils.Database(target)
    for src in sources:
        sdb = sqlite_utils.Database(src)
        with db.conn:
            db["records"].insert_all(sdb["records"].rows, pk="id", ignore=True, batch_size=1000)
            db["notes"].insert_all(({k: v for k, v in r.items() if k != "id"} for r in sdb["notes"].rows),
                                   batch_size=1000)
        sdb.close()


def module(target, sources):
    with Profile() as profile:
        with plan_merge(target, sources, workdir=os.path.dirname(target), keys={"owners": ["name"]}) as plan:
            apply_merge(plan)
            t = plan.totals()
    with open(target + ".phases", "w") as handle:
        json.dump(profile.phases(), handle)
    print("module accounting: %d rows = %d inserted + %d identical + %d conflicts, %d remapped"
          % (t["source_rows"], t["inserted"], t["identical"], t["conflicts"], t["remapped"]), file=sys.stderr)


APPROACHES = {"floor": floor, "floor_verified": floor_verified, "module": module, "row_by_row": row_by_row,
              "sqlite_utils": sqlite_utils_way}


def run_one(name, workdir, target, sources):
    """Run one approach in a child process on a fresh target copy; return (seconds, peak RSS MiB, phases, cpu s).

    CPU seconds (user + system of the child, all threads) are reported beside the wall clock because the
    machine is shared: under load, wall time is mostly waiting for a core.
    """
    copy = os.path.join(workdir, "run-%s.db" % name)
    shutil.copyfile(target, copy)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", name, copy] + sources)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit("%s failed" % name)
    seconds = float(open(copy + ".time").read())
    phases = json.load(open(copy + ".phases")) if os.path.exists(copy + ".phases") else {}
    for suffix in ("", ".time", ".phases"):
        if os.path.exists(copy + suffix):
            os.remove(copy + suffix)
    return seconds, usage.ru_maxrss / 1024.0, phases, usage.ru_utime + usage.ru_stime


def load_average():
    return "%.1f %.1f %.1f" % os.getloadavg()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--workdir", default="/tmp/bench_sqlite_merge")
    parser.add_argument("--only", nargs="*", default=list(APPROACHES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per approach (interleaved); medians reported")
    parser.add_argument("--reuse", action="store_true", help="reuse the data of a previous run with the same --rows")
    parser.add_argument("--child", nargs="+")
    args, rest = parser.parse_known_args()
    if args.child:
        name, target = args.child[0], args.child[1]
        start = time.perf_counter()
        APPROACHES[name](target, args.child[2:] + rest)
        open(target + ".time", "w").write(str(time.perf_counter() - start))
        return
    start = time.perf_counter()
    stamp = os.path.join(args.workdir, "rows")
    if args.reuse and os.path.exists(stamp) and open(stamp).read() == str(args.rows):
        target = os.path.join(args.workdir, "target.db")
        sources = [os.path.join(args.workdir, "src%02d.db" % n) for n in range(1, SOURCES + 1)]
    else:
        target, sources = generate(args.workdir, args.rows)
        open(stamp, "w").write(str(args.rows))
    rows = sum(sqlite3.connect(p).execute("SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM notes) + "
                                          "(SELECT count(*) FROM owners)")
               .fetchone()[0] for p in sources)
    print("generated %d source rows in %d sources (+ target) in %.1f s" % (rows, len(sources),
                                                                           time.perf_counter() - start))
    runs = {name: [] for name in args.only}
    for rep in range(args.repeat):
        for name in args.only:
            runs[name].append(run_one(name, args.workdir, target, sources))
            print("run %d %s: %.2f s (load %s)" % (rep + 1, name, runs[name][-1][0], load_average()), flush=True)
    median = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    base = median.get("floor")
    cpu = {name: statistics.median(r[3] for r in rs) for name, rs in runs.items()}
    print("| approach | median s | runs s | x floor (median) | CPU s (median) | x floor CPU | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        print("| %s | %.1f | %s | %s | %.1f | %s | %.0f |" % (
            name, median[name], " / ".join("%.1f" % r[0] for r in rs),
            "%.2f" % (median[name] / base) if base else "-", cpu[name],
            "%.2f" % (cpu[name] / cpu["floor"]) if base else "-", max(r[1] for r in rs)))
    phases = [r[2] for r in runs.get("module", []) if r[2]]
    if phases:
        print("\nmodule phases (median of %d runs; CPU = seconds of the thread that ran the phase):\n\n"
              "| phase | wall s | CPU s |\n|---|---:|---:|" % len(phases))

        def med(kind, phase):
            return statistics.median(ph[kind].get(phase, 0.0) for ph in phases)
        names = sorted(set().union(*(ph["wall"] for ph in phases)), key=lambda p: -med("cpu", p))
        for phase in names:
            print("| %s | %.2f | %.2f |" % (phase, med("wall", phase), med("cpu", phase)))
        print("| (sum of phases) | %.2f | %.2f |" % tuple(statistics.median(sum(ph[k].values()) for ph in phases)
                                                      for k in ("wall", "cpu")))


if __name__ == "__main__":
    main()
