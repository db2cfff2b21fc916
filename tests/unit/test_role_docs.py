"""Every public knob of a role is documented: a comment above it in defaults/main.yml and a row in the
role's README (the idea of sqlite-utils tests/test_docs.py)."""

import glob
import os

import pytest
import yaml

from role_docs import defaults_with_comments

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
               for p in glob.glob(os.path.join(REPO, "roles", "*", "defaults", "main.yml")))


def test_all_design_roles_exist():
    """The phases of the run, each a role. The stop and the restart of the services are steps of the consolidate
    role's downtime window (one module call), not roles of their own."""
    assert {"preflight", "backup", "prepare", "consolidate", "rewrite", "smoke_test", "rollback", "cleanup",
            "report", "guard"} <= set(os.listdir(os.path.join(REPO, "roles")))


@pytest.mark.parametrize("role", ROLES, ids=ROLES)
def test_every_default_is_commented_and_in_the_readme(role):
    role_dir = os.path.join(REPO, "roles", role)
    with open(os.path.join(role_dir, "defaults", "main.yml")) as handle:
        keys = list((yaml.safe_load(handle) or {}).keys())
    documented = {name: comment for name, _, comment in defaults_with_comments(role_dir)}
    assert sorted(documented) == sorted(keys)
    for key in keys:
        assert documented[key], "%s: no comment above %s in defaults/main.yml" % (role, key)
        assert key.startswith(role + "_"), "%s: %s lacks the role prefix" % (role, key)
    with open(os.path.join(role_dir, "README.md")) as handle:
        readme = handle.read()
    missing = [key for key in keys if "`%s`" % key not in readme]
    assert not missing, "%s/README.md does not document %s" % (role, ", ".join(missing))
