"""consolidate.yml and rollback.yml against a real demo Zoe host: real files, real containers, real HTTP.

One host goes through the operator's sequence: dry run -> run -> rerun -> rollback.yml -> rollback.yml again.
"""

import glob
import json
import os
import re

import pytest

from zoe_demo import FOLD_DATABASES

from zoe_host import ZoeHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("play"))
    zoe.initial_digest = zoe.digest()
    zoe.initial_containers = zoe.containers()
    yield zoe
    zoe.destroy()


def reports(host):
    return sorted(p for p in glob.glob(os.path.join(host.reports, "*.json")) if not p.endswith(".plan.json"))


def test_before_testuser_cannot_log_in_through_auth(host):
    assert "testuser" in host.users and "testuser" not in host.auth_users
    for user in host.users:
        assert host.login(user) == (200 if user in host.auth_users else 401), user
    assert host.login_passcode("admin") == 200


def test_dry_run_prints_the_plan_and_changes_nothing(host):
    result = host.playbook("consolidate.yml", "--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:]
    assert host.digest() == host.initial_digest
    assert host.containers() == host.initial_containers
    out = result.stdout
    assert "databases_to_fold" in out and "auth.db" in out
    assert "services_to_stop" in out and "zoe-auth" in out
    assert re.search(r"^\+.*/app/data/zoe\.db", out, re.M), "no compose diff in the dry run"
    assert "inserted" in out and "identical" in out and "conflicts" in out
    report = json.load(open(reports(host)[-1]))
    assert report["check_mode"] is True and report["outcome"] == "dry run"
    assert report["downtime_seconds"] == 0, "a dry run stops nothing: no downtime to report"


def test_run_consolidates_the_host(host):
    result = host.playbook("consolidate.yml")
    assert result.returncode == 0, result.stdout[-5000:]
    assert host.data_files() == ["memory.db", "zoe.db"]
    for user in host.users:
        assert host.login(user) == 200, user
        assert host.query("zoe.db", "SELECT count(*) FROM users WHERE username = '%s'" % user) == [(1,)]
    assert host.query("zoe.db", "SELECT count(*) FROM users") == [(len(host.users),)]
    # the columns zoe-auth reads are in users, and admin's passcode followed admin to zoe.db's key
    columns = {row[1] for row in host.query("zoe.db", "PRAGMA table_info(users)")}
    assert {"role", "passcode_hash", "is_active", "failed_login_attempts", "locked_until", "updated_at"} <= columns
    assert host.login_passcode("admin") == 200
    assert host.query("zoe.db", "SELECT user_id FROM passcodes") == [("admin",)]
    retired = glob.glob(os.path.join(host.backups, "retired", "*", "*.db"))
    assert sorted(os.path.basename(p) for p in retired) == sorted(FOLD_DATABASES)
    with open(os.path.join(host.root, "docker-compose.yml")) as handle:
        live = [line for line in handle if not line.lstrip().startswith("#")]
    assert not [line for line in live for name in FOLD_DATABASES if name in line]
    assert host.query("memory.db", "SELECT count(*) FROM people") == [(0,)]
    report = json.load(open(reports(host)[-1]))
    assert report["outcome"] == "consolidated" and report["snapshot_id"]
    assert report["merge"]["totals"]["source_rows"] == (report["merge"]["totals"]["inserted"]
                                                       + report["merge"]["totals"]["identical"]
                                                       + report["merge"]["totals"]["conflicts"])
    assert os.path.exists(reports(host)[-1][:-5] + ".md")
    # the merge and the compose/env edits were prepared before the stop and installed in the window, leaving nothing
    assert report["merge"]["prepared"] == "used", report["merge"].get("prepared_reason")
    assert not glob.glob(os.path.join(host.root, ".*.zoe-staged"))
    assert not os.path.exists(os.path.join(host.backups, "prepared-merge"))
    host.after_run_digest = host.digest()


def test_rerun_changes_nothing_and_stops_no_service(host):
    before = host.containers()
    result = host.playbook("consolidate.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.recap["changed"] == 0, result.stdout[-3000:]
    assert host.containers() == before
    assert host.digest() == host.after_run_digest


def test_rollback_restores_the_rollback_point_byte_for_byte(host):
    result = host.playbook("rollback.yml")
    assert result.returncode == 0, result.stdout[-5000:]
    assert host.digest() == host.initial_digest
    assert host.login("admin") == 200 and host.login("testuser") == 401
    again = host.playbook("rollback.yml")
    assert again.returncode == 0 and again.recap["changed"] == 0, again.stdout[-3000:]
