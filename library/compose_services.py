#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: which containers write the data directory, and which compose tool manages them.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_services
short_description: Find the compose tool and the containers that write a data directory, read-only
description:
  - Detects the compose tool, C(docker compose) (v2 plugin) first, then the standalone C(docker-compose) (v1),
    and returns the command to use as a list.
  - Lists every container with C(docker ps -a) and C(docker inspect) and tells which ones bind-mount
    O(data_dir) (or a path inside it), which of those are running services of the compose project
    (RV(writers)), and which are running writers that compose cannot stop (RV(strays)) - containers started
    by hand, one-off C(compose run) containers, containers of other projects or of services no longer in
    the compose files.
  - An unreachable Docker engine is reported (RV(docker_reachable)=false with RV(docker_error)), not a failure.
extends_documentation_fragment:
  - action_common_attributes
  - zoe.read_only
attributes:
  check_mode:
    details: Read-only; runs unchanged in check mode so a dry run plans against the real containers.
options:
  project_dir:
    description: Directory of the compose project (where its compose file and C(.env) live).
    type: path
    required: true
  data_dir:
    description: The data directory whose writers are wanted; bind-mount sources are compared as real paths.
    type: path
    required: true
  project:
    description:
      - Compose project name. Default C(COMPOSE_PROJECT_NAME) from C(<project_dir>/.env), else the name of
        O(project_dir) normalised as compose does (lower case, only C([a-z0-9_-])).
    type: str
  compose_files:
    description: Compose files to pass with C(-f); default the tool's own discovery in O(project_dir).
    type: list
    elements: path
  quick:
    description:
      - Skip detecting the compose tool and listing the services of the compose files (each costs a compose
        start-up, about a second with the standalone v1); for polling loops that only need the containers' state.
      - RV(compose_command), RV(compose_version) and RV(services) are then null, and a container of this project
        whose service is no longer in the files counts as a service rather than a stray.
    type: bool
    default: false
notes:
  - Talks to Docker through the docker CLI only; no Python library is needed on the host.
"""

EXAMPLES = r"""
- name: Find the writers of the data directory
  compose_services:
    project_dir: "{{ zoe_root }}"
    data_dir: "{{ zoe_root }}/data"
  register: preflight_compose

- name: Refuse to go on while a writer compose cannot stop is running
  ansible.builtin.assert:
    that: preflight_compose.strays | length == 0
    fail_msg: "containers not managed by compose write {{ zoe_root }}/data: {{ preflight_compose.strays }}"

- name: Stop the writers
  ansible.builtin.command:
    argv: "{{ preflight_compose.compose_command + ['-p', preflight_compose.project, 'stop']
              + preflight_compose.writers }}"
    chdir: "{{ zoe_root }}"
  changed_when: true
"""

RETURN = r"""
compose_command:
  description: The compose command as a list (C([docker, compose]) or C([docker-compose])); null when neither exists.
  returned: always
  type: list
  elements: str
  sample: [docker, compose]
compose_version:
  description: Version of the compose tool; null when there is none.
  returned: always
  type: str
  sample: 2.29.7
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: zoe
project_dir:
  description: O(project_dir) as an absolute path.
  returned: always
  type: str
  sample: /srv/zoe
data_dir:
  description: O(data_dir) as a real path.
  returned: always
  type: str
  sample: /srv/zoe/data
docker_reachable:
  description: Whether C(docker info) answered.
  returned: always
  type: bool
  sample: true
docker_error:
  description: Why the engine is unreachable; null when it answered.
  returned: always
  type: str
  sample: "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
services:
  description: Service names defined by the compose files (C(config --services)); null when compose could not tell.
  returned: always
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server, zoe-ui]
services_error:
  description: Why RV(services) is null.
  returned: always
  type: str
  sample: null
containers:
  description: Every container of the engine.
  returned: always
  type: list
  elements: dict
  sample:
    - name: zoe-zoe-auth
      id: 4f1c...
      service: zoe-auth
      project: zoe
      oneoff: false
      running: true
      status: running
      health: healthy
      started_at: "2025-01-01T12:00:00.123456789Z"
      mounts_data: true
      compose_managed: true
writers:
  description: Services of the project with a running container that bind-mounts O(data_dir), sorted.
  returned: always
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server]
running_services:
  description: Every service of the project with a running container, sorted.
  returned: always
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server, zoe-ui]
strays:
  description: Running containers that bind-mount O(data_dir) but are not services of this compose project.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: sqlite-debug, id: 9a8b..., project: null, service: null}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compose_services import ComposeServicesError, probe


def main():
    argument_spec = dict(
        project_dir=dict(type="path", required=True),
        data_dir=dict(type="path", required=True),
        project=dict(type="str"),
        compose_files=dict(type="list", elements="path"),
        quick=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        result = probe(p["project_dir"], p["data_dir"], project=p["project"], compose_files=p["compose_files"],
                       quick=p["quick"])
    except ComposeServicesError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
