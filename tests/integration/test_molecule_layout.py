"""Structural checks of the Molecule scenarios (no Docker): what `molecule test --all` relies on.

Every scenario uses the shared create/destroy playbooks and a shared inventory whose Zoe facts are the
default inventory's own group vars; sequences stay offline (no dependency/lint/syntax steps); hosts get
ports and compose projects that collide neither with each other nor with the demo stack.
"""

import glob
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOLECULE = os.path.join(REPO, "molecule")
SCENARIOS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(MOLECULE, "*", "molecule.yml")))
DEMO_PORTS = range(18080, 18085)

# The playbooks each scenario's sequence needs besides the shared create/destroy.
REQUIRED = {"default": ["converge.yml", "verify.yml"], "check": ["converge.yml", "verify.yml"],
            "rollback": ["side_effect.yml", "verify.yml"], "fleet": ["converge.yml", "verify.yml"]}


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def scenario_inventory(config):
    """The scenario's own inventory file, from its --inventory= argument."""
    args = config["ansible"]["executor"]["args"]["ansible_playbook"]
    paths = [a.split("=", 1)[1] for a in args if a.startswith("--inventory=")]
    assert len(paths) == 1, args
    return paths[0].replace("${MOLECULE_PROJECT_DIRECTORY}", REPO)


def test_the_four_scenarios_exist():
    assert SCENARIOS == sorted(REQUIRED)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIOS)
def test_scenario_uses_the_shared_pieces_and_stays_offline(scenario):
    directory = os.path.join(MOLECULE, scenario)
    config = load(os.path.join(directory, "molecule.yml"))
    playbooks = config["ansible"]["playbooks"]
    assert playbooks["create"] == "../common/create.yml" and playbooks["destroy"] == "../common/destroy.yml"
    assert config["ansible"]["env"]["ANSIBLE_CONFIG"] == "${MOLECULE_PROJECT_DIRECTORY}/ansible.cfg"
    assert config["prerun"] is False and config["dependency"]["enabled"] is False
    sequence = config["scenario"]["test_sequence"]
    assert sequence[:2] == ["destroy", "create"] and sequence[-1] == "destroy"
    assert not {"dependency", "lint", "syntax"} & set(sequence)
    for name in REQUIRED[scenario]:
        assert load(os.path.join(directory, name)), name
    assert os.path.isfile(scenario_inventory(config))


def test_zoe_facts_come_from_the_default_inventory():
    link = os.path.join(MOLECULE, "common", "inventory", "group_vars", "zoe_hosts.yml")
    assert os.path.islink(link)
    assert os.path.realpath(link) == os.path.realpath(os.path.join(REPO, "inventory", "demo", "group_vars", "zoe_hosts.yml"))


def test_hosts_ports_and_projects_never_collide():
    seen_ports, seen_hosts = {}, set()
    for scenario in SCENARIOS:
        inventory = load(scenario_inventory(load(os.path.join(MOLECULE, scenario, "molecule.yml"))))
        for host, host_vars in inventory["zoe_hosts"]["hosts"].items():
            assert host not in seen_hosts, host  # the compose project is molecule-<host>
            seen_hosts.add(host)
            assert host_vars["zoe_root"] == "{{ molecule_zoe_root }}"
            assert host_vars["zoe_auth_url"] == "{{ molecule_zoe_auth_url }}"
            for port in range(host_vars["molecule_zoe_port_base"], host_vars["molecule_zoe_port_base"] + 5):
                assert port not in DEMO_PORTS and port not in seen_ports, (host, port, seen_ports.get(port))
                seen_ports[port] = host
