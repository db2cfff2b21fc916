"""compose_services: the compose tool, the writers of data/, and the strays compose cannot stop, on a real stack."""

import json
import os
import random
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from ansible.module_utils.compose_services import (classify, container_entry, detect_compose, docker_reachable,
                                                   inspect_all, normalize_project_name, parse_compose_version,
                                                   probe, project_name, read_env_file, ProjectDirMissingError,
                                                   DataDirMissingError)
from zoe_demo import build_demo_host

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
WRITERS = ["mem-agent", "zoe-auth", "zoe-core", "zoe-mcp-server"]
ALL_SERVICES = WRITERS + ["zoe-ui"]

# Real output of the two tools, captured on hosts that have them.
V1_VERSION = ("docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\n"
              "CPython version: 3.11.2\nOpenSSL version: OpenSSL 3.0.11 19 Sep 2023\n")
V2_VERSION = "Docker Compose version v2.29.7\n"
V2_MISSING = "docker: unknown command: docker compose\n\nRun 'docker --help' for more information\n"


# ----------------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("text, expected", [
    (V1_VERSION, "1.29.2"),
    (V2_VERSION, "2.29.7"),
    ("Docker Compose version 2.24.6+ds1-0ubuntu2\n", "2.24.6+ds1-0ubuntu2"),
    ("", None),
], ids=["v1", "v2", "v2-distro", "empty"])
def test_parse_compose_version(text, expected):
    assert parse_compose_version(text) == expected


def replay(answers):
    """A runner that answers from captured output of real hosts: {command tuple prefix: (rc, out, err)}."""
    def runner(cmd, cwd=None):
        for prefix, answer in answers.items():
            if tuple(cmd[:len(prefix)]) == prefix:
                return answer
        return 127, "", "%s: command not found" % cmd[0]
    return runner


@pytest.mark.parametrize("answers, expected", [
    ({("docker", "compose", "version"): (0, V2_VERSION, ""),
      ("docker-compose", "version"): (0, V1_VERSION, "")}, (["docker", "compose"], "2.29.7")),
    ({("docker", "compose", "version"): (1, "", V2_MISSING),
      ("docker-compose", "version"): (0, V1_VERSION, "")}, (["docker-compose"], "1.29.2")),
    ({("docker", "compose", "version"): (1, "", V2_MISSING)}, (None, None)),
    ({}, (None, None)),
], ids=["v2-preferred", "v1-only", "neither", "no-docker-cli"])
def test_detect_compose_on_hosts(answers, expected):
    assert detect_compose(replay(answers)) == expected


@pytest.mark.parametrize("name, expected", [
    ("zoe", "zoe"),
    ("Zoe_Stack", "zoe_stack"),
    ("zoe.prod-1", "zoeprod-1"),
    ("__zoe", "zoe"),
], ids=["plain", "upper-underscore", "dot", "leading-underscores"])
def test_normalize_project_name(name, expected):
    assert normalize_project_name(name) == expected


def test_project_name_from_env_file_else_directory(tmp_path):
    project_dir = tmp_path / "My.Zoe"
    project_dir.mkdir()
    assert project_name(str(project_dir)) == "myzoe"
    (project_dir / ".env").write_text("# comment\nexport COMPOSE_PROJECT_NAME='zoe-prod'  \nX=1 # c\n")
    assert project_name(str(project_dir)) == "zoe-prod"
    assert project_name(str(project_dir), "explicit") == "explicit"
    assert read_env_file(str(project_dir / ".env")) == {"COMPOSE_PROJECT_NAME": "zoe-prod", "X": "1"}


@pytest.mark.parametrize("make, error", [
    (lambda tmp: (str(tmp / "missing"), str(tmp)), ProjectDirMissingError),
    (lambda tmp: (str(tmp), str(tmp / "missing")), DataDirMissingError),
], ids=["no-project-dir", "no-data-dir"])
def test_bad_paths_fail_clearly(tmp_path, make, error):
    with pytest.raises(error, match="does not exist or is not a directory"):
        probe(*make(tmp_path))


# ---------------------------------------------------------------------------------- real engine

def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def remove_project_containers(project):
    ids = run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % project]).stdout.split()
    if ids:
        run(["docker", "rm", "-f"] + ids)


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    """A real demo stack with a random project name and port base; torn down whatever happens."""
    root = str(tmp_path_factory.mktemp("compose") / "zoe")
    project = "zcs%s" % uuid.uuid4().hex[:8]
    build_demo_host(root, seed=3, project=project, port_base=20000 + random.randrange(0, 4000) * 5)
    try:
        up = run([PYTHON, os.path.join(REPO, "tools", "demo_host.py"), "up", "--root", root], cwd=REPO)
        assert up.returncode == 0, up.stderr
        yield {"root": root, "data": os.path.join(root, "data"), "project": project}
    finally:
        run([PYTHON, os.path.join(REPO, "tools", "demo_host.py"), "down", "--root", root], cwd=REPO)
        remove_project_containers(project)


@pytest.fixture()
def container(images):
    """Start throwaway containers (`docker run -d ...`); every one is removed afterwards."""
    started = []

    def start(*args):
        name = "zcs-stray-%s" % uuid.uuid4().hex[:8]
        result = run(["docker", "run", "-d", "--name", name] + list(args))
        assert result.returncode == 0, result.stderr
        started.append(name)
        return name

    yield start
    for name in started:
        run(["docker", "rm", "-f", name])


def ours(result, project):
    return {c["service"]: c for c in result["containers"] if c["project"] == project}


@pytest.mark.docker
def test_stack_writers_running_services_and_tool(stack):
    result = probe(stack["root"], stack["data"])
    assert result["project"] == stack["project"]
    assert result["docker_reachable"] is True and result["docker_error"] is None
    assert result["compose_command"] == detect_compose()[0] and result["compose_version"]
    assert result["services"] == ALL_SERVICES
    assert result["writers"] == WRITERS
    assert result["running_services"] == ALL_SERVICES
    assert [s for s in result["strays"] if s["project"] == stack["project"]] == []
    containers = ours(result, stack["project"])
    assert sorted(containers) == ALL_SERVICES
    assert all(c["compose_managed"] and c["running"] and c["status"] == "running" for c in containers.values())
    assert containers["zoe-core"]["health"] == "healthy"
    assert containers["zoe-ui"]["mounts_data"] is False
    assert containers["zoe-core"]["started_at"].endswith("Z")


@pytest.mark.docker
def test_data_dir_through_a_symlink_is_the_same_directory(stack, tmp_path):
    link = tmp_path / "zoe-link"
    link.symlink_to(stack["root"])
    result = probe(str(link), str(link / "data"), project=stack["project"])
    assert result["writers"] == WRITERS


@pytest.mark.docker
def test_docker_run_container_on_data_is_a_stray(stack, images, container):
    name = container("-v", "%s:/app/data" % stack["data"], images["base"], "sleep", "300")
    elsewhere = container("-v", "%s:/app/other" % os.path.join(stack["root"], "services"), images["base"],
                          "sleep", "300")
    result = probe(stack["root"], stack["data"])
    strays = {s["name"]: s for s in result["strays"]}
    assert name in strays and strays[name]["project"] is None
    entry = {c["name"]: c for c in result["containers"]}[name]
    assert entry["health"] == "none" and entry["compose_managed"] is False and entry["mounts_data"] is True
    assert elsewhere not in strays
    assert result["writers"] == WRITERS  # a stray is never taken for a service


@pytest.mark.docker
def test_a_file_inside_data_counts_as_mounting_data(stack, images, container):
    name = container("-v", "%s:/x/zoe.db:ro" % os.path.join(stack["data"], "zoe.db"), images["base"], "sleep", "300")
    assert name in {s["name"] for s in probe(stack["root"], stack["data"])["strays"]}


@pytest.mark.docker
def test_one_off_compose_run_container_is_a_stray(stack):
    command = detect_compose()[0] + ["-p", stack["project"], "--project-directory", stack["root"],
                                     "-f", os.path.join(stack["root"], "docker-compose.yml")]
    result = run(command + ["run", "-d", "--no-deps", "--entrypoint", "sleep", "zoe-core", "300"], cwd=stack["root"])
    assert result.returncode == 0, result.stderr
    try:
        probed = probe(stack["root"], stack["data"])
        oneoffs = [s for s in probed["strays"] if s["project"] == stack["project"]]
        assert len(oneoffs) == 1 and oneoffs[0]["service"] == "zoe-core"
        assert probed["writers"] == WRITERS
    finally:
        ids = run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % stack["project"],
                   "--filter", "label=com.docker.compose.oneoff=True"]).stdout.split()
        if ids:
            run(["docker", "rm", "-f"] + ids)


@pytest.mark.docker
def test_a_stopped_service_is_not_a_writer(stack):
    name = "%s-zoe-auth" % stack["project"]
    assert run(["docker", "stop", name]).returncode == 0
    try:
        result = probe(stack["root"], stack["data"])
        assert result["writers"] == ["mem-agent", "zoe-core", "zoe-mcp-server"]
        assert "zoe-auth" not in result["running_services"]
        auth = ours(result, stack["project"])["zoe-auth"]
        assert auth["running"] is False and auth["status"] == "exited" and auth["mounts_data"] is True
    finally:
        assert run(["docker", "start", name]).returncode == 0


@pytest.mark.docker
def test_classify_from_real_inspect_documents(stack):
    entries = [container_entry(d, os.path.realpath(stack["data"]), stack["project"]) for d in inspect_all()]
    split = classify(entries, stack["project"], None)  # services unknown: every labelled service counts
    assert set(WRITERS) <= set(split["writers"])


def test_unreachable_engine_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix://%s" % (tmp_path / "no-such.sock"))
    reachable, error = docker_reachable()
    assert reachable is False and error
    (tmp_path / "data").mkdir()
    result = probe(str(tmp_path), str(tmp_path / "data"))
    assert result["docker_reachable"] is False and result["containers"] == [] and result["writers"] == []


# ----------------------------------------------------------------------------- module, bare python3

def run_module(args, check=False, env=None):
    """Run compose_services through `ansible localhost` on the bare system python3; (rc, result)."""
    cmd = [ANSIBLE, "localhost", "-m", "compose_services", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3"] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               **(env or {}))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.docker
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_module_on_bare_python3(stack, check):
    rc, result = run_module({"project_dir": stack["root"], "data_dir": stack["data"]}, check=check)
    assert rc == 0, result
    assert result["changed"] is False
    assert result["writers"] == WRITERS and result["project"] == stack["project"]
    assert result["compose_command"] == detect_compose()[0]


def test_module_unreachable_engine_and_bad_path(tmp_path):
    (tmp_path / "data").mkdir()
    rc, result = run_module({"project_dir": str(tmp_path), "data_dir": str(tmp_path / "data")},
                            env={"DOCKER_HOST": "unix://%s" % (tmp_path / "no-such.sock")})
    assert rc == 0 and result["docker_reachable"] is False and result["docker_error"]
    rc, result = run_module({"project_dir": str(tmp_path / "nope"), "data_dir": str(tmp_path)})
    assert rc != 0 and result["msg"] == "project_dir %s does not exist or is not a directory" % (tmp_path / "nope")


def test_quick_probe_skips_compose_but_sees_the_same_containers(tmp_path):
    """quick=True answers without a compose start-up and with the same container states."""
    from ansible.module_utils.compose_services import probe

    calls = []

    def runner(cmd, cwd=None, timeout=None):
        calls.append(cmd)
        if cmd[:2] == ["docker", "info"]:
            return 0, "{}", ""
        if cmd[:3] == ["docker", "ps", "-aq"] or cmd[:2] == ["docker", "ps"]:
            return 0, "", ""
        return 1, "", "unexpected"

    data = tmp_path / "data"
    data.mkdir()
    result = probe(str(tmp_path), str(data), project="p", runner=runner, quick=True)
    assert result["compose_command"] is None and result["services"] is None
    assert not [c for c in calls if "compose" in " ".join(c) or c[0] == "docker-compose"]


# ------------------------------------------------------------------------------------ stop and start

DEPENDS = {"zoe-auth": ["zoe-core"], "zoe-mcp-server": ["zoe-core"], "mem-agent": ["zoe-core"],
           "zoe-ui": ["zoe-core", "zoe-auth"]}


def health(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture()
def own_stack(images, tmp_path):
    """A demo stack of its own for the tests that stop and start it."""
    root = str(tmp_path / "zoe")
    project = "zcl%s" % uuid.uuid4().hex[:8]
    record = build_demo_host(root, seed=5, project=project, port_base=20000 + random.randrange(0, 4000) * 5)
    try:
        up = run([PYTHON, os.path.join(REPO, "tools", "demo_host.py"), "up", "--root", root], cwd=REPO)
        assert up.returncode == 0, up.stderr
        yield {"root": root, "data": os.path.join(root, "data"), "project": project, "ports": record["ports"]}
    finally:
        run([PYTHON, os.path.join(REPO, "tools", "demo_host.py"), "down", "--root", root], cwd=REPO)
        remove_project_containers(project)


@pytest.mark.docker
def test_stop_in_layers_then_start_until_every_health_answers(own_stack):
    s = own_stack
    args = {"project_dir": s["root"], "data_dir": s["data"], "services": ["zoe-auth", "mem-agent", "zoe-mcp-server",
                                                                          "zoe-core"]}
    rc, result = run_module(dict(args, state="stopped", depends_on=DEPENDS))
    assert rc == 0, result
    assert result["changed"] is True and result["layers"] == [["zoe-auth", "mem-agent", "zoe-mcp-server"], ["zoe-core"]]
    probed = probe(s["root"], s["data"])
    assert probed["writers"] == [] and probed["running_services"] == ["zoe-ui"]
    assert all(health(s["ports"][name]) == 0 for name in WRITERS)

    rc, again = run_module(dict(args, state="stopped", depends_on=DEPENDS))
    assert rc == 0 and again["changed"] is False and again["stopped"] == [] and again["layers"] == []

    before = {c["service"]: c["id"] for c in probe(s["root"], s["data"])["containers"] if c["project"] == s["project"]}
    rc, result = run_module(dict(args, state="started", compose_command=detect_compose()[0]))
    assert rc == 0, result
    assert result["changed"] is True and result["started"] == WRITERS and result["recreated"] == []
    assert sorted(result["ready"]) == WRITERS and set(result["ready"].values()) <= {"probed", "healthy"}
    # Ready means answering: every /health answers 200 the moment the module returns.
    assert {name: health(s["ports"][name]) for name in ALL_SERVICES} == {name: 200 for name in ALL_SERVICES}

    rc, again = run_module(dict(args, state="started"))
    assert rc == 0 and again["changed"] is False and again["started"] == []
    after = {c["service"]: c["id"] for c in probe(s["root"], s["data"])["containers"] if c["project"] == s["project"]}
    assert after == before


@pytest.mark.docker
def test_stop_and_start_in_check_mode_change_nothing(own_stack):
    s = own_stack
    args = {"project_dir": s["root"], "data_dir": s["data"], "services": WRITERS}
    before = probe(s["root"], s["data"])["containers"]
    rc, result = run_module(dict(args, state="stopped"), check=True)
    assert rc == 0 and result["changed"] is True and sorted(result["stopped"]) == WRITERS
    rc, result = run_module(dict(args, state="started"), check=True)
    assert rc == 0 and result["changed"] is False and result["started"] == []
    after = probe(s["root"], s["data"])["containers"]
    assert [(c["id"], c["started_at"], c["running"]) for c in after] == [
        (c["id"], c["started_at"], c["running"]) for c in before]


SLOW_STARTER = """\
services:
  slow:
    image: zoe-consolidate/service:latest
    environment:
      SERVICE_NAME: slow
      ZOE_NO_DATABASE: "1"
    command: ["/bin/sh", "-c", "sleep %(delay)s && touch /tmp/ready && exec python3 -u /opt/zoe/app.py"]
    healthcheck:
      # The real Zoe compose's style: 30 s interval, so the engine's first check comes 30 s after the start.
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 30s
      timeout: 10s
      retries: 3
"""


@pytest.mark.docker
def test_ready_is_asked_not_waited_for(images, tmp_path):
    """started returns once the healthcheck passes: after the service is ready (3 s), long before the engine's 30 s."""
    delay = 3
    (tmp_path / "data").mkdir()
    (tmp_path / "docker-compose.yml").write_text(SLOW_STARTER % {"delay": delay})
    project = "zcr%s" % uuid.uuid4().hex[:8]
    args = {"project_dir": str(tmp_path), "data_dir": str(tmp_path / "data"), "project": project,
            "services": ["slow"], "state": "started", "timeout": 60}
    try:
        rc, result = run_module(args)
        assert rc == 0, result
        assert result["ready"] == {"slow": "probed"}
        assert delay <= result["seconds"] < 20, result["seconds"]
        engine = run(["docker", "inspect", "-f", "{{.State.Health.Status}}", "%s_slow_1" % project]).stdout.strip() \
            or run(["docker", "inspect", "-f", "{{.State.Health.Status}}", "%s-slow-1" % project]).stdout.strip()
        assert engine == "starting"   # the engine has not run its first check yet
    finally:
        remove_project_containers(project)


@pytest.mark.docker
def test_start_fails_when_a_service_never_becomes_healthy(images, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "docker-compose.yml").write_text(SLOW_STARTER % {"delay": 3600})
    project = "zcf%s" % uuid.uuid4().hex[:8]
    try:
        rc, result = run_module({"project_dir": str(tmp_path), "data_dir": str(tmp_path / "data"), "project": project,
                                 "services": ["slow"], "state": "started", "timeout": 3})
        assert rc != 0
        assert result["msg"] == "not running and healthy after 3 s: slow (running/starting)"
    finally:
        remove_project_containers(project)


@pytest.mark.docker
def test_stop_fails_while_another_container_still_mounts_data(own_stack, images, container):
    s = own_stack
    name = container("-v", "%s:/app/data" % s["data"], images["base"], "sleep", "300")
    rc, result = run_module({"project_dir": s["root"], "data_dir": s["data"], "state": "stopped",
                             "services": ["zoe-mcp-server"]})
    assert rc != 0
    assert result["msg"] == "still running and mounting %s after the stop: %s" % (os.path.realpath(s["data"]), ", ".join(
        sorted(["%s-%s" % (s["project"], svc) for svc in WRITERS if svc != "zoe-mcp-server"] + [name])))


@pytest.mark.docker
def test_healthy_waits_until_a_service_is_ready_and_starts_nothing(images, tmp_path):
    """state=healthy: started by compose itself, the service is found ready by its own healthcheck (3 s) long before
    the engine's first check (30 s); a service that never gets ready fails with its state; nothing is started."""
    delay = 3
    (tmp_path / "data").mkdir()
    (tmp_path / "docker-compose.yml").write_text(SLOW_STARTER % {"delay": delay})
    project = "zch%s" % uuid.uuid4().hex[:8]
    command = detect_compose()[0]
    args = {"project_dir": str(tmp_path), "data_dir": str(tmp_path / "data"), "project": project,
            "services": ["slow"], "state": "healthy", "timeout": 60}
    try:
        rc, result = run_module(dict(args, timeout=3))
        assert rc != 0 and result["msg"] == "not running and healthy after 3 s: slow (no container)"
        assert run(["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % project]).stdout == ""
        up = run(command + ["-p", project, "--project-directory", str(tmp_path), "up", "-d"], cwd=str(tmp_path))
        assert up.returncode == 0, up.stderr
        rc, result = run_module(args)
        assert rc == 0, result
        assert result["changed"] is False and result["ready"] == {"slow": "probed"}
    finally:
        remove_project_containers(project)
