#!/usr/bin/env bash
# Build the Ansible collection zoe.consolidate (galaxy.yml) from this repository's own sources.
#   tools/build_collection.sh [OUTPUT_DIR]     default OUTPUT_DIR: build/ (the tarball and build/collection/, the tree)
# Layout, with the copies rewritten to the collection's names (the sources stay as they are):
#   library/*.py            -> plugins/modules/       `from ansible.module_utils.<project util>` imports, doc fragments
#                                                    (zoe -> zoe.consolidate.zoe) and EXAMPLES' module names by FQCN
#   module_utils/           -> plugins/module_utils/  project imports as ansible_collections.zoe.consolidate.plugins.module_utils
#   plugins/{action,filter,lookup,doc_fragments}/ -> plugins/<same>/ (project imports rewritten the same way)
#   roles/                  -> roles/                 module, lookup, filter and role names by FQCN
#   consolidate.yml, rollback.yml -> playbooks/       (ansible-playbook zoe.consolidate.consolidate)
#   galaxy.yml, meta/runtime.yml, README.md, LICENSE, CHANGELOG.md, docs/ as they are
# then `ansible-galaxy collection build`. Install the tarball with
#   ansible-galaxy collection install build/zoe-consolidate-<version>.tar.gz
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/build}" && cd "${1:-$repo/build}" && pwd)
if [ -x "$repo/.venv/bin/ansible-galaxy" ]; then
  bin="$repo/.venv/bin"
elif command -v ansible-galaxy >/dev/null; then
  bin=$(dirname "$(command -v ansible-galaxy)")
else
  echo "build_collection: ansible-galaxy is not installed (tools/bootstrap.sh makes .venv)" >&2
  exit 1
fi
python="$bin/python"
[ -x "$python" ] || python=python3
tree="$out/collection/ansible_collections/zoe/consolidate"
rm -rf "$out/collection"
mkdir -p "$tree"

"$python" - "$repo" "$tree" <<'PY'
import os
import re
import shutil
import sys

import yaml

repo, tree = sys.argv[1:3]
galaxy = yaml.safe_load(open(os.path.join(repo, "galaxy.yml")))
fqcn = "%s.%s" % (galaxy["namespace"], galaxy["name"])
mu_package = "ansible_collections.%s.%s.plugins.module_utils" % (galaxy["namespace"], galaxy["name"])


def stems(directory, suffix=".py"):
    path = os.path.join(repo, directory)
    if not os.path.isdir(path):
        return []
    return sorted(n[:-len(suffix)] for n in os.listdir(path) if n.endswith(suffix) and not n.startswith("_"))


modules = stems("library")
utils = sorted(set(stems("module_utils")) | {n for n in os.listdir(os.path.join(repo, "module_utils"))
                                            if os.path.isdir(os.path.join(repo, "module_utils", n)) and n != "__pycache__"})
lookups = stems(os.path.join("plugins", "lookup"))
roles = sorted(n for n in os.listdir(os.path.join(repo, "roles")) if os.path.isdir(os.path.join(repo, "roles", n)))
filters = set()
for name in stems(os.path.join("plugins", "filter")):
    source = open(os.path.join(repo, "plugins", "filter", name + ".py")).read()
    body = source.split("def filters(self):", 1)
    if len(body) == 2:
        filters |= set(re.findall(r"""["'](\w+)["']\s*:""", body[1]))


def alternation(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


UTIL_IMPORT = re.compile(r"\b(from|import)(\s+)ansible\.module_utils\.(%s)\b" % alternation(utils))
MODULE_KEY = re.compile(r"^([ \t]*(?:-[ \t]+)?)(%s):(?=\s|$)" % alternation(modules), re.M)
ROLE_NAME = re.compile(r"^([ \t]+(?:-[ \t]+)?(?:name|role):[ \t]+)[\"']?(%s)[\"']?[ \t]*$" % alternation(roles), re.M)
LOOKUP = re.compile(r"""\b(lookup|query|q)\((\s*)(["'])(%s)\3""" % alternation(lookups))
FILTER = re.compile(r"(\|\s*)(%s)\b" % alternation(filters))
FRAGMENT = re.compile(r"^([ \t]*-[ \t]+)(zoe(?:\.\w+)?)[ \t]*$", re.M)


def python_copy(text, is_module=False):
    text = UTIL_IMPORT.sub(lambda m: "%s%s%s.%s" % (m[1], m[2], mu_package, m[3]), text)
    if is_module:
        head, sep, rest = text.partition('EXAMPLES = r"""')
        if sep:
            examples, end, tail = rest.partition('"""')
            rest = MODULE_KEY.sub(lambda m: m[1] + fqcn + "." + m[2] + ":", examples) + end + tail
        head = re.sub(r"(extends_documentation_fragment:\n(?:[ \t]*-[ \t]+.*\n)+)",
                      lambda m: FRAGMENT.sub(lambda f: f[1] + fqcn + "." + f[2], m[1]), head)
        text = head + sep + rest
    return text


def yaml_copy(text):
    text = MODULE_KEY.sub(lambda m: m[1] + fqcn + "." + m[2] + ":", text)
    text = ROLE_NAME.sub(lambda m: m[1] + fqcn + "." + m[2], text)
    text = LOOKUP.sub(lambda m: "%s(%s%s%s.%s%s" % (m[1], m[2], m[3], fqcn, m[4], m[3]), text)
    return FILTER.sub(lambda m: m[1] + fqcn + "." + m[2], text)


def template_copy(text):
    text = LOOKUP.sub(lambda m: "%s(%s%s%s.%s%s" % (m[1], m[2], m[3], fqcn, m[4], m[3]), text)
    return FILTER.sub(lambda m: m[1] + fqcn + "." + m[2], text)


def copy_tree(source, target, rewrite):
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        relative = os.path.relpath(directory, source)
        os.makedirs(os.path.join(target, relative), exist_ok=True)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            src, dst = os.path.join(directory, name), os.path.join(target, relative, name)
            function = rewrite(name)
            if function is None:
                shutil.copy2(src, dst)
            else:
                with open(src) as handle:
                    text = handle.read()
                with open(dst, "w") as handle:
                    handle.write(function(text))
                shutil.copymode(src, dst)


def py_only(name):
    return python_copy if name.endswith(".py") else None


os.makedirs(os.path.join(tree, "plugins", "modules"))
for name in modules:
    with open(os.path.join(repo, "library", name + ".py")) as handle:
        text = handle.read()
    with open(os.path.join(tree, "plugins", "modules", name + ".py"), "w") as handle:
        handle.write(python_copy(text, is_module=True))
copy_tree(os.path.join(repo, "module_utils"), os.path.join(tree, "plugins", "module_utils"), py_only)
for kind in ("action", "filter", "lookup", "doc_fragments"):
    if os.path.isdir(os.path.join(repo, "plugins", kind)):
        copy_tree(os.path.join(repo, "plugins", kind), os.path.join(tree, "plugins", kind), py_only)
# Role files: YAML is rewritten; templates get the lookup/filter names; files/ (scripts for the host) stay as they are.
copy_tree(os.path.join(repo, "roles"), os.path.join(tree, "roles"),
          lambda name: yaml_copy if name.endswith((".yml", ".yaml")) else template_copy if name.endswith(".j2") else None)
os.makedirs(os.path.join(tree, "playbooks"))
for name in ("consolidate.yml", "rollback.yml"):
    with open(os.path.join(repo, name)) as handle:
        text = handle.read()
    with open(os.path.join(tree, "playbooks", name), "w") as handle:
        handle.write(yaml_copy(text))
for name in ("galaxy.yml", "README.md", "LICENSE", "CHANGELOG.md", os.path.join("meta", "runtime.yml")):
    os.makedirs(os.path.dirname(os.path.join(tree, name)), exist_ok=True)
    shutil.copy2(os.path.join(repo, name), os.path.join(tree, name))
if os.path.isdir(os.path.join(repo, "docs")):
    shutil.copytree(os.path.join(repo, "docs"), os.path.join(tree, "docs"))
print("[build_collection] %s: %d modules, %d module_utils, %d roles, filters %s, lookups %s"
      % (fqcn, len(modules), len(utils), len(roles), ",".join(sorted(filters)), ",".join(lookups)), file=sys.stderr)
PY

"$bin/ansible-galaxy" collection build "$tree" --output-path "$out" --force
