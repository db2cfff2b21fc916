# -*- coding: utf-8 -*-
# zoe-consolidate: who is running this play, for the run lock on the host.

from __future__ import annotations

DOCUMENTATION = r"""
name: zoe_run_owner
author: zoe-consolidate
version_added: "1.0.0"
short_description: The controller, process and user that run this play, for the run lock
description:
  - Returns one dict describing the C(ansible-playbook) (or C(ansible)) main process on the controller,
    which the C(run_lock) module stores in the lock so that a lock left behind by a killed run can be
    recognised as stale.
  - Lookups run in a worker process forked from the main process (and sometimes in the main process
    itself); the main process is found by walking up C(/proc) while the parent has the same command line,
    since forked workers keep the main process's command line.
  - C(started) is derived from the main process's start time, so every call in a run returns the same dict.
options: {}
notes:
  - Linux controllers (reads C(/proc)); elsewhere C(pid) is the parent process and C(pid_start) is null.
"""

EXAMPLES = r"""
- name: Take the run lock
  run_lock:
    path: "{{ zoe_root }}/.zoe-consolidate.lock"
    run_id: "{{ zoe_run_id }}"
    owner: "{{ lookup('zoe_run_owner') }}"
"""

RETURN = r"""
_raw:
  description: One dict per call.
  type: list
  elements: dict
  contains:
    controller:
      description: Host name of the controller.
      type: str
    pid:
      description: Pid of the ansible-playbook main process.
      type: int
    pid_start:
      description: Its start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
      type: int
    user:
      description: The user running the play.
      type: str
    started:
      description: When the main process started, ISO 8601 UTC.
      type: str
"""

import datetime
import getpass
import os
import socket

from ansible.plugins.lookup import LookupBase


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the comm field (which may hold spaces and parentheses)."""
    with open("/proc/%d/stat" % pid) as handle:
        text = handle.read()
    return text[text.rindex(")") + 2:].split()


def _cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as handle:
        return handle.read()


def main_process(pid=None):
    """The topmost ancestor of `pid` with the same command line: the process that forked the workers."""
    pid = pid or os.getpid()
    mine = _cmdline(pid)
    while True:
        parent = int(_stat_fields(pid)[1])
        if parent <= 1:
            return pid
        try:
            if _cmdline(parent) != mine:
                return pid
        except OSError:
            return pid
        pid = parent


def start_ticks(pid):
    return int(_stat_fields(pid)[19])


def boot_time():
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return int(line.split()[1])
    raise OSError("no btime in /proc/stat")


def run_owner():
    """The owner dict of the run lock."""
    try:
        pid = main_process()
        ticks = start_ticks(pid)
        epoch = boot_time() + ticks / float(os.sysconf("SC_CLK_TCK"))
    except OSError:
        pid, ticks, epoch = os.getppid(), None, None
    started = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch else \
        datetime.datetime.now(datetime.timezone.utc)
    return {"controller": socket.gethostname(), "pid": pid, "pid_start": ticks, "user": getpass.getuser(),
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ")}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [run_owner()]
