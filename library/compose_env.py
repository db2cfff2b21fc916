#!/usr/bin/python
# -*- coding: utf-8 -*-
# Set, remove and rewrite environment variables (and retired paths) in compose files and env files,
# changing only the bytes of the values concerned.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_env
short_description: Set, remove and rewrite environment values in compose files and env files, byte-exact
description:
  - Edits a docker-compose file or an env file in place and changes nothing but the values concerned.
    Comments, commented-out services, key order, quoting style, indentation, blank lines, anchors and
    C(${VAR:-default}) expressions stay byte for byte as they were; C(${...}) is never expanded.
  - The file is not re-emitted by a YAML library. A scanner written for the YAML subset of compose files
    (standard library only, so the module runs on a bare system python3) locates every scalar with its
    line, columns, quoting style and path, and each change is spliced into the original text in the
    scalar's own quoting style. YAML it does not understand, tab indentation and unbalanced quotes or
    brackets are refused with a message naming the line, and the file is left untouched.
  - O(rewrite) replaces value fragments everywhere a retired database can still be named (environment,
    healthcheck, command, entrypoint, volumes, labels, ...), not only in C(environment), because a
    healthcheck that opens a retired path re-creates an empty database and a bind mount of a missing
    file makes Docker create a directory in its place. Fragments match on file-name boundaries, so
    C(auth.db) does not match C(oauth.db) or C(auth.db.bak). Mapping keys are never rewritten.
  - When a compose tool is installed (C(docker compose) or C(docker-compose)), the edited file is checked
    with C(config -q) on a private temporary copy before the original is replaced, in check mode too.
  - Values that look like secrets are masked in the diff, the changes list and messages.
options:
  path:
    description: The compose file or env file to edit.
    type: path
    required: true
  file_type:
    description:
      - What O(path) is. V(auto) takes C(.yml)/C(.yaml) as compose, C(.env)/C(*.env) as env file and
        sniffs anything else.
    type: str
    choices: [auto, compose, env]
    default: auto
  services:
    description:
      - Limit the edits to these services of a compose file. Without it every service and the
        C(x-) extension blocks (anchors) are edited.
      - A service named here that does not exist is an error.
    type: list
    elements: str
    default: []
  set:
    description:
      - >-
        Variables to set, name -> value. An existing entry is updated in its own form (list C(- KEY=value)
        or map C(KEY: value)) and quoting style.
      - In a compose file a variable missing from a service named in O(services) is appended to that
        service's environment (created in the file's usual form when the service has none). Without
        O(services) only existing entries are updated, and a variable found nowhere is an error.
      - In an env file a missing variable is appended as C(KEY=value).
    type: dict
    default: {}
  unset:
    description: Variables to remove (the whole entry line, with its comment).
    type: list
    elements: str
    default: []
  rewrite:
    description:
      - Value fragments to replace, old -> new, for example C(/app/data/auth.db) -> C(/app/data/zoe.db)
        or C(auth.db) -> C(zoe.db). Matching respects file-name boundaries; one pass, longest fragment
        first. A new value that is itself rewritten is refused (the file would change on every run).
    type: dict
    default: {}
  keys:
    description:
      - Limit O(rewrite) to environment variables with these names (in compose environments and env
        files). When given, values outside environments are not rewritten.
    type: list
    elements: str
    default: []
  scope:
    description:
      - Where O(rewrite) applies in a compose file, by the service key a value sits under.
        V(all) is every value in the file; V(other) is everything not in a listed section
        (image, ports, top-level keys, ...).
    type: list
    elements: str
    choices: [environment, healthcheck, command, entrypoint, volumes, labels, env_file, other, all]
    default: [all]
  follow_env_files:
    description:
      - Also apply O(set) (updates only), O(unset) and O(rewrite) to the C(env_file:) entries of the
        selected services, resolved against the compose file's directory.
    type: bool
    default: false
  backup:
    description: Keep a timestamped copy of every file before it is changed (as M(ansible.builtin.copy) does).
    type: bool
    default: false
  validate:
    description:
      - Run C(config -q) of the compose tool on the edited compose file before it replaces the original.
        V(auto) validates when a tool is installed, V(always) fails when none is, V(never) skips it.
    type: str
    choices: [auto, always, never]
    default: auto
  stage:
    description:
      - Write the edited text, validated, to a staged copy beside each changed file (C(.NAME.zoe-staged), with the
        original's mode and owner) instead of replacing the file. The originals are not touched.
      - Without O(stage), a staged copy that holds exactly the edited text is moved into place (one rename, and no
        second validation, since these bytes passed it), and a stale one is removed. Staging before the services stop
        takes the validation out of the downtime window.
    type: bool
    default: false
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  idempotent:
    description: A second run with the same options finds nothing to change and reports changed=false.
    details: >-
      Rewrites whose new value would itself be rewritten are refused, so a rerun never changes the file again.
notes:
  - Runs on the managed host with the standard library only; no YAML library is needed there.
  - An environment section added to a service that takes its keys from a merge key (C(<<)) would hide
    the merged environment, so that case is refused.
  - Anchors defined outside C(services) are only edited when O(services) is not given.
"""

EXAMPLES = r"""
- name: Point every service at zoe.db instead of the retired databases
  compose_env:
    path: /opt/zoe/docker-compose.yml
    rewrite:
      /app/data/auth.db: /app/data/zoe.db
      /app/data/sessions.db: /app/data/zoe.db
    follow_env_files: true
    backup: true

- name: Set and remove variables of one service
  compose_env:
    path: /opt/zoe/docker-compose.yml
    services: [zoe-auth]
    set:
      DATABASE_PATH: /app/data/zoe.db
    unset: [SESSIONS_DB]

- name: Rewrite only DATABASE_PATH in an env file
  compose_env:
    path: /opt/zoe/.env
    rewrite:
      auth.db: zoe.db
    keys: [DATABASE_PATH]
"""

RETURN = r"""
path:
  description: The edited file.
  returned: always
  type: str
  sample: /opt/zoe/docker-compose.yml
file_type:
  description: compose or env, as detected or given.
  returned: always
  type: str
  sample: compose
changes:
  description: One entry per changed value, secrets masked.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: /opt/zoe/docker-compose.yml, line: 42, service: zoe-auth, section: environment,
       key: DATABASE_PATH, before: /app/data/auth.db, after: /app/data/zoe.db}
changed_services:
  description: Services with at least one changed value.
  returned: always
  type: list
  elements: str
  sample: [zoe-auth, zoe-core]
changed_keys:
  description: Variable names (or section keys such as test, command, source) with a changed value.
  returned: always
  type: list
  elements: str
  sample: [DATABASE_PATH, SESSIONS_DB]
files:
  description: Every file looked at (the compose file and followed env files) and whether it changed.
  returned: always
  type: list
  elements: dict
  sample:
    - {path: /opt/zoe/docker-compose.yml, kind: compose, changed: true, changes: 5, backup_file: null}
backup_file:
  description: The backup of O(path), when O(backup) made one.
  returned: changed and backup requested
  type: str
  sample: /opt/zoe/docker-compose.yml.12345.2025-01-01@10:00:00~
staged:
  description: The staged copies written by O(stage=true).
  returned: always
  type: list
  elements: str
  sample: [/opt/zoe/.docker-compose.yml.zoe-staged]
validated_with:
  description:
    - The compose tool that validated the edited file, V(staged) when a staged copy validated earlier was installed,
      or null when not validated.
  returned: always
  type: str
  sample: docker-compose
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compose_env import (
    SCOPES, ComposeEnvError, apply_compose_env, discard_staged, plan_compose_env, stage_compose_env, staged_ready,
    validate_plan)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
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
        ),
        supports_check_mode=True,
    )
    params = module.params
    staged = []
    try:
        plan = plan_compose_env(
            params["path"], services=params["services"], set_vars=params["set"], unset=params["unset"],
            rewrite=params["rewrite"], keys=params["keys"], scope=params["scope"],
            follow_env_files=params["follow_env_files"], file_type=params["file_type"])
        ready = set() if params["stage"] else staged_ready(plan)
        validated = "staged" if plan.files[0].path in ready else validate_plan(plan, params["validate"])
        backups = {}
        if not module.check_mode:
            if params["stage"]:
                staged = stage_compose_env(plan)
            elif plan.changed:
                backups = apply_compose_env(module, plan, backup=params["backup"], ready=ready)
            else:
                discard_staged(plan)
    except (ComposeEnvError, OSError) as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    result = dict(
        staged=staged,
        changed=plan.changed,
        path=params["path"],
        file_type=plan.files[0].kind,
        changes=plan.changes,
        changed_services=plan.changed_services(),
        changed_keys=plan.changed_keys(),
        files=[dict(path=item.path, kind=item.kind, changed=item.changed, changes=len(item.changes),
                    backup_file=backups.get(item.path)) for item in plan.files],
        validated_with=validated,
    )
    if backups.get(params["path"]):
        result["backup_file"] = backups[params["path"]]
    if module._diff and plan.changed:
        result["diff"] = plan.diffs()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
