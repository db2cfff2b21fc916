#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: one consolidation run at a time per host, with stale-lock recovery.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: Take or release the consolidation run lock on a host, recovering stale locks
description:
  - O(state=present) creates the lock file atomically (whole or not at all, mode C(0600), JSON content naming
    the run and its owner). A lock of the same O(run_id) is already ours and is left alone.
  - A lock of another run is stale when its owner's controller is this machine and the controller process is
    gone (or is a zombie, or its pid now belongs to a process with another start time), or when the lock is
    older than O(stale_after). A stale lock is replaced with a compare-and-swap and reported in
    RV(stale_lock_recovered); a live one makes the task fail with one sentence that names the run holding it.
  - O(state=absent) removes the lock of O(run_id); a missing lock is nothing to do; another run's lock is
    refused unless O(force=true).
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  check_mode:
    details: Reports what would happen (take, keep, recover, release, refuse) and writes nothing.
  diff_mode:
    details: The lock file's content before and after.
  idempotent:
    details: Taking a lock this run already holds, or releasing a lock that is gone, reports changed=false.
options:
  path:
    description: The lock file. Its directory is created (mode C(0700)) when missing.
    type: path
    required: true
  state:
    description: C(present) takes the lock, C(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description: Identifier of this run (the same value for the whole play).
    type: str
    required: true
  owner:
    description:
      - Who runs the play, as returned by the C(zoe_run_owner) lookup, stored in the lock.
      - Keys used to judge staleness are C(controller) (host name), C(pid) and C(pid_start) (start time of the
        C(ansible-playbook) process from C(/proc/<pid>/stat)); C(user) and C(started) are shown in messages.
    type: dict
    default: {}
  stale_after:
    description: Age in seconds after which any lock is stale, whoever owns it.
    type: int
    default: 21600
  force:
    description: With O(state=absent), remove the lock even when it belongs to another run.
    type: bool
    default: false
notes:
  - Judge and replace happen under an C(flock) on the lock's directory, so two runs that find the same stale
    lock cannot both take it.
"""

EXAMPLES = r"""
- name: Take the run lock
  run_lock:
    path: "{{ zoe_root }}/.zoe-consolidate.lock"
    run_id: "{{ zoe_run_id }}"
    owner: "{{ lookup('zoe_run_owner') }}"
  register: preflight_lock

- name: Release the run lock
  run_lock:
    path: "{{ zoe_root }}/.zoe-consolidate.lock"
    run_id: "{{ zoe_run_id }}"
    state: absent
"""

RETURN = r"""
operation:
  description: What was (or in check mode would be) done (named so because C(action) is reserved in results).
  returned: always
  type: str
  sample: create
  choices: [create, keep, replace, remove, none]
path:
  description: The lock file.
  returned: always
  type: str
  sample: /srv/zoe/.zoe-consolidate.lock
lock:
  description: The lock's content after the task (null when released or absent).
  returned: always
  type: dict
  sample:
    run_id: 20250101T120000-ab12
    host: zoe-pi
    acquired_at: "2025-01-01T12:00:00Z"
    acquired_epoch: 1735732800
    owner: {controller: laptop, pid: 4242, pid_start: 1234567, user: ops, started: "2025-01-01T11:59:58Z"}
stale_lock_recovered:
  description: The stale lock that was replaced, with the reason it was judged stale; null otherwise.
  returned: always
  type: dict
  sample:
    reason: controller process 4242 on laptop is gone
    lock: {run_id: 20241231T090000-cd34, owner: {controller: laptop, pid: 4242}}
    content: null
msg:
  description: One sentence on what happened.
  returned: always
  type: str
  sample: lock /srv/zoe/.zoe-consolidate.lock taken
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.run_lock import DEFAULT_STALE_AFTER, STATE_CHOICES, RunLockError, apply_lock, plan_lock


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        state=dict(type="str", choices=list(STATE_CHOICES), default="present"),
        run_id=dict(type="str", required=True),
        owner=dict(type="dict", default={}),
        stale_after=dict(type="int", default=DEFAULT_STALE_AFTER),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["run_id"].strip():
        module.fail_json(msg="O(run_id) must not be empty")
    if p["stale_after"] <= 0:
        module.fail_json(msg="O(stale_after) must be a positive number of seconds, not %d" % p["stale_after"])
    try:
        plan = plan_lock(p["path"], p["state"], p["run_id"], owner=p["owner"], stale_after=p["stale_after"],
                         force=p["force"])
        if plan.changed and not module.check_mode:
            apply_lock(plan)
    except RunLockError as exc:
        module.fail_json(msg=str(exc))
    result = plan.result()
    if module._diff:
        result["diff"] = [plan.diff()]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
