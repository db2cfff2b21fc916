"""How the play reads YAML: compose files through the zoe_compose_load filter, everything else strictly.

Compose files override keys that a merge (`<<: *anchor`) brought in, which the YAML merge-key spec allows and
Ansible's loader reports as a duplicate key. The play therefore parses them with zoe_compose_load
(plugins/filter/zoe.py, PyYAML on the controller), and ansible.cfg keeps `duplicate_dict_key = error` for
every file Ansible itself loads: a key written twice in an inventory or a role is a mistake, not an override.
"""

import configparser
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from zoe_demo import tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
FIXTURE = os.path.join(REPO, "tests", "fixtures", "compose", "docker-compose.yml")


def filters():
    spec = importlib.util.spec_from_file_location("zoe_filters", os.path.join(REPO, "plugins", "filter", "zoe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


def compose_texts():
    with open(FIXTURE) as handle:
        fixture = handle.read()
    return {"demo": tree.COMPOSE.format(), "fixture": fixture}


@pytest.mark.parametrize("name", ["demo", "fixture"])
def test_compose_files_load_with_their_merge_overrides(name):
    text = compose_texts()[name]
    data = filters()["zoe_compose_load"](text)
    assert data == yaml.safe_load(text)  # PyYAML's merge semantics: the explicit key wins over the merged one
    merged = [service for service, body in data["services"].items() if "image" in body]
    assert len(merged) >= 3, merged


def test_the_demo_services_keep_the_anchor_and_their_own_keys():
    services = filters()["zoe_compose_load"](compose_texts()["demo"])["services"]
    assert services["zoe-core"]["restart"] == "unless-stopped"  # from <<: *zoe-service
    assert "SERVICE_NAME=zoe-core" in services["zoe-core"]["environment"]


@pytest.mark.parametrize("text, key", [
    ("services:\n  a:\n    image: x\n    image: y\n", "image"),
    ("x: &base\n  image: x\nservices:\n  a:\n    <<: *base\n    ports: [1]\n    ports: [2]\n", "ports"),
    ("services:\n  a: {}\nservices:\n  b: {}\n", "services"),
], ids=["plain", "beside-a-merge", "top-level"])
def test_a_key_written_twice_is_refused(text, key):
    with pytest.raises(AnsibleFilterError, match="duplicate key '%s'" % key):
        filters()["zoe_compose_load"](text)


def test_invalid_yaml_is_an_ansible_error():
    with pytest.raises(AnsibleFilterError, match="not valid YAML"):
        filters()["zoe_compose_load"]("services:\n  a: [\n")


def test_ansible_itself_rejects_the_merge_override():
    """Why the filter exists: Ansible's from_yaml under duplicate_dict_key=error refuses the demo compose file."""
    from ansible.errors import AnsibleError
    from ansible.parsing.utils.yaml import from_yaml

    with pytest.raises(AnsibleError, match="uplicate"):
        from_yaml(compose_texts()["demo"], json_only=False)


def test_ansible_cfg_treats_duplicate_keys_as_errors():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "ansible.cfg"))
    assert config.get("defaults", "duplicate_dict_key") == "error"


def ansible(tool, *args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    return subprocess.run([os.path.join(BIN, tool)] + list(args), cwd=REPO, env=env, capture_output=True, text=True)


INVENTORIES = sorted(glob.glob(os.path.join(REPO, "inventory", "*", "*.yml"))
                     + glob.glob(os.path.join(REPO, "molecule", "common", "inventory", "*.yml")))


@pytest.mark.parametrize("inventory", INVENTORIES, ids=[os.path.relpath(p, REPO) for p in INVENTORIES])
def test_every_inventory_loads_without_duplicate_keys(inventory):
    result = ansible("ansible-inventory", "-i", inventory, "--list")
    # A parse error is only a warning for ansible-inventory (exit 0, no hosts): the stderr and the hosts tell.
    assert result.returncode == 0 and "uplicate" not in result.stderr and "Failed to parse" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["zoe_hosts"]["hosts"]


@pytest.mark.parametrize("playbook", ["consolidate.yml", "rollback.yml"])
def test_the_playbooks_load_without_duplicate_keys(playbook):
    result = ansible("ansible-playbook", "--syntax-check", playbook)
    assert result.returncode == 0 and "uplicate" not in result.stderr, result.stderr


def test_the_play_finds_the_filter_through_ansible_cfg():
    """As preflight uses it: the filter is found through filter_plugins and its result orders the services."""
    expression = "{{ (lookup('ansible.builtin.file', '%s') | zoe_compose_load).services | list }}" % FIXTURE
    result = ansible("ansible", "localhost", "-m", "ansible.builtin.debug", "-a", "msg=" + expression)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uplicate" not in result.stdout + result.stderr
    assert sorted(yaml.safe_load(open(FIXTURE))["services"]) == sorted(
        yaml.safe_load(result.stdout.split("=>", 1)[1])["msg"])
