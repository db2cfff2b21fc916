"""Pinned plans: the zoe_plan filters (build, id, refusals in words) and the zoe_plan lookup (reading a plan file).

The merge accounting comes from sqlite_merge's own planner on real SQLite files in tmp_path (the result check
mode returns); the audit's digests are the sha256 of those files, as ansible.builtin.find computes them in
roles/preflight/tasks/plan_pin.yml. compose_env and db_references results are given in their RETURN shapes.
"""

import copy
import hashlib
import importlib.util
import json
import os
import sqlite3

import pytest

from ansible.module_utils import sqlite_merge as sm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zp = _load("zoe_plan_filter", "plugins/filter/zoe_plan.py")
lookup = _load("zoe_plan_lookup", "plugins/lookup/zoe_plan.py")

SECRET_HASH = "pbkdf2_sha256$600000$s4lt$Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"


# ------------------------------------------------------------------------------------------------ a host

def _db(path, statements, wal=False):
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    return conn


class Host:
    """A Zoe checkout in tmp_path: zoe.db (users), auth.db (users, one conflicting), sessions.db (WAL, open
    writer keeps its -wal), memory.db, a compose file; facts() gathers what preflight gathers."""

    def __init__(self, root):
        self.root = str(root)
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.data)
        users = "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE NOT NULL, password_hash TEXT)"
        _db(self.path("zoe.db"), [users, "INSERT INTO users VALUES (1, 'admin', 'x1'), (2, 'user', 'x2')"]).close()
        _db(self.path("auth.db"), [users, "INSERT INTO users VALUES (1, 'admin', 'x1'),"
                                          " (2, 'user', '%s')" % SECRET_HASH]).close()
        self.sessions = _db(self.path("sessions.db"), [
            "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, user_id INTEGER NOT NULL)",
            "INSERT INTO sessions VALUES ('s1', 1), ('s2', 2)"], wal=True)
        _db(self.path("memory.db"), ["CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)"]).close()
        self.compose = os.path.join(self.root, "docker-compose.yml")
        with open(self.compose, "w") as handle:
            handle.write("services:\n  zoe-auth:\n    environment:\n      DATABASE_PATH: /app/data/auth.db\n")
        self.env = os.path.join(self.root, ".env")
        self.left_for_review = None

    def path(self, name):
        return os.path.join(self.data, name)

    def write(self, sql):
        self.sessions.execute(sql)
        self.sessions.commit()

    def _audit(self):
        databases = []
        for name in sorted(os.listdir(self.data)):
            if not name.endswith(".db"):
                continue
            conn = sqlite3.connect("file:%s?mode=ro" % self.path(name), uri=True)
            tables = {t: conn.execute('SELECT count(*) FROM "%s"' % t).fetchone()[0] for (t,) in
                      conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")}
            conn.close()
            databases.append({"path": self.path(name), "relpath": "data/" + name, "name": name,
                              "class": "keep" if name in ("zoe.db", "memory.db") else "fold",
                              "size": os.path.getsize(self.path(name)), "tables": tables})
        databases.append({"path": os.path.join(self.root, "services", "training.db"),
                          "relpath": "services/training.db", "name": "training.db", "class": "unknown"})
        return {"root": self.root, "data_dir": self.data, "databases": databases}

    def _digests(self):
        out = []
        for name in sorted(os.listdir(self.data)):
            if name.endswith((".db", ".db-wal")):
                with open(self.path(name), "rb") as handle:
                    out.append({"path": self.path(name), "checksum": hashlib.sha256(handle.read()).hexdigest()})
        return out

    def _stat(self, path):
        if not os.path.exists(path):
            return {"item": path, "stat": {"exists": False}}
        with open(path, "rb") as handle:
            return {"item": path, "stat": {"exists": True, "checksum": hashlib.sha256(handle.read()).hexdigest()}}

    def merge_result(self):
        with sm.plan_merge(self.path("zoe.db"), [self.path("auth.db"), self.path("sessions.db")],
                           keys={"users": ["username"]}, workdir=self.root) as plan:
            result = plan.result()
        return dict(result, changed=plan.changed, prepared="none")

    def facts(self, **override):
        with open(self.compose) as handle:
            line = [i for i, text in enumerate(handle, 1) if "DATABASE_PATH" in text][0]
        compose = {"item": self.compose, "changed": True, "file_type": "compose", "changed_services": ["zoe-auth"],
                   "changed_keys": ["DATABASE_PATH"], "staged": [], "validated_with": "docker-compose",
                   "changes": [{"file": self.compose, "line": line, "service": "zoe-auth", "section": "environment",
                                "key": "DATABASE_PATH", "before": "/app/data/auth.db", "after": "/app/data/zoe.db"}],
                   "files": [{"path": self.compose, "kind": "compose", "changed": True, "changes": 1,
                              "backup_file": None}]}
        references = {"files_changed": ["services/auth/db.py"], "changes": {"services/auth/db.py": 2},
                      "references": [], "total": 3}
        if self.left_for_review is not None:
            references["left_for_review"] = self.left_for_review
        facts = {"host": "zoe-a", "root": self.root, "created": "2026-12-01T10:00:00Z", "version": "1.0.0",
                 "settings": {"primary": "zoe.db", "fold": ["auth.db", "sessions.db"],
                              "merge_on_conflict": "keep_target",
                              "data_dir": self.data, "compose_files": [self.compose], "env_files": [self.env]},
                 "audit": self._audit(), "digests": self._digests(), "merge": self.merge_result(),
                 "config": [compose], "config_stats": [self._stat(self.compose), self._stat(self.env)],
                 "references": references,
                 "services": {"stop": ["zoe-auth"], "restart": ["zoe-auth"], "interrupted": []}, "pending": True}
        facts.update(override)
        return facts

    def plan(self, **override):
        return zp.zoe_plan(self.facts(**override))


@pytest.fixture
def host(tmp_path):
    zoe = Host(tmp_path / "zoe")
    yield zoe
    zoe.sessions.close()


def refusals(old, new, path="/r/zoe-a-20261201T100000Z.plan.json"):
    return zp.zoe_plan_refusals({"path": path, "plan": old}, new)


# ------------------------------------------------------------------------------------------------ building

def test_plan_has_its_format_id_and_what_it_was_computed_from(host):
    plan = host.plan()
    assert plan["format"] == 1
    assert plan["plan_id"] == zp.plan_id(plan) and len(plan["plan_id"]) == 12
    dbs = {d["path"]: d for d in plan["databases"]}
    assert set(dbs) == {"data/auth.db", "data/memory.db", "data/sessions.db", "data/zoe.db", "services/training.db"}
    assert dbs["data/sessions.db"]["wal_sha256"], "the open writer keeps a -wal: its digest is part of the plan"
    assert dbs["data/zoe.db"]["wal_sha256"] is None and len(dbs["data/zoe.db"]["sha256"]) == 64
    assert "sha256" not in dbs["services/training.db"], "an unknown database is listed, never read"
    sources = {s["path"]: s for s in plan["merge"]["sources"]}
    assert sources["data/sessions.db"]["tables"][0]["inserted"] == 2
    assert plan["config_files"][0]["path"] == ".env" and plan["config_files"][0]["sha256"] is None
    compose = plan["config_files"][1]
    assert compose["path"] == "docker-compose.yml" and compose["changes"][0]["file"] == "docker-compose.yml"
    assert "validated_with" not in compose and "staged" not in compose
    assert plan["code"] == {"rewrite": ["services/auth/db.py"], "references": {"services/auth/db.py": 2}}
    assert plan["services"]["stop"] == ["zoe-auth"]
    assert plan["settings"]["compose_files"] == ["docker-compose.yml"] and plan["settings"]["data_dir"] == "data"
    assert "changed" not in plan["merge"] and "prepared" not in plan["merge"]


def test_plan_holds_no_secret_value(host):
    merge = host.merge_result()
    assert merge["conflicts"] and SECRET_HASH not in json.dumps(merge["conflicts"][0].get("source_row", {})), \
        "sqlite_merge masks the hash itself"
    merge["conflicts"][0]["source_row"] = {"password_hash": SECRET_HASH}   # even an unmasked row stays out
    plan = host.plan(merge=merge)
    assert SECRET_HASH not in json.dumps(plan)
    assert plan["merge"]["conflicts"][0]["columns_differ"] == ["password_hash"]
    assert plan["merge"]["conflicts"][0]["source"] == "data/auth.db"


def test_the_id_covers_everything_but_itself(host):
    plan = host.plan()
    edited = copy.deepcopy(plan)
    edited["created"] = "2026-12-02T10:00:00Z"
    assert zp.plan_id(edited) != plan["plan_id"], "an edited date is an edit too"
    assert zp.plan_id(dict(plan, plan_id="000000000000")) == plan["plan_id"]


def test_fields_the_merge_adds_per_table_join_the_plan_and_its_comparison(host):
    merge = host.merge_result()
    merge["sources"][0]["tables"][0]["kept_apart"] = False
    old = host.plan(merge=merge)
    assert old["merge"]["sources"][0]["tables"][0]["kept_apart"] is False
    merge["sources"][0]["tables"][0]["kept_apart"] = True
    words = refusals(old, host.plan(merge=merge))
    assert words == ["data/auth.db would merge differently than in plan %s: users: kept_apart would be True, the plan "
                     "said False" % old["plan_id"]]


def test_left_for_review_joins_the_plan_when_db_references_returns_it(host):
    host.left_for_review = [{"file": "scripts/run.sh", "reason": "shell variable", "lines": [3]}]
    plan = host.plan()
    assert plan["code"]["left_for_review"] == host.left_for_review
    host.left_for_review.append({"file": "tools/x.py", "reason": "computed name", "lines": [9]})
    assert refusals(plan, host.plan()) == [
        "the files left for review differ from plan %s: tools/x.py (computed name) now" % plan["plan_id"]]


def test_missing_facts_are_named(host):
    facts = host.facts()
    del facts["merge"]
    with pytest.raises(zp.PlanError, match="lack merge"):
        zp.zoe_plan(facts)


def test_version_comes_from_galaxy_yml_or_the_collection_manifest(tmp_path):
    plugin = tmp_path / "plugins" / "filter" / "zoe_plan.py"
    plugin.parent.mkdir(parents=True)
    assert zp.project_version(str(plugin)) == zp.UNKNOWN_VERSION
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"collection_info": {"version": "2.1.0"}}))
    assert zp.project_version(str(plugin)) == "2.1.0"
    (tmp_path / "galaxy.yml").write_text("namespace: zoe\nname: consolidate\nversion: 1.4.0\n")
    assert zp.project_version(str(plugin)) == "1.4.0"


# ------------------------------------------------------------------------------------------------ comparing

def test_an_unchanged_host_holds_its_plan(host):
    old = host.plan()
    new = host.plan(created="2026-12-01T11:00:00Z")
    assert new["plan_id"] != old["plan_id"], "a new dry run is a new plan file"
    assert refusals(old, new) == []


def test_a_row_written_into_a_source_is_named_with_the_accounting(host):
    old = host.plan()
    host.write("INSERT INTO sessions VALUES ('s3', 1)")
    assert refusals(old, host.plan()) == [
        "data/sessions.db changed since plan %s: sessions would insert 3 rows, the plan said 2; sessions would read 3 "
        "rows, the plan said 2" % old["plan_id"]]


def test_a_source_rewritten_with_the_same_rows_is_still_a_change(host):
    old = host.plan()
    host.write("UPDATE sessions SET user_id = 2 WHERE session_id = 's1'")
    words = refusals(old, host.plan())
    assert words == ["data/sessions.db changed since plan %s: its bytes differ, the same tables and row counts"
                     % old["plan_id"]]


def test_a_changed_target_names_itself_and_the_sources_it_changes(host):
    old = host.plan()
    conn = sqlite3.connect(host.path("zoe.db"))
    conn.execute("UPDATE users SET password_hash = '%s' WHERE username = 'user'" % SECRET_HASH)
    conn.commit()
    conn.close()
    words = refusals(old, host.plan())
    since = "plan %s" % old["plan_id"]
    assert words[0] == "data/zoe.db changed since %s: its bytes differ, the same tables and row counts" % since
    assert words[1] == ("data/auth.db would merge differently than in %s: users would find 2 identical rows, the plan "
                        "said 1; users would record 0 conflicts, the plan said 1" % since)
    assert words[2] == 'the merge would record other conflicts than %s (no longer: users {"username": "user"})' % since
    assert len(words) == 3 and SECRET_HASH not in " ".join(words)


def test_a_kept_database_changed_is_named_with_its_row_counts(host):
    old = host.plan()
    conn = sqlite3.connect(host.path("memory.db"))
    conn.execute("INSERT INTO people (name) VALUES ('x')")
    conn.commit()
    conn.close()
    assert refusals(old, host.plan()) == ["data/memory.db changed since plan %s: people has 1 rows, the plan said 0"
                                          % old["plan_id"]]


def test_a_new_database_and_a_gone_one(host):
    old = host.plan()
    _db(host.path("tasks.db"), ["CREATE TABLE t (id INTEGER PRIMARY KEY)"]).close()
    with_tasks = host.plan()
    assert refusals(old, with_tasks) == ["data/tasks.db is new since plan %s (fold)" % old["plan_id"]]
    os.remove(host.path("tasks.db"))
    assert refusals(with_tasks, host.plan()) == ["data/tasks.db is gone since plan %s" % with_tasks["plan_id"]]


def test_a_compose_edit_is_named(host):
    old = host.plan()
    with open(host.compose, "a") as handle:
        handle.write("  # a comment\n")
    assert refusals(old, host.plan()) == ["docker-compose.yml changed since plan %s" % old["plan_id"]]
    with open(host.compose, "w") as handle:
        handle.write("# moved\nservices:\n  zoe-auth:\n    environment:\n      DATABASE_PATH: /app/data/auth.db\n")
    assert refusals(old, host.plan()) == ["docker-compose.yml changed since plan %s: the same edits at other lines"
                                          % old["plan_id"]]


def test_other_planned_edits_are_listed(host):
    old = host.plan()
    facts = host.facts()
    facts["config"][0]["changes"].append({"file": host.compose, "line": 9, "service": "zoe-core",
                                          "section": "environment", "key": "SESSIONS_DB",
                                          "before": "/app/data/sessions.db", "after": "/app/data/zoe.db"})
    facts["config"][0]["changed_services"] = ["zoe-auth", "zoe-core"]
    words = refusals(old, zp.zoe_plan(facts))
    assert words == ["docker-compose.yml would be edited differently than in plan %s: 2 edits, the plan said 1; "
                     "new or different: zoe-core environment SESSIONS_DB; changed_services would be zoe-auth, "
                     "zoe-core, the plan said zoe-auth" % old["plan_id"]]


def test_a_new_env_file_is_named(host):
    old = host.plan()
    with open(host.env, "w") as handle:
        handle.write("X=1\n")
    assert refusals(old, host.plan()) == [".env is new since plan %s" % old["plan_id"]]


@pytest.mark.parametrize("section, value, words", [
    ("services", {"stop": ["zoe-auth", "zoe-core"], "restart": ["zoe-auth"], "interrupted": []},
     "the run would stop zoe-auth, zoe-core; plan {id} said zoe-auth"),
    ("references", {"files_changed": ["a.py", "services/auth/db.py"], "changes": {"a.py": 1, "services/auth/db.py": 2}},
     "the code rewrite would also touch a.py, not in plan {id}"),
    ("references", {"files_changed": ["services/auth/db.py"], "changes": {"services/auth/db.py": 5}},
     "services/auth/db.py: 5 references to rewrite, the plan said 2"),
    ("version", "1.1.0", "plan {id} was made by zoe-consolidate 1.0.0, this is 1.1.0"),
    ("settings", {"primary": "zoe.db", "fold": ["auth.db", "sessions.db"], "merge_on_conflict": "fail"},
     "the setting merge_on_conflict is fail, plan {id} said keep_target"),
], ids=["services", "code files", "reference counts", "version", "settings"])
def test_other_differences_in_words(host, section, value, words):
    old = host.plan()
    facts = host.facts()
    if section == "settings":
        value = dict(facts["settings"], **value)
    facts[section] = value
    assert refusals(old, zp.zoe_plan(facts)) == [words.format(id=old["plan_id"])]


def test_a_difference_no_sentence_covers_is_still_named(host):
    old = host.plan()
    new = dict(host.plan(), extra={"something": 1})
    assert refusals(old, new) == ["this run's plan differs from plan %s in extra" % old["plan_id"]]


# ------------------------------------------------------------------------------------------------ refusals

def test_a_plan_of_another_host_or_checkout(host):
    old = host.plan()
    assert refusals(old, host.plan(host="zoe-b")) == ["it is a plan for another host (zoe-a), not zoe-b"]
    other = dict(old, zoe_root="/srv/other")
    other["plan_id"] = zp.plan_id(other)
    assert refusals(other, host.plan()) == ["it is a plan for another checkout (/srv/other), not %s" % host.root]


def test_a_tampered_plan(host):
    plan = host.plan()
    tampered = copy.deepcopy(plan)
    tampered["merge"]["sources"][1]["tables"][0]["inserted"] = 1
    assert refusals(tampered, host.plan()) == [
        "it does not match its plan id %s: its content was changed after the dry run wrote it" % plan["plan_id"]]


@pytest.mark.parametrize("plan, words", [
    ({"format": 2, "plan_id": "x"},
     "it is a plan of format 2; this version of zoe-consolidate reads plans of format 1 only"),
    ({"plan_id": "x"}, "it has no format: it is not a plan file"),
    (["format", 1], "it is not a plan file (a JSON object with format and plan_id)"),
], ids=["format 2", "no format", "not an object"])
def test_unknown_formats(host, plan, words):
    assert refusals(plan, host.plan(), path="/p") == [words]


def test_a_lookup_error_is_the_refusal(host):
    pinned = {"path": "/p", "error": "/p: no such plan file"}
    assert zp.zoe_plan_refusals(pinned, host.plan()) == ["/p: no such plan file"]


# ------------------------------------------------------------------------------------------------ the lookup

def _write(path, plan):
    with open(path, "w") as handle:
        json.dump(plan, handle)


def test_lookup_reads_a_file_and_a_directory_newest_of_the_host_only(tmp_path):
    for name, n in (("zoe-a-20261201T100000Z", 1), ("zoe-a-20261201T120000Z", 2), ("zoe-a-b-20261201T130000Z", 3),
                    ("zoe-a-20261201T140000Z.md", 4)):
        _write(str(tmp_path / (name + (".plan.json" if not name.endswith(".md") else ""))), {"n": n})
    newest = lookup.read_plan(str(tmp_path), "zoe-a")
    assert newest == {"path": str(tmp_path / "zoe-a-20261201T120000Z.plan.json"), "plan": {"n": 2}}
    assert lookup.read_plan(str(tmp_path), "zoe-a-b")["plan"] == {"n": 3}
    one = str(tmp_path / "zoe-a-20261201T100000Z.plan.json")
    assert lookup.read_plan(one, "zoe-a") == {"path": one, "plan": {"n": 1}}


def test_lookup_says_why_there_is_no_plan(tmp_path):
    assert lookup.read_plan(str(tmp_path), "zoe-c") == {
        "path": str(tmp_path), "error": "%s holds no plan of zoe-c (zoe-c-<UTC time>.plan.json)" % tmp_path}
    missing = str(tmp_path / "nope.plan.json")
    assert lookup.read_plan(missing, "zoe-c") == {"path": missing, "error": "%s: no such plan file" % missing}
    broken = tmp_path / "broken.plan.json"
    broken.write_text("{not json")
    assert lookup.read_plan(str(broken), "zoe-c")["error"].startswith("%s is not a plan file (not JSON:" % broken)


def test_a_plan_written_and_read_back_holds(host, tmp_path):
    plan = host.plan()
    path = str(tmp_path / "zoe-a-20261201T100000Z.plan.json")
    _write(path, plan)
    pinned = lookup.read_plan(str(tmp_path), "zoe-a")
    assert pinned["plan"]["plan_id"] == plan["plan_id"]
    assert zp.zoe_plan_refusals(pinned, host.plan(created="2026-12-01T12:00:00Z")) == []
