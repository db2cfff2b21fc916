"""The demo Zoe service image answers like the real services: real container, real database, real HTTP."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from zoe_demo import DEMO_PASSWORDS, build_demo_host

pytestmark = pytest.mark.docker


def http(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture()
def run_service(images, tmp_path):
    """Start a service container on a data dir; every container is removed afterwards."""
    started = []

    def start(data_dir, database):
        name = "zoe-test-%s" % uuid.uuid4().hex[:10]
        subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8000",
                        "-v", "%s:/app/data" % data_dir, "-e", "DATABASE_PATH=/app/data/%s" % database,
                        "-e", "SERVICE_NAME=zoe-auth", images["service"]], check=True, capture_output=True)
        started.append(name)
        port = subprocess.run(["docker", "port", name, "8000/tcp"], check=True, capture_output=True,
                              text=True).stdout.split(":")[-1].strip()
        base = "http://127.0.0.1:%s" % port
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http(base + "/health")
                return base
            except OSError:
                time.sleep(0.2)
        raise AssertionError("service did not answer within 30 s")

    yield start
    for name in started:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("svc") / "zoe")
    build_demo_host(root, seed=5)
    return os.path.join(root, "data")


def test_login_against_auth_db_fails_for_testuser_as_on_the_real_host(run_service, demo_data):
    base = run_service(demo_data, "auth.db")
    assert http(base + "/health")[0] == 200
    assert http(base + "/login", {"username": "admin", "password": DEMO_PASSWORDS["admin"]})[0] == 200
    assert http(base + "/login", {"username": "testuser", "password": DEMO_PASSWORDS["testuser"]})[0] == 401
    assert http(base + "/login", {"username": "admin", "password": "wrong"})[0] == 401
    assert http(base + "/count/users") == (200, {"table": "users", "rows": 2})


def test_login_against_zoe_db_works_for_every_user(run_service, demo_data):
    base = run_service(demo_data, "zoe.db")
    for user, password in DEMO_PASSWORDS.items():
        assert http(base + "/login", {"username": user, "password": password})[0] == 200, user
    assert http(base + "/count/people") == (200, {"table": "people", "rows": 17})


def test_missing_database_is_unhealthy_and_never_created(run_service, demo_data):
    base = run_service(demo_data, "retired.db")
    status, body = http(base + "/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert not os.path.exists(os.path.join(demo_data, "retired.db"))


def test_bad_table_name_is_refused(run_service, demo_data):
    base = run_service(demo_data, "zoe.db")
    assert http(base + "/count/users%22--")[0] == 400
