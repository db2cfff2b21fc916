# -*- coding: utf-8 -*-
"""Compose files and env files on the managed host: the one compose-tool detection, the one env-file parser, and
the install of edits planned on the controller (plugins/action/compose_env.py). Standard library only.

The controller reads each file, plans the edit with a real YAML parser and sends back only the sha256 of the bytes it
read and the new bytes. Here a file whose sha256 differs is refused (it changed since it was read), the compose tool's
`config -q` checks the edited compose file where it passes on the original, and the new bytes are staged beside the
file (`.NAME.zoe-staged`) or installed with one atomic rename that keeps the original's mode and owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile

COMPOSE_V2 = ["docker", "compose"]
COMPOSE_V1 = ["docker-compose"]
TIMEOUT = 60
STAGED_SUFFIX = ".zoe-staged"


class ComposeEnvError(Exception):
    """Base class of the compose_env failures; the message is one sentence, nothing was written."""


class ParseError(ComposeEnvError):
    """The file is not valid YAML / env-file syntax, or holds what an exact edit cannot be planned on."""


class OptionError(ComposeEnvError):
    """The options cannot be applied to this file (unknown service, an alias another service must keep, ...)."""


class ValidationError(ComposeEnvError):
    """The compose tool rejects the edited file."""


class ChangedError(ComposeEnvError):
    """The file changed between the controller's read and the install."""


# --- the compose tool ----------------------------------------------------------------------------------------------

def run(cmd, cwd=None, timeout=TIMEOUT):
    """(rc, stdout, stderr) of a command; rc 127 when the program does not exist, 124 on timeout."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", "%s: command not found" % cmd[0]
    except subprocess.TimeoutExpired:
        return 124, "", "%s timed out after %d s" % (" ".join(cmd), timeout)
    return proc.returncode, proc.stdout, proc.stderr


def parse_compose_version(text):
    """The version number in `docker compose version` / `docker-compose version` output, else None."""
    match = re.search(r"v?(\d+\.\d+\.\d+[\w.+-]*)", text or "")
    return match.group(1) if match else None


def detect_compose(runner=run):
    """(command list, version) of the compose tool: the v2 plugin first, then standalone v1; (None, None)."""
    for command in (COMPOSE_V2, COMPOSE_V1):
        rc, out, _ = runner(command + ["version"])
        if rc == 0:
            return list(command), parse_compose_version(out)
    return None, None


# --- env files -----------------------------------------------------------------------------------------------------

_ENV_LINE_RE = re.compile(r"(?P<lead>[ \t]*)(?P<export>export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)"
                          r"[ \t]*=[ \t]*(?P<rest>[^\r\n]*)")


class EnvEntry(object):
    """One KEY=value line: `start`/`end` are the offsets of the value's inner text (without quotes) in the file."""

    def __init__(self, line, key, start, end, style, value, line_start, line_end):
        self.line, self.key, self.start, self.end, self.style = line, key, start, end, style
        self.value, self.line_start, self.line_end = value, line_start, line_end


def _quote_end(text, pos, quote):
    while pos < len(text) and text[pos] not in "\r\n":
        if quote == '"' and text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos
        pos += 1
    return -1


def parse_env(text, strict=True):
    """The KEY=value entries of an env file with their spans; comments, blank lines, `export` and quotes handled.

    strict: a line that is not an assignment raises ParseError naming the line (never its text, which may be a
    secret); otherwise it is skipped, as compose does for its own .env.
    """
    entries, offset = [], 0
    for index, line in enumerate(text.splitlines(True)):
        start, body = offset, line.rstrip("\r\n")
        offset += len(line)
        stripped = body.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE_RE.match(body)
        problem = None if match else "not a KEY=value line"
        if match:
            pos, rest = match.start("rest"), match.group("rest")
            if rest[:1] in ("'", '"'):
                close = _quote_end(body, pos + 1, rest[0])
                tail = body[close + 1:].strip() if close != -1 else ""
                if close == -1:
                    problem = "unterminated %s quote" % rest[0]
                elif tail and not tail.startswith("#"):
                    problem = "text after the closing quote"
                else:
                    style = "double" if rest[0] == '"' else "single"
                    inner = body[pos + 1:close]
                    value = re.sub(r'\\([\\"$])', r"\1", inner) if style == "double" else inner
                    entries.append(EnvEntry(index, match.group("key"), start + pos + 1, start + close, style, value,
                                            start, offset))
            else:
                comment = re.search(r"[ \t]#", rest)
                value = (rest[:comment.start()] if comment else rest).rstrip()
                entries.append(EnvEntry(index, match.group("key"), start + pos, start + pos + len(value), "plain",
                                        value, start, offset))
        if problem and strict:
            raise ParseError("line %d: %s" % (index + 1, problem))
    return entries


def read_env_file(path):
    """KEY -> value of an env file (lenient: unreadable file or bad lines are skipped, the last assignment wins)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return {}
    return dict((entry.key, entry.value) for entry in parse_env(text.lstrip("\ufeff"), strict=False))


# --- install what the controller planned ---------------------------------------------------------------------------

def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def staged_path(path):
    """Where the edited bytes of `path` are staged: a hidden file beside it (same filesystem: a rename installs it)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, "." + name + STAGED_SUFFIX)


class PlannedFile(object):
    """A file as the controller read it (`sha256`) and the bytes it must hold (`after`, None when unchanged)."""

    def __init__(self, path, kind, sha256, after):
        self.path, self.kind, self.sha256, self.after = path, kind, sha256, after

    @property
    def changed(self):
        return self.after is not None


def check_unchanged(files):
    """Refuse when any file is no longer the bytes the controller planned on (before anything is written)."""
    for item in files:
        current = read_bytes(item.path)
        if current is None:
            raise ChangedError("%s cannot be read any more; nothing was written" % item.path)
        if sha256_of(current) != item.sha256:
            raise ChangedError("%s changed since it was read for planning (sha256 %s, planned on %s); nothing was "
                               "written, run the task again" % (item.path, sha256_of(current)[:12], item.sha256[:12]))
        if item.after == current:
            item.after = None


def _config_errors(tool, data, project_dir, runner=run):
    """stderr of `config -q` on `data` in a private temp file (project directory kept), or None when it passes."""
    handle, tmp = tempfile.mkstemp(prefix="compose_env.", suffix=".yml")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        rc, out, err = runner(tool + ["-f", tmp, "--project-directory", project_dir, "config", "-q"], cwd=project_dir)
        return None if rc == 0 else (err or out).replace(tmp, "<edited file>").strip() or "rc %d" % rc
    finally:
        os.unlink(tmp)


def validate(files, validate="auto", runner=run):
    """Run `config -q` on each changed compose file where it passes on the original; (tool name, skipped reason).

    The controller has already checked that the edit parses to the original tree with only the planned values
    changed; the compose tool adds its own schema check where it can judge (an original it rejects, for example one
    whose build contexts are missing, is rewritten on the parse check alone).
    """
    compose = [item for item in files if item.kind == "compose" and item.changed]
    if validate == "never" or not compose:
        return None, None
    tool, _ = detect_compose(runner)
    if tool is None:
        if validate == "always":
            raise ValidationError("O(validate=always) but neither `docker compose` nor `docker-compose` is installed")
        return None, "no compose tool on the host"
    name, skipped, checked = " ".join(tool), None, 0
    for item in compose:
        project_dir = os.path.dirname(os.path.abspath(item.path))
        original = _config_errors(tool, read_bytes(item.path), project_dir, runner)
        if original:
            skipped = "%s already fails `%s config -q` before the edit: %s" % (item.path, name,
                                                                              original.splitlines()[0])
            continue
        errors = _config_errors(tool, item.after, project_dir, runner)
        if errors:
            raise ValidationError("the edited %s fails `%s config -q`, nothing was written: %s"
                                  % (item.path, name, errors))
        checked += 1
    return (name if checked else None), skipped


@contextlib.contextmanager
def _written_beside(path, data, fsync=False):
    """A temporary file in `path`'s directory holding `data`; removed on exit unless the caller moved it away."""
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


def staged_ready(files):
    """Paths of the changed files whose staged copy is a regular file, owned like the original, holding exactly the
    new bytes (validated when it was staged). A symlink, another owner's file or other bytes never count."""
    ready = set()
    for item in files:
        staged = staged_path(item.path)
        if not item.changed or os.path.islink(staged) or not os.path.isfile(staged):
            continue
        if os.stat(staged).st_uid == os.stat(item.path).st_uid and read_bytes(staged) == item.after:
            ready.add(item.path)
    return ready


def discard_staged(files, keep=()):
    """Remove the staged copies of the files except `keep` (stale ones from an earlier run)."""
    for item in files:
        staged = staged_path(item.path)
        if item.path not in keep and (os.path.isfile(staged) or os.path.islink(staged)):
            os.unlink(staged)


def stage(files):
    """Write the new bytes of every changed file to its staged path with the original's mode and owner; the
    originals are not touched. Returns the staged paths."""
    staged = []
    discard_staged(files)
    for item in files:
        if not item.changed:
            continue
        info = os.stat(item.path)
        with _written_beside(item.path, item.after, fsync=True) as tmp:
            os.chmod(tmp, info.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, info.st_uid, info.st_gid)
            os.replace(tmp, staged_path(item.path))
        staged.append(staged_path(item.path))
    return staged


def install(module, files, backup=False, ready=()):
    """Write every changed file (env files first, compose files last): optional backup, then one atomic move of the
    staged copy (`ready`) or of a temp file in the same directory. Returns {path: backup file or None}."""
    backups = {}
    for item in sorted(files, key=lambda f: f.kind == "compose"):
        if not item.changed:
            continue
        backups[item.path] = module.backup_local(item.path) if backup else None
        if item.path in ready:
            module.atomic_move(staged_path(item.path), item.path)
            continue
        with _written_beside(item.path, item.after) as tmp:
            module.atomic_move(tmp, item.path)
    discard_staged(files)
    return backups
