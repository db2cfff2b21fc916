#!/usr/bin/env python3
"""The built-in demo Zoe host: create its tree, run its compose stack, audit its databases.

    tools/demo_host.py create [--root .demo/zoe] [--seed 1] [--scale 1] [--project zoe-demo]
                              [--port-base 18080] [--force]
    tools/demo_host.py up      [--root ...]   compose up -d, then wait until every service is healthy
    tools/demo_host.py down    [--root ...]   compose down (containers and network; data/ stays)
    tools/demo_host.py status  [--root ...]   health and a login of every demo user through zoe-auth
    tools/demo_host.py audit   [--root ...]   every SQLite file of the tree, classified, with row counts

Supports `docker compose` (v2) and the standalone `docker-compose` (v1), whichever is installed.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zoe_demo import (DEMO_PASSWORDS, FOLD_DATABASES, KEEP_DATABASES, build_demo_host,  # noqa: E402
                      record_path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPO, ".demo", "zoe")


def compose_command():
    """['docker', 'compose'] when the v2 plugin answers, else ['docker-compose'] (v1), else an error."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("neither `docker compose` nor `docker-compose` is installed")


def load_record(root):
    with open(record_path(root)) as handle:
        return json.load(handle)


def compose(root, *args, capture=False):
    record = load_record(root)
    cmd = compose_command() + ["-p", record["project"], "--project-directory", root,
                               "-f", os.path.join(root, "docker-compose.yml")] + list(args)
    return subprocess.run(cmd, check=True, text=True, capture_output=capture)


def project_containers(project):
    out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", "label=com.docker.compose.project=%s" % project],
                         check=True, capture_output=True, text=True).stdout.split()
    if not out:
        return []
    return json.loads(subprocess.run(["docker", "inspect"] + out, check=True, capture_output=True, text=True).stdout)


def wait_healthy(project, timeout=120):
    """Wait until every container of the project is running and, where it has a healthcheck, healthy."""
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for c in project_containers(project):
            state = c["State"]
            health = state.get("Health", {}).get("Status")
            states[c["Config"]["Labels"].get("com.docker.compose.service")] = health or state["Status"]
        if states and all(s in ("healthy", "running") for s in states.values()):
            return states
        dead = [name for name, s in states.items() if s in ("exited", "dead")]
        if dead:
            raise SystemExit("services stopped while starting: %s" % ", ".join(sorted(dead)))
        if time.monotonic() > deadline:
            raise SystemExit("services not healthy after %ds: %s" % (timeout, states))
        time.sleep(0.5)


def http(url, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def cmd_create(args):
    record = build_demo_host(args.root, seed=args.seed, scale=args.scale, project=args.project,
                             port_base=args.port_base, force=args.force)
    sizes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(args.root, "data")) for f in fs)
    print("demo host created at %s: %d databases in data/, %d elsewhere, %.1f MB of data, "
          "%d references in %d files" % (record["root"], len(KEEP_DATABASES) + len(FOLD_DATABASES),
                                         len(record["databases"]) - 15, sizes / 1e6,
                                         len(record["references"]), len(record["reference_files"])))


def cmd_up(args):
    record = load_record(args.root)
    compose(args.root, "up", "-d")
    states = wait_healthy(record["project"])
    print("stack %s up: %s" % (record["project"], ", ".join("%s=%s" % kv for kv in sorted(states.items()))))


def cmd_down(args):
    compose(args.root, "down", "--remove-orphans")


def cmd_status(args):
    record = load_record(args.root)
    ok = True
    for service, port in sorted(record["ports"].items()):
        try:
            status, body = http("http://127.0.0.1:%d/health" % port)
        except OSError as exc:
            status, body = 0, {"error": str(exc)}
        print("%-15s /health %s %s" % (service, status, body.get("database") or body.get("error", "")))
    auth = record["ports"]["zoe-auth"]
    for user, password in DEMO_PASSWORDS.items():
        status, _ = http("http://127.0.0.1:%d/login" % auth, {"username": user, "password": password})
        print("login %-9s through zoe-auth: %s" % (user, "ok" if status == 200 else "FAILED (%s)" % status))
        ok = ok and status == 200
    return 0 if ok else 1


def classify(relpath):
    name = os.path.basename(relpath)
    if os.path.dirname(relpath) == "data":
        if name in KEEP_DATABASES:
            return "keep"
        if name in FOLD_DATABASES:
            return "fold"
    return "unknown"


def cmd_audit(args):
    rows = []
    for dirpath, dirnames, filenames in os.walk(args.root):
        dirnames[:] = [d for d in dirnames if d not in (".git", "backups")]
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            with open(path, "rb") as handle:
                if handle.read(16) != b"SQLite format 3\x00":
                    continue
            rel = os.path.relpath(path, args.root)
            conn = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                                 "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            counts = {t: conn.execute('SELECT count(*) FROM "%s"' % t.replace('"', '""')).fetchone()[0] for t in tables}
            conn.close()
            wal = " (+wal)" if os.path.exists(path + "-wal") else ""
            rows.append((rel, classify(rel), os.path.getsize(path), wal, counts))
    print("%-45s %-8s %10s  tables" % ("database", "class", "bytes"))
    for rel, cls, size, wal, counts in sorted(rows, key=lambda r: (r[1], r[0])):
        print("%-45s %-8s %10d%s  %s" % (rel, cls, size, wal, ", ".join("%s=%d" % kv for kv in counts.items())))
    print("%d SQLite files: %s" % (len(rows), ", ".join(
        "%d %s" % (sum(1 for r in rows if r[1] == c), c) for c in ("keep", "fold", "unknown"))))
    print("(row counts read with immutable=1: rows still in a -wal are not shown here)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "up", "down", "status", "audit"):
        p = sub.add_parser(name)
        p.add_argument("--root", default=DEFAULT_ROOT, type=os.path.abspath)
        if name == "create":
            p.add_argument("--seed", type=int, default=1)
            p.add_argument("--scale", type=int, default=1, help="multiply the bulk rows (benchmarks)")
            p.add_argument("--project", default="zoe-demo", help="compose project name")
            p.add_argument("--port-base", type=int, default=18080, help="first of the five published ports")
            p.add_argument("--force", action="store_true", help="replace an existing tree")
    args = parser.parse_args(argv)
    return {"create": cmd_create, "up": cmd_up, "down": cmd_down, "status": cmd_status,
            "audit": cmd_audit}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
