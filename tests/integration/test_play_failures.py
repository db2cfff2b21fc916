"""The play under failure: automatic rollback after the merge, the run lock, bad zoe_root.

Real demo host, real containers, real HTTP; each test leaves the host as it found it.
"""

import glob
import json
import os
import socket
import subprocess

import pytest

from ansible.module_utils.run_lock import lock_content, process_start_time

from zoe_host import ZoeHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("fail"))
    zoe.initial_digest = zoe.digest()
    yield zoe
    zoe.destroy()


def write_lock(host, run_id, pid):
    os.makedirs(host.backups, mode=0o700, exist_ok=True)
    path = os.path.join(host.backups, ".consolidate.lock")
    owner = {"controller": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid)}
    with open(path, "wb") as handle:
        handle.write(lock_content(run_id, owner))
    return path


def test_a_failed_login_after_the_merge_rolls_the_host_back(host):
    wrong = json.dumps({"zoe_smoke_logins": [{"username": "admin", "password": "not-the-password"}]})
    result = host.playbook("consolidate.yml", "-e", wrong)
    assert result.returncode != 0
    out = result.stdout
    assert "Login failed" in out and "admin" in out
    assert "rolled back to snapshot" in out and "old stack is healthy again" in out
    assert "not-the-password" not in out + result.stderr
    assert host.digest() == host.initial_digest
    assert host.login("admin") == 200 and host.login("testuser") == 401
    assert all(running for _, _, running in host.containers().values())
    report = json.load(open(sorted(glob.glob(os.path.join(host.reports, "*.json")))[-1]))
    assert report["rolled_back"] is True and report["outcome"].startswith("failed")
    assert report["downtime_seconds"] > 0


def test_a_second_run_is_refused_while_one_holds_the_lock(host):
    holder = subprocess.Popen(["sleep", "300"])
    try:
        lock = write_lock(host, "other-run", holder.pid)
        before = host.containers()
        result = host.playbook("consolidate.yml")
        assert result.returncode != 0
        assert "another consolidation run (run_id other-run" in result.stdout
        assert "it is still running" in result.stdout
        assert host.digest() == host.initial_digest
        assert host.containers() == before
        os.unlink(lock)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_recovered(host):
    dead = subprocess.Popen(["sleep", "300"])
    pid = dead.pid
    lock = write_lock(host, "killed-run", pid)
    dead.kill()
    dead.wait()
    result = host.playbook("consolidate.yml", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert os.path.exists(lock), "a check run must not touch the lock"
    result = host.playbook("consolidate.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not os.path.exists(lock)
    assert host.data_files() == ["memory.db", "zoe.db"]
    assert host.login("testuser") == 200


def test_a_wrong_zoe_root_is_a_clear_error_and_changes_nothing(host, tmp_path):
    empty = tmp_path / "not-zoe"
    empty.mkdir()
    host.write_inventory(zoe_root=str(empty))
    try:
        before = host.digest()
        result = host.playbook("consolidate.yml")
        assert result.returncode != 0
        assert "is not a Zoe checkout" in result.stdout and "Nothing was changed" in result.stdout
        assert host.digest() == before and os.listdir(str(empty)) == []
        report = json.load(open(sorted(glob.glob(os.path.join(host.reports, "*.json")))[-1]))
        assert report["outcome"].startswith("failed") and "is not a Zoe checkout" in report["outcome"]
    finally:
        host.write_inventory()
