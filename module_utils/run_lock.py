# -*- coding: utf-8 -*-
"""A run lock on the managed host: one consolidation run at a time, and a killed run's lock recovered.

Standard library only: this runs on the managed host with its own python3.

Why it works the way it does:
- The lock file is created whole or not at all: its JSON is written to a private temporary file which is
  then hard-linked to the lock path (link() fails with EEXIST when the path exists, exactly like
  O_CREAT|O_EXCL, but a reader never sees a half-written lock). Filesystems without hard links fall back to
  O_CREAT|O_EXCL.
- A lock is stale when its owner is provably gone: the controller that wrote it is this machine and its
  ansible-playbook process no longer exists, is a zombie, or is another process that reuses the pid
  (different start time in /proc/<pid>/stat); or when it is older than stale_after, whatever the owner.
- Replacing a stale lock is a compare-and-swap: under an flock on the lock's directory (taken by every
  user of this module) the lock is read again, and a new file is renamed over it only when its bytes are
  still those that were judged stale. Two runs that find the same stale lock cannot both win.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile

DEFAULT_STALE_AFTER = 6 * 3600
STATE_CHOICES = ("present", "absent")


class RunLockError(Exception):
    """Base class of every failure of the run lock; the message is one sentence naming the lock."""


class LockHeldError(RunLockError):
    """Another run holds the lock and is still running."""


class LockOwnedByOtherRunError(RunLockError):
    """state=absent was asked for a lock that belongs to another run (and force is false)."""


class LockUnreadableError(RunLockError):
    """The lock file exists but is not the JSON this module writes, and it is not old enough to be stale."""


class LockPathError(RunLockError):
    """The lock path is a directory, or its directory cannot be created or written."""


class LockRaceError(RunLockError):
    """The lock changed between being judged stale and being replaced."""


# ----------------------------------------------------------------------------------------- processes

def process_start_time(pid):
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22), None when gone.

    The comm field may contain spaces and parentheses, so fields are counted after the last ')'.
    """
    try:
        with open("/proc/%d/stat" % int(pid)) as handle:
            text = handle.read()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19])


def process_state(pid):
    """The one-letter state of a process (R, S, Z, ...) or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % int(pid)) as handle:
            text = handle.read()
    except (OSError, ValueError):
        return None
    return text[text.rindex(")") + 2:].split()[0]


def process_alive(pid, start_time=None):
    """True when `pid` is a live (non-zombie) process and, when given, started at `start_time`."""
    state = process_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    if start_time in (None, ""):
        return True
    return str(process_start_time(pid)) == str(start_time)


def this_host():
    return socket.gethostname()


def _same_host(name):
    if not name:
        return False
    names = {this_host(), socket.getfqdn()}
    short = {n.split(".")[0] for n in names}
    return name in names or str(name).split(".")[0] in short


# ------------------------------------------------------------------------------------------- content

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def lock_content(run_id, owner, now=None):
    """The JSON document of a lock: who, when (ISO and epoch, so age needs no clock parsing)."""
    now = now or now_utc()
    doc = {"run_id": run_id, "owner": dict(owner or {}), "host": this_host(),
           "acquired_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "acquired_epoch": int(now.timestamp())}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_lock(path):
    """(raw bytes, parsed dict or None) of the lock; (None, None) when there is no lock."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        raise LockPathError("lock path %s is a directory" % path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return raw, None
    return raw, doc if isinstance(doc, dict) and "run_id" in doc else None


def lock_age(path, doc, now=None):
    """Seconds since the lock was taken: its own epoch field, else the file's mtime."""
    now = (now or now_utc()).timestamp()
    epoch = (doc or {}).get("acquired_epoch")
    if not isinstance(epoch, (int, float)):
        try:
            epoch = os.stat(path).st_mtime
        except OSError:
            epoch = now
    return max(0, int(now - epoch))


def staleness(path, doc, stale_after, now=None):
    """Why a lock is stale (a sentence), or None when its owner may still be running."""
    age = lock_age(path, doc, now)
    if age > stale_after:
        return "the lock is %d s old, older than stale_after (%d s)" % (age, stale_after)
    if doc is None:
        return None
    owner = doc.get("owner") or {}
    if _same_host(owner.get("controller")) and owner.get("pid") not in (None, ""):
        pid = owner["pid"]
        if not process_alive(pid):
            return "controller process %s on %s is gone" % (pid, owner["controller"])
        if owner.get("pid_start") not in (None, "") and not process_alive(pid, owner["pid_start"]):
            return ("pid %s on %s now belongs to another process (start time %s, the lock's owner started at %s)"
                    % (pid, owner["controller"], process_start_time(pid), owner["pid_start"]))
    return None


def describe(doc):
    owner = (doc or {}).get("owner") or {}
    return "run_id %s, started %s by controller %s pid %s" % (
        (doc or {}).get("run_id"), owner.get("started") or (doc or {}).get("acquired_at"),
        owner.get("controller"), owner.get("pid"))


# ----------------------------------------------------------------------------------------------- plan

class LockPlan:
    """What run_lock will do: action is one of create, keep, replace, remove, none."""

    def __init__(self, path, action, before=None, after=None, stale_reason=None, stale_doc=None, expected=None):
        self.path = path
        self.action = action
        self.before = before
        self.after = after
        self.stale_reason = stale_reason
        self.stale_doc = stale_doc
        self.expected = expected

    @property
    def changed(self):
        return self.action in ("create", "replace", "remove")

    def diff(self):
        return {"before_header": self.path, "after_header": self.path,
                "before": (self.before or b"").decode("utf-8", "replace"),
                "after": (self.after or b"").decode("utf-8", "replace")}

    def result(self):
        """The module's result keys."""
        lock = None
        text = self.after if self.action != "remove" else None
        if text:
            lock = json.loads(text.decode("utf-8"))
        recovered = None
        if self.action == "replace":
            recovered = {"reason": self.stale_reason, "lock": self.stale_doc,
                         "content": None if self.stale_doc else (self.expected or b"").decode("utf-8", "replace")}
        return {"changed": self.changed, "operation": self.action, "path": self.path, "lock": lock,
                "stale_lock_recovered": recovered, "msg": self.message()}

    def message(self):
        return {
            "create": "lock %s taken" % self.path,
            "keep": "lock %s already held by this run" % self.path,
            "replace": "stale lock %s recovered (%s) and taken" % (self.path, self.stale_reason),
            "remove": "lock %s released" % self.path,
            "none": "no lock at %s" % self.path,
        }[self.action]


def plan_lock(path, state, run_id, owner=None, stale_after=DEFAULT_STALE_AFTER, force=False, now=None):
    """Decide what to do with the lock at `path`; reads only. Raises the named error for a refusal."""
    if os.path.isdir(path):
        raise LockPathError("lock path %s is a directory" % path)
    if state == "present":
        return _plan_present(path, run_id, owner, stale_after, now)
    if state == "absent":
        return _plan_absent(path, run_id, force)
    raise AssertionError("unreachable state %r" % state)


def _plan_present(path, run_id, owner, stale_after, now):
    raw, doc = read_lock(path)
    if raw is None:
        return LockPlan(path, "create", after=lock_content(run_id, owner, now))
    if doc is not None and doc.get("run_id") == run_id:
        return LockPlan(path, "keep", before=raw, after=raw)
    reason = staleness(path, doc, stale_after, now)
    if reason is None:
        if doc is None:
            raise LockUnreadableError("the lock at %s is not a run lock this module wrote (%d bytes of unreadable "
                                      "content) and it is younger than stale_after (%d s); remove it if no run "
                                      "is in progress" % (path, len(raw), stale_after))
        raise LockHeldError("another consolidation run (%s) holds the lock at %s; it is still running%s. "
                            "This run changed nothing and touches nothing of it: run again once it has ended"
                            % (describe(doc), path, _remote_note(doc, stale_after)))
    return LockPlan(path, "replace", before=raw, after=lock_content(run_id, owner, now), stale_reason=reason,
                    stale_doc=doc, expected=raw)


def _remote_note(doc, stale_after):
    owner = doc.get("owner") or {}
    if _same_host(owner.get("controller")):
        return ""
    return (" as far as this host can tell (its controller is another machine and the lock is younger than "
            "stale_after, %d s)" % stale_after)


def _plan_absent(path, run_id, force):
    raw, doc = read_lock(path)
    if raw is None:
        return LockPlan(path, "none")
    if (doc is None or doc.get("run_id") != run_id) and not force:
        raise LockOwnedByOtherRunError("the lock at %s belongs to another run (%s), not to run_id %s; "
                                       "use force=true to remove it anyway"
                                       % (path, describe(doc) if doc else "unreadable content", run_id))
    return LockPlan(path, "remove", before=raw, expected=raw)


# ---------------------------------------------------------------------------------------------- apply

class _DirectoryLock:
    """flock on the lock's directory: the critical section of every judge-then-write of this module."""

    def __init__(self, directory):
        self.directory = directory
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _write_temp(directory, content):
    fd, tmp = tempfile.mkstemp(prefix=".zoe-run-lock-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _create_exclusive(path, content):
    """Create `path` with `content` whole or not at all; False when it already exists."""
    directory = os.path.dirname(path)
    tmp = _write_temp(directory, content)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    finally:
        os.unlink(tmp)
    try:  # no hard links here: plain O_CREAT|O_EXCL
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def ensure_directory(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700)
        except OSError as exc:
            raise LockPathError("cannot create the directory of the lock %s: %s" % (path, exc.strerror))
    return directory


def apply_lock(plan):
    """Carry out a plan under the directory flock; each step re-checks that the lock is as planned."""
    directory = ensure_directory(plan.path)
    try:
        with _DirectoryLock(directory):
            current, _ = read_lock(plan.path)
            if plan.action == "create":
                if current is not None or not _create_exclusive(plan.path, plan.after):
                    _, winner = read_lock(plan.path)
                    raise LockRaceError("the lock at %s was taken by another run (%s) while this one was taking it; "
                                        "that run goes on, this one changed nothing and touches nothing of it"
                                        % (plan.path, describe(winner) if winner else "unreadable lock"))
            elif plan.action == "replace":
                if current != plan.expected:
                    raise LockRaceError("the stale lock at %s changed before it could be replaced; another run "
                                        "got there first" % plan.path)
                tmp = _write_temp(directory, plan.after)
                os.rename(tmp, plan.path)
            elif plan.action == "remove":
                if current is not None and current != plan.expected:
                    raise LockRaceError("the lock at %s changed before it could be removed" % plan.path)
                if current is not None:
                    os.unlink(plan.path)
            else:
                raise AssertionError("nothing to apply for action %r" % plan.action)
    except PermissionError as exc:
        raise LockPathError("cannot write the lock %s: %s" % (plan.path, exc.strerror))
    return plan

