"""zoe_audit ended by a signal, run through Ansible as the play runs it (pipelining), with TMPDIR in the test's
own directory: SIGTERM ends the module through its cleanup (its copies and the payload Ansible unpacked are
removed); after a SIGKILL nothing can clean up, and the next audit removes what the killed one left.
Run: .venv/bin/pytest -q tests/integration/test_zoe_audit_signals.py
"""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from ansible.module_utils.zoe_audit import LIVE_MARK, PAYLOAD_PREFIX, WORKDIR_PREFIX

from play_process import kill_tree, send, signal_tree
from zoe_host import REPO, VENV_BIN

ANSIBLE = os.path.join(VENV_BIN, "ansible")

# A 300 MB database and two Ansible runs each: not for the fast loop.
pytestmark = pytest.mark.slow


def start_a_slow_audit(tmp_path):
    """`ansible localhost -m zoe_audit` as the play runs it (pipelining) with TMPDIR in tmp_path, over a 300 MB
    database; once its payload and its copies exist, its whole process tree is frozen (SIGSTOP), so that a loaded
    machine cannot let the audit finish before the test signals it. Returns (process, command, env, tmpdir,
    leftovers seen once frozen, frozen pids)."""
    root = tmp_path / "zoe"
    data = root / "data"
    data.mkdir(parents=True)
    for name, statement, rows in (("zoe.db", "INSERT INTO blobs VALUES (randomblob(16))", 3),
                                  ("memory.db", "INSERT INTO blobs VALUES (randomblob(1 << 20))", 300)):
        conn = sqlite3.connect(str(data / name))
        conn.execute("CREATE TABLE blobs (b BLOB)")
        conn.executemany(statement, [()] * rows)
        conn.commit()
        conn.close()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    args = {"root": str(root), "data_dir": str(data), "keep": ["zoe.db", "memory.db"], "fold": ["auth.db"]}
    cmd = [ANSIBLE, "localhost", "-m", "zoe_audit", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3"]
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    leftovers, frozen = [], set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(audit_dirs(tmpdir)) == 2:
            frozen = signal_tree(proc.pid, signal.SIGSTOP)
            leftovers = audit_dirs(tmpdir)
            break
        time.sleep(0.005)
    return proc, cmd, env, tmpdir, leftovers, frozen


def audit_dirs(tmpdir):
    return sorted(n for n in os.listdir(str(tmpdir)) if n.startswith((PAYLOAD_PREFIX, WORKDIR_PREFIX)))


def module_process(tmpdir):
    """The pid of the module: the process holding the live mark of its payload directory open."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                targets = [os.readlink("/proc/%s/fd/%s" % (name, fd)) for fd in os.listdir("/proc/%s/fd" % name)]
                if any(t.startswith(os.path.join(str(tmpdir), PAYLOAD_PREFIX)) and t.endswith(LIVE_MARK)
                       for t in targets):
                    return int(name)
            except OSError:
                continue
    return None


def test_an_audit_ended_with_sigterm_removes_its_payload_and_copies(tmp_path):
    proc, _cmd, _env, tmpdir, leftovers, frozen = start_a_slow_audit(tmp_path)
    assert len(leftovers) == 2, "the audit ended before it could be signalled: %s" % leftovers
    os.kill(module_process(tmpdir), signal.SIGTERM)
    send(frozen, signal.SIGCONT)
    assert proc.wait(timeout=120) != 0
    assert os.listdir(str(tmpdir)) == []


def test_an_audit_killed_with_sigkill_leaves_nothing_once_the_next_audit_ran(tmp_path):
    """Through Ansible as the play runs it (pipelining): the payload Ansible unpacks and the audit's copies."""
    proc, cmd, env, tmpdir, leftovers, _frozen = start_a_slow_audit(tmp_path)
    kill_tree(proc.pid)
    proc.wait()
    assert len(leftovers) == 2 and leftovers[0].startswith(PAYLOAD_PREFIX) and leftovers[1].startswith(WORKDIR_PREFIX), \
        "the audit ended before it could be killed: %s" % leftovers
    assert sorted(os.listdir(str(tmpdir))) == leftovers   # SIGKILL: nothing could clean up
    done = subprocess.run(cmd, cwd=REPO, env=dict(env, ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                                  ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    result = json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert sorted(os.path.basename(p) for p in result["leftovers_removed"]) == leftovers
    assert [n for n in os.listdir(str(tmpdir)) if n.startswith((PAYLOAD_PREFIX, WORKDIR_PREFIX))] == []
