"""compose_env: the planner on the controller (plugins/action/compose_env.py) and the host module that installs its edit.

The fixture tests/fixtures/compose/docker-compose.yml is written in the style of the real Zoe file. Whole-file
comparisons prove that only the values naming retired databases change; PyYAML cross-checks that the data meaning of
the edit is exactly the intended one, and that the services reached through anchors, aliases and merge keys are the
ones whose effective configuration changes.
Run: .venv/bin/pytest -q tests/unit/test_compose_env.py
"""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from ansible.module_utils.compose_env import (
    ChangedError, OptionError, ParseError, PlannedFile, ValidationError, check_unchanged, parse_env, stage,
    staged_ready, validate)
from ansible.module_utils.db_references import name_pattern

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "compose")
_SPEC = importlib.util.spec_from_file_location("zoe_compose_env_action",
                                               os.path.join(REPO, "plugins", "action", "compose_env.py"))
planner = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(planner)
RETIRED = ("auth.db", "developer_tasks.db", "sessions.db", "satisfaction.db", "self_awareness.db", "learning.db",
           "agent_planning.db", "tool_registry.db", "snapshots.db", "model_performance.db", "context_cache.db",
           "knowledge.db", "aider_conversations.db")
MAPPING = {name: "zoe.db" for name in RETIRED}


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class Plan(object):
    """The planner's FilePlans with text views, as the tests read them."""

    def __init__(self, files):
        self.items = files
        self.files = [View(item) for item in files]
        self.summary, self.diffs = planner.summary(files)
        self.changes = self.summary["changes"]
        self.changed = any(item.changed for item in files)

    def changed_services(self):
        return self.summary["changed_services"]

    def changed_keys(self):
        return self.summary["changed_keys"]

    def unified_diff(self):
        return planner.unified_diff(self.diffs)


class View(object):
    def __init__(self, item):
        self.path, self.kind, self.changes, self.changed = item.path, item.kind, item.changes, item.changed
        self.before, self.after = item.before.decode("utf-8"), item.after.decode("utf-8")


def plan_compose_env(path, services=None, set_vars=None, unset=None, rewrite=None, keys=None, scope=None,
                     follow_env_files=False, file_type="auto"):
    """What the action plugin plans for these options (reads the files, writes nothing)."""
    spec = planner.Spec(services, set_vars, unset, rewrite, keys, scope)
    return Plan(planner.plan_files(str(path), read(str(path)), spec, file_type, follow_env_files, read=read))


def planned(plan):
    """The plan as the host module receives it."""
    return [PlannedFile(item.path, item.kind, hashlib.sha256(item.before).hexdigest(),
                        item.after if item.changed else None) for item in plan.items]


# The only lines of the fixture compose file a rewrite of the 13 retired names may change.
EXPECTED_LINE_CHANGES = [
    ("CONTEXT_CACHE_DB: /app/data/context_cache.db   # shared cache", "CONTEXT_CACHE_DB: /app/data/zoe.db   # shared cache"),
    ("- DEVELOPER_TASKS_DB=/app/data/developer_tasks.db", "- DEVELOPER_TASKS_DB=/app/data/zoe.db"),
    ("- LEARNING_DB=${LEARNING_DB:-/app/data/learning.db}", "- LEARNING_DB=${LEARNING_DB:-/app/data/zoe.db}"),
    ('- "SATISFACTION_DB=/app/data/satisfaction.db"', '- "SATISFACTION_DB=/app/data/zoe.db"'),
    ("- 'SELF_AWARENESS_DB=/app/data/self_awareness.db'", "- 'SELF_AWARENESS_DB=/app/data/zoe.db'"),
    ("- SNAPSHOTS_DB=${SNAPSHOTS_DB:-/app/data/snapshots.db}  # snapshots",
     "- SNAPSHOTS_DB=${SNAPSHOTS_DB:-/app/data/zoe.db}  # snapshots"),
    ("- MODEL_PERF_URL=sqlite:////app/data/model_performance.db?mode=rwc", "- MODEL_PERF_URL=sqlite:////app/data/zoe.db?mode=rwc"),
    ("DATABASE_PATH: /app/data/auth.db", "DATABASE_PATH: /app/data/zoe.db"),
    ('SESSIONS_DB: "/app/data/sessions.db"', 'SESSIONS_DB: "/app/data/zoe.db"'),
    ("""test: ["CMD-SHELL", "sqlite3 /app/data/auth.db 'SELECT 1'"]""", """test: ["CMD-SHELL", "sqlite3 /app/data/zoe.db 'SELECT 1'"]"""),
    ("--db /app/data/tool_registry.db", "--db /app/data/zoe.db"),
    ("--planning /app/data/agent_planning.db", "--planning /app/data/zoe.db"),
    ("- AIDER_DB=/app/data/aider_conversations.db", "- AIDER_DB=/app/data/zoe.db"),
    ("- ./data/knowledge.db:/app/knowledge/knowledge.db:ro", "- ./data/zoe.db:/app/knowledge/zoe.db:ro"),
    ("""entrypoint: ["python3", "-m", "mem_agent", '--kb=/app/knowledge/knowledge.db']""",
     """entrypoint: ["python3", "-m", "mem_agent", '--kb=/app/knowledge/zoe.db']"""),
]


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture
def host(tmp_path):
    """A copy of the fixture compose file and .env in a private directory."""
    for name in ("docker-compose.yml", ".env"):
        shutil.copy(os.path.join(FIXTURES, name), tmp_path / name)
    return tmp_path


def expected_compose():
    with open(os.path.join(FIXTURES, "docker-compose.yml")) as handle:
        lines = handle.read().split("\n")
    for old, new in EXPECTED_LINE_CHANGES:
        hits = [i for i, line in enumerate(lines) if line.strip() == old]
        assert len(hits) == 1, old
        lines[hits[0]] = lines[hits[0]].replace(old, new)
    return "\n".join(lines)


def replace_strings(data, mapping):
    """The data meaning of the rewrite: every string with every bounded name replaced."""
    pattern = name_pattern(mapping)
    if isinstance(data, dict):
        return {key: replace_strings(value, mapping) for key, value in data.items()}
    if isinstance(data, list):
        return [replace_strings(value, mapping) for value in data]
    if isinstance(data, str):
        return pattern.sub(lambda m: mapping[m.group(0)], data)
    return data


# --- the Zoe-style fixture -------------------------------------------------------------------------

def test_rewrite_changes_exactly_the_retired_values(host):
    plan = plan_compose_env(str(host / "docker-compose.yml"), rewrite=MAPPING)
    assert plan.files[0].after == expected_compose()
    assert plan.changed_services() == ["mem-agent", "zoe-auth", "zoe-core", "zoe-mcp-server"]
    # one change per value: the folded command of zoe-mcp-server names two retired databases on two lines
    assert len(plan.changes) == len(EXPECTED_LINE_CHANGES) - 1
    # x-common's environment is overridden by zoe-core's own: its rewritten value reaches no service
    assert [c["services"] for c in plan.changes if c["key"] == "CONTEXT_CACHE_DB"] == [[]]
    after = plan.files[0].after
    live = "\n".join(line for line in after.splitlines() if not line.lstrip().startswith("#"))
    for name in RETIRED:
        assert not re.search(r"(?<![A-Za-z0-9_.\-])%s(?![A-Za-z0-9_]|\.[A-Za-z0-9])" % name, live), name
    # comments and the commented-out service keep their old names, byte for byte
    assert "#      - PLANNING_DB=/app/data/agent_planning.db" in after
    assert "# NOTE: auth.db and sessions.db are legacy" in after
    # decoys and the kept database are not touched
    assert "BACKUP_OF=/app/data/knowledge.db.bak" in after and "DATABASE_PATH=/app/data/memory.db" in after


def test_rewrite_means_the_same_data_edit(host):
    plan = plan_compose_env(str(host / "docker-compose.yml"), rewrite=MAPPING)
    assert yaml.safe_load(plan.files[0].after) == replace_strings(yaml.safe_load(plan.files[0].before), MAPPING)


def test_second_run_changes_nothing(host):
    path = str(host / "docker-compose.yml")
    plan = plan_compose_env(path, rewrite=MAPPING, follow_env_files=True)
    with open(path, "w") as handle:
        handle.write(plan.files[0].after)
    with open(str(host / ".env"), "w") as handle:
        handle.write(plan.files[1].after)
    again = plan_compose_env(path, rewrite=MAPPING, follow_env_files=True)
    assert not again.changed and again.changes == []


def test_plan_reads_through_the_reader_only(host):
    """The planner is pure: it sees the bytes it was given and writes nothing (check mode runs the same plan)."""
    before = {name: (digest(str(host / name)), os.stat(str(host / name)).st_mtime_ns) for name in os.listdir(host)}
    plan = plan_compose_env(host / "docker-compose.yml", rewrite=MAPPING, follow_env_files=True)
    assert plan.changed
    after = {name: (digest(str(host / name)), os.stat(str(host / name)).st_mtime_ns) for name in os.listdir(host)}
    assert after == before


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_rewritten_file_passes_compose_config(host):
    tool, skipped = validate(planned(plan_compose_env(host / "docker-compose.yml", rewrite=MAPPING)), "always")
    assert tool in ("docker compose", "docker-compose") and skipped is None


def test_follow_env_files_rewrites_the_env_file(host):
    plan = plan_compose_env(str(host / "docker-compose.yml"), rewrite=MAPPING, follow_env_files=True)
    env = plan.files[1]
    assert env.path == str(host / ".env") and env.kind == "env"
    with open(os.path.join(FIXTURES, ".env")) as handle:
        original = handle.read()
    assert env.after == original.replace("export TOOL_REGISTRY_DB=/app/data/tool_registry.db",
                                         "export TOOL_REGISTRY_DB=/app/data/zoe.db").replace(
        'AGENT_PLANNING_DB="/app/data/agent_planning.db"', 'AGENT_PLANNING_DB="/app/data/zoe.db"').replace(
        "KNOWLEDGE_DB='/app/data/knowledge.db' # knowledge base", "KNOWLEDGE_DB='/app/data/zoe.db' # knowledge base")
    assert "# DATABASE_PATH=/app/data/auth.db  (old, kept for reference)" in env.after


# Secrets that are hard to mask: a space and a `#` inside a quoted value, *PASS names, a short sk- key, a URL.
HARD_SECRETS = ['JWT_SECRET="Zq9leakA part2B#part3C"', "SMTP_PASS=Hunter2-smtp-passD", "DB_PASS=pw-F-secret",
                 "LITELLM_MASTER_KEY=sk-live-abc123E", "REDIS_URL=redis://:RedisPwG99@redis:6379/0"]
# A secret whose name and shape say nothing: only the rule "every value not being edited is masked" hides it.
HARD_SECRETS.append("WEBHOOK_TARGET=opaque-Q7value")
SECRET_STRINGS = ["Zq9leakA", "part2B", "part3C", "Hunter2-smtp-passD", "pw-F-secret", "sk-live-abc123E", "RedisPwG99",
                  "8f14e45fceea167a5a36dedd4bea2543", "correct-horse-battery", "sk-abcdefghijklmnopqrstuvwx",
                  "opaque-Q7value"]


def test_secrets_are_masked_in_diffs_and_changes(host):
    """Next to edited lines (diff context), in the env file and in a compose environment list."""
    with open(str(host / ".env")) as handle:
        env = handle.read().replace("MEMORY_DB=", "\n".join(HARD_SECRETS) + "\nMEMORY_DB=")
    with open(str(host / ".env"), "w") as handle:
        handle.write(env)
    with open(str(host / "docker-compose.yml")) as handle:
        compose = handle.read().replace("      - LOG_LEVEL=info\n", "      - LOG_LEVEL=info\n      - %s\n"
                                        % "\n      - ".join(s.replace('"', "") for s in HARD_SECRETS))
    with open(str(host / "docker-compose.yml"), "w") as handle:
        handle.write(compose)
    plan = plan_compose_env(str(host / "docker-compose.yml"), follow_env_files=True, rewrite=MAPPING)
    diff = plan.unified_diff()
    text = json.dumps(plan.diffs) + json.dumps(plan.changes) + diff
    assert [s for s in SECRET_STRINGS if s in text] == []
    # the edited values are shown, every other value is masked
    assert "+KNOWLEDGE_DB='/app/data/zoe.db' # knowledge base" in diff and " DB_PASS=********" in diff
    assert ' JWT_SECRET="********"' in diff and " SMTP_PASS=********" in diff
    assert "+      - DEVELOPER_TASKS_DB=/app/data/zoe.db" in diff and "      - LOG_LEVEL=********" in diff


def test_url_credentials_of_an_edited_value_are_masked(tmp_path):
    path = tmp_path / ".env"
    path.write_text("DATABASE_URL=sqlite:////app/data/auth.db\nCACHE=redis://:RedisPwG99@redis/0?db=/x/auth.db\n")
    plan = plan_compose_env(path, rewrite={"auth.db": "zoe.db"})
    assert plan.files[0].after == ("DATABASE_URL=sqlite:////app/data/zoe.db\n"
                                   "CACHE=redis://:RedisPwG99@redis/0?db=/x/zoe.db\n")
    shown = plan.unified_diff() + json.dumps(plan.changes)
    assert "RedisPwG99" not in shown and "redis://:********@redis/0?db=/x/zoe.db" in shown
    assert "+DATABASE_URL=sqlite:////app/data/zoe.db" in shown


# --- scope, services and keys filters --------------------------------------------------------------

@pytest.mark.parametrize("options, changed_keys", [
    ({"scope": ["environment"]}, ["AIDER_DB", "CONTEXT_CACHE_DB", "DATABASE_PATH", "DEVELOPER_TASKS_DB", "LEARNING_DB",
                                  "MODEL_PERF_URL", "SATISFACTION_DB", "SELF_AWARENESS_DB", "SESSIONS_DB", "SNAPSHOTS_DB"]),
    ({"scope": ["healthcheck", "command"]}, ["command", "test"]),
    ({"scope": ["volumes"]}, ["volumes"]),
    ({"services": ["zoe-auth"]}, ["DATABASE_PATH", "SESSIONS_DB", "test"]),
    ({"keys": ["SESSIONS_DB", "AIDER_DB"]}, ["AIDER_DB", "SESSIONS_DB"]),
    ({"services": ["mem-agent"], "scope": ["entrypoint"]}, ["entrypoint"]),
], ids=["environment-only", "healthcheck-and-command", "volumes-only", "one-service", "two-keys", "service-and-scope"])
def test_filters(host, options, changed_keys):
    plan = plan_compose_env(str(host / "docker-compose.yml"), rewrite=MAPPING, **options)
    assert plan.changed_keys() == changed_keys
    assert yaml.safe_load(plan.files[0].after)  # still YAML


# --- cases: each is a small compose file, the options, the exact edited text and the services it reaches ---------

A = {"rewrite": {"auth.db": "zoe.db"}}
CASES = [
    ("list-plain", "services:\n  a:\n    environment:\n      - DB=/app/data/auth.db\n", A,
     "services:\n  a:\n    environment:\n      - DB=/app/data/zoe.db\n", ["a"]),
    ("compact-list-comment-after-value", "services:\n  a:\n    environment:\n    - DB=/app/data/auth.db  # auth.db\n"
     "    image: x\n", A, "services:\n  a:\n    environment:\n    - DB=/app/data/zoe.db  # auth.db\n    image: x\n", ["a"]),
    ("double-quoted-escape", 'services:\n  a:\n    environment:\n      DB: "/app/data/\\u0061uth.db"\n', A,
     'services:\n  a:\n    environment:\n      DB: "/app/data/zoe.db"\n', ["a"]),
    ("single-quoted-doubled-quote", "services:\n  a:\n    command: 'sh -c ''sqlite3 /d/auth.db'''\n", A,
     "services:\n  a:\n    command: 'sh -c ''sqlite3 /d/zoe.db'''\n", ["a"]),
    ("flow-map", "services:\n  a:\n    environment: {DB: /app/auth.db, X: 'auth.db'}\n", A,
     "services:\n  a:\n    environment: {DB: /app/zoe.db, X: 'zoe.db'}\n", ["a"]),
    ("multi-line-flow", "services:\n  a:\n    command: [\n      \"--db\", /x/auth.db,  # comment auth.db\n    ]\n", A,
     "services:\n  a:\n    command: [\n      \"--db\", /x/zoe.db,  # comment auth.db\n    ]\n", ["a"]),
    ("literal-block", "services:\n  a:\n    command: |\n      sqlite3 auth.db\n\n      echo auth.db # not a comment\n"
     "    image: x\n", A,
     "services:\n  a:\n    command: |\n      sqlite3 zoe.db\n\n      echo zoe.db # not a comment\n    image: x\n", ["a"]),
    ("folded-block", "services:\n  a:\n    command: >-\n      run\n      --db /d/auth.db\n", A,
     "services:\n  a:\n    command: >-\n      run\n      --db /d/zoe.db\n", ["a"]),
    ("multi-line-plain", "services:\n  a:\n    command: run\n      --db auth.db\n", A,
     "services:\n  a:\n    command: run\n      --db zoe.db\n", ["a"]),
    ("multi-line-double", 'services:\n  a:\n    command: "run\n      --db auth.db"\n', A,
     'services:\n  a:\n    command: "run\n      --db zoe.db"\n', ["a"]),
    ("name-wrapped-across-lines", 'services:\n  a:\n    command: "--db /app/data/au\\\n      th.db"\n', A,
     'services:\n  a:\n    command: "--db /app/data/zoe.db"\n', ["a"]),
    ("quoted-keys", "services:\n  \"a\":\n    'environment':\n      \"DB\": auth.db\n", dict(A, keys=["DB"]),
     "services:\n  \"a\":\n    'environment':\n      \"DB\": zoe.db\n", ["a"]),
    ("anchor-and-alias", "x-e: &e\n  DB: auth.db\nservices:\n  a:\n    environment: *e\n  b:\n    image: x\n", A,
     "x-e: &e\n  DB: zoe.db\nservices:\n  a:\n    environment: *e\n  b:\n    image: x\n", ["a"]),
    ("alias-reaches-both-services",
     "services:\n  a: {image: x, environment: &e {DB: /app/data/auth.db}}\n  b: {image: x, environment: *e}\n", A,
     "services:\n  a: {image: x, environment: &e {DB: /app/data/zoe.db}}\n  b: {image: x, environment: *e}\n",
     ["a", "b"]),
    ("alias-with-services-filter",
     "x-e: &e\n  DB: auth.db\nservices:\n  a:\n    environment: *e\n  b:\n    image: x\n", dict(A, services=["a"]),
     "x-e: &e\n  DB: zoe.db\nservices:\n  a:\n    environment: *e\n  b:\n    image: x\n", ["a"]),
    ("merge-key-from-x-block",
     "x-s: &s\n  environment:\n    DB: /d/auth.db\nservices:\n  a:\n    <<: *s\n    image: x\n  b:\n    <<: *s\n    image: y\n",
     A, "x-s: &s\n  environment:\n    DB: /d/zoe.db\nservices:\n  a:\n    <<: *s\n    image: x\n  b:\n    <<: *s\n"
     "    image: y\n", ["a", "b"]),
    ("merge-key-overridden-reaches-no-service",
     "x-s: &s\n  environment:\n    DB: /d/auth.db\nservices:\n  a:\n    <<: *s\n    environment: {X: '1'}\n", A,
     "x-s: &s\n  environment:\n    DB: /d/zoe.db\nservices:\n  a:\n    <<: *s\n    environment: {X: '1'}\n", []),
    ("merge-list-first-wins",
     "x-1: &one\n  command: /d/auth.db\nx-2: &two\n  command: /d/other.db\n  image: /d/auth.db\nservices:\n"
     "  a:\n    <<: [*two, *one]\n", dict(A, scope=["command"]),
     "x-1: &one\n  command: /d/zoe.db\nx-2: &two\n  command: /d/other.db\n  image: /d/auth.db\nservices:\n"
     "  a:\n    <<: [*two, *one]\n", []),
    ("keys-untouched", "services:\n  auth.db:\n    image: auth.db\n", A, "services:\n  auth.db:\n    image: zoe.db\n",
     ["auth.db"]),
    ("boundaries-and-default", "services:\n  a:\n    environment:\n      - A=oauth.db\n      - B=auth.db.bak\n"
     "      - C=myauth.db\n      - D=auth.db-wal\n      - E=${E:-auth.db}\n", A,
     "services:\n  a:\n    environment:\n      - A=oauth.db\n      - B=auth.db.bak\n      - C=myauth.db\n"
     "      - D=zoe.db-wal\n      - E=${E:-zoe.db}\n", ["a"]),
    ("sqlite-url", "services:\n  a:\n    environment:\n      URL: sqlite:////app/data/auth.db?mode=rwc\n", A,
     "services:\n  a:\n    environment:\n      URL: sqlite:////app/data/zoe.db?mode=rwc\n", ["a"]),
    ("healthcheck-command",
     "services:\n  a:\n    healthcheck:\n      test: [\"CMD-SHELL\", \"sqlite3 /d/auth.db 'SELECT 1'\"]\n", A,
     "services:\n  a:\n    healthcheck:\n      test: [\"CMD-SHELL\", \"sqlite3 /d/zoe.db 'SELECT 1'\"]\n", ["a"]),
    ("file-bind-mount", "services:\n  a:\n    volumes:\n      - ./data/auth.db:/app/auth.db:ro\n      - type: bind\n"
     "        source: ./data/auth.db\n        target: /k/auth.db\n", A,
     "services:\n  a:\n    volumes:\n      - ./data/zoe.db:/app/zoe.db:ro\n      - type: bind\n"
     "        source: ./data/zoe.db\n        target: /k/zoe.db\n", ["a"]),
    ("crlf", "services:\r\n  a:\r\n    environment:\r\n      - DB=auth.db\r\n    command: >\r\n      x\r\n      auth.db\r\n",
     A, "services:\r\n  a:\r\n    environment:\r\n      - DB=zoe.db\r\n    command: >\r\n      x\r\n      zoe.db\r\n", ["a"]),
    ("bom", "\ufeffservices:\n  a:\n    environment:\n      - DB=auth.db\n", A,
     "\ufeffservices:\n  a:\n    environment:\n      - DB=zoe.db\n", ["a"]),
    ("no-final-newline", "services:\n  a:\n    image: auth.db", A, "services:\n  a:\n    image: zoe.db", ["a"]),
    ("document-marker-and-comment", "---\n# auth.db\nservices:\n  a: {image: auth.db}  # auth.db\n", A,
     "---\n# auth.db\nservices:\n  a: {image: zoe.db}  # auth.db\n", ["a"]),
    ("plain-needs-quotes", "services:\n  a:\n    environment:\n      DB: /x/auth.db\n",
     {"rewrite": {"/x/auth.db": "a #b"}}, 'services:\n  a:\n    environment:\n      DB: "a #b"\n', ["a"]),
    ("duplicate-key-elsewhere-is-left-alone",
     "services:\n  a:\n    image: auth.db\n  b:\n    image: x\n    image: y\n", A,
     "services:\n  a:\n    image: zoe.db\n  b:\n    image: x\n    image: y\n", ["a"]),
    ("missing-build-context", "services:\n  a:\n    build: ./no-such-dir\n    environment: [DB=/d/auth.db]\n", A,
     "services:\n  a:\n    build: ./no-such-dir\n    environment: [DB=/d/zoe.db]\n", ["a"]),
]


@pytest.mark.parametrize("before, options, after, services", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(tmp_path, before, options, after, services):
    path = tmp_path / "docker-compose.yml"
    path.write_bytes(before.encode())
    plan = plan_compose_env(path, **options)
    assert plan.files[0].after == after
    assert plan.changed_services() == services
    if set(options) == {"rewrite"}:
        assert yaml.safe_load(after.lstrip("\ufeff")) == replace_strings(yaml.safe_load(before.lstrip("\ufeff")),
                                                                         options["rewrite"])
    path.write_bytes(after.encode())
    assert not plan_compose_env(path, **options).changed


@pytest.mark.parametrize("follow, services, env_changed", [(True, ["a", "b"], True), (False, [], False)],
                         ids=["followed-env-file", "env-file-not-followed"])
def test_services_reached_through_an_env_file(tmp_path, follow, services, env_changed):
    """A followed env file's edit reaches the services that read it (env_file) and, for the project's .env, those
    that interpolate an edited variable; c reads neither."""
    (tmp_path / ".env").write_text("DB=/d/auth.db\nOTHER=1\n")
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n    env_file: .env\n  b:\n    image: y\n    environment:\n"
                    "      - X=${DB:-none}\n  c:\n    image: z\n    environment:\n      - Y=${OTHER}\n")
    plan = plan_compose_env(path, rewrite={"auth.db": "zoe.db"}, follow_env_files=follow)
    assert plan.changed_services() == services and plan.changed is env_changed
    assert [item.changed for item in plan.files] == [False] + ([True] if follow else [])


# --- refusals: one sentence, nothing planned ---------------------------------------------------------------------

REFUSALS = [
    ("several-documents", "services:\n  a: {image: auth.db}\n---\nservices:\n  b: {image: x}\n", A, ParseError,
     "holds 2 YAML documents (the second starts at line 3); a compose file is one document"),
    ("duplicate-key-in-the-edited-mapping",
     "services:\n  a:\n    environment:\n      DB: /d/auth.db\n      DB: /d/x.db\n", A, ParseError,
     "the key 'DB' appears twice in the mapping that holds the value to edit"),
    ("alias-another-service-must-keep",
     "x-e: &e\n  DB: auth.db\nservices:\n  a:\n    environment: *e\n  b:\n    environment: *e\n",
     dict(A, services=["a"]), OptionError, "with services.b.environment.DB, which must keep it; give b its own value"),
    ("merge-another-service-must-keep",
     "x-s: &s\n  command: auth.db\nservices:\n  a:\n    <<: *s\n  b:\n    <<: *s\n", dict(A, services=["b"]),
     OptionError, "services.a.command, which must keep it"),
    ("alias-another-key-must-keep", "services:\n  a:\n    environment:\n      A: &v /d/auth.db\n      B: *v\n",
     dict(A, keys=["A"]), OptionError, "services.a.environment.B, which must keep it"),
    ("tab-indent", "services:\n  a:\n\timage: auth.db\n", A, ParseError,
     "line 3, column 1: a tab character where YAML allows only spaces"),
    ("unclosed-quote", "services:\n  a:\n    image: \"auth.db\n", A, ParseError, "is not valid YAML at line 4"),
    ("unclosed-bracket", "services:\n  a:\n    command: [a, auth.db\n", A, ParseError, "is not valid YAML"),
    ("colon-in-plain", "services:\n  a:\n    image: x: auth.db\n", A, ParseError, "mapping values are not allowed here"),
    ("undefined-alias", "services:\n  a:\n    environment: *nowhere\n", A, ParseError, "found undefined alias"),
    ("top-level-list", "- a\n- b\n", A, ParseError, "is not a mapping at the top level"),
]
INVALID_YAML = ("tab-indent", "unclosed-quote", "unclosed-bracket", "colon-in-plain", "undefined-alias")


@pytest.mark.parametrize("text, options, error, words", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusal(tmp_path, text, options, error, words):
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    with pytest.raises(error) as info:
        plan_compose_env(path, **options)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == text


@pytest.mark.parametrize("text", [c[1] for c in REFUSALS if c[0] in INVALID_YAML], ids=list(INVALID_YAML))
def test_pyyaml_itself_rejects_the_invalid_files(text):
    """The refusals above are the parser's own verdict: PyYAML's safe_load fails on each of these texts."""
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)


def test_the_other_refusals_are_valid_yaml_that_no_exact_edit_fits():
    """Two documents, a duplicate key, a shared alias and a list are all valid YAML: refusing them is our rule."""
    texts = dict((c[0], c[1]) for c in REFUSALS)
    assert len(list(yaml.safe_load_all(texts["several-documents"]))) == 2
    assert yaml.safe_load(texts["duplicate-key-in-the-edited-mapping"])["services"]["a"]["environment"] == {"DB": "/d/x.db"}
    assert yaml.safe_load(texts["top-level-list"]) == ["a", "b"]


# --- set and unset ---------------------------------------------------------------------------------

SET_CASES = [
    ("update-list", {"set_vars": {"LOG_LEVEL": "debug"}}, "- LOG_LEVEL=info", "- LOG_LEVEL=debug"),
    ("update-map-keeps-quotes", {"set_vars": {"SESSIONS_DB": "/app/data/zoe.db"}},
     'SESSIONS_DB: "/app/data/sessions.db"', 'SESSIONS_DB: "/app/data/zoe.db"'),
    ("update-map-quotes-a-bool", {"set_vars": {"DATABASE_PATH": "true"}, "services": ["zoe-auth"]},
     "DATABASE_PATH: /app/data/auth.db", 'DATABASE_PATH: "true"'),
    ("unset-list", {"unset": ["LOG_LEVEL"]}, "      - LOG_LEVEL=info\n", ""),
    ("unset-map", {"unset": ["API_TOKEN"]}, "      API_TOKEN: ${API_TOKEN:-changeme}\n", ""),
]


@pytest.mark.parametrize("options, old, new", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_set_and_unset(host, options, old, new):
    path = str(host / "docker-compose.yml")
    plan = plan_compose_env(path, **options)
    before = plan.files[0].before
    assert before.count(old) == 1
    assert plan.files[0].after == before.replace(old, new)
    with open(path, "w") as handle:
        handle.write(plan.files[0].after)
    assert not plan_compose_env(path, **options).changed


@pytest.mark.parametrize("options, error, words", [
    ({"set_vars": {"X": "1"}, "services": ["nope"]}, OptionError, "O(services)"),
    ({"set_vars": {"NEW_VAR": "1"}, "services": ["zoe-core"]}, OptionError, "not in the environment of zoe-core"),
    ({"set_vars": {"NOWHERE": "1"}}, OptionError, "add it by hand"),
    ({"rewrite": {"auth.db": "auth.db-wal"}}, OptionError, "every run"),
    ({"set_vars": {"A": "1"}, "unset": ["A"]}, OptionError, "both name"),
], ids=["unknown-service", "adding-is-left-to-a-person", "set-nowhere", "non-idempotent-rewrite", "set-and-unset"])
def test_option_errors(host, options, error, words):
    path = str(host / "docker-compose.yml")
    if error is None:
        assert plan_compose_env(path, **options).changed
        return
    with pytest.raises(error) as info:
        plan_compose_env(path, **options)
    assert words in str(info.value)


# --- host side: validation, a file changed since it was read ----------------------------------------------------

@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_missing_build_context_is_rewritten_on_the_parse_check(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    build: ./no-such-dir\n    environment:\n      - DB=/app/data/auth.db\n")
    tool, skipped = validate(planned(plan_compose_env(path, **A)), "always")
    assert tool is None and re.search("already fails `docker[ -]compose config -q` before the edit: .*no-such-dir", skipped)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_tool_rejects_a_bad_edit(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n    volumes:\n      - ./auth.db:/x\n")
    with pytest.raises(ValidationError, match="config -q`, nothing was written"):
        validate(planned(plan_compose_env(path, rewrite={"auth.db": "a:b:c:d"})), "always")


def test_a_file_changed_since_it_was_read_is_refused(host):
    path = str(host / "docker-compose.yml")
    items = planned(plan_compose_env(path, rewrite=MAPPING))
    with open(path, "a") as handle:
        handle.write("# edited by hand meanwhile\n")
    with pytest.raises(ChangedError, match="changed since it was read for planning"):
        check_unchanged(items)


# --- env files -------------------------------------------------------------------------------------

ENV_CASES = [
    ("rewrite-keeps-export-and-quotes", {"rewrite": {"tool_registry.db": "zoe.db", "knowledge.db": "zoe.db"}},
     [("export TOOL_REGISTRY_DB=/app/data/tool_registry.db", "export TOOL_REGISTRY_DB=/app/data/zoe.db"),
      ("KNOWLEDGE_DB='/app/data/knowledge.db' # knowledge base", "KNOWLEDGE_DB='/app/data/zoe.db' # knowledge base")]),
    ("rewrite-limited-to-keys", {"rewrite": {"tool_registry.db": "zoe.db", "knowledge.db": "zoe.db"},
                                 "keys": ["KNOWLEDGE_DB"]},
     [("KNOWLEDGE_DB='/app/data/knowledge.db' # knowledge base", "KNOWLEDGE_DB='/app/data/zoe.db' # knowledge base")]),
    ("set-existing-double", {"set_vars": {"AGENT_PLANNING_DB": 'a "b"'}},
     [('AGENT_PLANNING_DB="/app/data/agent_planning.db"', 'AGENT_PLANNING_DB="a \\"b\\""')]),
    ("set-plain-needs-quotes", {"set_vars": {"MEMORY_DB": "a b"}},
     [("MEMORY_DB=/app/data/memory.db", 'MEMORY_DB="a b"')]),
    ("set-empty", {"set_vars": {"EMPTY": "x"}}, [("EMPTY=\n", "EMPTY=x\n")]),
    ("set-appends", {"set_vars": {"NEW": "1"}}, [("EMPTY=\n", "EMPTY=\nNEW=1\n")]),
    ("unset", {"unset": ["MEMORY_DB"]}, [("MEMORY_DB=/app/data/memory.db\n", "")]),
]


@pytest.mark.parametrize("options, replacements", [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES])
def test_env_file(host, options, replacements):
    path = str(host / ".env")
    plan = plan_compose_env(path, **options)
    expected = plan.files[0].before
    for old, new in replacements:
        assert expected.count(old) == 1
        expected = expected.replace(old, new)
    assert plan.files[0].kind == "env" and plan.files[0].after == expected
    with open(path, "w") as handle:
        handle.write(plan.files[0].after)
    assert not plan_compose_env(path, **options).changed


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_env_file_with_a_byte_order_mark(tmp_path, newline):
    path = tmp_path / ".env"
    text = "\ufeffDB=/app/data/auth.db%sexport B='/app/data/auth.db' # c%s" % (newline, newline)
    path.write_bytes(text.encode())
    plan = plan_compose_env(path, rewrite={"auth.db": "zoe.db"})
    assert plan.files[0].after == text.replace("auth.db", "zoe.db")
    assert [c["key"] for c in plan.changes] == ["DB", "B"]


@pytest.mark.parametrize("text", ["A=1\nnot an assignment\n", 'A="open\n', "A='x' trailing\n"],
                         ids=["no-equals", "unclosed-quote", "text-after-quote"])
def test_invalid_env_file_is_refused(tmp_path, text):
    with pytest.raises(ParseError):
        parse_env(text)
    path = tmp_path / ".env"
    path.write_text(text)
    with pytest.raises(ParseError, match=r"\.env line \d+: .*; nothing was written"):
        plan_compose_env(path, rewrite={"a": "b"})


# --- the module through ansible: the action plugin on the controller, bare /usr/bin/python3 on the host --------

def run_module(name, args, *flags):
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", name,
                             "-a", json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"] + list(flags),
                            capture_output=True, text=True, cwd=REPO, env=env)
    out = json.loads(result.stdout)
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.slow
def test_module_quartet(host):
    path = str(host / "docker-compose.yml")
    args = {"path": path, "rewrite": MAPPING, "follow_env_files": True, "backup": True}
    digests = {name: digest(str(host / name)) for name in ("docker-compose.yml", ".env")}
    os.chmod(path, 0o640)

    check = run_module("compose_env", args, "--check", "--diff")
    assert check.get("changed") is True, check
    assert {name: digest(str(host / name)) for name in digests} == digests
    assert "diff" in check and "8f14e45fceea167a5a36dedd4bea2543" not in json.dumps(check)

    real = run_module("compose_env", args)
    assert real["changed"] is True and real["changed_services"] == ["mem-agent", "zoe-auth", "zoe-core", "zoe-mcp-server"]
    assert real["validated_with"] in ("docker-compose", "docker compose", None)
    assert os.path.exists(real["backup_file"])
    with open(path) as handle:
        assert handle.read() == expected_compose()
    assert os.stat(path).st_mode & 0o777 == 0o640

    assert run_module("compose_env", args, "--check")["changed"] is False
    assert run_module("compose_env", args)["changed"] is False


@pytest.mark.slow
def test_module_stage_then_install(host):
    """stage=true writes validated copies and leaves the originals; the next run renames them into place."""
    path, env = str(host / "docker-compose.yml"), str(host / ".env")
    args = {"path": path, "rewrite": MAPPING, "follow_env_files": True}
    os.chmod(path, 0o640)
    os.chmod(env, 0o600)
    digests = {name: digest(str(host / name)) for name in ("docker-compose.yml", ".env")}

    check = run_module("compose_env", dict(args, stage=True), "--check")
    assert check["changed"] is True and check["staged"] == []
    assert sorted(os.listdir(host)) == [".env", "docker-compose.yml"]

    staged = run_module("compose_env", dict(args, stage=True))
    assert staged["changed"] is True and sorted(staged["staged"]) == sorted(
        [str(host / ".docker-compose.yml.zoe-staged"), str(host / "..env.zoe-staged")])
    assert {name: digest(str(host / name)) for name in digests} == digests
    assert os.stat(staged["staged"][0]).st_mode & 0o777 in (0o640, 0o600)
    for original, copy in ((path, str(host / ".docker-compose.yml.zoe-staged")), (env, str(host / "..env.zoe-staged"))):
        assert os.stat(copy).st_mode & 0o777 == os.stat(original).st_mode & 0o777
    inode = os.stat(str(host / ".docker-compose.yml.zoe-staged")).st_ino

    real = run_module("compose_env", args)
    assert real["changed"] is True and real["validated_with"] == "staged"
    assert real["changed_services"] == ["mem-agent", "zoe-auth", "zoe-core", "zoe-mcp-server"]
    assert os.stat(path).st_ino == inode, "the staged copy was not the one installed"
    with open(path) as handle:
        assert handle.read() == expected_compose()
    assert os.stat(path).st_mode & 0o777 == 0o640 and os.stat(env).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(host)) == [".env", "docker-compose.yml"]
    assert run_module("compose_env", args)["changed"] is False


def _symlink_to_exact_copy(copy):
    os.rename(copy, copy + ".real")
    os.symlink(copy + ".real", copy)


def _owned_by_nobody(copy):
    os.chown(copy, 65534, -1)


def _one_byte_more(copy):
    with open(copy, "a") as handle:
        handle.write("\n")


@pytest.mark.parametrize("spoil, ready", [
    (None, True),
    (_symlink_to_exact_copy, False),
    pytest.param(_owned_by_nobody, False, marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")),
    (_one_byte_more, False),
], ids=["exact-copy", "symlink-to-exact-copy", "other-owner", "one-byte-more"])
def test_only_an_exact_regular_staged_copy_owned_like_the_original_is_installed(host, spoil, ready):
    """staged_ready() accepts a staged copy only if it is a regular file, owned like the original and holding exactly
    the edit: a symlink (even to the right bytes) or another owner's file is never renamed over a compose file."""
    path = str(host / "docker-compose.yml")
    (item,) = planned(plan_compose_env(path, rewrite=MAPPING))
    (copy,) = stage([item])
    if spoil:
        spoil(copy)
    assert staged_ready([item]) == ({path} if ready else set())


@pytest.mark.slow
def test_module_stale_staged_copy_is_not_installed(host):
    """A staged copy that is not the edit of the file as it is now is removed, and the file edited afresh."""
    path = str(host / "docker-compose.yml")
    args = {"path": path, "rewrite": MAPPING}
    run_module("compose_env", dict(args, stage=True))
    copy = str(host / ".docker-compose.yml.zoe-staged")
    with open(copy, "a") as handle:
        handle.write("  tampered: {image: evil}\n")
    real = run_module("compose_env", args)
    assert real["changed"] is True and real["validated_with"] != "staged"
    with open(path) as handle:
        assert handle.read() == expected_compose()
    assert not os.path.exists(copy)


@pytest.mark.slow
def test_module_refusals_are_one_clear_sentence(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n\timage: auth.db\n")
    result = run_module("compose_env", {"path": str(path), "rewrite": {"auth.db": "zoe.db"}})
    assert result.get("failed") is True and result["error"] == "ParseError"
    assert result["msg"] == ("%s line 3, column 1: a tab character where YAML allows only spaces (indentation, or "
                             "before a value); nothing was written" % path)
    assert path.read_text() == "services:\n  a:\n\timage: auth.db\n"


@pytest.mark.slow
def test_module_rewrites_a_file_with_missing_build_contexts(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    build: ./no-such-dir\n    environment:\n      - DB=/app/data/auth.db\n")
    result = run_module("compose_env", {"path": str(path), "rewrite": {"auth.db": "zoe.db"}})
    assert result["changed"] is True and result["changed_services"] == ["a"], result
    assert path.read_text() == "services:\n  a:\n    build: ./no-such-dir\n    environment:\n      - DB=/app/data/zoe.db\n"
    assert result["validated_with"] is None and "already fails" in result["validation_skipped"]


# --- the demo host's compose file and .env ------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_host(tmp_path_factory):
    from zoe_demo import FOLD_DATABASES, build_demo_host
    root = str(tmp_path_factory.mktemp("demo") / "zoe")
    build_demo_host(root, seed=1)
    return root, {os.path.basename(name): "zoe.db" for name in FOLD_DATABASES}


def live_references(text, names, env=False):
    """Lines that still name one of `names` outside a comment (quoted text may hold a `#`)."""
    pattern = name_pattern(names)
    return [line for line in text.splitlines() if not line.lstrip().startswith("#") and
            pattern.search(line.split(" #")[0] if env or "'" not in line and '"' not in line else line)]


def test_demo_host_rewrite(demo_host):
    root, mapping = demo_host
    path = os.path.join(root, "docker-compose.yml")
    plan = plan_compose_env(path, rewrite=mapping, follow_env_files=True)
    compose, env = plan.files[0], plan.files[1]
    assert env.path == os.path.join(root, ".env")
    # the data meaning is exactly the replacement, and every line that differs held a retired name
    assert yaml.safe_load(compose.after) == replace_strings(yaml.safe_load(compose.before), mapping)
    before_lines, after_lines = compose.before.split("\n"), compose.after.split("\n")
    assert len(before_lines) == len(after_lines)
    pattern = name_pattern(mapping)
    for old, new in zip(before_lines, after_lines):
        if old != new:
            assert pattern.search(old) and not old.lstrip().startswith("#")
            assert pattern.sub(lambda m: mapping[m.group(0)], old.split(" #")[0]) == new.split(" #")[0]
    assert not live_references(compose.after, mapping)
    assert not live_references(env.after, mapping, env=True)
    assert validate(planned(plan), "always")[0] in ("docker-compose", "docker compose")


def test_demo_host_second_run_and_check_mode_digest(demo_host, tmp_path):
    root, mapping = demo_host
    for name in ("docker-compose.yml", ".env"):
        shutil.copy(os.path.join(root, name), str(tmp_path / name))
    path = str(tmp_path / "docker-compose.yml")
    first = digest(path)
    plan = plan_compose_env(path, rewrite=mapping, follow_env_files=True)
    assert plan.changed and digest(path) == first  # planning (what check mode runs) writes nothing
    for item in plan.files:
        with open(item.path, "w") as handle:
            handle.write(item.after)
    assert not plan_compose_env(path, rewrite=mapping, follow_env_files=True).changed


# --- property: any environment value survives a rewrite with its data meaning -----------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_PIECES = st.lists(st.sampled_from(["auth.db", "/app/data/auth.db", "oauth.db", "auth.db.bak", "x", " ", "-", ":"]),
                   min_size=1, max_size=5).map("".join)


def _quote(value, style):
    if style == "double":
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if style == "single":
        return "'%s'" % value.replace("'", "''")
    return value


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.tuples(_PIECES, st.sampled_from(["plain", "single", "double"]),
                                 st.sampled_from(["list", "map"])), min_size=1, max_size=6),
       share=st.sampled_from(["none", "alias", "merge"]), newline=st.sampled_from(["\n", "\r\n"]))
def test_property_rewrite_keeps_data_meaning(tmp_path_factory, values, share, newline):
    """PyYAML reads the edited file as the original with exactly the planned values changed, every other byte and
    line ending kept, and changed_services is exactly the services whose loaded configuration differs (a map
    environment shared by another service through an alias or a merge key included)."""
    lines = ["services:", "  s:", "    image: x"]
    list_items = [(v, style) for v, style, form in values if form == "list"]
    map_items = [(v, style) for v, style, form in values if form == "map"]
    if list_items:
        lines += ["    environment:"] + ["      - %s" % _quote("K%d=%s" % (i, v), s if s != "plain" or
                                                     plain_ok("K%d=%s" % (i, v)) else "double")
                                         for i, (v, s) in enumerate(list_items)]
    if map_items:
        lines += ["  t: &t", "    environment: &e"] + [
            "      K%d: %s" % (i, _quote(v, s if s != "plain" or plain_ok(v) else "single"))
            for i, (v, s) in enumerate(map_items)]
        lines += {"none": [], "alias": ["  u:", "    image: y", "    environment: *e"],
                  "merge": ["  u:", "    <<: *t", "    image: y"]}[share]
    text = newline.join(lines) + newline
    path = tmp_path_factory.mktemp("prop") / "docker-compose.yml"
    path.write_bytes(text.encode())
    plan = plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"})
    after = plan.files[0].after
    before_data, after_data = yaml.safe_load(text), yaml.safe_load(after)
    assert after_data == replace_strings(before_data, {"auth.db": "zoe.db"})
    assert after.count("\r\n") == text.count("\r\n") and len(after.splitlines()) == len(lines)
    assert plan.changed_services() == sorted(name for name in before_data["services"]
                                             if before_data["services"][name] != after_data["services"][name])
    path.write_bytes(after.encode())
    assert not plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"}).changed


def plain_ok(value):
    try:
        return yaml.safe_load("k: %s" % value)["k"] == value
    except yaml.YAMLError:
        return False
