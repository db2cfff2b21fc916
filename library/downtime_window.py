#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: the downtime window in one call (stop, rollback point, merge, retire, install, start).

from __future__ import annotations

DOCUMENTATION = r"""
---
module: downtime_window
short_description: Stop the writers, take the rollback point, merge, retire, install the staged files, start again
description:
  - Runs the steps of a consolidation that need the writers of the data directory stopped, in one module call, so
    that the downtime holds the work and no Ansible task start-up. The steps run in this order, each skipped when
    it has nothing to do.
  - C(stop) the running containers of O(stop.services), dependents first (as M(compose_services) V(stopped)).
  - C(rollback_point) a byte copy of O(rollback_point.paths) with a sha256 manifest (as M(volume_snapshot)
    V(present) in copy mode), reusing the stored files of O(rollback_point.base) whose bytes are unchanged.
  - C(merge) the sources into the target (as M(sqlite_merge)), writing the merge prepared before the stop when the
    rollback point's digests show that every file still holds the bytes it read, else merging from scratch.
  - C(retire) the databases O(retire.names) and their C(-wal), C(-shm) and C(-journal) into O(retire.dest),
    owner-only.
  - C(install) each staged compose or env file with one rename, after checking that the file and its staged copy
    hold the bytes the prepare phase planned and validated.
  - C(start) O(start.services) with C(compose up -d --no-deps) and wait until each is healthy (as
    M(compose_services) V(started)).
  - Before the stop, a staged file that is not what was staged fails the task with nothing changed.
    A failure in the stop or the rollback point starts the stopped services again; nothing was changed.
    A failure from the merge on returns RV(rollback_point) and RV(failed_step) and leaves the services as they
    are, for the caller to restore the rollback point.
  - O(journal) is rewritten after each step with the step in progress and the steps done.
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  check_mode:
    details: Lists the services it would stop and start, the files it would retire and install, and whether a
      prepared merge is ready; changes nothing.
  diff_mode:
    details: The services, retired files and installed files before and after, as text.
  idempotent:
    support: partial
    details:
      - Every call takes a new rollback point unless O(rollback_point.snapshot) names an existing one; the steps
        after it change nothing when there is nothing left to merge, retire or install, and the services are
        running.
options:
  compose:
    description: The compose project whose services the window stops and starts. Without it no service is touched.
    type: dict
    suboptions:
      project:
        description: The compose project name.
        type: str
        required: true
      project_dir:
        description: The project directory (where the compose file and its C(.env) live).
        type: path
        required: true
      data_dir:
        description: The data directory; after the stop no running container may mount it.
        type: path
        required: true
      command:
        description: The compose command as a list, C([docker, compose]) or C([docker-compose]).
        type: list
        elements: str
        required: true
      files:
        description: Compose files passed with C(-f); default the tool's own discovery.
        type: list
        elements: path
  stop:
    description: The services to stop before the rollback point.
    type: dict
    suboptions:
      services:
        description: Services to stop; those not running are left alone.
        type: list
        elements: str
        default: []
      depends_on:
        description: The services each service depends on, for stopping in layers (dependents first).
        type: dict
        default: {}
      timeout:
        description: Seconds a container is given to exit after SIGTERM (C(docker stop -t)).
        type: int
        default: 10
  start:
    description: The services to start at the end, in this order.
    type: dict
    suboptions:
      services:
        description: Services to start (recreated by compose where their configuration changed).
        type: list
        elements: str
        default: []
      timeout:
        description: Seconds to wait until every one is running and healthy.
        type: int
        default: 120
      poll_interval:
        description: Seconds between two looks at the containers while waiting.
        type: float
        default: 0.1
  rollback_point:
    description: The snapshot taken once the writers stopped, before anything changes.
    type: dict
    required: true
    suboptions:
      backup_root:
        description: Directory of the snapshots (outside O(rollback_point.paths)).
        type: path
        required: true
      snapshot:
        description: The id of the rollback point.
        type: str
        required: true
      paths:
        description: Files and directories to snapshot.
        type: list
        elements: path
        required: true
      base:
        description: An earlier snapshot in O(rollback_point.backup_root) whose stored files are hard-linked where
          the live file still hashes to them (the live snapshot taken before the stop).
        type: str
      label:
        description: Free text stored in the manifest.
        type: str
  merge:
    description: The merge of O(merge.sources) into O(merge.target); options as M(sqlite_merge).
    type: dict
    suboptions:
      target:
        description: The primary database.
        type: path
        required: true
      sources:
        description: The databases to fold into it.
        type: list
        elements: path
        required: true
      keys:
        description: Natural keys per table.
        type: dict
        default: {}
      references:
        description: Columns pointing at another table without a declared foreign key.
        type: dict
        default: {}
      table_map:
        description: Source tables merged under another name.
        type: dict
        default: {}
      on_conflict:
        description: Which version of a conflicting row the target keeps (both are recorded).
        type: str
        choices: [keep_target, keep_source, newest, fail]
        default: keep_target
      clash_policy:
        description: Same-named tables whose keys do not correspond.
        type: str
        choices: [prefix, refuse]
        default: prefix
      prepared_dir:
        description: Where the merge prepared before the stop was kept (M(sqlite_merge) O(sqlite_merge.prepare)).
        type: path
  retire:
    description: The merged databases to move out of the data directory.
    type: dict
    suboptions:
      data_dir:
        description: The data directory.
        type: path
        required: true
      names:
        description: File names of the databases in O(retire.data_dir); their sidecars go with them.
        type: list
        elements: str
        required: true
      dest:
        description: Directory they move into (created C(0700)); every moved file is made C(0600).
        type: path
        required: true
  install:
    description: The staged compose and env files (M(compose_env) O(compose_env.stage)) to move into place.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The compose or env file.
        type: path
        required: true
      kind:
        description: V(env) files are installed before V(compose) files.
        type: str
        choices: [compose, env]
        required: true
      sha256:
        description: sha256 of the bytes the edit was planned on.
        type: str
        required: true
      staged_sha256:
        description: sha256 of the staged copy (the validated edit).
        type: str
        required: true
  journal:
    description: A JSON file rewritten after each step (the step in progress, the steps done, the rollback point).
    type: path
notes:
  - Talks to Docker through the docker CLI; standard library only on the host.
"""

EXAMPLES = r"""
- name: Run the downtime window
  downtime_window:
    compose:
      project: zoe
      project_dir: /srv/zoe
      data_dir: /srv/zoe/data
      command: [docker, compose]
    stop:
      services: [zoe-auth, zoe-core]
      depends_on: {zoe-auth: [zoe-core]}
    start:
      services: [zoe-core, zoe-auth]
    rollback_point:
      backup_root: /srv/zoe-backups
      snapshot: 20261204T120000Z-abc123
      paths: [/srv/zoe/data, /srv/zoe/docker-compose.yml]
      base: 20261204T115950Z-def456
    merge:
      target: /srv/zoe/data/zoe.db
      sources: [/srv/zoe/data/auth.db]
      keys: {users: [username]}
      prepared_dir: /srv/zoe-backups/prepared-merge
    retire:
      data_dir: /srv/zoe/data
      names: [auth.db]
      dest: /srv/zoe-backups/retired/20261204T120000Z-abc123
    install:
      - path: /srv/zoe/docker-compose.yml
        kind: compose
        sha256: 9f2c0d8e4b1a7c6f5e3d2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f10
        staged_sha256: 0a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556677889900aabbccddeef
    journal: /srv/zoe-backups/windows/20261204T120000Z-abc123.json
  register: consolidate_register_window
"""

RETURN = r"""
steps:
  description: The steps that ran, in order, with their wall time.
  returned: always
  type: list
  elements: dict
  sample: [{step: stop, seconds: 0.61}, {step: rollback_point, seconds: 0.22}, {step: merge, seconds: 0.31}]
failed_step:
  description: The step that failed.
  returned: failure
  type: str
  sample: merge
stopped:
  description: The services stopped.
  returned: always
  type: list
  elements: str
  sample: [zoe-auth, zoe-core]
layers:
  description: The stop's layers (dependents first).
  returned: always
  type: list
  elements: list
  sample: [[zoe-auth, mem-agent], [zoe-core]]
started_again:
  description: The services started again after a failure before the rollback point.
  returned: when a failure before the rollback point stopped services
  type: list
  elements: str
  sample: [zoe-core]
rollback_point:
  description: The id of the rollback point, once taken (also on failure).
  returned: always
  type: str
  sample: 20261204T120000Z-abc123
snapshot_path:
  description: Its directory.
  returned: always
  type: str
  sample: /srv/zoe-backups/20261204T120000Z-abc123
rollback_point_files:
  description: Files and bytes of the rollback point, and how many were linked from the base or copied.
  returned: when the rollback point was taken
  type: dict
  sample: {files: 45, bytes: 6291456, linked: 40, linked_bytes: 6000000, copied_bytes: 291456}
merge:
  description: The merge's accounting as M(sqlite_merge) returns it (RV(sqlite_merge.prepared) says whether the
    prepared merge was written), or null without O(merge).
  returned: always
  type: dict
  sample: {prepared: used, totals: {source_rows: 13, inserted: 10, identical: 2, conflicts: 1}}
retired:
  description: Where each retired file went.
  returned: always
  type: list
  elements: str
  sample: [/srv/zoe-backups/retired/20261204T120000Z-abc123/auth.db]
installed:
  description: The compose and env files replaced by their staged copies.
  returned: always
  type: list
  elements: str
  sample: [/srv/zoe/.env, /srv/zoe/docker-compose.yml]
started:
  description: The services whose container was created or started.
  returned: always
  type: list
  elements: str
  sample: [zoe-auth, zoe-core]
recreated:
  description: The services whose container compose recreated (a changed configuration).
  returned: always
  type: list
  elements: str
  sample: [zoe-auth, zoe-core]
ready:
  description: How each started service was seen ready (healthy, probed, running).
  returned: always
  type: dict
  sample: {zoe-core: probed, zoe-auth: probed}
downtime_started:
  description: Epoch seconds of the stop's start, null when no service was stopped.
  returned: always
  type: float
  sample: 1796385600.12
downtime_ended:
  description: Epoch seconds when every started service was ready, null when no service was stopped.
  returned: always
  type: float
  sample: 1796385603.87
downtime_seconds:
  description: The window as the module measured it (0 when no service was stopped).
  returned: always
  type: float
  sample: 3.75
plan:
  description: In check mode, what the window would do (services to stop and start, files to retire and install,
    the prepared merge's state).
  returned: check mode
  type: dict
  sample: {stop: [zoe-core], start: [zoe-core], retire: [/srv/zoe/data/auth.db], install: [/srv/zoe/.env],
           merge: {prepared: ready}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.downtime_window import (StagedFileError, StepError, WindowError, WindowSpec, plan_window,
                                                  run_window, window_diff)
from ansible.module_utils.sqlite_merge import CLASH_POLICY_CHOICES, ON_CONFLICT_CHOICES


def argument_spec():
    return dict(
        compose=dict(type="dict", options=dict(
            project=dict(type="str", required=True),
            project_dir=dict(type="path", required=True),
            data_dir=dict(type="path", required=True),
            command=dict(type="list", elements="str", required=True),
            files=dict(type="list", elements="path"),
        )),
        stop=dict(type="dict", options=dict(
            services=dict(type="list", elements="str", default=[]),
            depends_on=dict(type="dict", default={}),
            timeout=dict(type="int", default=10),
        )),
        start=dict(type="dict", options=dict(
            services=dict(type="list", elements="str", default=[]),
            timeout=dict(type="int", default=120),
            poll_interval=dict(type="float", default=0.1),
        )),
        rollback_point=dict(type="dict", required=True, options=dict(
            backup_root=dict(type="path", required=True),
            snapshot=dict(type="str", required=True),
            paths=dict(type="list", elements="path", required=True),
            base=dict(type="str"),
            label=dict(type="str"),
        )),
        merge=dict(type="dict", options=dict(
            target=dict(type="path", required=True),
            sources=dict(type="list", elements="path", required=True),
            keys=dict(type="dict", default={}, no_log=False),
            references=dict(type="dict", default={}),
            table_map=dict(type="dict", default={}),
            on_conflict=dict(type="str", choices=list(ON_CONFLICT_CHOICES), default="keep_target"),
            clash_policy=dict(type="str", choices=list(CLASH_POLICY_CHOICES), default="prefix"),
            prepared_dir=dict(type="path"),
        )),
        retire=dict(type="dict", options=dict(
            data_dir=dict(type="path", required=True),
            names=dict(type="list", elements="str", required=True),
            dest=dict(type="path", required=True),
        )),
        install=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True),
            kind=dict(type="str", choices=["compose", "env"], required=True),
            sha256=dict(type="str", required=True),
            staged_sha256=dict(type="str", required=True),
        )),
        journal=dict(type="path"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    if (params["stop"] or params["start"]) and not params["compose"]:
        module.fail_json(msg="O(stop) and O(start) need O(compose): the project whose services they name")
    spec = WindowSpec(**params)
    try:
        if module.check_mode:
            changed, plan, diff = plan_window(spec)
            result = dict(changed=changed, plan=plan)
            if module._diff:
                result["diff"] = [diff]
        else:
            result = run_window(spec, move=module.atomic_move)
            if module._diff:
                result["diff"] = [window_diff(result)]
    except StagedFileError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__, **exc.result)
    except StepError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__, host_changed=exc.changed, **exc.result)
    except WindowError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
