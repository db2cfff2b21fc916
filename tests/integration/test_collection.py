"""The collection zoe.consolidate, built by tools/build_collection.sh and installed from its tarball.

Everything runs outside the repository: a temporary directory with an empty ansible.cfg, the tarball
installed into a temporary collections path, so nothing is found through the repository's library/,
module_utils/ or plugins/. The modules run by FQCN with the system's bare python3 as the host side.
"""

import glob
import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
GALAXY = yaml.safe_load(open(os.path.join(REPO, "galaxy.yml")))
FQCN = "%s.%s" % (GALAXY["namespace"], GALAXY["name"])
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "library", "*.py")))
ROLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "roles", "*")) if os.path.isdir(p))
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytestmark = pytest.mark.slow  # about 30 s of CPU: a build, an install and a dozen ansible runs


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Build the tarball, install it into a fresh collections path, and return a runner for Ansible's CLIs."""
    base = tmp_path_factory.mktemp("collection")
    build = subprocess.run(["bash", os.path.join(REPO, "tools", "build_collection.sh"), str(base / "build")],
                           capture_output=True, text=True, env=dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"]))
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = base / "build" / ("%s-%s-%s.tar.gz" % (GALAXY["namespace"], GALAXY["name"], GALAXY["version"]))
    assert tarball.is_file(), os.listdir(base / "build")
    (base / "ansible.cfg").write_text("[defaults]\n")  # nothing of the repository's configuration
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(base / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(base / "collections"),
               ANSIBLE_LOCAL_TEMP=str(base / "tmp"), ANSIBLE_HOME=str(base / "home"), ANSIBLE_NOCOLOR="1")

    def run(tool, *args):
        return subprocess.run([os.path.join(BIN, tool)] + list(args), cwd=str(base), env=env,
                              capture_output=True, text=True, timeout=300)

    install = run("ansible-galaxy", "collection", "install", "--offline", str(tarball), "-p", str(base / "collections"))
    assert install.returncode == 0, install.stdout + install.stderr
    root = base / "collections" / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    assert json.loads((root / "MANIFEST.json").read_text())["collection_info"]["version"] == GALAXY["version"]
    return {"base": base, "root": root, "run": run}


def test_the_collection_holds_every_module_role_and_plugin(collection):
    root = collection["root"]
    assert sorted(p.name[:-3] for p in (root / "plugins" / "modules").glob("*.py")) == MODULES
    assert sorted(p.name for p in (root / "roles").iterdir()) == ROLES
    for kind in ("module_utils", "filter", "lookup", "doc_fragments"):
        assert sorted(p.name for p in (root / "plugins" / kind).glob("*.py")) == sorted(
            os.path.basename(p) for p in glob.glob(os.path.join(REPO, "module_utils" if kind == "module_utils" else
                                                                    os.path.join("plugins", kind), "*.py"))), kind
    copies = [p for p in root.rglob("*.py")]
    leftovers = [str(p) for p in copies
                 for name in os.listdir(os.path.join(REPO, "module_utils")) if name.endswith(".py")
                 if "ansible.module_utils.%s " % name[:-3] in p.read_text()
                 or "ansible.module_utils.%s\n" % name[:-3] in p.read_text()]
    assert not leftovers, leftovers


def tasks_of(items):
    for task in items or []:
        yield task
        for section in ("block", "rescue", "always"):
            yield from tasks_of(task.get(section))


def test_the_roles_call_the_project_modules_by_fqcn(collection):
    """A collection's role would find its own modules by short name too; the copies say which collection they use."""
    short = []
    for path in sorted((collection["root"] / "roles").glob("*/tasks/*.yml")):
        for task in tasks_of(yaml.safe_load(path.read_text())):
            short += ["%s: %s" % (path.relative_to(collection["root"]), key) for key in set(task) & set(MODULES)]
            if set(task) & {"ansible.builtin.include_role", "ansible.builtin.import_role"}:
                role = (task.get("ansible.builtin.include_role") or task.get("ansible.builtin.import_role"))["name"]
                assert role.startswith(FQCN + "."), (path, role)
    assert not short, short


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_by_fqcn(collection, name):
    result = collection["run"]("ansible-doc", "--json", "%s.%s" % (FQCN, name))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["%s.%s" % (FQCN, name)]["doc"]
    assert doc["module"] == name and doc["collection"] == FQCN
    assert doc["version_added"] == "1.0.0"  # from the collection's doc fragment zoe.consolidate.zoe
    assert doc["attributes"]["check_mode"]["support"] == "full" and doc["options"]


def test_ansible_doc_lists_the_modules_and_the_lookup(collection):
    listed = collection["run"]("ansible-doc", "--list", "--json", FQCN)
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(listed.stdout)) == ["%s.%s" % (FQCN, name) for name in MODULES]
    lookup = collection["run"]("ansible-doc", "-t", "lookup", "%s.zoe_run_owner" % FQCN)
    assert lookup.returncode == 0, lookup.stderr


def make_databases(directory):
    target, source = str(directory / "zoe.db"), str(directory / "auth.db")
    for path, rows in ((target, [("admin", "a@zoe")]), (source, [("admin", "a@zoe"), ("user", "u@zoe")])):
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE NOT NULL, email TEXT)")
            conn.executemany("INSERT INTO users (username, email) VALUES (?, ?)", rows)
        conn.close()
    return target, source


def fingerprint(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest(), os.stat(path).st_mtime_ns


def merge_play(collection, target, source, check, record):
    playbook = collection["base"] / "merge.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Merge by FQCN", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON},
        "tasks": [
            {"name": "Merge", "%s.sqlite_merge" % FQCN: {"target": target, "sources": [source],
                                                         "keys": {"users": ["username"]}},
             "check_mode": check, "register": "merge"},
            {"name": "Record", "ansible.builtin.copy": {"content": "{{ merge | to_json }}", "dest": record,
                                                        "mode": "0600"}, "check_mode": False},
        ]}]))
    result = collection["run"]("ansible-playbook", "-i", "localhost,", str(playbook))
    assert result.returncode == 0, result.stdout + result.stderr
    with open(record) as handle:
        return json.load(handle)


def test_sqlite_merge_by_fqcn_check_real_and_idempotent(collection, tmp_path):
    """The quartet on real SQLite files, through the installed collection and a bare python3 on the host side."""
    target, source = make_databases(tmp_path)
    before = fingerprint(target), fingerprint(source)
    record = str(tmp_path / "result.json")

    check = merge_play(collection, target, source, True, record)
    assert check["changed"] is True and check["totals"]["inserted"] == 1 and check["totals"]["identical"] == 1
    assert (fingerprint(target), fingerprint(source)) == before  # check mode wrote nothing

    real = merge_play(collection, target, source, False, record)
    assert real["changed"] is True and real["totals"]["inserted"] == 1
    conn = sqlite3.connect(target)
    assert sorted(r[0] for r in conn.execute("SELECT username FROM users")) == ["admin", "user"]
    conn.close()

    assert merge_play(collection, target, source, True, record)["changed"] is False
    assert merge_play(collection, target, source, False, record)["changed"] is False


def test_every_role_task_file_resolves_its_modules_in_the_collection(collection):
    """A syntax check of every tasks file of every role, imported statically from the installed collection."""
    tasks = [{"name": "Import %s %s" % (role, os.path.basename(path)),
              "ansible.builtin.import_role": {"name": "%s.%s" % (FQCN, role), "tasks_from": os.path.basename(path)}}
             for role in ROLES for path in sorted(glob.glob(os.path.join(REPO, "roles", role, "tasks", "*.yml")))]
    playbook = collection["base"] / "roles.yml"
    playbook.write_text(yaml.safe_dump([{"name": "All roles", "hosts": "localhost", "gather_facts": False,
                                         "tasks": tasks}]))
    result = collection["run"]("ansible-playbook", "-i", "localhost,", "--syntax-check", str(playbook))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("consolidate", "rollback"):
        result = collection["run"]("ansible-playbook", "-i", "localhost,", "--syntax-check", "%s.%s" % (FQCN, name))
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_filter_and_the_lookup_by_fqcn(collection):
    expression = "{{ ['auth.db'] | %s.zoe_rewrite_map('zoe.db') }} {{ lookup('%s.zoe_run_owner') | length > 0 }}" % (
        FQCN, FQCN)
    result = collection["run"]("ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
                               "-a", json.dumps({"msg": expression}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "{'auth.db': 'zoe.db'} True" in result.stdout, result.stdout
