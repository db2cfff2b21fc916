"""The demo Zoe service image answers like the real services: real container, real database, real HTTP."""

import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from zoe_demo import DEMO_PASSCODES, DEMO_PASSWORDS, build_demo_host

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
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("svc") / "zoe")
    return build_demo_host(root, seed=5)


@pytest.fixture(scope="module")
def demo_data(demo):
    return os.path.join(demo["root"], "data")


def test_login_against_auth_db_fails_for_testuser_as_on_the_real_host(run_service, demo, demo_data):
    base = run_service(demo_data, "auth.db")
    assert http(base + "/health")[0] == 200
    status, body = http(base + "/login", {"username": "admin", "password": DEMO_PASSWORDS["admin"]})
    assert status == 200 and body["role"] == "admin" and body["user_id"].startswith("usr_")
    assert http(base + "/login", {"username": "admin", "passcode": DEMO_PASSCODES["admin"]})[0] == 200
    assert http(base + "/login", {"username": "admin", "passcode": "000000"})[0] == 401
    for user in set(DEMO_PASSWORDS) - set(demo["users"]["auth.db"]):
        assert http(base + "/login", {"username": user, "password": DEMO_PASSWORDS[user]})[0] == 401, user
    assert http(base + "/login", {"username": "admin", "password": "wrong"})[0] == 401
    assert http(base + "/count/users") == (200, {"table": "users", "rows": len(demo["users"]["auth.db"])})


def test_login_reads_the_columns_zoe_auth_reads(run_service, demo_data):
    """zoe.db's own users table lacks role, passcode_hash, locked_until...: zoe-auth's query fails on it."""
    base = run_service(demo_data, "zoe.db")
    status, body = http(base + "/login", {"username": "admin", "password": DEMO_PASSWORDS["admin"]})
    assert (status, body) == (500, {"error": "OperationalError"})
    assert http(base + "/count/people") == (200, {"table": "people", "rows": 17})


def test_inactive_or_locked_user_cannot_log_in(run_service, tmp_path, demo_data):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(os.path.join(demo_data, "auth.db"), data / "auth.db")
    conn = sqlite3.connect(str(data / "auth.db"))
    conn.execute("UPDATE users SET locked_until = '2999-01-01T00:00:00' WHERE username = 'admin'")
    conn.execute("UPDATE users SET is_active = 0 WHERE username = 'user'")
    conn.commit()
    conn.close()
    base = run_service(str(data), "auth.db")
    for user in ("admin", "user"):
        assert http(base + "/login", {"username": user, "password": DEMO_PASSWORDS[user]})[0] == 401, user


def test_missing_database_is_unhealthy_and_never_created(run_service, demo_data):
    base = run_service(demo_data, "retired.db")
    status, body = http(base + "/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert not os.path.exists(os.path.join(demo_data, "retired.db"))


def test_bad_table_name_is_refused(run_service, demo_data):
    base = run_service(demo_data, "zoe.db")
    assert http(base + "/count/users%22--")[0] == 400
