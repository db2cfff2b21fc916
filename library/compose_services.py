#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: which containers write the data directory and which compose tool manages them; stop and start them.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_services
short_description: Find the compose tool and the containers that write a data directory; stop and start services
description:
  - Detects the compose tool, C(docker compose) (v2 plugin) first, then the standalone C(docker-compose) (v1),
    and returns the command to use as a list.
  - Lists every container with C(docker ps -a) and C(docker inspect) and tells which ones bind-mount
    O(data_dir) (or a path inside it), which of those are running services of the compose project
    (RV(writers)), and which are running writers that compose cannot stop (RV(strays)) - containers started
    by hand, one-off C(compose run) containers, containers of other projects or of services no longer in
    the compose files.
  - An unreachable Docker engine is reported (RV(docker_reachable)=false with RV(docker_error)), not a failure.
  - With O(state=stopped) it stops the running containers of O(services) and returns once they have exited and
    no running container mounts O(data_dir) any more (one that does, a service not listed or a container compose
    does not manage, fails the task),
    with C(docker stop -t) O(stop_timeout) straight to the engine, one call per layer of O(depends_on) (dependents
    first; the containers of a layer stop in parallel), so neither the compose tool's start-up nor a polling loop
    is spent in the downtime.
  - With O(state=started) it runs C(compose up -d --no-deps) for O(services) (compose recreates the containers
    whose configuration changed) and, with O(wait), returns once every service has a running container that is
    healthy. Healthy is asked, not waited for; a container whose health is still C(starting) gets its own
    healthcheck command run with C(docker exec) every O(poll_interval) seconds, and one pass counts (the
    engine would run the same command only at the healthcheck's interval, 30 s on the real Zoe stack); the
    engine's C(healthy) counts too, and a container without a healthcheck counts once it runs.
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  check_mode:
    details:
      - O(state=probed) is read-only and runs unchanged in check mode, so a dry run plans against the real containers;
        so is O(state=healthy), which only runs each container's own healthcheck command.
      - O(state=stopped) and O(state=started) report what they would stop or start and change nothing.
  diff_mode:
    details: The running services among O(services) before and after (O(state=stopped) and O(state=started)).
  idempotent:
    details:
      - O(state=probed) and O(state=healthy) always return changed=false.
      - O(state=stopped) is changed only when a container of O(services) was running; O(state=started) only when
        a container of O(services) was created or started.
options:
  state:
    description:
      - V(probed) reads the compose tool and the containers (read-only).
      - V(stopped) stops the running containers of O(services).
      - V(started) brings O(services) up with compose and waits until they are healthy (O(wait)).
      - V(healthy) starts nothing and waits until every one of O(services) has a running container that is healthy,
        as V(started) waits (the engine's C(healthy), or its healthcheck command passing under C(docker exec)), and
        fails after O(timeout) seconds naming each service that is not, with its state.
    type: str
    choices: [probed, stopped, started, healthy]
    default: probed
  services:
    description:
      - The services to stop or start (O(state=stopped), O(state=started)); stop order dependents first when
        O(depends_on) is not given.
    type: list
    elements: str
    default: []
  depends_on:
    description:
      - The services each service depends on (compose's C(depends_on)), for stopping in layers, each layer in
        parallel. Without it O(state=stopped) stops one service at a time in the order of O(services).
    type: dict
  stop_timeout:
    description:
      - Seconds a container is given to exit after SIGTERM before it is killed (C(docker stop -t)); compose's
        default is 10. A service that exits on SIGTERM stops at once whatever the value.
    type: int
    default: 10
  timeout:
    description: Seconds O(state=started) and O(state=healthy) wait for every service to be running and healthy before
      they fail.
    type: int
    default: 120
  poll_interval:
    description: Seconds between two looks at the containers while O(state=started) waits.
    type: float
    default: 0.1
  wait:
    description: With O(state=started), wait until every service is running and healthy.
    type: bool
    default: true
  compose_command:
    description:
      - The compose command as a list (RV(compose_command) of an earlier probe) for O(state=started); default
        detect it (C(docker compose) v2 first, then C(docker-compose) v1).
    type: list
    elements: str
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
  returned: when O(state=probed)
  type: list
  elements: str
  sample: [docker, compose]
compose_version:
  description: Version of the compose tool; null when there is none.
  returned: when O(state=probed)
  type: str
  sample: 2.29.7
project:
  description: The compose project name used.
  returned: always
  type: str
  sample: zoe
project_dir:
  description: O(project_dir) as an absolute path.
  returned: when O(state=probed)
  type: str
  sample: /srv/zoe
data_dir:
  description: O(data_dir) as a real path.
  returned: when O(state=probed)
  type: str
  sample: /srv/zoe/data
docker_reachable:
  description: Whether C(docker info) answered.
  returned: when O(state=probed)
  type: bool
  sample: true
docker_error:
  description: Why the engine is unreachable; null when it answered.
  returned: when O(state=probed)
  type: str
  sample: "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
services:
  description: Service names defined by the compose files (C(config --services)); null when compose could not tell.
  returned: when O(state=probed)
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server, zoe-ui]
services_error:
  description: Why RV(services) is null.
  returned: when O(state=probed)
  type: str
  sample: null
containers:
  description: Every container of the engine.
  returned: when O(state=probed)
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
  returned: when O(state=probed)
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server]
running_services:
  description: Every service of the project with a running container, sorted.
  returned: when O(state=probed)
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server, zoe-ui]
strays:
  description: Running containers that bind-mount O(data_dir) but are not services of this compose project.
  returned: when O(state=probed)
  type: list
  elements: dict
  sample:
    - {name: sqlite-debug, id: 9a8b..., project: null, service: null}
stopped:
  description: O(state=stopped) only. The services whose running containers were stopped (would be, in check mode).
  returned: when O(state=stopped)
  type: list
  elements: str
  sample: [zoe-auth, mem-agent, zoe-mcp-server, zoe-core]
layers:
  description: O(state=stopped) only. The services stopped by each C(docker stop) call, in order.
  returned: when O(state=stopped)
  type: list
  elements: list
  sample: [[zoe-auth, mem-agent, zoe-mcp-server], [zoe-core]]
started:
  description: O(state=started) only. The services of which a container was created or started.
  returned: when O(state=started)
  type: list
  elements: str
  sample: [mem-agent, zoe-auth, zoe-core, zoe-mcp-server]
recreated:
  description: O(state=started) only. The services whose container compose replaced (its configuration changed).
  returned: when O(state=started)
  type: list
  elements: str
  sample: [zoe-auth, zoe-core]
ready:
  description:
    - O(state=started) and O(state=healthy). How each service was seen ready; C(healthy) (the engine said so), C(probed) (its
      healthcheck command passed under C(docker exec)) or C(running) (it has no healthcheck). Empty without O(wait)
      and in check mode.
  returned: when O(state=started) or O(state=healthy)
  type: dict
  sample: {zoe-core: probed, zoe-auth: probed, zoe-mcp-server: probed, mem-agent: healthy}
seconds:
  description: O(state=stopped) and O(state=started). Seconds the stop, or the start and the wait, took.
  returned: when O(state=stopped) or O(state=started)
  type: float
  sample: 0.61
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compose_services import (ComposeServicesError, detect_compose, probe, project_name,
                                                   start_services, stop_services, wait_ready)


def main():
    argument_spec = dict(
        project_dir=dict(type="path", required=True),
        data_dir=dict(type="path", required=True),
        project=dict(type="str"),
        compose_files=dict(type="list", elements="path"),
        quick=dict(type="bool", default=False),
        state=dict(type="str", choices=["probed", "stopped", "started", "healthy"], default="probed"),
        services=dict(type="list", elements="str", default=[]),
        depends_on=dict(type="dict"),
        stop_timeout=dict(type="int", default=10),
        timeout=dict(type="int", default=120),
        poll_interval=dict(type="float", default=0.1),
        wait=dict(type="bool", default=True),
        compose_command=dict(type="list", elements="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        if p["state"] == "probed":
            result = probe(p["project_dir"], p["data_dir"], project=p["project"], compose_files=p["compose_files"],
                           quick=p["quick"])
            module.exit_json(changed=False, **result)
        result = {"project": project_name(p["project_dir"], p["project"])}
        if p["state"] == "healthy":
            result.update(ready=wait_ready(result["project"], p["services"], p["timeout"], p["poll_interval"]),
                          changed=False)
            module.exit_json(**result)
        if p["state"] == "stopped":
            result.update(stop_services(result["project"], p["services"], depends_on=p["depends_on"],
                                        stop_timeout=p["stop_timeout"], check_mode=module.check_mode,
                                        data_dir=p["data_dir"]))
        else:
            command = p["compose_command"] or detect_compose()[0]
            if not command:
                module.fail_json(msg="neither `docker compose` nor `docker-compose` is installed")
            result.update(start_services(command, p["project_dir"], result["project"], p["services"],
                                         compose_files=p["compose_files"], timeout=p["timeout"],
                                         poll_interval=p["poll_interval"], wait=p["wait"],
                                         check_mode=module.check_mode))
    except ComposeServicesError as exc:
        module.fail_json(msg=str(exc))
    before, after = result.pop("running_before"), result.pop("running_after")
    if module._diff:
        result["diff"] = {"before": "running: %s\n" % " ".join(before), "after": "running: %s\n" % " ".join(after)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
