"""compose_env: byte-exact edits of compose files and env files.

The fixture tests/fixtures/compose/docker-compose.yml is written in the style of the real Zoe file.
Whole-file comparisons prove that only the values naming retired databases change; PyYAML on the
controller cross-checks that the data meaning of the edit is exactly the intended one.
"""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import yaml

from ansible.module_utils.db_references import name_pattern
from ansible.module_utils.compose_env import (
    OptionError, ParseError, ValidationError, parse_compose, parse_env, plan_compose_env, stage_compose_env,
    staged_ready, validate_plan)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "compose")
RETIRED = ("auth.db", "developer_tasks.db", "sessions.db", "satisfaction.db", "self_awareness.db", "learning.db",
           "agent_planning.db", "tool_registry.db", "snapshots.db", "model_performance.db", "context_cache.db",
           "knowledge.db", "aider_conversations.db")
MAPPING = {name: "zoe.db" for name in RETIRED}

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
    assert len(plan.changes) == len(EXPECTED_LINE_CHANGES)
    after = plan.files[0].after
    live = "\n".join(line for line in after.splitlines() if not line.lstrip().startswith("#"))
    for name in RETIRED:
        assert not __import__("re").search(r"(?<![A-Za-z0-9_.\-])%s(?![A-Za-z0-9_]|\.[A-Za-z0-9])" % name, live), name
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


def test_plan_writes_nothing(host):
    path = str(host / "docker-compose.yml")
    before = {name: (digest(str(host / name)), os.stat(str(host / name)).st_mtime_ns) for name in os.listdir(host)}
    plan = plan_compose_env(path, rewrite=MAPPING, follow_env_files=True, set_vars={"LOG_LEVEL": "debug"})
    validate_plan(plan)
    assert plan.changed
    after = {name: (digest(str(host / name)), os.stat(str(host / name)).st_mtime_ns) for name in os.listdir(host)}
    assert after == before


def test_rewritten_file_passes_compose_config(host, compose_tool):
    path = str(host / "docker-compose.yml")
    plan = plan_compose_env(path, rewrite=MAPPING)
    assert validate_plan(plan, "always") in ("docker-compose", "docker compose")
    with open(path, "w") as handle:
        handle.write(plan.files[0].after)
    result = subprocess.run(compose_tool + ["-f", path, "config", "-q"], capture_output=True, text=True, cwd=str(host))
    assert result.returncode == 0, result.stderr


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


def test_secrets_are_masked_in_diffs_and_changes(host):
    plan = plan_compose_env(str(host / "docker-compose.yml"), set_vars={"JWT_SECRET": "0123456789abcdef0123456789abcdef"},
                            follow_env_files=True, rewrite=MAPPING)
    text = json.dumps(plan.diffs()) + json.dumps(plan.changes) + plan.unified_diff()
    for secret in ("8f14e45fceea167a5a36dedd4bea2543", "0123456789abcdef0123456789abcdef", "correct-horse-battery",
                   "sk-abcdefghijklmnopqrstuvwx"):
        assert secret not in text
    assert "+      - JWT_SECRET=********" in plan.unified_diff() or "JWT_SECRET" in plan.unified_diff()


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


# --- round trips on small documents ----------------------------------------------------------------

CASES = [
    ("list-plain", "services:\n  a:\n    environment:\n      - DB=/app/data/auth.db\n",
     "services:\n  a:\n    environment:\n      - DB=/app/data/zoe.db\n"),
    ("compact-list-same-indent", "services:\n  a:\n    environment:\n    - DB=/app/data/auth.db  # c\n    image: x\n",
     "services:\n  a:\n    environment:\n    - DB=/app/data/zoe.db  # c\n    image: x\n"),
    ("double-quoted-escape", 'services:\n  a:\n    environment:\n      DB: "/app/data/\\u0061uth.db"\n',
     'services:\n  a:\n    environment:\n      DB: "/app/data/zoe.db"\n'),
    ("single-quoted-doubled-quote", "services:\n  a:\n    command: 'sh -c ''sqlite3 /d/auth.db'''\n",
     "services:\n  a:\n    command: 'sh -c ''sqlite3 /d/zoe.db'''\n"),
    ("flow-map", "services:\n  a:\n    environment: {DB: /app/auth.db, X: 'auth.db'}\n",
     "services:\n  a:\n    environment: {DB: /app/zoe.db, X: 'zoe.db'}\n"),
    ("multi-line-flow", "services:\n  a:\n    command: [\n      \"--db\", /x/auth.db,  # comment auth.db\n    ]\n",
     "services:\n  a:\n    command: [\n      \"--db\", /x/zoe.db,  # comment auth.db\n    ]\n"),
    ("literal-block", "services:\n  a:\n    command: |\n      sqlite3 auth.db\n\n      echo auth.db # not a comment\n    image: x\n",
     "services:\n  a:\n    command: |\n      sqlite3 zoe.db\n\n      echo zoe.db # not a comment\n    image: x\n"),
    ("multi-line-plain", "services:\n  a:\n    command: run\n      --db auth.db\n",
     "services:\n  a:\n    command: run\n      --db zoe.db\n"),
    ("multi-line-double", 'services:\n  a:\n    command: "run\n      --db auth.db"\n',
     'services:\n  a:\n    command: "run\n      --db zoe.db"\n'),
    ("anchor-and-alias", "x-e: &e\n  DB: auth.db\nservices:\n  a:\n    environment: *e\n",
     "x-e: &e\n  DB: zoe.db\nservices:\n  a:\n    environment: *e\n"),
    ("keys-untouched", "services:\n  auth.db:\n    image: auth.db\n", "services:\n  auth.db:\n    image: zoe.db\n"),
    ("boundaries", "services:\n  a:\n    environment:\n      - A=oauth.db\n      - B=auth.db.bak\n      - C=myauth.db\n"
                   "      - D=auth.db-wal\n      - E=${E:-auth.db}\n",
     "services:\n  a:\n    environment:\n      - A=oauth.db\n      - B=auth.db.bak\n      - C=myauth.db\n"
     "      - D=zoe.db-wal\n      - E=${E:-zoe.db}\n"),
    ("crlf", "services:\r\n  a:\r\n    environment:\r\n      - DB=auth.db\r\n",
     "services:\r\n  a:\r\n    environment:\r\n      - DB=zoe.db\r\n"),
    ("no-final-newline", "services:\n  a:\n    image: auth.db", "services:\n  a:\n    image: zoe.db"),
    ("document-marker-and-comment", "---\n# auth.db\nservices:\n  a: {image: auth.db}  # auth.db\n",
     "---\n# auth.db\nservices:\n  a: {image: zoe.db}  # auth.db\n"),
]


@pytest.mark.parametrize("before, after", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip(tmp_path, before, after):
    path = tmp_path / "docker-compose.yml"
    path.write_bytes(before.encode())
    plan = plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"})
    assert plan.files[0].after == after
    assert yaml.safe_load(after) == replace_strings(yaml.safe_load(before), {"auth.db": "zoe.db"})


def test_plain_value_that_needs_quotes_is_requoted(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("services:\n  a:\n    environment:\n      DB: /x/auth.db\n")
    plan = plan_compose_env(str(path), rewrite={"/x/auth.db": "a #b"})
    assert plan.files[0].after == 'services:\n  a:\n    environment:\n      DB: "a #b"\n'


# --- set and unset ---------------------------------------------------------------------------------

SET_CASES = [
    ("update-list", {"set_vars": {"LOG_LEVEL": "debug"}}, "- LOG_LEVEL=info", "- LOG_LEVEL=debug"),
    ("update-map-keeps-quotes", {"set_vars": {"SESSIONS_DB": "/app/data/zoe.db"}},
     'SESSIONS_DB: "/app/data/sessions.db"', 'SESSIONS_DB: "/app/data/zoe.db"'),
    ("update-map-quotes-a-bool", {"set_vars": {"DATABASE_PATH": "true"}, "services": ["zoe-auth"]},
     "DATABASE_PATH: /app/data/auth.db", 'DATABASE_PATH: "true"'),
    ("add-to-list", {"set_vars": {"NEW_VAR": "x y"}, "services": ["mem-agent"]},
     "- BACKUP_OF=/app/data/knowledge.db.bak\n", "- BACKUP_OF=/app/data/knowledge.db.bak\n      - NEW_VAR=x y\n"),
    ("add-to-map", {"set_vars": {"NEW_VAR": "1"}, "services": ["zoe-auth"]},
     "API_TOKEN: ${API_TOKEN:-changeme}\n", 'API_TOKEN: ${API_TOKEN:-changeme}\n      NEW_VAR: "1"\n'),
    ("add-section", {"set_vars": {"NEW_VAR": "v"}, "services": ["zoe-mcp-server"]},
     "        target: /app/data\n", "        target: /app/data\n    environment:\n      - NEW_VAR=v\n"),
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
    ({"set_vars": {"X": "1"}, "services": ["zoe-core"]}, None, None),
    ({"set_vars": {"NOWHERE": "1"}}, OptionError, "name the O(services)"),
    ({"rewrite": {"auth.db": "auth.db-wal"}}, OptionError, "every run"),
    ({"set_vars": {"A": "1"}, "unset": ["A"]}, OptionError, "both name"),
], ids=["unknown-service", "zoe-core-has-own-env", "set-nowhere", "non-idempotent-rewrite", "set-and-unset"])
def test_option_errors(host, options, error, words):
    path = str(host / "docker-compose.yml")
    if error is None:
        assert plan_compose_env(path, **options).changed
        return
    with pytest.raises(error) as info:
        plan_compose_env(path, **options)
    assert words in str(info.value)


def test_set_on_service_with_merge_key_only_is_refused(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("x-c: &c\n  environment:\n    A: b\nservices:\n  s:\n    <<: *c\n    image: x\n")
    with pytest.raises(OptionError, match="merge key"):
        plan_compose_env(str(path), set_vars={"B": "1"}, services=["s"])


# --- invalid input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("services:\n  a:\n\timage: x\n", "tab"),
    ("services:\n  a:\n    image: \"x\n", "unbalanced"),
    ("services:\n  a:\n    command: [a, b\n", "unbalanced brackets"),
    ("services:\n  a:\n    image: x: y\n", "mapping values"),
    ("services:\n  a:\n    image: x\n   bogus\n", "line 4"),
    ("- a\n- b\n", "mapping"),
], ids=["tab-indent", "unclosed-quote", "unclosed-bracket", "colon-in-plain", "stray-line", "top-level-list"])
def test_invalid_yaml_is_refused(tmp_path, text, words):
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    with pytest.raises(ParseError, match=words):
        plan_compose_env(str(path), rewrite={"x": "y"})
    with pytest.raises(Exception):
        yaml.safe_load(text) if words != "mapping" else (_ for _ in ()).throw(ValueError())
    assert path.read_text() == text


@pytest.mark.usefixtures("compose_tool")
def test_compose_tool_rejection_names_the_original(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n    bogus_option: 1\n    environment:\n      - DB=auth.db\n")
    plan = plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"})
    with pytest.raises(ParseError, match="already fails"):
        validate_plan(plan, "always")


@pytest.mark.usefixtures("compose_tool")
def test_compose_tool_rejects_a_bad_edit(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n    volumes:\n      - ./auth.db:/x\n")
    plan = plan_compose_env(str(path), rewrite={"auth.db": "a:b:c:d"})
    with pytest.raises(ValidationError, match="nothing was written"):
        validate_plan(plan, "always")


def test_scanner_finds_every_value_of_the_fixture():
    with open(os.path.join(FIXTURES, "docker-compose.yml")) as handle:
        doc = parse_compose(handle.read())
    values = [doc.value(s) for s in doc.scalars if not s.is_key]
    assert "sqlite3 /app/data/auth.db 'SELECT 1'" in values
    assert "--kb=/app/knowledge/knowledge.db" in values
    assert not any("PLANNING_DB" in v for v in values)  # the commented-out service is not live


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


@pytest.mark.parametrize("text", ["A=1\nnot an assignment\n", 'A="open\n', "A='x' trailing\n"],
                         ids=["no-equals", "unclosed-quote", "text-after-quote"])
def test_invalid_env_file_is_refused(text):
    with pytest.raises(ParseError):
        parse_env(text)


# --- the module through ansible (bare /usr/bin/python3 on the host side) ----------------------------

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
    plan = plan_compose_env(path, rewrite=MAPPING)
    (copy,) = stage_compose_env(plan)
    if spoil:
        spoil(copy)
    assert staged_ready(plan) == ({path} if ready else set())


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
def test_module_fails_cleanly_on_invalid_yaml(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n\timage: auth.db\n")
    result = run_module("compose_env", {"path": str(path), "rewrite": {"auth.db": "zoe.db"}})
    assert result.get("failed") is True and "tab" in result["msg"] and result["error"] == "ParseError"
    assert path.read_text() == "services:\n  a:\n\timage: auth.db\n"


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
    assert validate_plan(plan, "always")


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
                                 st.sampled_from(["list", "map"])), min_size=1, max_size=6))
def test_property_rewrite_keeps_data_meaning(tmp_path_factory, values):
    lines = ["services:", "  s:", "    image: x"]
    list_items = [(v, style) for v, style, form in values if form == "list"]
    map_items = [(v, style) for v, style, form in values if form == "map"]
    if list_items:
        lines += ["    environment:"] + ["      - %s" % _quote("K%d=%s" % (i, v), s if s != "plain" or
                                                     plain_ok("K%d=%s" % (i, v)) else "double")
                                         for i, (v, s) in enumerate(list_items)]
    if map_items:
        lines += ["  t:", "    environment:"] + ["      K%d: %s" % (i, _quote(v, s if s != "plain" or plain_ok(v) else "single"))
                                                  for i, (v, s) in enumerate(map_items)]
    text = "\n".join(lines) + "\n"
    path = tmp_path_factory.mktemp("prop") / "docker-compose.yml"
    path.write_text(text)
    plan = plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"})
    assert yaml.safe_load(plan.files[0].after) == replace_strings(yaml.safe_load(text), {"auth.db": "zoe.db"})
    path.write_text(plan.files[0].after)
    assert not plan_compose_env(str(path), rewrite={"auth.db": "zoe.db"}).changed


def plain_ok(value):
    from ansible.module_utils.compose_env import plain_safe
    return plain_safe(value) and isinstance(yaml.safe_load("k: %s" % value)["k"], str)
