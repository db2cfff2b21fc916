#!/usr/bin/env python3
"""Downtime of the auth service while consolidate.yml runs, against the naive sequence, in the same run.

    .venv/bin/python bench/bench_downtime.py [--scales 1 100] [--interval 0.05] [--json bench/results/downtime.json]

For each scale (the demo generator's `scale`: bulk rows x scale) a throwaway demo host is built with its own
compose project and ports, and an HTTP poller GETs http://127.0.0.1:<auth port>/health every `interval` seconds
(0.5 s timeout) while:
  1. consolidate.yml runs (profile_tasks on: the per-task times of the downtime window are printed);
  2. consolidate.yml runs again on the consolidated host (the idempotent rerun: the poller must see no failure);
  3. the host is rebuilt from the generator and the naive sequence runs: `compose stop` (every service),
     `cp -a` of the data directory, the merge through `ansible localhost -m sqlite_merge` with the play's
     arguments, `compose start` (every service), then the poll continues until /health answers.
Downtime = the longest run of failed polls, from its first failure to the first success after it.
Not a timed test: figures go to bench/README.md (## downtime) and docs/RELIABILITY.md (## Downtime).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from zoe_demo import FOLD_DATABASES, build_demo_host  # noqa: E402
from zoe_host import VENV_BIN, ZoeHost  # noqa: E402

import yaml  # noqa: E402

WINDOW_START = "stop_services : Stop the services"
WINDOW_END = "restart : Record when the downtime ends"


class Poller:
    """GET /health every `interval` s on a thread; at most `limit` s, 127.0.0.1 only."""

    def __init__(self, port, interval=0.05, limit=1800):
        self.url = "http://127.0.0.1:%d/health" % port
        self.interval, self.limit = interval, limit
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.limit:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=0.5) as resp:
                    ok = resp.status == 200
            except Exception:
                ok = False
            self.samples.append((t, ok))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def wait_healthy(self, timeout=300):
        """Keep polling until a success comes after the last failure (the service is back)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][1] and any(not ok for _, ok in self.samples):
                return
            if self.samples and all(ok for _, ok in self.samples[-3:]) and len(self.samples) > 3:
                return
            time.sleep(self.interval)

    def failures(self):
        return sum(1 for _, ok in self.samples if not ok)

    def longest_outage(self):
        """Seconds from the first failure of the longest run of failures to the first success after it."""
        best, start = 0.0, None
        for t, ok in self.samples:
            if not ok and start is None:
                start = t
            elif ok and start is not None:
                best, start = max(best, t - start), None
        if start is not None:   # never came back while polled
            best = max(best, self.samples[-1][0] - start)
        return best


def compose(host, *args):
    cmd = (["docker", "compose"] if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
           else ["docker-compose"])
    subprocess.run(cmd + ["-p", host.project, "--project-directory", host.root,
                          "-f", os.path.join(host.root, "docker-compose.yml")] + list(args),
                   check=True, capture_output=True, text=True)


def data_bytes(host):
    data = os.path.join(host.root, "data")
    return sum(os.path.getsize(os.path.join(data, name)) for name in os.listdir(data))


def window_tasks(stdout):
    """Per-task seconds of the downtime window from the profile_tasks recap (order of execution)."""
    recap = stdout[stdout.rfind("TASKS RECAP"):]
    rows = re.findall(r"^(.+?) -+ ([0-9.]+)s$", recap, re.M)
    inside, out = False, []
    for name, seconds in rows:
        if name.startswith(WINDOW_START):
            inside = True
        if inside:
            out.append((name.strip(), float(seconds)))
        if name.startswith(WINDOW_END):
            break
    return out


def run_play(host, label, results_dir):
    env = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_SORT_ORDER": "none",
           "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all"}
    with Poller(host.record["ports"]["zoe-auth"], ARGS.interval) as poller:
        time.sleep(1)
        result = host.playbook("consolidate.yml", env=env, timeout=1800)
        time.sleep(1)
    with open(os.path.join(results_dir, "%s.log" % label), "w") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit("%s: consolidate.yml failed, see %s/%s.log" % (label, results_dir, label))
    reports = sorted(f for f in os.listdir(host.reports) if f.endswith(".json"))
    with open(os.path.join(host.reports, reports[-1])) as handle:
        report = json.load(handle)
    return {"wall_s": round(result.seconds, 1), "downtime_s": round(poller.longest_outage(), 2),
            "failed_polls": poller.failures(), "polls": len(poller.samples),
            "play_reported_downtime_s": report.get("downtime_seconds"), "changed": result.recap["changed"],
            "window": window_tasks(result.stdout)}


def naive(host, backup_dir):
    """Stop all, cp -a data, merge with the sqlite_merge module, start all; the poll runs until /health answers."""
    with open(os.path.join(REPO, "inventory", "demo", "group_vars", "zoe_hosts.yml")) as handle:
        config = yaml.safe_load(handle)
    data = os.path.join(host.root, "data")
    args = {"target": os.path.join(data, "zoe.db"), "sources": [os.path.join(data, n) for n in FOLD_DATABASES],
            "keys": config["zoe_merge_keys"], "references": config["zoe_merge_references"],
            "table_map": config["zoe_merge_table_map"], "on_conflict": "keep_target"}
    steps = {}
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
    with Poller(host.record["ports"]["zoe-auth"], ARGS.interval) as poller:
        time.sleep(1)
        t = time.monotonic()
        compose(host, "stop")
        steps["compose stop (all)"] = time.monotonic() - t
        t = time.monotonic()
        subprocess.run(["cp", "-a", data, backup_dir], check=True)
        steps["cp -a data"] = time.monotonic() - t
        t = time.monotonic()
        subprocess.run([os.path.join(VENV_BIN, "ansible"), "localhost", "-m", "sqlite_merge", "-a", json.dumps(args),
                        "-e", "ansible_python_interpreter=%s" % os.path.join(VENV_BIN, "python")],
                       cwd=REPO, env=env, check=True, capture_output=True, text=True)
        steps["sqlite_merge"] = time.monotonic() - t
        t = time.monotonic()
        compose(host, "start")
        steps["compose start (all)"] = time.monotonic() - t
        poller.wait_healthy()
        time.sleep(0.5)
    return {"downtime_s": round(poller.longest_outage(), 2), "failed_polls": poller.failures(),
            "steps": {k: round(v, 2) for k, v in steps.items()}}


def bench_scale(scale, results_dir):
    base = tempfile.mkdtemp(prefix="bench-downtime-", dir="/tmp")
    host = ZoeHost(base, scale=scale)
    try:
        row = {"scale": scale, "data_bytes": data_bytes(host)}
        print("scale %d: %.1f MB of databases" % (scale, row["data_bytes"] / 1e6), flush=True)
        row["play"] = run_play(host, "play-scale%d" % scale, results_dir)
        print("  play: %s" % {k: v for k, v in row["play"].items() if k != "window"}, flush=True)
        row["rerun"] = run_play(host, "rerun-scale%d" % scale, results_dir)
        print("  rerun: %s" % {k: v for k, v in row["rerun"].items() if k != "window"}, flush=True)
        host.demo("down")
        shutil.rmtree(host.backups, ignore_errors=True)
        build_demo_host(host.root, scale=scale, project=host.project, port_base=host.port_base, force=True)
        host.demo("up")
        row["naive"] = naive(host, os.path.join(base, "naive-copy"))
        print("  naive: %s" % row["naive"], flush=True)
        return row
    finally:
        host.destroy()


def table(rows):
    lines = ["| scale | data MB | play downtime s | play wall s | naive downtime s | play / naive | rerun failed polls | rerun wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %d | %.1f | %.2f | %.1f | %.2f | %.2fx | %d | %.1f |" % (
            r["scale"], r["data_bytes"] / 1e6, r["play"]["downtime_s"], r["play"]["wall_s"], r["naive"]["downtime_s"],
            r["play"]["downtime_s"] / max(r["naive"]["downtime_s"], 1e-9), r["rerun"]["failed_polls"],
            r["rerun"]["wall_s"]))
    if len(rows) > 1:
        lines.append("")
        lines.append("Growth of the play's downtime from scale %d to %d: %.2fx (naive: %.2fx)." % (
            rows[0]["scale"], rows[-1]["scale"], rows[-1]["play"]["downtime_s"] / rows[0]["play"]["downtime_s"],
            rows[-1]["naive"]["downtime_s"] / rows[0]["naive"]["downtime_s"]))
    return "\n".join(lines)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "downtime.json"))
    ARGS = parser.parse_args()
    results_dir = os.path.dirname(os.path.abspath(ARGS.json))
    os.makedirs(results_dir, exist_ok=True)
    rows = [bench_scale(scale, results_dir) for scale in ARGS.scales]
    with open(ARGS.json, "w") as handle:
        json.dump(rows, handle, indent=2)
    print(table(rows))
    for r in rows:
        print("\nscale %d, the play's downtime window per task (profile_tasks):" % r["scale"])
        for name, seconds in r["play"]["window"]:
            print("  %6.2f s  %s" % (seconds, name))
        print("  naive steps: %s" % r["naive"]["steps"])


ARGS = None

if __name__ == "__main__":
    main()
