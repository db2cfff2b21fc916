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
    Comments, commented-out services, key order, quoting style, indentation, line endings, a byte-order mark,
    anchors and C(${VAR:-default}) expressions stay byte for byte as they were; C(${...}) is never expanded.
  - The edit is planned on the controller by the C(compose_env) action plugin with PyYAML. It reads the file from
    the host, locates every value by the parser's node marks and splices the new text into the original bytes. The
    services an edit reaches are computed through anchors, aliases and C(<<) merge keys, so RV(changed_services)
    holds every service whose effective configuration changes and no other.
  - This module, on the host, receives only the sha256 of the bytes the controller read, the new bytes and the
    validation to run. It refuses a file that changed since it was read, validates, and stages or installs the new
    bytes with one atomic rename that keeps the mode and owner (standard library only).
  - Refused with one sentence, nothing written - several YAML documents in one file, a duplicate key in a mapping
    the edit touches, an alias or merge key whose edit would change a value another service must keep (named), tabs
    where YAML forbids them, an edited file that C(config -q) rejects when the original passes it.
  - O(rewrite) replaces value fragments everywhere a retired database can still be named (environment,
    healthcheck, command, entrypoint, volumes, labels, ...), not only in C(environment), because a
    healthcheck that opens a retired path re-creates an empty database and a bind mount of a missing
    file makes Docker create a directory in its place. Fragments match on file-name boundaries, so
    C(auth.db) does not match C(oauth.db) or C(auth.db.bak). Mapping keys are never rewritten.
  - "Validation: the edited file must parse to the original tree with exactly the planned values changed. Where the
    compose tool (C(docker compose) or C(docker-compose)) passes C(config -q) on the original, it must pass it on the
    edited file too (checked on a private temporary copy, in check mode too); an original it rejects, for example
    one whose C(build:) context directories are missing, is rewritten on the parse check alone."
  - In env files every value that is not being edited is masked in the diff and the results; in compose files every
    environment value that is not being edited; credentials in URLs always. The new bytes travel as a no_log option
    and no result carries file content.
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
      - In a compose file the variable must already be in the environment of every service named in O(services)
        (or of some service without O(services)); adding one is left to a person.
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
  planned:
    description:
      - Set by the action plugin, not in playbooks. One entry per file the plan looked at.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The file.
        type: path
        required: true
      kind:
        description: compose or env.
        type: str
        choices: [compose, env]
        required: true
      sha256:
        description: The sha256 of the bytes the plan was computed on; a file that differs is refused.
        type: str
        required: true
      content:
        description: The new bytes, base64; null when the file does not change.
        type: str
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  idempotent:
    description: A second run with the same options finds nothing to change and reports changed=false.
    details: >-
      Rewrites whose new value would itself be rewritten are refused, so a rerun never changes the file again.
notes:
  - The host needs only python3 (standard library); PyYAML runs on the controller.
  - Values in C(x-) extension blocks and other anchors are edited where every service that uses them wants the
    edit; with O(services), a value shared with a service not named there is refused rather than changed.
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
  description: One entry per changed value (a value shared through an alias is one entry), secrets masked.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: /opt/zoe/docker-compose.yml, line: 42, service: zoe-auth, services: [zoe-auth], section: environment,
       key: DATABASE_PATH, before: /app/data/auth.db, after: /app/data/zoe.db}
changed_services:
  description:
    - Every service whose effective configuration changes, through aliases and merge keys too, and with
      O(follow_env_files) every service that reads an edited env file or interpolates an edited variable of the
      project's C(.env).
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
  description:
    - Every file looked at (the compose file and followed env files) and whether it changed.
    - C(sha256) is the digest of the bytes the edit was planned on; C(staged_sha256), with O(stage=true), the digest
      of the staged copy (the validated edit), for installing it later (M(downtime_window) O(downtime_window.install)).
  returned: always
  type: list
  elements: dict
  sample:
    - {path: /opt/zoe/docker-compose.yml, kind: compose, changed: true, backup_file: null,
       sha256: 9f2c0d8e4b1a7c6f5e3d2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f10, staged_sha256: null}
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
    - The compose tool whose C(config -q) passed on the edited file, V(staged) when a staged copy validated earlier
      was installed, or null when only the parse check ran (see RV(validation_skipped)).
  returned: always
  type: str
  sample: docker-compose
validation_skipped:
  description: Why C(config -q) did not run on the edited compose file (no tool, or the original already fails it).
  returned: always
  type: str
  sample: "/opt/zoe/docker-compose.yml already fails `docker-compose config -q` before the edit: build path ..."
"""

import base64

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compose_env import (
    ComposeEnvError, PlannedFile, check_unchanged, discard_staged, install, sha256_of, stage, staged_path, staged_ready,
    validate)

SCOPES = ["environment", "healthcheck", "command", "entrypoint", "volumes", "labels", "env_file", "other", "all"]


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
            scope=dict(type="list", elements="str", choices=SCOPES, default=["all"]),
            follow_env_files=dict(type="bool", default=False),
            backup=dict(type="bool", default=False),
            validate=dict(type="str", choices=["auto", "always", "never"], default="auto"),
            stage=dict(type="bool", default=False),
            planned=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                kind=dict(type="str", choices=["compose", "env"], required=True),
                sha256=dict(type="str", required=True),
                content=dict(type="str", no_log=True),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params["planned"]:
        module.fail_json(msg="compose_env plans its edit on the controller: run it as a task (its action plugin), "
                             "not as a bare module")
    files = [PlannedFile(item["path"], item["kind"], item["sha256"],
                         None if item["content"] is None else base64.b64decode(item["content"]))
             for item in params["planned"]]
    staged, backups = [], {}
    try:
        check_unchanged(files)
        ready = set() if params["stage"] else staged_ready(files)
        changed = any(item.changed for item in files)
        validated, skipped = ("staged", None) if files[0].path in ready else validate(files, params["validate"])
        if not module.check_mode:
            if params["stage"]:
                staged = stage(files)
            elif changed:
                backups = install(module, files, backup=params["backup"], ready=ready)
            else:
                discard_staged(files)
    except (ComposeEnvError, OSError) as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    staged_for = {item.path for item in files if staged_path(item.path) in staged}
    result = dict(changed=changed, staged=staged, validated_with=validated, validation_skipped=skipped,
                  files=[dict(path=item.path, kind=item.kind, changed=item.changed, backup_file=backups.get(item.path),
                              sha256=item.sha256,
                              staged_sha256=sha256_of(item.after) if item.path in staged_for else None)
                         for item in files])
    if backups.get(files[0].path):
        result["backup_file"] = backups[files[0].path]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
