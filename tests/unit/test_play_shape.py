"""The shape of the play: consolidate.yml is the list of phases, one role per phase, each role's tasks/main.yml
its table of contents, and the roles share one hand-over (zoe_run) instead of reading each other's facts."""

import glob
import os
import re

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "roles", "*")) if os.path.isdir(p))
INCLUDES = ("ansible.builtin.include_role", "ansible.builtin.import_role")

# The order of the run: the phases that change the host, then the failure paths, then what runs always.
# consolidate is the downtime window (stop, rollback point, merge, retire, compose and env files, start) in one
# module call; on a failure before its rollback point it starts again what it stopped, so the play's only failure
# path is the rollback.
PHASES = ["preflight", "backup", "prepare", "consolidate", "rewrite", "smoke_test"]
ON_FAILURE = ["rollback"]
ALWAYS = ["cleanup", "report"]


def tasks_of(items):
    for task in items or []:
        yield task
        for section in ("block", "rescue", "always"):
            yield from tasks_of(task.get(section))


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def role_calls(path):
    return [task[key] for task in tasks_of(load(path)[0]["tasks"]) for key in INCLUDES if key in task]


def test_consolidate_yml_names_every_phase_and_its_role_in_order():
    calls = role_calls(os.path.join(REPO, "consolidate.yml"))
    assert [call["name"] for call in calls] == ["guard"] + PHASES + ON_FAILURE + ALWAYS
    assert not [call for call in calls if "tasks_from" in call], "a phase runs a role's main.yml, not a part of it"
    assert set(PHASES + ON_FAILURE + ALWAYS) <= set(ROLES)


def test_every_role_main_is_its_table_of_contents():
    """Every task file of a role is imported by its tasks/main.yml: nothing of a role runs from elsewhere."""
    missing = []
    for role in ROLES:
        tasks_dir = os.path.join(REPO, "roles", role, "tasks")
        imported = {task["ansible.builtin.import_tasks"] for task in tasks_of(load(os.path.join(tasks_dir, "main.yml")))
                    if "ansible.builtin.import_tasks" in task}
        others = {os.path.basename(p) for p in glob.glob(os.path.join(tasks_dir, "*.yml"))} - {"main.yml"}
        missing += ["%s/%s" % (role, name) for name in sorted(others - imported)]
    assert not missing, "task files no main.yml imports: %s" % ", ".join(missing)


def strings(value):
    """The string leaves of a task's values (not its keys: a module option may be named like a role)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def expressions(path):
    """The Jinja and `when` text of a task file, without comments and task names (which may say anything)."""
    text = []
    for task in tasks_of(load(path)):
        for key, value in task.items():
            if key not in ("name", "block", "rescue", "always", "ansible.builtin.import_tasks"):
                text += list(strings(value))
    return "\n".join(text)


def test_no_role_reads_another_roles_facts():
    """Roles hand over through zoe_run only: no `<other role>_...` variable appears in a role's tasks or defaults."""
    found = []
    for role in ROLES:
        others = [r for r in ROLES if r != role and not role.startswith(r + "_")]
        # A variable, not a key of zoe_run (zoe_run.rollback_point) or a string ('backup_root')
        pattern = re.compile(r"(?<![.\w'\"])(%s)_[a-z0-9_]+" % "|".join(map(re.escape, others)))
        paths = glob.glob(os.path.join(REPO, "roles", role, "tasks", "*.yml"))
        texts = [(p, expressions(p)) for p in paths]
        defaults = os.path.join(REPO, "roles", role, "defaults", "main.yml")
        if os.path.exists(defaults):
            texts.append((defaults, "\n".join(strings(load(defaults) or {}))))
        for path, text in texts:
            found += ["%s: %s" % (os.path.relpath(path, REPO), m.group(0)) for m in pattern.finditer(text)]
    assert not found, found


def test_the_hand_over_is_made_by_preflight_and_extended_by_the_phases():
    """zoe_run is set first by preflight's handover.yml; every other set_fact of it extends it (combine)."""
    setters = []
    for path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "tasks", "*.yml"))):
        for task in tasks_of(load(path)):
            value = (task.get("ansible.builtin.set_fact") or {}).get("zoe_run")
            if value is not None:
                setters.append((os.path.relpath(path, REPO), value))
    assert setters
    for path, value in setters:
        if path == os.path.join("roles", "preflight", "tasks", "handover.yml"):
            assert isinstance(value, dict) and {"root", "data_dir", "backup_root", "run_id"} <= set(value)
        else:
            assert isinstance(value, str) and value.strip().startswith("{{ zoe_run | combine("), path
