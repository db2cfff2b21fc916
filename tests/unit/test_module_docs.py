"""Every module documents itself for ansible-doc, and its documentation matches its argument_spec.

`ansible-test validate-modules` only runs inside a collection root (ansible/ansible #60215), so this
test does the part of it that matters here: names, types, defaults, choices, elements, required.
"""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_DOC = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "library", "*.py")))
# The public contract's four modules (docs/DESIGN.md); the README's Layout table names every module.
CONTRACT = {"sqlite_merge", "volume_snapshot", "compose_env", "db_references"}


def readme_modules():
    """The module names (`name`) in the README's `library/` row."""
    with open(os.path.join(REPO, "README.md")) as handle:
        rows = [line for line in handle if line.startswith("| `library/` |")]
    assert len(rows) == 1, rows
    return sorted(set(re.findall(r"`(\w+)`", rows[0].split("|")[2])))


class _Captured(Exception):
    pass


def argument_spec_of(name):
    """Run the module's main() with an AnsibleModule that records its arguments and stops."""
    spec = importlib.util.spec_from_file_location("zoe_module_%s" % name, os.path.join(REPO, "library", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captured = {}

    class Recorder:
        def __init__(self, argument_spec, **kwargs):
            captured.update(argument_spec=argument_spec, kwargs=kwargs)
            raise _Captured()

    module.AnsibleModule = Recorder
    with pytest.raises(_Captured):
        module.main()
    return module, captured


def compare(doc_options, spec, where):
    assert sorted(doc_options) == sorted(spec), "%s: documented options differ from argument_spec" % where
    for option, doc in doc_options.items():
        arg = spec[option]
        label = "%s.%s" % (where, option)
        assert doc.get("type", "str") == arg.get("type", "str"), label + ": type"
        assert doc.get("default") == arg.get("default"), label + ": default"
        assert doc.get("choices") == arg.get("choices"), label + ": choices"
        assert doc.get("elements") == arg.get("elements"), label + ": elements"
        assert bool(doc.get("required", False)) == bool(arg.get("required", False)), label + ": required"
        assert doc.get("description"), label + ": no description"
        if "suboptions" in doc or "options" in arg:
            compare(doc.get("suboptions", {}), arg.get("options", {}), label)


def test_every_module_is_there():
    """Each module of the contract exists, and library/ holds exactly the modules the README names."""
    assert CONTRACT <= set(MODULES)
    assert MODULES == readme_modules()


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_ansible_doc_renders(name):
    result = subprocess.run([ANSIBLE_DOC, "-M", os.path.join(REPO, "library"), "-t", "module", name],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "EXAMPLES" in result.stdout and "RETURN VALUES" in result.stdout


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_documentation_matches_argument_spec(name):
    module, captured = argument_spec_of(name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == name
    compare(doc.get("options", {}), captured["argument_spec"], name)
    assert captured["kwargs"].get("supports_check_mode") is True
    fragments = doc.get("extends_documentation_fragment", [])
    assert "action_common_attributes" in fragments and {"zoe", "zoe.read_only"} & set(fragments)
    returns = yaml.safe_load(module.RETURN)
    assert isinstance(returns, dict) and returns, "RETURN is empty"
    for key, value in returns.items():
        assert {"description", "returned", "type"} <= set(value), "RETURN.%s incomplete" % key
    assert yaml.safe_load(module.EXAMPLES)


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_attributes_with_the_fragments(name):
    """The attributes ansible-doc shows once plugins/doc_fragments/zoe.py (found through ansible.cfg) is merged in."""
    result = subprocess.run([ANSIBLE_DOC, "-M", os.path.join(REPO, "library"), "-t", "module", "--json", name],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)[name]["doc"]
    assert doc["version_added"] == "1.0.0" and doc["author"] == ["zoe-consolidate"]
    attributes = doc["attributes"]
    assert attributes["check_mode"]["support"] == "full" and attributes["check_mode"]["description"]
    assert attributes["diff_mode"]["support"] in ("full", "none") and attributes["diff_mode"]["description"]
    assert attributes["idempotent"]["support"] in ("full", "partial") and attributes["idempotent"]["details"]
    assert attributes["platform"]["platforms"] == "posix"


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_module_is_thin(name):
    """Logic lives in module_utils: a module imports neither sqlite3 nor subprocess itself."""
    with open(os.path.join(REPO, "library", name + ".py")) as handle:
        source = handle.read()
    assert "import sqlite3" not in source and "import subprocess" not in source
