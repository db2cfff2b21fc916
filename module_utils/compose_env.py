# -*- coding: utf-8 -*-
# Byte-exact edits of compose files and env files (the compose_env module). Standard library only:
# this runs on the managed host, which has no YAML library.
#
# Design: the file is never re-emitted. A line scanner that understands the YAML subset compose files
# use (block mappings and sequences, flow collections, plain/quoted/block scalars, anchors, aliases,
# merge keys, comments) locates every scalar with its line, columns, quoting style and path
# (services.<name>.<section>...). An edit replaces the inner text of a scalar in the original string,
# re-encoded in the scalar's own quoting style; set/unset insert or delete whole entry lines. Every
# byte that is not part of a changed value (comments, commented-out services, key order, quotes,
# indentation, blank lines, anchors, `${VAR:-default}`) is kept as it was. What the scanner does not
# understand is refused with a ParseError naming the line, and the compose tool (`config -q`)
# validates the result before it replaces the original when one is installed.

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import subprocess
import tempfile

from ansible.module_utils.db_references import name_pattern
from ansible.module_utils.zoe_secrets import mask_text, mask_value

SECTIONS = ("environment", "healthcheck", "command", "entrypoint", "volumes", "labels", "env_file")
SCOPES = SECTIONS + ("other", "all")


class ComposeEnvError(Exception):
    """Base class of the compose_env failures."""


class ParseError(ComposeEnvError):
    """The input is not valid YAML / env-file syntax, or uses YAML this editor does not handle."""


class OptionError(ComposeEnvError):
    """The options cannot be applied to this file (unknown service, merge-key environment, ...)."""


class ValidationError(ComposeEnvError):
    """The compose tool rejects the edited file."""


# --- scalar encoding -------------------------------------------------------------------------------

_DOUBLE_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
                   "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
                   "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}
_NON_STRING_RE = re.compile(
    r"^(?:~|null|Null|NULL|true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|y|Y|n|N"
    r"|[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|0x[0-9a-fA-F_]+|0o?[0-7_]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)$")


def decode_double(inner):
    out, i = [], 0
    while i < len(inner):
        char = inner[i]
        if char != "\\" or i + 1 >= len(inner):
            out.append(char)
            i += 1
            continue
        code = inner[i + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(code)
        if width:
            out.append(chr(int(inner[i + 2:i + 2 + width], 16)))
            i += 2 + width
        else:
            out.append(_DOUBLE_ESCAPES.get(code, code))
            i += 2
    return "".join(out)


def encode_double(text):
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 32 or ord(char) == 127:
            out.append("\\x%02x" % ord(char))
        else:
            out.append(char)
    return "".join(out)


def plain_safe(text, in_flow=False, string_only=True, first=True):
    """True when `text` can be written as a plain YAML scalar and read back as the same string.

    `first` is false for a continuation line of a multi-line plain scalar, where indicators may start it.
    """
    if not text or text != text.strip() or (first and text[0] in "-?:,[]{}#&*!|>'\"%@`"):
        return False
    if ": " in text or text.endswith(":") or " #" in text or "\t#" in text:
        return False
    if in_flow and any(char in text for char in ",[]{}"):
        return False
    if any(ord(char) < 32 for char in text):
        return False
    return not (string_only and _NON_STRING_RE.match(text))


def decode_inner(style, inner):
    if style == "double":
        return decode_double(inner)
    if style == "single":
        return inner.replace("''", "'")
    return inner


def encode_inner(style, text):
    """Encode a value for the inside of an existing scalar of `style`; None when the style cannot hold it."""
    if style == "double":
        return encode_double(text)
    if style == "single":
        return None if "\n" in text else text.replace("'", "''")
    if "\n" in text:
        return None
    return text


# --- the YAML scanner ------------------------------------------------------------------------------

class Node(object):
    """A mapping key or sequence item in block context: where it starts and the lines it spans."""

    def __init__(self, line, col, label, parent, kind):
        self.line = line
        self.col = col
        self.label = label
        self.parent = parent
        self.kind = kind  # "key" or "item"
        self.children = []
        self.scalars = []
        self.last_line = line
        self.value_col = None  # column right after `key:` (for a key without a value)
        self.anchor = None
        self.inline = False  # has a value on its own line (scalar, flow, alias, block indicator)
        self.path = (parent.path if parent else ()) + (label,)
        if parent:
            parent.children.append(self)


class Scalar(object):
    """One scalar (or one line of a multi-line scalar) located in the source text."""

    def __init__(self, line, start, end, style, node, whole=True, in_flow=False, flow_key=None):
        self.line = line
        self.start = start  # inner span: without the quotes
        self.end = end
        self.style = style  # plain, single, double, block
        self.node = node
        self.whole = whole
        self.in_flow = in_flow
        self.flow_key = flow_key
        self.is_key = False


class ComposeDoc(object):
    """A scanned compose file: its lines, block nodes and value scalars."""

    def __init__(self, text):
        self.text = text
        self.lines = text.splitlines(True)
        self.offsets = []
        total = 0
        for line in self.lines:
            self.offsets.append(total)
            total += len(line)
        self.nodes = []
        self.scalars = []
        self.newline = "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"

    def body(self, index):
        return self.lines[index].rstrip("\r\n")

    def offset(self, line, col):
        return self.offsets[line] + col

    def raw(self, scalar):
        return self.body(scalar.line)[scalar.start:scalar.end]

    def value(self, scalar):
        return decode_inner(scalar.style, self.raw(scalar))


_PLAIN_KEY_END = re.compile(r":(?=[ \t]|$)")


def _find_quote_end(body, pos, quote):
    """Index of the closing quote of a scalar whose inner text starts at pos, or -1."""
    i = pos
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            if quote == "'" and body.startswith("''", i):
                i += 2
                continue
            return i
        i += 1
    return -1


def _skip_spaces(body, pos):
    while pos < len(body) and body[pos] in " \t":
        pos += 1
    return pos


def _at_comment(body, pos):
    return pos < len(body) and body[pos] == "#" and (pos == 0 or body[pos - 1] in " \t")


def _rest_is_trivia(body, pos, number):
    pos = _skip_spaces(body, pos)
    if pos < len(body) and not _at_comment(body, pos):
        raise ParseError("line %d: unexpected text after a value: %r" % (number, body[pos:]))


class _Scanner(object):
    def __init__(self, text):
        self.doc = ComposeDoc(text)
        self.stack = []
        self.seq_counts = {}
        self.mode = None  # None, "block", "quote", "flow", "plain"
        self.owner = None
        self.block_col = 0
        self.quote = None
        self.depth = 0
        self.flow_key = None

    # -- helpers
    def fail(self, index, message):
        raise ParseError("line %d: %s" % (index + 1, message))

    def touch(self, index):
        for node in self.stack:
            node.last_line = index

    def add_scalar(self, *args, **kwargs):
        scalar = Scalar(*args, **kwargs)
        self.doc.scalars.append(scalar)
        if scalar.node is not None:
            scalar.node.scalars.append(scalar)
        return scalar

    def push(self, index, col, label, kind):
        parent = self.stack[-1] if self.stack else None
        node = Node(index, col, label, parent, kind)
        self.doc.nodes.append(node)
        self.stack.append(node)
        return node

    # -- main loop
    def run(self):
        lines = self.doc.lines
        index = 0
        while index < len(lines):
            body = self.doc.body(index)
            if self.mode == "block":
                indent = len(body) - len(body.lstrip(" "))
                if not body.strip():
                    index += 1
                    continue
                if indent > self.block_col:
                    self.add_scalar(index, indent, len(body), "block", self.owner, whole=False)
                    self.touch(index)
                    index += 1
                    continue
                self.mode = None
            if self.mode == "quote":
                self.quote_line(index, body, _skip_spaces(body, 0), first=False)
                index += 1
                continue
            if self.mode == "flow":
                self.touch(index)
                self.flow(index, body, 0)
                index += 1
                continue
            stripped = body.strip()
            if not stripped or stripped.startswith("#"):
                index += 1
                continue
            lead = body[:len(body) - len(body.lstrip(" \t"))]
            if "\t" in lead:
                self.fail(index, "tab character in indentation (YAML allows spaces only)")
            if self.mode == "plain":
                if len(lead) > self.block_col:
                    self.plain_continuation(index, body, len(lead))
                    index += 1
                    continue
                self.mode = None
            if body.startswith(("---", "...", "%")) and (len(body) == 3 or body[3:4] in " \t"):
                index += 1
                continue
            self.block_line(index, body, len(lead))
            index += 1
        if self.mode == "quote":
            raise ParseError("end of file inside a quoted scalar (unbalanced %s)" % self.quote)
        if self.mode == "flow":
            raise ParseError("end of file inside a flow collection (unbalanced brackets)")
        return self.doc

    def plain_continuation(self, index, body, col):
        end = len(body)
        match = re.search(r"[ \t]#", body)
        if match:
            end = match.start()
        text = body[col:end].rstrip()
        if ": " in text or text.endswith(":"):
            self.fail(index, "mapping values are not allowed here (a key inside a multi-line plain scalar)")
        self.add_scalar(index, col, col + len(text), "plain", self.owner, whole=False)
        self.touch(index)

    def block_line(self, index, body, col):
        pos = col
        # sequence entries ("- ", possibly several on one line)
        while pos < len(body) and body[pos] == "-" and (pos + 1 == len(body) or body[pos + 1] in " \t"):
            if not self.stack:
                self.fail(index, "a compose file must be a mapping (found a list at the top level)")
            while self.stack and (self.stack[-1].col > pos or
                                  (self.stack[-1].col == pos and self.stack[-1].kind == "item")):
                self.stack.pop()
            parent_path = self.stack[-1].path if self.stack else ()
            count = self.seq_counts.get((parent_path, pos), 0)
            self.seq_counts[(parent_path, pos)] = count + 1
            self.push(index, pos, count, "item")
            pos = _skip_spaces(body, pos + 1)
        if pos >= len(body) or _at_comment(body, pos):
            self.touch(index)
            return
        key_end, key_label = self.match_key(index, body, pos)
        if key_end is None:
            self.touch(index)
        if key_end is not None:
            while self.stack and self.stack[-1].col >= pos:
                self.stack.pop()
            node = self.push(index, pos, key_label, "key")
            self.touch(index)
            node.value_col = key_end
            self.value(index, body, _skip_spaces(body, key_end), node, node.col)
            return
        owner = self.stack[-1] if self.stack else None
        if owner is None:
            self.fail(index, "a compose file must be a mapping (found a bare value at the top level)")
        if owner.kind == "item" and owner.line == index:
            self.value(index, body, pos, owner, owner.col)
        elif owner.kind == "key" and not owner.inline and col > owner.col:
            self.value(index, body, pos, owner, owner.col)
        else:
            self.fail(index, "not a key, a list item or a continuation of a value: %r" % body.strip())

    def match_key(self, index, body, pos):
        """(column after the colon, key text) when a mapping key starts at pos, else (None, None)."""
        char = body[pos]
        if char in "\"'":
            close = _find_quote_end(body, pos + 1, char)
            if close == -1:
                return None, None
            after = _skip_spaces(body, close + 1)
            if after < len(body) and body[after] == ":" and (after + 1 == len(body) or body[after + 1] in " \t"):
                return after + 1, decode_inner("double" if char == '"' else "single", body[pos + 1:close])
            return None, None
        if char in "[{&*!|>%@`#":
            return None, None
        comment = re.search(r"[ \t]#", body[pos:])
        limit = pos + comment.start() if comment else len(body)
        match = _PLAIN_KEY_END.search(body, pos, limit)
        if not match:
            return None, None
        return match.end(), body[pos:match.start()].rstrip()

    def value(self, index, body, pos, owner, owner_col):
        """The value part of a line: properties, then alias, block scalar, quoted, flow or plain."""
        while pos < len(body) and body[pos] in "&!":
            end = pos
            while end < len(body) and body[end] not in " \t":
                end += 1
            if body[pos] == "&":
                owner.anchor = body[pos + 1:end]
            pos = _skip_spaces(body, end)
        if pos >= len(body) or _at_comment(body, pos):
            return
        owner.inline = True
        char = body[pos]
        if char == "*":
            end = pos
            while end < len(body) and body[end] not in " \t":
                end += 1
            _rest_is_trivia(body, end, index + 1)
            return
        if char in "|>":
            if not re.match(r"[|>][-+0-9]*[ \t]*(#.*)?$", body[pos:]):
                self.fail(index, "bad block scalar indicator %r" % body[pos:])
            self.mode, self.owner, self.block_col = "block", owner, owner_col
            return
        if char in "\"'":
            self.quote, self.owner = char, owner
            self.quote_line(index, body, pos + 1, first=True)
            return
        if char in "[{":
            self.mode, self.owner, self.depth, self.flow_key = "flow", owner, 0, None
            self.flow(index, body, pos)
            return
        if char in "]},":
            self.fail(index, "unexpected %r" % char)
        end = len(body)
        match = re.search(r"[ \t]#", body[pos:])
        if match:
            end = pos + match.start()
        text = body[pos:end].rstrip()
        if ": " in text:
            self.fail(index, "mapping values are not allowed here: %r" % text)
        self.add_scalar(index, pos, pos + len(text), "plain", owner)
        self.mode, self.owner, self.block_col = "plain", owner, owner_col

    def quote_line(self, index, body, start, first):
        style = "double" if self.quote == '"' else "single"
        close = _find_quote_end(body, start, self.quote)
        self.touch(index)
        if close == -1:
            self.add_scalar(index, start, len(body), style, self.owner, whole=False)
            self.mode = "quote"
            return
        self.add_scalar(index, start, close, style, self.owner, whole=first)
        self.mode = None
        _rest_is_trivia(body, close + 1, index + 1)

    def flow(self, index, body, pos):
        """Scan flow collection tokens from pos; leaves flow mode when the brackets balance."""
        while pos < len(body):
            char = body[pos]
            if char in " \t":
                pos += 1
            elif _at_comment(body, pos):
                return
            elif char in "[{":
                self.depth += 1
                pos += 1
            elif char in "]}":
                self.depth -= 1
                pos += 1
                if self.depth < 0:
                    self.fail(index, "unbalanced %r" % char)
                if self.depth == 0:
                    self.mode = None
                    _rest_is_trivia(body, pos, index + 1)
                    return
            elif char in ",:":
                if char == ",":
                    self.flow_key = None
                pos += 1
            elif char in "&!*":
                while pos < len(body) and body[pos] not in " \t,[]{}":
                    pos += 1
            elif char in "\"'":
                close = _find_quote_end(body, pos + 1, char)
                if close == -1:
                    self.fail(index, "a quoted scalar inside a flow collection must end on its line")
                scalar = self.add_scalar(index, pos + 1, close, "double" if char == '"' else "single",
                                         self.owner, in_flow=True, flow_key=self.flow_key)
                pos = self.after_flow_scalar(body, close + 1, scalar)
            else:
                end = pos
                while end < len(body) and body[end] not in ",[]{}" and not \
                        (body[end] == ":" and (end + 1 == len(body) or body[end + 1] in " \t,[]{}")) and not \
                        _at_comment(body, end):
                    end += 1
                text = body[pos:end].rstrip()
                scalar = self.add_scalar(index, pos, pos + len(text), "plain", self.owner,
                                         in_flow=True, flow_key=self.flow_key)
                pos = self.after_flow_scalar(body, end, scalar)

    def after_flow_scalar(self, body, pos, scalar):
        after = _skip_spaces(body, pos)
        if after < len(body) and body[after] == ":":
            scalar.is_key = True
            self.flow_key = self.doc.value(scalar)
            return after + 1
        return after


def parse_compose(text):
    """Scan a compose file; raises ParseError on what is not valid YAML (or not handled)."""
    return _Scanner(text).run()


# --- env files ------------------------------------------------------------------------------------

_ENV_LINE_RE = re.compile(r"^(?P<lead>[ \t]*)(?P<export>export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)"
                          r"(?P<sep>[ \t]*=[ \t]*)(?P<rest>.*)$")


class EnvEntry(object):
    def __init__(self, line, key, start, end, style):
        self.line = line
        self.key = key
        self.start = start
        self.end = end
        self.style = style


def parse_env(text):
    """The KEY=value entries of an env file, each with the inner span of its value."""
    entries = []
    for index, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE_RE.match(line)
        if not match:
            raise ParseError("line %d: not a KEY=value line: %r" % (index + 1, mask_text(stripped)))
        pos = match.start("rest")
        rest = match.group("rest")
        if rest[:1] in ("'", '"'):
            close = _find_quote_end(line, pos + 1, rest[0])
            if close == -1:
                raise ParseError("line %d: unterminated %s quote" % (index + 1, rest[0]))
            tail = line[close + 1:].strip()
            if tail and not tail.startswith("#"):
                raise ParseError("line %d: text after the closing quote" % (index + 1))
            entries.append(EnvEntry(index, match.group("key"), pos + 1, close,
                                    "double" if rest[0] == '"' else "single"))
        else:
            comment = re.search(r"[ \t]#", rest)
            value = rest[:comment.start()] if comment else rest
            value = value.rstrip()
            entries.append(EnvEntry(index, match.group("key"), pos, pos + len(value), "plain"))
    return entries


def _env_decode(style, inner):
    if style == "double":
        return re.sub(r'\\([\\"$])', r"\1", inner)
    return inner


def _env_encode(style, value):
    plain_ok = re.match(r"^[A-Za-z0-9_./:@%+,=${}\-]*$", value) is not None
    if style == "plain" and plain_ok:
        return "plain", value
    if style == "single" and "'" not in value and "\n" not in value:
        return "single", value
    return "double", value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- planning -------------------------------------------------------------------------------------

class Edit(object):
    def __init__(self, start, end, text):
        self.start = start
        self.end = end
        self.text = text


class FilePlan(object):
    """One file: its text before and after, and the changes made to it."""

    def __init__(self, path, kind, before):
        self.path = path
        self.kind = kind
        self.before = before
        self.after = before
        self.edits = []
        self.changes = []

    @property
    def changed(self):
        return self.after != self.before

    def change(self, line, service, section, key, before, after):
        name = key or section or ""
        self.changes.append({"file": self.path, "line": line + 1, "service": service, "section": section,
                             "key": key, "before": mask_value(name, before), "after": mask_value(name, after)})

    def finish(self):
        text = self.before
        edits = sorted(self.edits, key=lambda edit: (edit.start, edit.end))
        for earlier, later in zip(edits, edits[1:]):
            if later.start < earlier.end:
                raise OptionError("%s: two edits overlap at offset %d (the same value set and rewritten?)"
                                  % (self.path, later.start))
        for edit in reversed(edits):
            text = text[:edit.start] + edit.text + text[edit.end:]
        self.after = text


class ComposeEnvPlan(object):
    def __init__(self, files):
        self.files = files

    @property
    def changed(self):
        return any(item.changed for item in self.files)

    @property
    def changes(self):
        return [change for item in self.files for change in item.changes]

    def changed_services(self):
        return sorted({c["service"] for c in self.changes if c["service"]})

    def changed_keys(self):
        return sorted({c["key"] for c in self.changes if c["key"]})

    def diffs(self):
        return [{"before_header": item.path, "after_header": item.path,
                 "before": mask_text(item.before), "after": mask_text(item.after)}
                for item in self.files if item.changed]

    def unified_diff(self):
        chunks = []
        for item in self.files:
            if item.changed:
                chunks.extend(difflib.unified_diff(mask_text(item.before).splitlines(True),
                                                   mask_text(item.after).splitlines(True),
                                                   item.path, item.path))
        return "".join(chunks)


def detect_file_type(path, text):
    name = os.path.basename(path).lower()
    if name.endswith((".yml", ".yaml")):
        return "compose"
    if name.startswith(".env") or name.endswith(".env") or name == "env":
        return "env"
    try:
        parse_env(text)
        return "env"
    except ParseError:
        return "compose"


def read_text(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise OptionError("cannot read %s: %s" % (path, exc.strerror))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("%s is not UTF-8 text" % path)


def _check_mapping(rewrite):
    if not rewrite:
        return None
    for old, new in rewrite.items():
        if not old:
            raise OptionError("O(rewrite) has an empty fragment")
        if new is None:
            raise OptionError("O(rewrite) maps %r to nothing" % old)
    pattern = name_pattern(rewrite.keys())
    for new in rewrite.values():
        if pattern.search(str(new)):
            raise OptionError("O(rewrite) value %r is itself rewritten: the file would change on every run"
                              % new)
    return pattern


class _Spec(object):
    """The normalised options one plan applies to every file."""

    def __init__(self, services, set_vars, unset, rewrite, keys, scope):
        self.services = list(services or [])
        self.set_vars = dict((str(k), "" if v is None else str(v)) for k, v in (set_vars or {}).items())
        self.unset = list(unset or [])
        self.rewrite = dict((str(k), str(v)) for k, v in (rewrite or {}).items())
        self.keys = list(keys or [])
        self.scope = list(scope or ["all"])
        self.pattern = _check_mapping(self.rewrite)
        both = set(self.set_vars) & set(self.unset)
        if both:
            raise OptionError("O(set) and O(unset) both name %s" % ", ".join(sorted(both)))

    def rewrite_text(self, text):
        if not self.pattern:
            return text
        return self.pattern.sub(lambda match: self.rewrite[match.group(0)], text)

    def section_in_scope(self, section):
        return "all" in self.scope or section in self.scope


def plan_compose_env(path, services=None, set_vars=None, unset=None, rewrite=None, keys=None, scope=None,
                     follow_env_files=False, file_type="auto"):
    """Compute the edited text of the file (and of followed env files). Writes nothing."""
    spec = _Spec(services, set_vars, unset, rewrite, keys, scope)
    text = read_text(path)
    kind = detect_file_type(path, text) if file_type == "auto" else file_type
    plan = FilePlan(path, kind, text)
    files = [plan]
    if kind == "env":
        _plan_env(plan, spec)
    else:
        doc = parse_compose(text)
        env_files = _plan_compose(plan, doc, spec)
        if follow_env_files:
            base = os.path.dirname(os.path.abspath(path))
            for env_path in env_files:
                full = env_path if os.path.isabs(env_path) else os.path.normpath(os.path.join(base, env_path))
                if any(item.path == full for item in files):
                    continue
                if not os.path.exists(full):
                    raise OptionError("env_file %s of %s does not exist" % (env_path, path))
                env_plan = FilePlan(full, "env", read_text(full))
                _plan_env(env_plan, spec, adding=False)
                files.append(env_plan)
    for item in files:
        item.finish()
    if plan.kind == "compose" and plan.changed:
        parse_compose(plan.after)  # the editor must never produce what it cannot read back
    return ComposeEnvPlan(files)


def _plan_env(plan, spec, adding=True):
    """Edits of an env file: rewrite, set (update or append) and unset."""
    entries = parse_env(plan.before)
    lines = plan.before.splitlines(True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    present = set()
    for entry in entries:
        body = lines[entry.line].rstrip("\r\n")
        value = _env_decode(entry.style, body[entry.start:entry.end])
        new = value
        if entry.key in spec.unset:
            plan.edits.append(Edit(offsets[entry.line], offsets[entry.line + 1], ""))
            plan.change(entry.line, None, "env_file", entry.key, value, None)
            continue
        if entry.key in spec.set_vars:
            present.add(entry.key)
            new = spec.set_vars[entry.key]
        elif not spec.keys or entry.key in spec.keys:
            new = spec.rewrite_text(value)
        if new == value:
            continue
        style, inner = _env_encode(entry.style, new)
        start, end = entry.start, entry.end
        if style != entry.style:
            if entry.style != "plain":
                start, end = start - 1, end + 1
            if style != "plain":
                inner = ('"%s"' if style == "double" else "'%s'") % inner
        plan.edits.append(Edit(offsets[entry.line] + start, offsets[entry.line] + end, inner))
        plan.change(entry.line, None, "env_file", entry.key, value, new)
    if adding:
        newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
        prefix = newline if plan.before and not plan.before.endswith("\n") else ""
        for key, value in spec.set_vars.items():
            if key in present:
                continue
            style, inner = _env_encode("plain", value)
            text = inner if style == "plain" else '"%s"' % inner
            plan.edits.append(Edit(len(plan.before), len(plan.before), "%s%s=%s%s" % (prefix, key, text, newline)))
            prefix = ""
            plan.change(len(lines), None, "env_file", key, None, value)


def _locate(node):
    """(service, section, depth of the section node in the path) of a node's path."""
    path = node.path if node else ()
    if len(path) >= 2 and path[0] == "services":
        service, rest, base = path[1], path[2:], 2
    elif path and str(path[0]).startswith("x-"):
        service, rest, base = None, path[1:], 1
    else:
        return None, "other", None
    if rest and rest[0] in SECTIONS:
        return service, rest[0], base
    return service, "other", None


def _env_key(doc, scalar, base):
    """The variable name of a scalar in an environment section, and the role of the scalar."""
    if scalar.in_flow:
        if scalar.flow_key is not None:
            return scalar.flow_key, "env_value"
        return doc.value(scalar).split("=", 1)[0], "env_item"
    rest = scalar.node.path[base + 1:]
    if not rest:
        return None, None
    if scalar.node.kind == "key" and len(rest) == 1:
        return rest[0], "env_value"
    if isinstance(rest[0], int) and len(rest) == 1:
        return doc.value(scalar).split("=", 1)[0], "env_item"
    return None, None


def _env_blocks(doc, spec):
    """Environment nodes in scope: services' own, and (without a services filter) extension blocks."""
    blocks = []
    for node in doc.nodes:
        service, section, base = _locate(node)
        if section != "environment" or len(node.path) != base + 1:
            continue
        if spec.services and service not in spec.services:
            continue
        blocks.append((service, node))
    return blocks


def _services(doc):
    return dict((node.label, node) for node in doc.nodes if len(node.path) == 2 and node.path[0] == "services")


def _plan_compose(plan, doc, spec):
    """Edits of a compose file; returns the env_file entries of the selected services."""
    services = _services(doc)
    unknown = [name for name in spec.services if name not in services]
    if unknown:
        raise OptionError("O(services) names %s, not in %s (services: %s)"
                          % (", ".join(unknown), plan.path, ", ".join(sorted(services))))
    touched = set()
    _plan_set_unset(plan, doc, spec, services, touched)
    env_files = []
    for scalar in doc.scalars:
        service, section, base = _locate(scalar.node)
        if spec.services and service not in spec.services:
            continue
        if section == "env_file" and not scalar.is_key:
            value = doc.value(scalar)
            if scalar.node.kind == "key" and scalar.node.label not in ("env_file", "path"):
                continue
            env_files.append(value)
        if scalar.is_key or id(scalar) in touched or not spec.pattern:
            continue
        if not spec.section_in_scope(section):
            continue
        key, role = (None, None)
        if section == "environment":
            key, role = _env_key(doc, scalar, base)
        if spec.keys and key not in spec.keys:
            continue
        _rewrite_scalar(plan, doc, scalar, spec, service, section, key, role)
    return env_files


def _splice(plan, doc, scalar, new_inner_value, string_only, allow_requote=True):
    """Replace a scalar's value, in its own style when it can hold it, else as a double-quoted scalar."""
    inner = encode_inner(scalar.style, new_inner_value)
    if scalar.style == "plain" and not plain_safe(new_inner_value, scalar.in_flow, string_only and scalar.whole,
                                                  first=scalar.whole):
        inner = None
    if inner is not None:
        plan.edits.append(Edit(doc.offset(scalar.line, scalar.start), doc.offset(scalar.line, scalar.end), inner))
        return
    if not scalar.whole or not allow_requote:
        raise OptionError("%s line %d: the new value cannot be written in this %s scalar"
                          % (plan.path, scalar.line + 1, scalar.style))
    start, end = scalar.start, scalar.end
    if scalar.style in ("single", "double"):
        start, end = start - 1, end + 1
    plan.edits.append(Edit(doc.offset(scalar.line, start), doc.offset(scalar.line, end),
                           '"%s"' % encode_double(new_inner_value)))


def _rewrite_scalar(plan, doc, scalar, spec, service, section, key, role):
    value = doc.value(scalar)
    if role == "env_item" and "=" in value:
        name, rest = value.split("=", 1)
        new = name + "=" + spec.rewrite_text(rest)
    else:
        new = spec.rewrite_text(value)
    if new == value:
        return
    string_only = role == "env_value" or scalar.style != "plain" or _NON_STRING_RE.match(value) is None
    _splice(plan, doc, scalar, new, string_only)
    plan.change(scalar.line, service, section, key or _label(scalar.node), value, new)


def _label(node):
    labels = [str(label) for label in node.path if not isinstance(label, int)] if node else []
    return labels[-1] if labels else None


def _plan_set_unset(plan, doc, spec, services, touched):
    if not spec.set_vars and not spec.unset:
        return
    blocks = _env_blocks(doc, spec)
    found = {}
    for service, block in blocks:
        removed = 0
        for child in block.children:
            scalars = [s for s in child.scalars if not s.is_key]
            if child.kind == "item":
                if not scalars:
                    continue
                name = doc.value(scalars[0]).split("=", 1)[0]
            else:
                name = str(child.label)
            if name in spec.unset:
                if child.line == block.line:
                    raise OptionError("%s line %d: cannot remove %s from a one-line environment"
                                      % (plan.path, child.line + 1, name))
                plan.edits.append(Edit(doc.offsets[child.line], _line_end(doc, child.last_line), ""))
                touched.update(id(s) for s in child.scalars)
                plan.change(child.line, service, "environment", name,
                            doc.value(scalars[0]) if scalars else None, None)
                removed += 1
            elif name in spec.set_vars:
                found.setdefault(name, set()).add(service)
                _set_existing(plan, doc, child, scalars, name, spec.set_vars[name], service, touched)
        if removed and removed == len(block.children):
            raise OptionError("%s: O(unset) would empty the environment of %s; remove the section instead"
                              % (plan.path, service or block.path[0]))
    for name, value in spec.set_vars.items():
        if not spec.services:
            if name not in found:
                raise OptionError("O(set) variable %s is in no environment of %s; name the O(services) "
                                  "to add it to" % (name, plan.path))
            continue
        for service in spec.services:
            if service not in found.get(name, ()):
                _add_variable(plan, doc, services[service], name, value)


def _line_end(doc, index):
    return doc.offsets[index] + len(doc.lines[index])


def _set_existing(plan, doc, child, scalars, name, value, service, touched):
    if child.kind == "item":
        scalar = scalars[0]
        old = doc.value(scalar)
        new = "%s=%s" % (name, value)
        if old != new:
            _splice(plan, doc, scalar, new, False)
            plan.change(scalar.line, service, "environment", name, old.split("=", 1)[-1], value)
        touched.add(id(scalar))
        return
    if scalars:
        scalar = scalars[0]
        if not scalar.whole:
            raise OptionError("%s line %d: %s has a multi-line value; set it by hand"
                              % (plan.path, scalar.line + 1, name))
        old = doc.value(scalar)
        if old != value or (scalar.style == "plain" and not plain_safe(value)):
            _splice(plan, doc, scalar, value, True)
            plan.change(scalar.line, service, "environment", name, old, value)
        touched.add(id(scalar))
        return
    if child.inline:
        raise OptionError("%s line %d: %s takes its value from an alias; set it by hand"
                          % (plan.path, child.line + 1, name))
    position = doc.offset(child.line, child.value_col)
    plan.edits.append(Edit(position, position, " " + _yaml_value(value)))
    plan.change(child.line, service, "environment", name, None, value)


def _yaml_value(value):
    return value if plain_safe(value) else '"%s"' % encode_double(value)


def _add_variable(plan, doc, service_node, name, value):
    """Append NAME to a service's own environment, creating the section when it has none."""
    service = service_node.label
    env = [child for child in service_node.children if child.label == "environment"]
    newline = doc.newline
    if env:
        block = env[0]
        if block.inline:
            raise OptionError("%s: the environment of %s is written inline (flow style or alias); "
                              "add %s by hand" % (plan.path, service, name))
        children = block.children
        if children:
            last = children[-1]
            indent = last.col
            form = "list" if last.kind == "item" else "map"
            after = last.last_line
            styles = set(s.style for c in children for s in c.scalars[:1])
        else:
            indent, form, after, styles = block.col + 2, _majority_form(doc), block.last_line, set()
        text = _entry_text(indent, form, name, value, styles)
    else:
        if any(child.label == "<<" for child in service_node.children):
            raise OptionError("%s: service %s takes its keys from a merge key (<<); an environment section "
                              "added there would hide the merged one, add %s to the anchor or by hand"
                              % (plan.path, service, name))
        if not service_node.children:
            raise OptionError("%s: service %s is empty" % (plan.path, service))
        col = service_node.children[0].col
        after = service_node.last_line
        text = " " * col + "environment:" + newline + _entry_text(col + 2, _majority_form(doc), name, value, set())
    position = _line_end(doc, after)
    if not doc.lines[after].endswith("\n"):
        text = newline + text
    plan.edits.append(Edit(position, position, text.replace("\n", newline) if newline != "\n" else text))
    plan.change(after + 1, service, "environment", name, None, value)


def _majority_form(doc):
    lists = maps = 0
    for node in doc.nodes:
        if node.label == "environment" and node.children:
            if node.children[0].kind == "item":
                lists += 1
            else:
                maps += 1
    return "map" if maps > lists else "list"


def _entry_text(indent, form, name, value, styles):
    if form == "map":
        return "%s%s: %s\n" % (" " * indent, name, _yaml_value(value))
    item = "%s=%s" % (name, value)
    if styles == {"single"} and "\n" not in item:
        scalar = "'%s'" % item.replace("'", "''")
    elif styles == {"double"} or not plain_safe(item, string_only=False):
        scalar = '"%s"' % encode_double(item)
    else:
        scalar = item
    return "%s- %s\n" % (" " * indent, scalar)


# --- validation and apply -------------------------------------------------------------------------

def compose_tool():
    """The compose CLI as an argv prefix: `docker compose` (v2) or `docker-compose` (v1), or None."""
    docker = shutil.which("docker")
    if docker:
        try:
            probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return [docker, "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _config_errors(tool, text, project_dir):
    """stderr of `config -q` on text placed in a private temp file (project dir kept), or None if valid."""
    handle, tmp = tempfile.mkstemp(prefix="compose_env.", suffix=".yml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        result = subprocess.run(tool + ["-f", tmp, "--project-directory", project_dir, "config", "-q"],
                                capture_output=True, timeout=120)
        if result.returncode == 0:
            return None
        return mask_text(result.stderr.decode("utf-8", "replace").replace(tmp, "<edited file>").strip())
    finally:
        os.unlink(tmp)


def validate_plan(plan, validate="auto"):
    """Run the compose tool's `config -q` on the edited compose text; returns the tool used or None.

    Runs in check mode too (on a private temp copy, nothing near the original is written). When the
    edited file fails, the original is checked as well so the message says whose fault it is.
    """
    main = plan.files[0]
    if validate == "never" or main.kind != "compose" or not main.changed:
        return None
    tool = compose_tool()
    if tool is None:
        if validate == "always":
            raise ValidationError("O(validate=always) but neither `docker compose` nor `docker-compose` is installed")
        return None
    project_dir = os.path.dirname(os.path.abspath(main.path))
    errors = _config_errors(tool, main.after, project_dir)
    if errors:
        original = _config_errors(tool, main.before, project_dir)
        if original:
            raise ParseError("%s already fails `%s config -q` before any edit: %s"
                             % (main.path, " ".join(os.path.basename(p) for p in tool), original))
        raise ValidationError("the edited %s fails `%s config -q`, nothing was written: %s"
                              % (main.path, " ".join(os.path.basename(p) for p in tool), errors))
    return " ".join(os.path.basename(part) for part in tool)


STAGED_SUFFIX = ".zoe-staged"


def staged_path(path):
    """Where the edited text of `path` is staged: a hidden file beside it (same filesystem, so a rename installs it)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, "." + name + STAGED_SUFFIX)


def _read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


@contextlib.contextmanager
def _written_beside(path, data, fsync=False):
    """A temporary file in `path`'s directory (same filesystem: a rename installs it) holding `data`; removed on exit
    unless the caller moved it away."""
    handle, tmp = tempfile.mkstemp(prefix=".compose_env.", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def staged_ready(plan):
    """Paths of the changed files whose staged copy holds exactly the edited text (validated when it was staged).

    A staged copy is a regular file (not a symlink) owned like its original; anything else does not count.
    """
    ready = set()
    for item in plan.files:
        staged = staged_path(item.path)
        if not item.changed or os.path.islink(staged) or not os.path.isfile(staged):
            continue
        if os.stat(staged).st_uid != os.stat(item.path).st_uid:
            continue
        if _read_bytes(staged) == item.after.encode("utf-8"):
            ready.add(item.path)
    return ready


def discard_staged(plan, keep=()):
    """Remove the staged copies of the plan's files except `keep` (stale ones from an earlier run)."""
    for item in plan.files:
        staged = staged_path(item.path)
        if item.path not in keep and (os.path.isfile(staged) or os.path.islink(staged)):
            os.unlink(staged)


def stage_compose_env(plan):
    """Write the edited text of every changed file to its staged path, with the original's mode and owner.

    The originals are not touched; a later run with the same options installs the staged copies by renaming them
    (no second validation: these are the bytes that passed it). Returns the staged paths.
    """
    staged = []
    discard_staged(plan)
    for item in plan.files:
        if not item.changed:
            continue
        info = os.stat(item.path)
        with _written_beside(item.path, item.after.encode("utf-8"), fsync=True) as tmp:
            os.chmod(tmp, info.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, info.st_uid, info.st_gid)
            os.replace(tmp, staged_path(item.path))
        staged.append(staged_path(item.path))
    return staged


def apply_compose_env(module, plan, backup=False, ready=()):
    """Write every changed file: optional backup, temp file in the same directory, atomic move.

    A file in `ready` (see staged_ready) is installed by moving its staged copy into place instead.
    Env files first, the compose file last, so a failure leaves the compose file as it was.
    Returns {path: backup_file or None}.
    """
    backups = {}
    for item in sorted(plan.files, key=lambda f: f.kind == "compose"):
        if not item.changed:
            continue
        backups[item.path] = module.backup_local(item.path) if backup else None
        if item.path in ready:
            module.atomic_move(staged_path(item.path), item.path)
            continue
        with _written_beside(item.path, item.after.encode("utf-8")) as tmp:
            module.atomic_move(tmp, item.path)
    discard_staged(plan)
    return backups
