#!/usr/bin/env python3
"""Read the real state of a Molecule Zoe host and print it as JSON, for create.yml and the verifiers.

    zoe_probe.py RECORD [--no-http]

RECORD is the demo host's record (<zoe_root>.record.json, written by tools/demo_host.py create): it names
the tree, the compose project, the published ports and the demo passwords. The probe reports

- tree:       {relative path: "<sha256>:<mode>"} of every file and symlink under zoe_root (a -shm wal-index
              by its presence and mode only), and its digest;
- backups:    the same for <zoe_root>-backups (absent: null);
- data_files: the names in data/, and which of them are SQLite databases;
- row_counts: {database: {table: rows}} of the SQLite files in data/, read from private copies;
- containers: {service: id, name, started_at, status, health, env} of the project's containers;
- health / logins: HTTP answers of every service's /health and of a login of every demo user through zoe-auth
                (by password, and by passcode as `passcode:<user>` for the users the record gives one).

The tree is hashed first and the databases are only ever opened as copies, so probing never changes the
bytes it measures (opening a WAL database in place can rewrite its -shm and checkpoint its -wal).
"""

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "module_utils"))

from zoe_sqlite import is_sqlite_file, row_counts  # noqa: E402  (stdlib-only helpers of the project)


def file_digest(path):
    """'<sha256>:<mode>' of a regular file, '-> <target>' of a symlink, 'wal-index:<mode>' of a -shm file.

    A -shm file counts by its presence and mode only, as in tests/integration/zoe_host.py: it is SQLite's
    wal-index, shared memory that every reader of a WAL database rewrites (the services, the play's live
    snapshot through the backup API) and that SQLite rebuilds from the -wal; its bytes are not data.
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "-> %s" % os.readlink(path)
    if path.endswith("-shm"):
        return "wal-index:%o" % stat.S_IMODE(info.st_mode)
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "%s:%o" % (sha.hexdigest(), stat.S_IMODE(info.st_mode))


def tree(root):
    """{relative path: digest} of every file under root (None when root does not exist) and its digest."""
    if not os.path.isdir(root):
        return None, None
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            files[os.path.relpath(path, root)] = file_digest(path)
    whole = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return files, whole


def containers(project):
    """The project's containers by compose service, from `docker inspect`."""
    ids = subprocess.run(["docker", "ps", "-a", "-q", "--filter", "label=com.docker.compose.project=%s" % project],
                         check=True, capture_output=True, text=True).stdout.split()
    if not ids:
        return {}
    found = {}
    for item in json.loads(subprocess.run(["docker", "inspect"] + ids, check=True, capture_output=True,
                                          text=True).stdout):
        service = item["Config"]["Labels"].get("com.docker.compose.service", item["Name"].lstrip("/"))
        found[service] = {"id": item["Id"], "name": item["Name"].lstrip("/"),
                          "started_at": item["State"]["StartedAt"], "status": item["State"]["Status"],
                          "health": item["State"].get("Health", {}).get("Status"),
                          "env": sorted(e for e in item["Config"]["Env"] if "/app/data/" in e)}
    return found


def http(url, body=None):
    """(status, JSON body) of a request to the local stack; status 0 when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}
    except (OSError, ValueError) as err:
        return 0, {"error": str(err)}


def probe(record, with_http=True):
    root = record["root"]
    files, digest = tree(root)
    backup_files, backup_digest = tree(root.rstrip("/") + "-backups")
    data_dir = os.path.join(root, "data")
    names = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
    databases = [n for n in names if is_sqlite_file(os.path.join(data_dir, n))]
    state = {
        "root": root,
        "project": record["project"],
        "tree": files, "digest": digest,
        "backups": backup_files, "backups_digest": backup_digest,
        "data_files": names, "databases": databases,
        "row_counts": {n: row_counts(os.path.join(data_dir, n)) for n in databases},
        "containers": containers(record["project"]),
    }
    if with_http:
        state["health"] = {service: http("http://127.0.0.1:%d/health" % port)[0]
                           for service, port in sorted(record["ports"].items())}
        auth = "http://127.0.0.1:%d/login" % record["ports"]["zoe-auth"]
        state["logins"] = {user: http(auth, {"username": user, "password": password})[0]
                           for user, password in sorted(record["passwords"].items())}
        state["logins"].update({"passcode:%s" % user: http(auth, {"username": user, "passcode": code})[0]
                                for user, code in sorted(record.get("passcodes", {}).items())})
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", help="the demo host's record, <zoe_root>.record.json")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP checks")
    args = parser.parse_args(argv)
    with open(args.record) as handle:
        record = json.load(handle)
    json.dump(probe(record, with_http=not args.no_http), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
