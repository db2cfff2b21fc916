#!/usr/bin/env python3
"""The downtime window of consolidate.yml as a user of the demo stack sees it, beside a bare restart, in one run.

    .venv/bin/python bench/bench_downtime.py [--scales 1 20 100] [--reps 3] [--interval 0.05] [--get-timeout 2]
                                             [--floors 2]
                                             [--json bench/results/downtime.json]

For each scale (the demo generator's `scale`: bulk rows x scale) a throwaway demo host is built with its own
compose project and ports. One thread per demo service GETs http://127.0.0.1:<port>/health every `interval`
seconds; a service is down from its first failed GET (refused, reset, an answer other than 200, or no answer
within `--get-timeout` s) to its next successful one, and the window of a step is the longest stretch in which
any service was down (the union of the services' down intervals; the failures are counted by kind). Measured on the same host, one after the other:

  1. floor: the bare restart of the writers the play stops (the services that bind-mount data/, read from
     `docker inspect`): `compose stop <writers>`, then `compose up -d --no-deps --force-recreate <writers>`
     (the play recreates every writer: each one's environment changes), then the poll goes on until every
     /health answers. Nothing runs in between. Taken right before each play and `--floors` more times after the
     rerun, so the floor and the play see the same machine;
  2. play: `ansible-playbook consolidate.yml`; the window is one module call (downtime_window), whose steps and
     their times (stop, rollback point, merge, retire, install, start) the run's report keeps and this prints.
     `--reps` plays, each on the host as it was: rollback.yml restores the previous play's rollback point (byte
     for byte, the old stack running) before the next floor and play;
  3. rerun: consolidate.yml again on the consolidated host: its window must be 0 s and no container may be
     stopped, restarted or recreated (container ids and start times compared before and after).

ratio = median play window / median floor window. Not a timed test: the figures go to bench/README.md (## downtime).
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from zoe_host import ZoeHost  # noqa: E402

class ServicePoller:
    """GET one /health every `interval` s on its own thread (127.0.0.1 only, at most `limit` s)."""

    def __init__(self, name, port, interval, limit=3600):
        self.name, self.url = name, "http://127.0.0.1:%d/health" % port
        self.interval, self.limit = interval, limit
        self.samples = []            # (monotonic time the GET started, answered 200)
        self.kinds = {}              # failure kind: count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.limit:
            t = time.monotonic()
            kind = None
            try:
                with urllib.request.urlopen(self.url, timeout=ARGS.get_timeout) as resp:
                    ok = resp.status == 200
            except urllib.error.HTTPError as exc:
                ok, kind = False, "http %d" % exc.code
            except (socket.timeout, TimeoutError):
                ok, kind = False, "timeout"
            except urllib.error.URLError as exc:
                ok, kind = False, "timeout" if isinstance(exc.reason, (socket.timeout, TimeoutError)) else "refused"
            except (ConnectionError, OSError):
                ok, kind = False, "refused"
            self.samples.append((t, ok))
            if kind:
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def down_intervals(self):
        """[(start, end)]: first failed GET to the first successful GET after it (end None: never came back)."""
        out, start = [], None
        for t, ok in list(self.samples):
            if not ok and start is None:
                start = t
            elif ok and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


class StackPoller:
    """A ServicePoller per service; the window is the longest stretch in which any of them was down."""

    def __init__(self, ports, interval):
        self.pollers = [ServicePoller(name, port, interval) for name, port in sorted(ports.items())]
        self.interval = interval

    def __enter__(self):
        for p in self.pollers:
            p._thread.start()
        time.sleep(max(1.0, 10 * self.interval))
        return self

    def __exit__(self, *exc):
        for p in self.pollers:
            p._stop.set()
        for p in self.pollers:
            p._thread.join()

    def all_up_now(self, n=3):
        """True when the last `n` GETs of every service succeeded."""
        return all(len(p.samples) >= n and all(ok for _, ok in p.samples[-n:]) for p in self.pollers)

    def wait_back(self, timeout=300):
        """After a step: wait until every service answered its last 3 GETs (the window is then closed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_up_now():
                return True
            time.sleep(self.interval)
        return False

    def windows(self):
        """The merged down intervals of all services, [(start, end, [services])], end None when still down."""
        spans = sorted(((s, e, p.name) for p in self.pollers for s, e in p.down_intervals()),
                       key=lambda x: x[0])
        merged = []
        for start, end, name in spans:
            if merged and (merged[-1][1] is None or start <= merged[-1][1]):
                last = merged[-1]
                last[1] = None if (last[1] is None or end is None) else max(last[1], end)
                last[2].add(name)
            else:
                merged.append([start, end, {name}])
        return [(s, e, sorted(n)) for s, e, n in merged]

    def result(self):
        windows = self.windows()
        lengths = [(e - s) if e is not None else float("inf") for s, e, _ in windows]
        longest = max(range(len(windows)), key=lambda i: lengths[i]) if windows else None
        return {"window_s": round(lengths[longest], 2) if windows else 0.0,
                "windows": len(windows),
                "down_services": windows[longest][2] if windows else [],
                "failed_gets": sum(1 for p in self.pollers for _, ok in p.samples if not ok),
                "gets": sum(len(p.samples) for p in self.pollers),
                "failure_kinds": {k: sum(p.kinds.get(k, 0) for p in self.pollers)
                                  for k in sorted({k for p in self.pollers for k in p.kinds})},
                "per_service_s": {p.name: round(max([((e if e is not None else float("inf")) - s)
                                                     for s, e in p.down_intervals()] or [0.0]), 2)
                                  for p in self.pollers}}


# ------------------------------------------------------------------------------------------------ the host

def compose_command():
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def compose(host, *args):
    cmd = compose_command() + ["-p", host.project, "--project-directory", host.root,
                               "-f", os.path.join(host.root, "docker-compose.yml")] + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=host.root)


def inspect_project(host):
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % host.project],
                         check=True, capture_output=True, text=True).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect"] + ids, check=True, capture_output=True, text=True).stdout)


def writers(host):
    """The services whose running container bind-mounts data/ (what the play stops)."""
    data = os.path.realpath(os.path.join(host.root, "data"))
    out = set()
    for doc in inspect_project(host):
        if not doc["State"]["Running"]:
            continue
        for mount in doc.get("Mounts") or ():
            src = os.path.realpath(mount.get("Source") or "")
            if mount.get("Type") == "bind" and (src == data or src.startswith(data + os.sep)):
                out.add(doc["Config"]["Labels"]["com.docker.compose.service"])
    return sorted(out)


def container_states(host):
    """{service: (container id, started at, running)}."""
    return {d["Config"]["Labels"]["com.docker.compose.service"]: (d["Id"], d["State"]["StartedAt"], d["State"]["Running"])
            for d in inspect_project(host)}


def data_bytes(host):
    data = os.path.join(host.root, "data")
    return sum(os.path.getsize(os.path.join(data, name)) for name in os.listdir(data))


# ------------------------------------------------------------------------------------------------ the steps

def floor(host, names):
    """Bare restart of `names`: compose stop, compose up -d --no-deps --force-recreate, until every /health answers."""
    steps = {}
    with StackPoller(host.record["ports"], ARGS.interval) as poller:
        t = time.monotonic()
        compose(host, "stop", *names)
        steps["compose stop"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        compose(host, "up", "-d", "--no-deps", "--force-recreate", *names)
        steps["compose up -d --force-recreate"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        back = poller.wait_back()
        steps["until every /health answers"] = round(time.monotonic() - t, 2)
    out = poller.result()
    out.update({"steps": steps, "came_back": back})
    return out


def play(host, label, results_dir):
    before = container_states(host)
    with StackPoller(host.record["ports"], ARGS.interval) as poller:
        result = host.playbook("consolidate.yml", timeout=3600)
        back = poller.wait_back()
    after = container_states(host)
    with open(os.path.join(results_dir, "%s.log" % label), "w") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit("%s: consolidate.yml failed, see %s/%s.log" % (label, results_dir, label))
    reports = sorted(f for f in os.listdir(host.reports) if f.endswith(".json") and not f.endswith(".plan.json"))
    with open(os.path.join(host.reports, reports[-1])) as handle:
        report = json.load(handle)
    out = poller.result()
    out.update({"wall_s": round(result.seconds, 1), "came_back": back,
                "play_reported_downtime_s": report.get("downtime_seconds"), "changed": result.recap["changed"],
                "containers_touched": sorted(s for s in set(before) | set(after) if before.get(s) != after.get(s)),
                "window_steps": [(step["step"], step["seconds"]) for step in report.get("window", {}).get("steps", [])],
                "rollback_point_files": report.get("window", {}).get("rollback_point_files"),
                "merge_prepared": report.get("merge", {}).get("prepared"),
                "snapshot_id": report.get("snapshot_id")})
    return out


def restore(host, snapshot_id):
    """Back to the host before the play: rollback.yml to the play's rollback point (byte for byte, old stack up)."""
    result = host.playbook("rollback.yml", "-e", "zoe_snapshot=%s" % snapshot_id, timeout=1800)
    if result.returncode != 0:
        raise SystemExit("rollback.yml to %s failed:\n%s" % (snapshot_id, result.stdout[-3000:]))


def load():
    return [round(x, 2) for x in os.getloadavg()]


def bench_scale(scale, results_dir):
    base = tempfile.mkdtemp(prefix="bench-downtime-")
    t = time.monotonic()
    host = ZoeHost(base, scale=scale)
    try:
        names = writers(host)
        row = {"scale": scale, "data_bytes": data_bytes(host), "writers": names, "build_s": round(time.monotonic() - t),
               "floors": [], "load": [load()]}
        print("scale %d: %.1f MB of databases, writers %s (built in %d s)" % (
            scale, row["data_bytes"] / 1e6, " ".join(names), row["build_s"]), flush=True)
        # floor, play, (rollback.yml to the play's rollback point, floor, play) x reps, rerun, floor: every play
        # has a floor right before it on the same host, and the floors bracket the plays.
        row["plays"] = []
        for rep in range(ARGS.reps):
            if rep:
                restore(host, row["plays"][-1]["snapshot_id"])
            row["floors"].append(floor(host, names))
            print("  floor: %s" % summary(row["floors"][-1]), flush=True)
            row["plays"].append(play(host, "play-scale%d-%d" % (scale, rep), results_dir))
            print("  play: %s" % summary(row["plays"][-1]), flush=True)
        row["play"] = row["plays"][-1]
        row["rerun"] = play(host, "rerun-scale%d" % scale, results_dir)
        print("  rerun: %s" % summary(row["rerun"]), flush=True)
        for _ in range(max(1, ARGS.floors - 1)):
            row["floors"].append(floor(host, names))
            print("  floor: %s" % summary(row["floors"][-1]), flush=True)
        row["load"].append(load())
        row["floor_s"] = round(statistics.median(f["window_s"] for f in row["floors"]), 2)
        row["play_s"] = round(statistics.median(p["window_s"] for p in row["plays"]), 2)
        row["ratio"] = round(row["play_s"] / max(row["floor_s"], 1e-9), 2)
        return row
    finally:
        host.destroy()


def summary(step):
    keys = ("window_s", "down_services", "failed_gets", "failure_kinds", "gets", "per_service_s", "steps", "wall_s",
            "play_reported_downtime_s", "changed", "containers_touched", "came_back")
    return {k: step[k] for k in keys if k in step}


def table(rows):
    lines = ["| scale | data MB | bare restart s: median (each) | consolidate.yml window s: median (each) | ratio "
             "| rerun window s | rerun containers touched | play wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %d | %.1f | %.2f (%s) | %.2f (%s) | %.2fx | %.2f | %d | %.1f |" % (
            r["scale"], r["data_bytes"] / 1e6, r["floor_s"], " ".join("%.2f" % f["window_s"] for f in r["floors"]),
            r["play_s"], " ".join("%.2f" % p["window_s"] for p in r["plays"]), r["ratio"], r["rerun"]["window_s"],
            len(r["rerun"]["containers_touched"]), r["play"]["wall_s"]))
    if len(rows) > 1:
        lines.append("")
        lines.append("Growth of the window from scale %d to %d: %.2fx (bare restart: %.2fx)." % (
            rows[0]["scale"], rows[-1]["scale"], rows[-1]["play_s"] / max(rows[0]["play_s"], 1e-9),
            rows[-1]["floor_s"] / max(rows[0]["floor_s"], 1e-9)))
    return "\n".join(lines)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--get-timeout", type=float, default=2.0,
                        help="seconds a GET may take before it counts as a failure")
    parser.add_argument("--reps", type=int, default=3,
                        help="plays per scale, each after a bare restart; rollback.yml restores the host between them")
    parser.add_argument("--floors", type=int, default=2, help="bare restarts after the rerun, beside those before each play")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "downtime.json"))
    ARGS = parser.parse_args()
    results_dir = os.path.dirname(os.path.abspath(ARGS.json))
    os.makedirs(results_dir, exist_ok=True)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print("bench_downtime %s, commit %s, %s, %s, load %s" % (
        started, commit, " ".join(compose_command()), platform.node(), load()), flush=True)
    rows = [bench_scale(scale, results_dir) for scale in ARGS.scales]
    with open(ARGS.json, "w") as handle:
        json.dump({"started": started, "commit": commit, "rows": rows}, handle, indent=2)
    print(table(rows))
    for r in rows:
        print("\nscale %d (load %s -> %s), the play's downtime window per step (the report's window.steps):" % (
            r["scale"], r["load"][0], r["load"][-1]))
        for play_result in r["plays"]:
            print("  " + ", ".join("%s %.3f s" % (name, seconds) for name, seconds in play_result["window_steps"])
                  + "; merge prepared: %s" % play_result["merge_prepared"])
        print("  rollback point %s; floor steps: %s" % (r["play"]["rollback_point_files"],
                                                       [f["steps"] for f in r["floors"]]))


ARGS = None

if __name__ == "__main__":
    main()
