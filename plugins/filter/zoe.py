"""Filters of the zoe-consolidate playbooks (controller side)."""

import re

import yaml
from ansible.errors import AnsibleFilterError


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with compose's key rules: a key may override one a merge (`<<: *anchor`) brought in,
    as the YAML merge-key spec allows, but the same key written twice in one mapping is an error.

    Ansible's own YAML loader counts an override of a merged key as a duplicate, which is why the compose file
    is not read with `from_yaml`.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_scalar(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            "found duplicate key %r" % key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def zoe_compose_load(text):
    """The data of a compose file's text: merge keys resolved, overrides of merged keys allowed, duplicates refused."""
    try:
        return yaml.load(text, Loader=_ComposeLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise AnsibleFilterError("the compose file is not valid YAML: %s" % exc)


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


def zoe_find_names(names):
    """`find` arguments matching any of `names`: ( -name a -o -name b ... )."""
    args = []
    for name in names or []:
        args += (["-o"] if args else []) + ["-name", name]
    return ["("] + args + [")"]


def zoe_pick(items, keys):
    """Each mapping of `items` reduced to `keys` (missing keys left out): results small enough for a report."""
    return [{key: item[key] for key in keys if key in item} for item in items or []]


def zoe_md_cell(value, code=False):
    """`value` as the text of one cell of a Markdown (GFM) table, whatever characters it holds.

    A raw `|` would end the cell and a line break the row: `|` is escaped (GFM reads `\\|` as a pipe, in a code
    span too) and CR/LF are shown as the two characters \\n. In plain text a backslash is escaped and `<` written
    as an entity, so a name shows as it is; with code=true the value is a code span whose fence is longer than
    any run of backticks inside it.
    """
    text = "" if value is None else str(value)
    if code and text:
        text = text.replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n").replace("|", "\\|")
        longest = max((len(run) for run in re.findall("`+", text)), default=0)
        fence = "`" * (longest + 1)
        pad = " " if text.startswith("`") or text.endswith("`") else ""
        return "%s%s%s%s%s" % (fence, pad, text, pad, fence)
    text = text.replace("\\", "\\\\").replace("<", "&lt;")
    return text.replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n").replace("|", "\\|")


class FilterModule:
    def filters(self):
        return {"zoe_stop_order": zoe_stop_order, "zoe_start_order": zoe_start_order,
                "zoe_rewrite_map": zoe_rewrite_map, "zoe_pick": zoe_pick,
                "zoe_compose_argv": zoe_compose_argv,
                "zoe_find_names": zoe_find_names,
                "zoe_compose_load": zoe_compose_load,
                "zoe_md_cell": zoe_md_cell}
