"""A throwaway Zoe host for tests: the demo tree in a temp dir, its own compose project and ports,
its own inventory, and helpers to run the real playbooks against it and look at the result."""

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import yaml

from zoe_demo import DEMO_PASSCODES, DEMO_PASSWORDS, build_demo_host

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
RECAP_RE = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                      r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)", re.M)


def free_port_base(count=5):
    """A base port with `count` free consecutive ports on 127.0.0.1."""
    for _ in range(200):
        base = 20000 + 10 * (uuid.uuid4().int % 4000)
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            for sock in socks:
                sock.close()
            return base
        except OSError:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def tree_digest(root, exclude=()):
    """sha256 over every path, type, mode and content under root (symlinks by target).

    A -shm file counts by its presence only: it is SQLite's wal-index, shared memory that every reader of
    a WAL database rewrites (the services, the live snapshot) and that SQLite rebuilds from the -wal.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in exclude)
        for name in sorted(files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest.update(("%s\0%o\0" % (os.path.relpath(path, root), st.st_mode)).encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif name.endswith("-shm"):
                continue
            else:
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()


class ZoeHost:
    def __init__(self, base_dir, name=None, start=True, **generator):
        self.name = name or "zoe-test-%s" % uuid.uuid4().hex[:8]
        self.base = str(base_dir)
        self.root = os.path.join(self.base, "zoe")
        self.backups = self.root + "-backups"
        self.port_base = free_port_base()
        self.project = self.name
        self.record = build_demo_host(self.root, project=self.project, port_base=self.port_base, **generator)
        # What the generator planted, so tests derive their expectations instead of repeating numbers:
        # every user of every database (zoe.db holds them all after the merge) and those zoe-auth
        # can log in before it (auth.db's).
        self.users = sorted({name for names in self.record["users"].values() for name in names})
        self.auth_users = sorted(self.record["users"]["auth.db"])
        self.inventory = os.path.join(self.base, "inventory")
        self.reports = os.path.join(self.base, "reports")
        self.write_inventory()
        if start:
            self.demo("up")

    # -- setup ------------------------------------------------------------------------------------
    def write_inventory(self, **extra_vars):
        os.makedirs(os.path.join(self.inventory, "group_vars"), exist_ok=True)
        shutil.copy(os.path.join(REPO, "inventory", "demo", "group_vars", "zoe_hosts.yml"),
                    os.path.join(self.inventory, "group_vars", "zoe_hosts.yml"))
        host = {"ansible_connection": "local", "ansible_python_interpreter": os.path.join(VENV_BIN, "python"),
                "zoe_root": self.root, "zoe_auth_url": "http://127.0.0.1:%d" % (self.port_base + 1)}
        host.update(extra_vars)
        with open(os.path.join(self.inventory, "hosts.yml"), "w") as handle:
            yaml.safe_dump({"zoe_hosts": {"hosts": {self.name: host}}}, handle)

    def demo(self, command):
        subprocess.run([os.path.join(VENV_BIN, "python"), os.path.join(REPO, "tools", "demo_host.py"), command,
                        "--root", self.root], check=True, capture_output=True, text=True)

    def destroy_containers(self):
        """compose down, then remove any container of the project left (those the play recreated too)."""
        try:
            self.demo("down")
        except subprocess.CalledProcessError:
            pass
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % self.project],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f"] + ids, capture_output=True)

    def destroy(self):
        self.destroy_containers()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- running the playbooks --------------------------------------------------------------------
    def playbook(self, name, *args, env=None, timeout=600):
        environ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                       ANSIBLE_FORCE_COLOR="0", PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
        environ.update(env or {})
        cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory, os.path.join(REPO, name),
               "-e", "report_dir=%s" % self.reports] + list(args)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout)
        proc.seconds = time.monotonic() - started
        match = [m.groupdict() for m in RECAP_RE.finditer(proc.stdout) if m.group("host") == self.name]
        proc.recap = {k: int(v) for k, v in match[-1].items() if k != "host"} if match else None
        return proc

    # -- looking at the host ----------------------------------------------------------------------
    def digest(self):
        return tree_digest(self.root)

    def data_files(self):
        return sorted(os.listdir(os.path.join(self.root, "data")))

    def containers(self):
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % self.project],
                             check=True, capture_output=True, text=True).stdout.split()
        if not ids:
            return {}
        info = json.loads(subprocess.run(["docker", "inspect"] + ids, check=True, capture_output=True, text=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: (c["Id"], c["State"]["StartedAt"], c["State"]["Running"])
                for c in info}

    def http(self, service, path, body=None):
        port = self.record["ports"][service]
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0

    def login(self, user):
        return self.http("zoe-auth", "/login", {"username": user, "password": DEMO_PASSWORDS[user]})

    def login_passcode(self, user):
        """zoe-auth's quick login: works only while the passcodes row still points at the user's key."""
        return self.http("zoe-auth", "/login", {"username": user, "passcode": DEMO_PASSCODES[user]})

    def query(self, database, sql):
        conn = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.root, "data", database), uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
