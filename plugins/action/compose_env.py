# -*- coding: utf-8 -*-
"""compose_env on the controller: plan byte-exact edits of compose files and env files with a real YAML parser.

The action reads each file from the host (slurp), plans the edit here and runs the host module (library/
compose_env.py) with only the sha256 of the bytes it read, the new bytes (a no_log option) and the validation to
run; the module refuses a file that changed since, validates, stages or installs.

How a compose edit is planned: PyYAML's compose() gives every scalar its start and end marks and its style, and an
alias is the very node object of its anchor. Each service's effective configuration is walked through aliases and
`<<` merges (own keys win, then the merged mappings in order), so the services an edit reaches are computed: a value
changes exactly where every service using it wants the change, and an edit that would change a value another service
must keep is refused. New text is spliced into the original at the node's marks: the fragment replaced inside the
scalar's own text when that reads back as the planned value, else the value re-encoded in the scalar's style, else
double-quoted. Every other byte (comments, quoting, indentation, CRLF, a BOM) is kept. The edited text is composed
again and must be the original tree with exactly the planned values changed.

Secrets: in env files every value that is not being edited is masked in the diff and the results, and in compose
files every environment value that is not being edited; credentials in URLs are masked everywhere.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import posixpath
import re

import yaml

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

# The project's module_utils are shared with the host (one env-file parser, one masking rule).
for _path in C.config.get_config_value("DEFAULT_MODULE_UTILS_PATH") or []:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.compose_env import ComposeEnvError, OptionError, ParseError, parse_env  # noqa: E402
from ansible.module_utils.db_references import name_pattern  # noqa: E402
from ansible.module_utils.zoe_secrets import MASK, is_secret_name, looks_like_secret, mask_text, \
    mask_url_credentials  # noqa: E402

SECTIONS = ("environment", "healthcheck", "command", "entrypoint", "volumes", "labels", "env_file")
SCOPES = SECTIONS + ("other", "all")
STR, MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
DELETE = object()

USER_SPEC = dict(
    path=dict(type="str", required=True),
    file_type=dict(type="str", choices=["auto", "compose", "env"], default="auto"),
    services=dict(type="list", elements="str", default=[]),
    set=dict(type="dict", default={}),
    unset=dict(type="list", elements="str", default=[]),
    rewrite=dict(type="dict", default={}),
    keys=dict(type="list", elements="str", default=[]),
    scope=dict(type="list", elements="str", choices=list(SCOPES), default=["all"]),
    follow_env_files=dict(type="bool", default=False),
    backup=dict(type="bool", default=False),
    validate=dict(type="str", choices=["auto", "always", "never"], default="auto"),
    stage=dict(type="bool", default=False),
)


# --- options -------------------------------------------------------------------------------------------------------

class Spec(object):
    """The normalised options one plan applies to every file."""

    def __init__(self, services=None, set_vars=None, unset=None, rewrite=None, keys=None, scope=None):
        self.services = list(services or [])
        self.set_vars = dict((str(k), "" if v is None else str(v)) for k, v in (set_vars or {}).items())
        self.unset = list(unset or [])
        self.rewrite = dict((str(k), str(v)) for k, v in (rewrite or {}).items())
        self.keys = list(keys or [])
        self.scope = list(scope or ["all"])
        for old, new in self.rewrite.items():
            if not old:
                raise OptionError("O(rewrite) has an empty fragment")
        self.pattern = name_pattern(self.rewrite) if self.rewrite else None
        for new in self.rewrite.values():
            if self.pattern.search(new):
                raise OptionError("O(rewrite) value %r is itself rewritten: the file would change on every run" % new)
        both = set(self.set_vars) & set(self.unset)
        if both:
            raise OptionError("O(set) and O(unset) both name %s" % ", ".join(sorted(both)))

    def rewrite_text(self, text):
        return self.pattern.sub(lambda match: self.rewrite[match.group(0)], text) if self.pattern else text

    def in_scope(self, section):
        return "all" in self.scope or section in self.scope


# --- one file's plan: splices over the original text, with what the diff may show -----------------------------------

class Op(object):
    def __init__(self, start, end, text, shown_before, shown_after):
        self.start, self.end, self.text = start, end, text
        self.shown_before, self.shown_after = shown_before, shown_after


class FilePlan(object):
    """One file: its bytes as read, the splices planned on its text, the changes (masked) and the masked views."""

    def __init__(self, path, kind, data):
        self.path, self.kind, self.before = path, kind, data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("%s is not UTF-8 text; nothing was written" % path)
        self.bom = "\ufeff" if text.startswith("\ufeff") else ""
        self.text = text[len(self.bom):]
        self.newline = "\r\n" if "\r\n" in self.text.split("\n", 1)[0] + "\n" else "\n"
        self.ops, self.changes, self.services, self.uses = [], [], set(), []
        self.after = data

    @property
    def changed(self):
        return self.after != self.before

    def view(self, which):
        """The text with every op applied: `text` (the real edit), `shown_before` or `shown_after` (masked)."""
        out, pos = [], 0
        for op in sorted(self.ops, key=lambda o: (o.start, o.end)):
            if op.start < pos:
                raise OptionError("%s: two edits overlap at offset %d (the same value set and rewritten?)"
                                  % (self.path, op.start))
            out.append(self.text[pos:op.start])
            out.append(getattr(op, which) if which != "text" else op.text)
            pos = op.end
        out.append(self.text[pos:])
        return "".join(out)

    def finish(self):
        self.after = (self.bom + self.view("text")).encode("utf-8")

    def shown(self):
        return (mask_text(self.bom + self.view("shown_before")), mask_text(self.bom + self.view("shown_after")))

    def change(self, line, services, section, key, before, after):
        self.changes.append({"file": self.path, "line": line + 1, "services": sorted(services),
                             "service": sorted(services)[0] if services else None, "section": section, "key": key,
                             "before": show_value(key, before), "after": show_value(key, after)})


def show_value(name, value):
    """How an edited value may appear: masked whole when its name or shape says secret, URL credentials always."""
    if value is None:
        return None
    if (name and is_secret_name(name)) or looks_like_secret(value):
        return MASK
    return mask_url_credentials(value)


# --- env files -----------------------------------------------------------------------------------------------------

def _env_encode(style, value):
    """(text to splice, whether it replaces the quotes too) for a new env-file value."""
    if style == "plain" and not any(c.isspace() or c in "'\"#\\`" for c in value):
        return value, False
    if style == "single" and "'" not in value and "\n" not in value:
        return value, False
    inner = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (inner, False) if style == "double" else ('"%s"' % inner, True)


def plan_env(plan, spec, adding=True):
    """Edits of an env file: O(rewrite), O(set) (update, or append when `adding`) and O(unset)."""
    try:
        entries = parse_env(plan.text)
    except ParseError as exc:
        raise ParseError("%s %s; nothing was written" % (plan.path, exc))
    present = set()
    for entry in entries:
        new = entry.value
        if entry.key in spec.unset:
            shown = plan.text[entry.line_start:entry.start] + MASK + plan.text[entry.end:entry.line_end]
            plan.ops.append(Op(entry.line_start, entry.line_end, "", shown, ""))
            plan.change(entry.line, (), "env_file", entry.key, entry.value, None)
            continue
        if entry.key in spec.set_vars:
            present.add(entry.key)
            new = spec.set_vars[entry.key]
        elif not spec.keys or entry.key in spec.keys:
            new = spec.rewrite_text(entry.value)
        if new == entry.value:
            plan.ops.append(Op(entry.start, entry.end, plan.text[entry.start:entry.end], MASK, MASK))
            continue
        text, requoted = _env_encode(entry.style, new)
        start, end = entry.start, entry.end
        if requoted and entry.style != "plain":
            start, end = start - 1, end + 1
        plan.ops.append(Op(start, end, text, show_value(entry.key, plan.text[start:end]), show_value(entry.key, text)))
        plan.change(entry.line, (), "env_file", entry.key, entry.value, new)
    if adding:
        tail = plan.newline if plan.text and not plan.text.endswith("\n") else ""
        for key, value in spec.set_vars.items():
            if key not in present:
                text, requoted = _env_encode("plain", value)
                line = "%s%s=%s%s" % (tail, key, text, plan.newline)
                end = len(plan.text)
                plan.ops.append(Op(end, end, line, "", show_value(key, line)))
                tail = ""
                plan.change(plan.text.count("\n"), (), "env_file", key, None, value)


# --- compose files: the parse ----------------------------------------------------------------------------------------

def _where(mark):
    return "line %d, column %d" % (mark.line + 1, mark.column + 1)


def compose_document(path, text):
    """The one YAML document of a compose file as PyYAML nodes (with marks); every refusal is one sentence."""
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "'\\t'" in (exc.problem or ""):
            raise ParseError("%s %s: a tab character where YAML allows only spaces (indentation, or before a value);"
                             " nothing was written" % (path, _where(mark)))
        raise ParseError("%s is not valid YAML at %s: %s; nothing was written"
                         % (path, _where(mark) if mark else "?", exc.problem or exc.context))
    except yaml.YAMLError as exc:
        raise ParseError("%s is not valid YAML: %s; nothing was written" % (path, exc))
    if len(docs) > 1:
        marker = text.rfind("---", 0, docs[1].start_mark.index)
        raise ParseError("%s holds %d YAML documents (the second starts at line %d); a compose file is one document, "
                         "nothing was written" % (path, len(docs), text.count("\n", 0, max(marker, 0)) + 1))
    if docs and not isinstance(docs[0], yaml.MappingNode):
        raise ParseError("%s is not a mapping at the top level (a compose file maps services, volumes, ...); nothing "
                         "was written" % path)
    return docs[0] if docs else None


def _key(node):
    return node.value if isinstance(node, yaml.ScalarNode) else "%s@%d" % (node.tag, node.start_mark.index)


def entries(node):
    """The effective (key, value) pairs of a mapping: its own keys, then merged (`<<`) keys it does not override."""
    own = [(k, v) for k, v in node.value if k.tag != MERGE]
    names = set(_key(k) for k, _ in own)
    out = list(own)
    for k, v in node.value:
        if k.tag != MERGE:
            continue
        for source in (v.value if isinstance(v, yaml.SequenceNode) else [v]):
            if isinstance(source, yaml.MappingNode):
                for key, value in entries(source):
                    if _key(key) not in names:
                        names.add(_key(key))
                        out.append((key, value))
    return out


class Usage(object):
    """One place a scalar node is used: by a service (its effective configuration) or at the top level (None)."""

    def __init__(self, node, service, path, chain):
        self.node, self.service, self.path, self.chain = node, service, path, chain
        rest = path
        if service is None:
            rest = path[1:] if path and str(path[0]).startswith("x-") else ()
        self.section = rest[0] if rest and rest[0] in SECTIONS else "other"
        self.name, self.role = None, None
        if self.section == "environment" and len(rest) == 2:
            if isinstance(rest[1], int):
                self.name, self.role = node.value.split("=", 1)[0], "item"
            else:
                self.name, self.role = str(rest[1]), "value"

    def where(self):
        labels = ".".join(str(label) for label in self.path)
        return "services.%s.%s" % (self.service, labels) if self.service else labels

    def label(self):
        if self.name:
            return self.name
        labels = [str(label) for label in self.path if not isinstance(label, int)]
        return labels[-1] if labels else None


def _walk(node, service, path, chain, out, depth=0):
    if depth > 64:
        raise ParseError("nested deeper than 64 levels at %s" % _where(node.start_mark))
    if isinstance(node, yaml.ScalarNode):
        out.append(Usage(node, service, path, chain))
    elif isinstance(node, yaml.MappingNode):
        for key, value in entries(node):
            _walk(value, service, path + (_key(key),), chain + ((node, key),), out, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, service, path + (index,), chain + ((node, index),), out, depth + 1)


def usages(root):
    """Every use of every scalar: each service's effective configuration, and the other top-level keys as written."""
    out, services = [], {}
    for key, value in entries(root):
        if _key(key) == "services" and isinstance(value, yaml.MappingNode):
            for name, service in entries(value):
                services[_key(name)] = service
                _walk(service, _key(name), (), ((root, key), (value, name)), out)
        else:
            _walk(value, None, (_key(key),), ((root, key),), out)
    return out, services


# --- compose files: deciding and splicing --------------------------------------------------------------------------

def _desired(use, spec):
    """The value this use wants the node to hold, DELETE, or None when it has no say (a top-level definition)."""
    node = use.node
    if node.tag != STR:
        return None if use.service is None else node.value
    wanted = (not spec.services or use.service in spec.services) if use.service else not spec.services
    new = node.value
    if wanted and use.section == "environment" and use.name in spec.unset:
        new = DELETE
    elif wanted and use.section == "environment" and use.name in spec.set_vars:
        value = spec.set_vars[use.name]
        new = "%s=%s" % (use.name, value) if use.role == "item" else value
    elif wanted and spec.in_scope(use.section) and (not spec.keys or use.name in spec.keys):
        if use.role == "item" and "=" in node.value:
            name, rest = node.value.split("=", 1)
            new = name + "=" + spec.rewrite_text(rest)
        else:
            new = spec.rewrite_text(node.value)
    if use.service is None and new == node.value:
        return None
    return new


def _check_duplicates(plan, use):
    for mapping, _ in use.chain:
        if not isinstance(mapping, yaml.MappingNode):
            continue
        seen = {}
        for key, _ in mapping.value:
            if key.tag == MERGE:
                continue
            if _key(key) in seen:
                raise ParseError("%s line %d: the key %r appears twice in the mapping that holds the value to edit "
                                 "(first at line %d); YAML keeps only one, fix the file first; nothing was written"
                                 % (plan.path, key.start_mark.line + 1, _key(key), seen[_key(key)] + 1))
            seen[_key(key)] = key.start_mark.line


def _decide(plan, uses, spec):
    """{node id: (node, new value or DELETE, its uses)} for every node that changes; refuses shared-value conflicts."""
    by_node = {}
    for use in uses:
        by_node.setdefault(id(use.node), (use.node, []))[1].append(use)
    edits = {}
    for node, node_uses in by_node.values():
        votes = [(use, _desired(use, spec)) for use in node_uses]
        votes = [(use, value) for use, value in votes if value is not None]
        values = []
        for _, value in votes:
            if not any(value is v or value == v for v in values):
                values.append(value)
        if len(values) > 1:
            editor, change = next((u, v) for u, v in votes if v is not node.value and v != node.value)
            keeper = next(use for use, value in votes if value is not change and value != change)
            raise OptionError("%s line %d: the value edited for %s is shared through an alias or a merge key with %s, "
                              "which must keep it; give %s its own value first; nothing was written"
                              % (plan.path, node.start_mark.line + 1, editor.where(), keeper.where(),
                                 keeper.service or keeper.path[0]))
        if values and (values[0] is DELETE or values[0] != node.value):
            for use in node_uses:
                _check_duplicates(plan, use)
            edits[id(node)] = (node, values[0], node_uses)
    return edits


def _plain_ok(value):
    if not value or value != value.strip() or "\n" in value or value[0] in "-?:,[]{}#&*!|>'\"%@`":
        return False
    return ": " not in value and " #" not in value and not value.endswith(":")


def _encode_double(value):
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif ord(char) < 32 or ord(char) == 127:
            out.append("\\x%02x" % ord(char))
        else:
            out.append(char)
    return '"%s"' % "".join(out)


def _candidates(text, node, new, spec):
    """Texts that may replace the node's source span, most faithful first."""
    raw = text[node.start_mark.index:node.end_mark.index]
    found = [spec.rewrite_text(raw)] if spec.pattern else []
    if node.style is None and _plain_ok(new):
        found.append(new)
    elif node.style == "'" and "\n" not in new:
        found.append("'%s'" % new.replace("'", "''"))
    if node.style not in ("|", ">"):
        found.append(_encode_double(new))
    return found


def _choose(plan, root, node, new, spec, edit):
    """The first candidate text that, spliced alone, reads back as the original tree with only this value changed."""
    start, end = node.start_mark.index, node.end_mark.index
    for text in _candidates(plan.text, node, new, spec):
        try:
            edited = compose_document(plan.path, plan.text[:start] + text + plan.text[end:])
            if edited is not None and not _same_tree(plan, root, edited, {id(node): edit}):
                return text
        except ComposeEnvError:
            continue
    return None


def _deletion(plan, node, use):
    """The span of the entry line(s) holding `node` in a block collection (its comment goes with it)."""
    parent, key = use.chain[-1]
    text = plan.text
    if parent.flow_style:
        raise OptionError("%s line %d: %s is in a flow collection; remove it by hand"
                          % (plan.path, node.start_mark.line + 1, use.name))
    first = key if isinstance(parent, yaml.MappingNode) else node
    start = text.rfind("\n", 0, first.start_mark.index) + 1
    if text[start:first.start_mark.index].strip(" -") or node.end_mark.index < first.start_mark.index:
        raise OptionError("%s line %d: %s does not sit on lines of its own; remove it by hand"
                          % (plan.path, node.start_mark.line + 1, use.name))
    end = node.end_mark.index
    if node.end_mark.column != 0:
        stop = text.find("\n", end)
        end = len(text) if stop == -1 else stop + 1
    return start, end


def _same_tree(plan, old_root, new_root, edits):
    """Scalar nodes of the edited text whose value is not the planned one (same shape and sharing required)."""
    wrong, seen = [], {}

    def pair(old, new):
        if id(old) in seen:
            if seen[id(old)] is not new:
                raise OptionError("%s: the edit would change which values an alias shares; nothing was written"
                                  % plan.path)
            return
        seen[id(old)] = new
        if type(old) is not type(new):
            raise OptionError("%s line %d: the edit would change the structure of the file; nothing was written"
                              % (plan.path, old.start_mark.line + 1))
        if isinstance(old, yaml.ScalarNode):
            expected = edits[id(old)][1] if id(old) in edits else old.value
            if new.tag != old.tag or new.value != expected:
                wrong.append(old)
            return
        items = old.value
        if isinstance(old, yaml.MappingNode):
            items = [(k, v) for k, v in old.value if not (id(v) in edits and edits[id(v)][1] is DELETE)]
            if len(items) != len(new.value):
                raise OptionError("%s line %d: the edit would change a mapping's keys; nothing was written"
                                  % (plan.path, old.start_mark.line + 1))
            for (ok, ov), (nk, nv) in zip(items, new.value):
                pair(ok, nk)
                pair(ov, nv)
            return
        items = [item for item in old.value if not (id(item) in edits and edits[id(item)][1] is DELETE)]
        if len(items) != len(new.value):
            raise OptionError("%s line %d: the edit would change a list's length; nothing was written"
                              % (plan.path, old.start_mark.line + 1))
        for old_item, new_item in zip(items, new.value):
            pair(old_item, new_item)

    pair(old_root, new_root)
    return wrong


def plan_compose(plan, spec):
    """Edits of a compose file; returns the env_file entries of the selected services (for follow_env_files)."""
    root = compose_document(plan.path, plan.text)
    if root is None:
        return []
    uses, services = usages(root)
    unknown = [name for name in spec.services if name not in services]
    if unknown:
        raise OptionError("O(services) names %s, not in %s (services: %s)"
                          % (", ".join(unknown), plan.path, ", ".join(sorted(services))))
    for name in spec.set_vars:
        having = set(u.service for u in uses if u.section == "environment" and u.name == name and u.service)
        missing = [s for s in (spec.services or []) if s not in having]
        if missing or not having:
            raise OptionError("O(set) variable %s is not in the environment of %s in %s; add it by hand"
                              % (name, ", ".join(missing) or "any service", plan.path))
    edits = _decide(plan, uses, spec)
    plan.ops = []
    for key, (node, new, node_uses) in sorted(edits.items(), key=lambda e: e[1][0].start_mark.index):
        use = node_uses[0]
        start, end = node.start_mark.index, node.end_mark.index
        if new is DELETE:
            start, end = _deletion(plan, node, use)
            plan.ops.append(Op(start, end, "", plan.text[start:end], ""))
            continue
        text = _choose(plan, root, node, new, spec, edits[key])
        if text is None:
            raise OptionError("%s line %d: the new value of %s cannot be written in this %s scalar; edit it by hand; "
                              "nothing was written" % (plan.path, node.start_mark.line + 1, use.label(),
                                                       node.style or "plain"))
        plan.ops.append(Op(start, end, text, show_value(use.name, plan.text[start:end]), show_value(use.name, text)))
    if edits and _same_tree(plan, root, compose_document(plan.path, plan.view("text")), edits):
        raise OptionError("%s: the edit does not read back as planned; nothing was written" % plan.path)
    _mask_environment(plan, uses, edits)
    for node, new, node_uses in sorted(edits.values(), key=lambda e: e[0].start_mark.index):
        use = next((u for u in node_uses if u.service), node_uses[0])
        services = set(u.service for u in node_uses if u.service)
        plan.services |= services
        plan.change(node.start_mark.line, services, use.section, use.label(), node.value,
                    None if new is DELETE else new)
    plan.uses = uses
    return [(u.service, u.node.value) for u in uses if u.section == "env_file" and u.service and
            (len(u.path) < 3 or u.path[-1] == "path")]


def _reads_variable(uses, names):
    """Services with a value that interpolates one of `names` (`${NAME}`, `${NAME:-x}`, `$NAME`)."""
    pattern = re.compile(r"(?<!\$)\$(?:\{(?:%s)(?=[}:?+-])|(?:%s)(?![A-Za-z0-9_]))"
                         % ("|".join(map(re.escape, names)), "|".join(map(re.escape, names))))
    return set(u.service for u in uses if u.service and pattern.search(u.node.value))


def _mask_environment(plan, uses, edits):
    """Diff views: every environment value that is not edited is shown as MASK (after `KEY=` in a list item)."""
    masked = set()
    for use in uses:
        node = use.node
        if use.section != "environment" or id(node) in edits or id(node) in masked or node.tag != STR:
            continue
        if any(op.start < node.end_mark.index and node.start_mark.index < op.end for op in plan.ops):
            continue
        masked.add(id(node))
        raw = plan.text[node.start_mark.index:node.end_mark.index]
        quote = raw[0] if node.style in ("'", '"') else ""
        head = raw[:raw.index("=") + 1] if use.role == "item" and "=" in raw.split("\n")[0] else quote
        shown = head + MASK + quote
        plan.ops.append(Op(node.start_mark.index, node.end_mark.index, raw, shown, shown))


# --- the whole plan ------------------------------------------------------------------------------------------------

def detect_kind(path, data):
    name = posixpath.basename(path).lower()
    if name.endswith((".yml", ".yaml")):
        return "compose"
    if name.startswith(".env") or name.endswith(".env") or name == "env":
        return "env"
    try:
        parse_env(data.decode("utf-8", "replace").lstrip("\ufeff"))
        return "env"
    except ParseError:
        return "compose"


def plan_files(path, data, spec, file_type="auto", follow_env_files=False, read=None):
    """The FilePlans of `path` (bytes `data`) and, with follow_env_files, of its services' env files (read(path) ->
    bytes or None when missing). Pure: reads only through `read`, writes nothing."""
    kind = detect_kind(path, data) if file_type == "auto" else file_type
    main = FilePlan(path, kind, data)
    files = [main]
    if kind == "env":
        plan_env(main, spec)
    else:
        env_files, base = plan_compose(main, spec), posixpath.dirname(path)
        project_env, users = posixpath.normpath(posixpath.join(base, ".env")), {}
        for service, name in env_files:
            users.setdefault(posixpath.normpath(posixpath.join(base, name)), set()).add(service)
        for full in sorted(users) if follow_env_files else ():
            selected = [service for service in users[full] if not spec.services or service in spec.services]
            if not selected or any(item.path == full for item in files):
                continue
            env_data = read(full) if read else None
            if env_data is None:
                raise OptionError("env_file %s of %s does not exist" % (full, path))
            env_plan = FilePlan(full, "env", env_data)
            plan_env(env_plan, spec, adding=False)
            keys = [change["key"] for change in env_plan.changes]
            if keys:
                # The edit of an env file changes every service that reads it, and with the project's .env every
                # service that interpolates one of the edited variables.
                main.services |= users[full] | (_reads_variable(main.uses, keys) if full == project_env else set())
            files.append(env_plan)
    for item in files:
        item.finish()
    return files


def summary(files):
    """The plan's part of the task result: changes (masked), services reached, keys, masked diffs."""
    changes = [change for item in files for change in item.changes]
    diffs = []
    for item in files:
        if item.changed:
            before, after = item.shown()
            diffs.append({"before_header": item.path, "after_header": item.path, "before": before, "after": after})
    return dict(file_type=files[0].kind, changes=changes,
                changed_services=sorted(set().union(*[item.services for item in files])),
                changed_keys=sorted(set(c["key"] for c in changes if c["key"]))), diffs


def unified_diff(diffs):
    return "".join("".join(difflib.unified_diff(d["before"].splitlines(True), d["after"].splitlines(True),
                                                d["before_header"], d["after_header"])) for d in diffs)


# --- the action ----------------------------------------------------------------------------------------------------

class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def _slurp(self, path, task_vars):
        result = self._execute_module(module_name="ansible.builtin.slurp", module_args={"src": path},
                                      task_vars=task_vars)
        if result.get("failed"):
            if "not found" in result.get("msg", "") or "No such file" in result.get("msg", ""):
                return None
            raise OptionError("cannot read %s: %s" % (path, result.get("msg")))
        return base64.b64decode(result["content"])

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        validation, args = self.validate_argument_spec(argument_spec=USER_SPEC)
        try:
            spec = Spec(args["services"], args["set"], args["unset"], args["rewrite"], args["keys"], args["scope"])
            data = self._slurp(args["path"], task_vars)
            if data is None:
                raise OptionError("cannot read %s: no such file" % args["path"])
            files = plan_files(args["path"], data, spec, args["file_type"], args["follow_env_files"],
                               read=lambda p: self._slurp(p, task_vars))
        except ComposeEnvError as exc:
            result.update(failed=True, changed=False, msg=str(exc), error=type(exc).__name__)
            return result
        planned = [dict(path=item.path, kind=item.kind, sha256=hashlib.sha256(item.before).hexdigest(),
                        content=base64.b64encode(item.after).decode("ascii") if item.changed else None)
                   for item in files]
        module = self._execute_module(
            module_name="compose_env", task_vars=task_vars,
            module_args=dict(path=args["path"], planned=planned, validate=args["validate"], stage=args["stage"],
                             backup=args["backup"]))
        module.pop("invocation", None)
        result.update(module)
        plan, diffs = summary(files)
        result.update(plan, path=args["path"])
        if self._task.diff and diffs and not module.get("failed"):
            result["diff"] = diffs
        return result
