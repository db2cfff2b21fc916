"""Pinned plans on a real demo host (real files, the stack up): review a dry run, then execute exactly it.

One host goes through the operator's sequence: dry run -> plan file; each plan that no longer holds is refused
before anything changes (a row written into a source since the plan, a plan of another host, a tampered plan, an
unknown format; a required plan not given), with the tree byte for byte as it was and no container touched; then a
new dry run and a real run pinned to its plan (by directory: the host's newest) consolidate, and the report names
the plan id it executed.
Run: .venv/bin/pytest -q tests/integration/test_pinned_plan.py
"""

import glob
import importlib.util
import json
import os
import sqlite3
import stat

import pytest

from zoe_host import REPO, ZoeHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("zoe_plan_filter",
                                               os.path.join(REPO, "plugins", "filter", "zoe_plan.py"))
zp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zp)

REFUSED = "Nothing was changed, no service was stopped"


@pytest.fixture(scope="module")
def host(images, tmp_path_factory):
    zoe = ZoeHost(tmp_path_factory.mktemp("pin"))
    zoe.initial_containers = zoe.containers()
    yield zoe
    zoe.destroy()


def plans(host):
    return sorted(glob.glob(os.path.join(host.reports, "*.plan.json")))


def reports(host):
    return sorted(p for p in glob.glob(os.path.join(host.reports, "*.json")) if not p.endswith(".plan.json"))


def secrets(host):
    """The .env secrets and the password hashes and session tokens of the data dir's databases."""
    found = set(host.record["secrets"].values())
    for path in glob.glob(os.path.join(host.root, "data", "*.db")):
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            for table, column in (("users", "password_hash"), ("sessions", "token_hash")):
                columns = {row[1] for row in conn.execute('PRAGMA table_info("%s")' % table)}
                if column in columns:
                    found |= {v for (v,) in conn.execute('SELECT "%s" FROM "%s"' % (column, table)) if v}
        finally:
            conn.close()
    return found


def refused(host, *args):
    """Run consolidate.yml with `args`: it must be refused with nothing on the host changed. Returns the refusal
    as the play printed it and the report recorded it (the report's outcome, `failed: <message>`)."""
    before = host.digest()
    result = host.playbook("consolidate.yml", *args)
    assert result.returncode != 0, result.stdout[-3000:]
    assert host.digest() == before, "a refused run changed the tree"
    assert host.containers() == host.initial_containers, "a refused run touched a container"
    assert not os.path.exists(host.backups), "a refused run made a backup area (lock, snapshot)"
    report = json.load(open(reports(host)[-1]))
    assert report["outcome"].startswith("failed: ") and report["snapshot_id"] == ""
    message = report["outcome"][len("failed: "):]
    assert REFUSED in message and " ".join(message.split()[:4]) in " ".join(result.stdout.split()), message
    print(message)    # pytest -s shows each refusal as operators read it
    return message


def test_a_dry_run_writes_its_plan_beside_its_report(host):
    before = host.digest()
    result = host.playbook("consolidate.yml", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    assert host.digest() == before and host.containers() == host.initial_containers
    (path,) = plans(host)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    plan = json.load(open(path))
    assert plan["format"] == 1 and plan["host"] == host.name and plan["plan_id"] == zp.plan_id(plan)
    assert plan["pending"] is True and plan["services"]["stop"], "the stack is up: the writers would stop"
    assert {d["path"] for d in plan["databases"] if d.get("sha256")} >= {"data/zoe.db", "data/auth.db"}
    assert {s["path"] for s in plan["merge"]["sources"]} >= {"data/auth.db", "data/sessions.db"}
    assert plan["config_files"] and plan["code"]["references"]
    report = json.load(open(reports(host)[-1]))
    assert report["plan_id"] == plan["plan_id"] and report["plan_file"] == path
    last_task = result.stdout.rsplit("TASK [", 1)[1]
    assert plan["plan_id"] in last_task and os.path.basename(path) in last_task
    assert plan["plan_id"] in open(reports(host)[-1][:-5] + ".md").read()
    text = open(path).read()
    assert [s[:8] for s in secrets(host) if s in text] == [], "a secret value in the plan file"
    host.plan_path, host.plan = path, plan


def test_zoe_require_plan_refuses_a_run_without_a_plan(host):
    assert "zoe_require_plan is true and no plan was given" in refused(host, "-e", "zoe_require_plan=true")


def test_a_plan_of_another_host_is_refused(host, tmp_path):
    other = dict(host.plan, host="zoe-elsewhere")
    other["plan_id"] = zp.plan_id(other)
    path = str(tmp_path / "zoe-elsewhere-20261201T100000Z.plan.json")
    json.dump(other, open(path, "w"))
    message = refused(host, "-e", "zoe_plan=%s" % path)
    assert "the pinned plan %s: it is a plan for another host (zoe-elsewhere), not %s" % (path, host.name) in message


def test_a_tampered_plan_is_refused(host, tmp_path):
    tampered = json.loads(json.dumps(host.plan))
    tampered["services"]["stop"] = []    # an edit that would hide the downtime
    path = str(tmp_path / ("%s-20261201T100000Z.plan.json" % host.name))
    json.dump(tampered, open(path, "w"))
    message = refused(host, "-e", "zoe_plan=%s" % path)
    assert ("the pinned plan %s: it does not match its plan id %s: its content was changed after the dry run wrote it"
            % (path, host.plan["plan_id"])) in message


def test_a_plan_of_an_unknown_format_is_refused(host, tmp_path):
    future = dict(host.plan, format=2)
    future["plan_id"] = zp.plan_id(future)
    path = str(tmp_path / ("%s-20261201T100000Z.plan.json" % host.name))
    json.dump(future, open(path, "w"))
    message = refused(host, "-e", "zoe_plan=%s" % path)
    assert ("%s: it is a plan of format 2; this version of zoe-consolidate reads plans of format 1 only" % path
            in message)


def test_a_row_written_since_the_plan_refuses_the_pinned_run(host):
    planned = [t for s in host.plan["merge"]["sources"] if s["path"] == "data/sessions.db"
               for t in s["tables"] if t["source_table"] == "sessions"][0]
    conn = sqlite3.connect(os.path.join(host.root, "data", "sessions.db"))
    columns = conn.execute('PRAGMA table_info("sessions")').fetchall()
    key = [c[1] for c in columns if c[5] == 1][0]
    row = dict(zip([c[1] for c in columns], conn.execute('SELECT * FROM "sessions" LIMIT 1').fetchone()))
    assert isinstance(row[key], str), "sessions.db's sessions are keyed by a text session_id"
    row[key] = "sess-after-review"
    conn.execute('INSERT INTO "sessions" (%s) VALUES (%s)' % (", ".join('"%s"' % c for c in row),
                                                             ", ".join("?" for _ in row)), list(row.values()))
    conn.commit()
    conn.close()
    host.written = (planned["target_table"], key, row[key])
    message = refused(host, "-e", "zoe_plan=%s" % host.plan_path)
    assert ("data/sessions.db changed since plan %s: sessions would insert %d rows, the plan said %d"
            % (host.plan["plan_id"], planned["inserted"] + 1, planned["inserted"])) in message
    report = json.load(open(reports(host)[-1]))
    assert report["pinned_plan_id"] == host.plan["plan_id"]


def test_a_run_pinned_to_the_new_plan_consolidates_and_names_it(host):
    dry = host.playbook("consolidate.yml", "--check")
    assert dry.returncode == 0, dry.stdout[-3000:]
    path = plans(host)[-1]
    plan = json.load(open(path))
    assert plan["plan_id"] != host.plan["plan_id"]
    result = host.playbook("consolidate.yml", "-e", "zoe_plan=%s" % host.reports)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "runs the pinned plan %s (%s)" % (plan["plan_id"], path) in result.stdout
    assert host.data_files() == ["memory.db", "zoe.db"]
    assert host.login("testuser") == 200 and host.login("admin") == 200
    table, key, value = host.written
    assert host.query("zoe.db", "SELECT count(*) FROM \"%s\" WHERE \"%s\" = '%s'" % (table, key, value)) == [(1,)], \
        "the row written after the first review is in zoe.db: the second plan had it"
    report = json.load(open(reports(host)[-1]))
    assert report["outcome"] == "consolidated"
    assert report["pinned_plan_id"] == plan["plan_id"] and report["pinned_plan_file"] == path
    assert plan["plan_id"] in open(reports(host)[-1][:-5] + ".md").read()
    inserted = {(s["path"], t["source_table"]): t["inserted"] for s in plan["merge"]["sources"] for t in s["tables"]}
    executed = {(os.path.relpath(s["path"], host.root), t["source_table"]): t["inserted"]
                for s in report["merge"]["sources"] for t in s["tables"]}
    assert executed == inserted, "the run executed other accounting than the plan it was pinned to"
