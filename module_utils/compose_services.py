# -*- coding: utf-8 -*-
"""Which containers write the data directory, and which compose tool manages them. Read-only.

Standard library only: this runs on the managed host with its own python3 and talks to Docker through
the docker CLI (the host has no docker SDK for Python).

Why it works the way it does:
- Hosts have either the compose v2 plugin (`docker compose`) or the standalone v1 (`docker-compose`);
  the tool is detected by asking each for its version (compose_env.detect_compose, the project's one detection),
  and the play uses the command list returned. The project name's .env is read with compose_env's env-file parser.
- Containers are read from `docker ps -a` + one `docker inspect`, not from compose: a writer that compose
  does not manage (a `docker run` by hand, a one-off `compose run`, a container of a service no longer in
  the compose file) is exactly the one that compose cannot stop, and the preflight must see it.
- A container writes the data directory when one of its bind mounts has a source that is the data
  directory or lies inside it, compared as real paths (./data in compose, a symlinked checkout, ...).
"""

from __future__ import annotations

import json
import os
import re

from ansible.module_utils.compose_env import detect_compose, parse_compose_version, read_env_file, run  # noqa: F401

DOCKER = "docker"
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"


class ComposeServicesError(Exception):
    """Base class of every failure of the probe; the message is one sentence naming the path."""


class ProjectDirMissingError(ComposeServicesError):
    """O(project_dir) is missing or not a directory."""


class DataDirMissingError(ComposeServicesError):
    """O(data_dir) is missing or not a directory."""


class DockerCommandError(ComposeServicesError):
    """A docker command failed after the engine answered (not a mere unreachable engine)."""


# ------------------------------------------------------------------------------------------- commands

def docker_reachable(runner=run):
    """(True, None) when the engine answers `docker info`, else (False, the error text)."""
    rc, out, err = runner([DOCKER, "info", "--format", "{{.ServerVersion}}"])
    if rc == 0 and out.strip():
        return True, None
    return False, (err or out).strip() or "docker info failed with rc %d" % rc


# ------------------------------------------------------------------------------------------- projects

def normalize_project_name(name):
    """Compose's normalisation of a directory name: lower case, only [a-z0-9_-], starting alphanumeric."""
    name = re.sub(r"[^a-z0-9_-]", "", name.lower())
    return re.sub(r"^[^a-z0-9]+", "", name)


def project_name(project_dir, explicit=None):
    """O(project), else COMPOSE_PROJECT_NAME of <project_dir>/.env, else the normalised directory name."""
    if explicit:
        return explicit
    env = read_env_file(os.path.join(project_dir, ".env"))
    if env.get("COMPOSE_PROJECT_NAME"):
        return env["COMPOSE_PROJECT_NAME"]
    return normalize_project_name(os.path.basename(os.path.abspath(project_dir).rstrip("/")))


def compose_base(command, project_dir, project, compose_files=None):
    """The compose command line for this project (both v1 and v2 accept these flags)."""
    cmd = list(command) + ["--project-directory", project_dir, "-p", project]
    for path in compose_files or ():
        cmd += ["-f", path]
    return cmd


def compose_config_services(command, project_dir, project, compose_files=None, runner=run):
    """(services, error): the service names the compose files define, or (None, error text)."""
    if not command:
        return None, "no compose tool"
    rc, out, err = runner(compose_base(command, project_dir, project, compose_files) + ["config", "--services"],
                          cwd=project_dir)
    if rc != 0:
        return None, (err or out).strip()
    return sorted(line.strip() for line in out.splitlines() if line.strip()), None


# ----------------------------------------------------------------------------------------- containers

def inspect_all(runner=run):
    """The `docker inspect` documents of every container (running or not)."""
    rc, out, err = runner([DOCKER, "ps", "-a", "-q", "--no-trunc"])
    if rc != 0:
        raise DockerCommandError("docker ps -a failed: %s" % err.strip())
    ids = out.split()
    if not ids:
        return []
    rc, out, err = runner([DOCKER, "inspect", "--type", "container"] + ids)
    if rc != 0:
        # A container removed between ps and inspect: inspect the survivors one by one.
        docs = []
        for cid in ids:
            rc, out, _ = runner([DOCKER, "inspect", "--type", "container", cid])
            if rc == 0:
                docs.extend(json.loads(out))
        return docs
    return json.loads(out)


def is_inside(path, parent):
    """True when real path `path` is `parent` or below it (both real paths)."""
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def mounts_dir(doc, data_dir_real):
    """True when a bind mount of the container has its source at or below the data directory."""
    for mount in doc.get("Mounts") or ():
        if mount.get("Type") == "bind" and mount.get("Source"):
            if is_inside(os.path.realpath(mount["Source"]), data_dir_real):
                return True
    return False


def container_entry(doc, data_dir_real, project):
    """The module's view of one `docker inspect` document."""
    state = doc.get("State") or {}
    labels = (doc.get("Config") or {}).get("Labels") or {}
    health = (state.get("Health") or {}).get("Status") or "none"
    return {
        "name": (doc.get("Name") or "").lstrip("/"),
        "id": doc.get("Id"),
        "service": labels.get(LABEL_SERVICE),
        "project": labels.get(LABEL_PROJECT),
        "oneoff": str(labels.get(LABEL_ONEOFF, "False")).lower() == "true",
        "running": bool(state.get("Running")),
        "status": state.get("Status"),
        "health": health,
        "started_at": state.get("StartedAt"),
        "mounts_data": mounts_dir(doc, data_dir_real),
        "compose_managed": labels.get(LABEL_PROJECT) == project and bool(labels.get(LABEL_SERVICE)),
    }


def is_project_service(entry, project, services):
    """A container compose can stop: this project, not a one-off, and (when known) a service of the files."""
    if entry["project"] != project or not entry["service"] or entry["oneoff"]:
        return False
    return services is None or entry["service"] in services


def classify(entries, project, services):
    """writers, running_services and strays from the container entries."""
    running = [e for e in entries if e["running"]]
    ours = [e for e in running if is_project_service(e, project, services)]
    return {
        "writers": sorted({e["service"] for e in ours if e["mounts_data"]}),
        "running_services": sorted({e["service"] for e in ours}),
        "strays": [{"name": e["name"], "id": e["id"], "project": e["project"], "service": e["service"]}
                   for e in running if e["mounts_data"] and not is_project_service(e, project, services)],
    }


# ---------------------------------------------------------------------------------------------- probe

def probe(project_dir, data_dir, project=None, compose_files=None, runner=run, quick=False):
    """The whole read-only probe as the module's result dict.

    `quick` skips what costs a compose start-up (detecting the tool, listing the services of the files):
    for polling loops that only need the containers' state. Without the list of services, a container
    of this project whose service left the compose files counts as a service, not a stray.
    """
    if not project_dir or not os.path.isdir(project_dir):
        raise ProjectDirMissingError("project_dir %s does not exist or is not a directory" % project_dir)
    if not data_dir or not os.path.isdir(data_dir):
        raise DataDirMissingError("data_dir %s does not exist or is not a directory" % data_dir)
    project_dir = os.path.abspath(project_dir)
    data_dir_real = os.path.realpath(data_dir)
    name = project_name(project_dir, project)
    command, version = (None, None) if quick else detect_compose(runner)
    reachable, error = docker_reachable(runner)
    result = {"project": name, "project_dir": project_dir, "data_dir": data_dir_real,
              "compose_command": command, "compose_version": version,
              "docker_reachable": reachable, "docker_error": error,
              "services": None, "services_error": None, "containers": [],
              "writers": [], "running_services": [], "strays": []}
    if not reachable:
        return result
    services, services_error = (None, None) if quick else compose_config_services(
        command, project_dir, name, compose_files, runner)
    result["services"], result["services_error"] = services, services_error
    entries = sorted((container_entry(d, data_dir_real, name) for d in inspect_all(runner)),
                     key=lambda e: (e["project"] or "", e["service"] or "", e["name"]))
    result["containers"] = entries
    result.update(classify(entries, name, services))
    return result
