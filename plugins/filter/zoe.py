"""Filters of the zoe-consolidate playbooks (controller side)."""

from ansible.errors import AnsibleFilterError


def _depends(service):
    depends = (service or {}).get("depends_on") or []
    if isinstance(depends, dict):
        return sorted(depends)
    return list(depends)


def zoe_stop_order(names, compose):
    """Order services for stopping: dependents first, then what they depend on.

    `compose` is the parsed compose file (a dict with `services`); names outside it keep their order.
    """
    services = (compose or {}).get("services") or {}
    wanted = list(dict.fromkeys(names or []))
    start_order, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise AnsibleFilterError("depends_on cycle: %s" % " -> ".join(path + [name]))
        state[name] = "visiting"
        for dep in _depends(services.get(name)):
            visit(dep, path + [name])
        state[name] = "done"
        start_order.append(name)

    for name in wanted:
        visit(name, [])
    return [name for name in reversed(start_order) if name in wanted]


def zoe_start_order(names, compose):
    """Order services for starting: what others depend on first."""
    return list(reversed(zoe_stop_order(names, compose)))


def zoe_rewrite_map(databases, primary, prefix=""):
    """{prefix + retired name: prefix + primary} for compose_env/db_references rewrites."""
    return {prefix + name: prefix + primary for name in databases or [] if name != primary}


def zoe_compose_argv(command, project, project_dir, files):
    """The compose command line of a project: `<command> -p P --project-directory D -f F1 -f F2 ...`."""
    argv = list(command) + ["-p", project, "--project-directory", project_dir]
    for path in files or []:
        argv += ["-f", path]
    return argv


def zoe_not_ready(containers, services):
    """The services among `services` that have no running, healthy container of this compose project.

    `containers` is compose_services' list; containers of other projects (compose_managed false) never
    count, and a container without a healthcheck counts once it runs.
    """
    ready = {c.get("service") for c in containers or []
             if c.get("compose_managed") and c.get("running") and c.get("health") in ("healthy", "none", None)}
    return [name for name in services or [] if name not in ready]


def zoe_find_names(names):
    """`find` arguments matching any of `names`: ( -name a -o -name b ... )."""
    args = []
    for name in names or []:
        args += (["-o"] if args else []) + ["-name", name]
    return ["("] + args + [")"]


def zoe_pick(items, keys):
    """Each mapping of `items` reduced to `keys` (missing keys left out): results small enough for a report."""
    return [{key: item[key] for key in keys if key in item} for item in items or []]


class FilterModule:
    def filters(self):
        return {"zoe_stop_order": zoe_stop_order, "zoe_start_order": zoe_start_order,
                "zoe_rewrite_map": zoe_rewrite_map, "zoe_pick": zoe_pick,
                "zoe_compose_argv": zoe_compose_argv,
                "zoe_not_ready": zoe_not_ready,
                "zoe_find_names": zoe_find_names}
