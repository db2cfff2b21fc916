# -*- coding: utf-8 -*-
"""The downtime window of a consolidation in one call: stop the writers, take the rollback point, write the merge,
retire the merged databases, install the staged compose and env files, start the writers again.

Standard library only: this runs on the managed host with its own python3.

Why one call: the window is the time in which a user cannot reach a service. Each Ansible task costs its own
start-up (0.3-1 s on a small host: the controller's fork, the module's transfer and Python start), so a window
of six tasks spends seconds on Ansible alone. In one module the window holds the stop, the file work and the start
and nothing else; the module's own start-up happens before the stop, and its result travels back after the start.

Why each step is cheap:
- stop: `docker stop` per depends_on layer (compose_services.stop_services), no compose start-up.
- rollback point: volume_snapshot with a `base`, the live snapshot the backup phase took and restore-tested before
  the stop: a file whose bytes still equal the base's stored copy (compared byte for byte, at memory speed) is
  hard-linked from it and takes its sha256, only the files a writer changed since are copied and hashed.
- merge: the merge prepared before the stop is written when the target and every source hold the bytes it read;
  the rollback point's digests say so, so no file is hashed twice (the prepared copy itself is checked before
  the stop; one that fails that check is found stale by the merge, which then starts afresh). Otherwise the merge runs from scratch, here, and the result says why (a writer wrote after the
  preparation: a slower window, never a different result).
- retire: renames into the backup area. install: one rename per staged file, after a sha256 check of the file
  and of its staged copy. start: `compose up -d --no-deps`, ready as soon as each container's own healthcheck
  passes (compose_services.start_services).

Failure contract, which the play's rescue relies on:
- before the stop (a staged file changed, bad arguments): nothing changed, nothing stopped;
- in the stop or the rollback point: the services stopped so far are started again, nothing changed;
- from the merge on: the error carries the rollback point, the services are left as they are, and the caller
  restores the rollback point (the rollback role) before starting the old stack.
A progress journal (JSON, rewritten after each step) says which step the window is in, for an operator looking at
a killed run and for the tests that kill it there.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time

from ansible.module_utils.compose_env import read_bytes, sha256_of, staged_path
from ansible.module_utils.compose_services import ComposeServicesError, project_entries, start_services, stop_services
from ansible.module_utils.sqlite_merge import MergeError
from ansible.module_utils.sqlite_merge_prepare import check_prepared_copy, plan_call
from ansible.module_utils.volume_snapshot import SnapshotError, apply_snapshot, load_manifest, plan_snapshot

STEPS = ("stop", "rollback_point", "merge", "retire", "install", "start")
SIDECARS = ("-wal", "-shm", "-journal")


class WindowError(Exception):
    """Base class of the window's failures; `result` holds what the window did before it failed."""

    def __init__(self, message, result=None):
        super(WindowError, self).__init__(message)
        self.result = result or {}


class StagedFileError(WindowError):
    """A compose or env file, or its staged copy, is not what the prepare phase staged."""


class RetireError(WindowError):
    """A merged database could not be moved out of the data directory."""


class StepError(WindowError):
    """A step of the window failed; `step` names it and `changed` says whether the host was changed."""

    def __init__(self, step, message, result, changed):
        super(StepError, self).__init__(message, result)
        self.step, self.changed = step, changed


# ----------------------------------------------------------------------------------------------- the plan

class WindowSpec(object):
    """The module's options, checked and normalised: which steps run and with what."""

    def __init__(self, compose=None, stop=None, start=None, rollback_point=None, merge=None, retire=None,
                 install=None, journal=None):
        self.compose = compose or None
        self.stop = stop if compose and stop and stop.get("services") else None
        self.start = start if compose and start and start.get("services") else None
        self.rollback_point = rollback_point
        self.merge = merge if merge and merge.get("sources") else None
        self.retire = retire if retire and retire.get("names") else None
        self.install = list(install or [])
        self.journal = journal

    def merge_options(self):
        options = dict(self.merge)
        for name in ("target", "sources", "prepared_dir"):
            options.pop(name, None)
        return options


def staged_problems(install):
    """Why each staged file cannot be installed (empty when every one can): the file must still hold the bytes the
    edit was planned on, and its staged copy must be a regular file owned like it, holding the validated bytes."""
    problems = []
    for item in install:
        path, staged = item["path"], staged_path(item["path"])
        current = read_bytes(path)
        if current is None:
            problems.append("%s cannot be read" % path)
        elif sha256_of(current) != item["sha256"]:
            problems.append("%s changed since its edit was staged" % path)
        elif os.path.islink(staged) or not os.path.isfile(staged):
            problems.append("%s has no staged copy %s" % (path, staged))
        elif os.lstat(staged).st_uid != os.lstat(path).st_uid:
            problems.append("the staged copy %s is not owned like %s" % (staged, path))
        elif sha256_of(read_bytes(staged) or b"") != item["staged_sha256"]:
            problems.append("the staged copy %s is not the validated edit of %s" % (staged, path))
    return problems


def retire_paths(retire):
    """The files the retire step moves: of each database, its sidecars that exist in the data directory, then the
    database itself (also a sidecar whose database is gone: what an interrupted retire left).

    Sidecars first: interrupted between the two, the data directory keeps a database without its -wal, which a
    rerun merges again (its rows are in the primary already: identical) and retires; the other order could leave a
    -wal behind that no rerun would name."""
    found = []
    for name in retire["names"]:
        if os.sep in name or name in ("", ".", ".."):
            raise RetireError("%r is not a file name in %s" % (name, retire["data_dir"]))
        for suffix in SIDECARS + ("",):
            path = os.path.join(retire["data_dir"], name + suffix)
            if os.path.lexists(path):
                if os.path.islink(path) or not os.path.isfile(path):
                    raise RetireError("%s is not a regular file; the window moves regular files only" % path)
                found.append(path)
    return found


def plan_window(spec):
    """What the window would do, read-only: the check mode result and the diff. Raises StagedFileError early."""
    running = []
    if spec.stop:
        entries = project_entries(spec.compose["project"], spec.stop["services"], data_dir=spec.compose["data_dir"])
        running = sorted({e["service"] for e in entries if e["running"]})
    retired = retire_paths(spec.retire) if spec.retire else []
    prepared = None
    if spec.merge and spec.merge.get("prepared_dir"):
        prepared = "none" if not os.path.isdir(spec.merge["prepared_dir"]) else (
            check_prepared_copy(spec.merge["prepared_dir"]) or "ready")
    result = {
        "stop": running,
        "start": list(spec.start["services"]) if spec.start else [],
        "rollback_point": {"snapshot_id": spec.rollback_point["snapshot"],
                           "base": spec.rollback_point.get("base")},
        "merge": {"target": spec.merge["target"], "sources": len(spec.merge["sources"]),
                  "prepared": prepared} if spec.merge else None,
        "retire": retired,
        "install": [item["path"] for item in spec.install],
    }
    changed = True   # a rollback point is always taken
    before = "".join("running: %s\n" % name for name in running) + "".join("%s\n" % p for p in retired)
    after = ("".join("started: %s\n" % name for name in result["start"])
             + "".join("%s -> %s/\n" % (p, spec.retire["dest"]) for p in retired)
             + "".join("installed: %s\n" % p for p in result["install"])
             + "rollback point: %s\n" % spec.rollback_point["snapshot"])
    diff = {"before_header": "before the downtime window", "before": before,
            "after_header": "after the downtime window", "after": after}
    return changed, result, diff


# ---------------------------------------------------------------------------------------------- the steps

class Journal(object):
    """The window's progress, rewritten (tmp + rename) after each step; no fsync: it is a record, not a guarantee."""

    def __init__(self, path, snapshot_id):
        self.path = path
        self.state = {"snapshot_id": snapshot_id, "step": None, "done": [], "stopped": [], "rollback_point": None,
                      "started": time.time(), "updated": None}

    def write(self, **changes):
        self.state.update(changes, updated=time.time())
        if not self.path:
            return
        _ensure_dir(os.path.dirname(self.path))
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.state, handle, sort_keys=True)
        os.replace(tmp, self.path)


def known_digests(manifest, directory):
    """{path: sha256 or None} of the files directly in `directory` per the snapshot's manifest: every file it
    stored, and None for a database's -wal that it did not find (known absent), so the prepared-merge check needs to
    read nothing again."""
    directory = os.path.normpath(directory)
    files = {e["path"]: e["sha256"] for e in manifest["entries"]
             if e["type"] == "file" and e.get("sha256") and os.path.dirname(e["path"]) == directory}
    known = dict(files)
    for path in files:
        if not path.endswith(SIDECARS) and path + "-wal" not in files:
            known[path + "-wal"] = None
    return known


def move_out(path, dest):
    """Move one file into `dest` (owner-only first: retired databases hold password hashes and tokens)."""
    os.chmod(path, 0o600)
    target = os.path.join(dest, os.path.basename(path))
    if os.path.lexists(target):
        raise RetireError("%s already exists; the window never overwrites a retired file" % target)
    try:
        os.rename(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(path, target)     # another filesystem: copy, sync, then remove the original
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    return target


def _ensure_dir(path):
    """`path` and every missing parent, each created owner-only (os.makedirs applies its mode to the leaf only)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)


class Window(object):
    """One run of the window: the steps in order, the journal, the result, and what to undo before the rollback
    point exists."""

    def __init__(self, spec, move=os.replace):
        self.spec, self.move = spec, move
        self.journal = Journal(spec.journal, spec.rollback_point["snapshot"])
        self.steps, self.running_before, self.manifest, self.entries = [], [], None, None
        self.result = {"changed": False, "steps": self.steps, "stopped": [], "layers": [], "rollback_point": None,
                       "snapshot_path": None, "merge": None, "retired": [], "installed": [], "started": [],
                       "recreated": [], "ready": {}, "downtime_started": None, "downtime_ended": None,
                       "downtime_seconds": 0.0}

    def run(self):
        problems = staged_problems(self.spec.install)
        if problems:
            raise StagedFileError("; ".join(problems) + ". Nothing was changed, no service was stopped: run again "
                                  "(the edit is planned afresh)", self.result)
        # The prepared merge's kept copy is private to the run: checked here, before the stop, it need not be hashed
        # in the window. A copy that fails the check is found stale again by the merge, which then starts afresh.
        prepared_dir = self.spec.merge.get("prepared_dir") if self.spec.merge else None
        copy_checked = bool(prepared_dir) and os.path.isdir(prepared_dir) and check_prepared_copy(prepared_dir) is None
        if self.spec.compose:
            services = sorted(set(self.spec.stop["services"] if self.spec.stop else [])
                              | set(self.spec.start["services"] if self.spec.start else []))
            self.entries = project_entries(self.spec.compose["project"], services)
            stop = set(self.spec.stop["services"]) if self.spec.stop else set()
            self.running_before = sorted({e["service"] for e in self.entries if e["running"] and e["service"] in stop})
        self._step("stop", self._stop, undo=True)
        self._step("rollback_point", self._rollback_point, undo=True)
        self._step("merge", lambda: self._merge(copy_checked), undo=False)
        self._step("retire", self._retire, undo=False)
        self._step("install", self._install, undo=False)
        self._step("start", self._start, undo=False)
        self.journal.write(step=None)
        return self.result

    def _step(self, name, work, undo):
        """Run one step, timed and journaled. With `undo` (the steps before the rollback point exists, when nothing
        has been changed yet) a failure starts again the services this window stopped."""
        started = time.monotonic()
        self.journal.write(step=name)
        try:
            work()
        except (WindowError, ComposeServicesError, MergeError, SnapshotError, OSError) as exc:
            message = "%s: %s" % (name, exc)
            if undo:
                restarted = self._undo_stop()
                message += ". Nothing was changed" + (
                    "" if not self.running_before else
                    "; the stopped services were started again" if restarted is True else
                    "; starting the stopped services again failed too: %s" % restarted)
            self.result["failed_step"] = name
            raise StepError(name, message, self.result, changed=not undo)
        self.steps.append({"step": name, "seconds": round(time.monotonic() - started, 3)})
        self.journal.write(done=[s["step"] for s in self.steps])

    def _undo_stop(self):
        """Start again the services that ran before the stop (nothing was changed yet, so compose recreates none
        of them); True, or the error text. A stop that failed half-way has stopped some of them: all are asked."""
        if not self.running_before:
            return True
        compose = self.spec.compose
        timeout, interval = ((self.spec.start["timeout"], self.spec.start["poll_interval"]) if self.spec.start
                             else (120, 0.1))
        try:
            start_services(compose["command"], compose["project_dir"], compose["project"], self.running_before,
                           compose.get("files"), timeout=timeout, poll_interval=interval)
        except (ComposeServicesError, OSError) as exc:
            return str(exc)
        self.result["started_again"] = list(self.running_before)
        return True

    def _stop(self):
        if not self.running_before:
            return
        self.result["downtime_started"] = time.time()
        compose = self.spec.compose
        done = stop_services(compose["project"], self.spec.stop["services"], self.spec.stop["depends_on"],
                             self.spec.stop["timeout"], data_dir=compose["data_dir"])
        self.result.update(stopped=done["stopped"], layers=done["layers"])
        self.journal.write(stopped=done["stopped"])

    def _rollback_point(self):
        point = self.spec.rollback_point
        plan = plan_snapshot(point["backup_root"], paths=point["paths"], snapshot=point["snapshot"],
                             sqlite_mode="copy", label=point.get("label"), base=point.get("base"))
        taken = apply_snapshot(plan, fsync=True, verify=True)
        self.result.update(rollback_point=taken["snapshot_id"], snapshot_path=taken["snapshot_path"], changed=True)
        self.result["rollback_point_files"] = {key: taken.get(key) for key in
                                               ("files", "bytes", "linked", "linked_bytes", "copied_bytes")}
        self.manifest = load_manifest(taken["snapshot_path"])
        self.journal.write(rollback_point=taken["snapshot_id"])

    def _merge(self, copy_checked):
        merge = self.spec.merge
        if not merge:
            return
        known = known_digests(self.manifest, os.path.dirname(os.path.abspath(merge["target"])))
        plan, apply, prepared, _show = plan_call(merge["target"], merge["sources"], False, merge.get("prepared_dir"),
                                                 self.spec.merge_options(), known=known, copy_checked=copy_checked)
        with plan:
            outcome = apply() if plan.changed else dict(plan.result(), **prepared)
        outcome["changed"] = plan.changed
        self.result["merge"] = outcome
        self.result["changed"] = self.result["changed"] or plan.changed

    def _retire(self):
        retire = self.spec.retire
        if not retire:
            return
        paths = retire_paths(retire)
        if paths:
            _ensure_dir(retire["dest"])
        for path in paths:
            self.result["retired"].append(move_out(path, retire["dest"]))
            self.result["changed"] = True

    def _install(self):
        problems = staged_problems(self.spec.install)
        if problems:
            raise StagedFileError("; ".join(problems))
        # Env files first, compose files last, as compose_env installs them.
        for item in sorted(self.spec.install, key=lambda i: i["kind"] == "compose"):
            self.move(staged_path(item["path"]), item["path"])
            self.result["installed"].append(item["path"])
            self.result["changed"] = True

    def _start(self):
        if self.spec.start:
            compose = self.spec.compose
            # The look before the stop, with what the stop stopped marked so: no docker call before the `up`.
            stopped = set(self.result["stopped"])
            entries = [dict(e, running=e["running"] and e["service"] not in stopped) for e in self.entries]
            done = start_services(compose["command"], compose["project_dir"], compose["project"],
                                  self.spec.start["services"], compose.get("files"), timeout=self.spec.start["timeout"],
                                  poll_interval=self.spec.start["poll_interval"], entries=entries)
            self.result.update(started=done["started"], recreated=done["recreated"], ready=done["ready"])
            self.result["changed"] = self.result["changed"] or done["changed"]
        if self.result["downtime_started"] is not None:
            self.result["downtime_ended"] = time.time()
            self.result["downtime_seconds"] = round(self.result["downtime_ended"] - self.result["downtime_started"], 3)


def window_diff(result):
    """The diff of a window that ran: the services and files before and after, as text."""
    before = ("".join("running: %s\n" % name for name in sorted(result["stopped"]))
              + "".join("in the data directory: %s\n" % os.path.basename(p) for p in result["retired"]))
    after = ("".join("started: %s\n" % name for name in result["started"])
             + "".join("retired: %s\n" % p for p in result["retired"])
             + "".join("installed: %s\n" % p for p in result["installed"])
             + ("rollback point: %s\n" % result["rollback_point"] if result["rollback_point"] else ""))
    return {"before_header": "before the downtime window", "before": before,
            "after_header": "after the downtime window", "after": after}


def run_window(spec, move=os.replace):
    """Run the window; returns the result, or raises StagedFileError (nothing done) or StepError."""
    return Window(spec, move).run()


__all__ = ["STEPS", "Journal", "RetireError", "StagedFileError", "StepError", "Window", "WindowError", "WindowSpec",
           "known_digests", "move_out", "plan_window", "retire_paths", "run_window", "staged_problems", "window_diff"]
