"""downtime_window through `ansible` on the bare system python3, against a real demo stack: check mode changes
nothing; a failure before the rollback point starts again the services it stopped and changes no byte; a window with
nothing to merge stops and starts exactly the writers, recreating none (their configuration did not change)."""

import json
import os
import subprocess

import pytest

from zoe_host import REPO, ZoeHost

pytestmark = pytest.mark.docker

ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
WRITERS = ["mem-agent", "zoe-auth", "zoe-core", "zoe-mcp-server"]
DEPENDS = {"zoe-auth": ["zoe-core"], "zoe-mcp-server": ["zoe-core"], "mem-agent": ["zoe-core"]}


def run_module(args, check=False):
    """downtime_window through `ansible localhost` on /usr/bin/python3 (what a Pi has); (rc, result)."""
    cmd = [ANSIBLE, "localhost", "-m", "downtime_window", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3"] + (["--check", "--diff"] if check else [])
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def compose_command():
    docker = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if docker.returncode == 0 else ["docker-compose"]


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("window"))
    yield zoe
    zoe.destroy()


def args(host, backup_root=None):
    return {
        "compose": {"project": host.project, "project_dir": host.root, "data_dir": os.path.join(host.root, "data"),
                    "command": compose_command()},
        "stop": {"services": WRITERS, "depends_on": DEPENDS},
        "start": {"services": ["zoe-core"] + [s for s in WRITERS if s != "zoe-core"], "timeout": 120},
        "rollback_point": {"backup_root": backup_root or host.backups, "snapshot": "20261204T000000Z-window",
                           "paths": [os.path.join(host.root, "data"), os.path.join(host.root, "docker-compose.yml")]},
        "journal": os.path.join(host.backups, "runs", "window.json"),
    }


def test_check_mode_lists_the_window_and_touches_nothing(host):
    containers, digest = host.containers(), host.digest()
    rc, result = run_module(args(host), check=True)
    assert rc == 0, result
    assert result["changed"] is True
    assert result["plan"]["stop"] == WRITERS and result["plan"]["rollback_point"]["snapshot_id"] == "20261204T000000Z-window"
    assert "running: zoe-core" in result["diff"][0]["before"]
    assert host.containers() == containers and host.digest() == digest
    assert not os.path.exists(host.backups)


def test_a_failed_rollback_point_starts_the_stopped_services_again(host):
    containers, digest = host.containers(), host.digest()
    rc, result = run_module(args(host, backup_root=os.path.join(host.root, "data", "backups")))
    assert rc != 0
    assert result["failed_step"] == "rollback_point" and result["host_changed"] is False
    assert "Nothing was changed; the stopped services were started again" in result["msg"], result["msg"]
    assert result["stopped"] == sorted(WRITERS) or sorted(result["stopped"]) == sorted(WRITERS)
    assert sorted(result["started_again"]) == sorted(WRITERS)
    now = host.containers()
    assert {s: (cid, running) for s, (cid, _at, running) in now.items()} == {
        s: (cid, True) for s, (cid, _at, _running) in containers.items()}     # same containers, running again
    assert all(now[s][1] != containers[s][1] for s in WRITERS)                # each was stopped and started
    assert host.digest() == digest
    assert host.login("admin") == 200


def test_a_window_with_nothing_to_merge_stops_and_starts_the_writers(host):
    containers = host.containers()
    rc, result = run_module(args(host))
    assert rc == 0, result
    assert [s["step"] for s in result["steps"]] == ["stop", "rollback_point", "merge", "retire", "install", "start"]
    assert sorted(result["stopped"]) == sorted(WRITERS) and result["layers"][-1] == ["zoe-core"]
    assert sorted(result["started"]) == sorted(WRITERS) and result["recreated"] == []
    assert result["downtime_seconds"] > 0 and result["merge"] is None
    assert os.path.isfile(os.path.join(host.backups, "20261204T000000Z-window", "manifest.json"))
    with open(os.path.join(host.backups, "runs", "window.json")) as handle:
        assert json.load(handle)["done"] == [s["step"] for s in result["steps"]]
    now = host.containers()
    assert {s: cid for s, (cid, _at, _r) in now.items()} == {s: cid for s, (cid, _at, _r) in containers.items()}
    assert host.login("admin") == 200
