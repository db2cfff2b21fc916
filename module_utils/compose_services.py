# -*- coding: utf-8 -*-
"""Which containers write the data directory, which compose tool manages them; stopping and starting them.

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
import subprocess
import time

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


# ------------------------------------------------------------------------------------- stop and start
#
# Why these work the way they do (each choice is measured in bench/bench_downtime.py's window):
# - The stop goes straight to the engine: `docker stop -t <timeout> <ids>` for the running containers of the
#   services, one call per layer of depends_on (dependents first), the containers of a layer stopped in
#   parallel by the docker CLI; it returns when they have exited, so no polling follows. `compose stop` does
#   the same through the compose tool, whose start-up (the Python v1: about a second) would be downtime.
# - The start is compose's (`up -d --no-deps`): only compose knows the configuration a container must be
#   recreated with.
# - Ready is seen by asking, not by waiting for the engine's next healthcheck: a container whose health is
#   still `starting` gets its own healthcheck command run with `docker exec` (what the engine would run, at its
#   own interval: 30 s on the real Zoe stack) every `poll_interval` seconds; one pass of it counts as healthy,
#   as does the engine's `healthy`. A container without a healthcheck is ready once it runs.

class ServicesNotStoppedError(ComposeServicesError):
    """A container of a service to stop is still running after the stop."""


class ServicesNotReadyError(ComposeServicesError):
    """A service started by compose is not running and healthy within the timeout."""


class ComposeUpError(ComposeServicesError):
    """`compose up -d` failed."""


def stop_layers(services, depends_on=None):
    """`services` in layers to stop one after the other: each layer holds what no service still running needs.

    depends_on: {service: [services it depends on]} (other services ignored). Without it, one service per
    layer in the order given (the caller's stop order).
    """
    names = list(dict.fromkeys(services or []))
    if depends_on is None:
        return [[name] for name in names]
    deps = {name: [d for d in (depends_on.get(name) or []) if d in names and d != name] for name in names}
    left, layers = list(names), []
    while left:
        needed = {d for name in left for d in deps[name]}
        layer = [name for name in left if name not in needed]
        if not layer:      # a cycle: stop the rest in the order given
            layer = [left[0]]
        layers.append(layer)
        left = [name for name in left if name not in layer]
    return layers


def project_entries(project, services=None, runner=run, data_dir=None):
    """The module's entries of every container of `project` (not one-off), optionally of `services` only."""
    rc, out, err = runner([DOCKER, "ps", "-a", "-q", "--no-trunc", "--filter", "label=%s=%s" % (LABEL_PROJECT, project)])
    if rc != 0:
        raise DockerCommandError("docker ps -a failed: %s" % err.strip())
    ids = out.split()
    docs = []
    if ids:
        rc, out, err = runner([DOCKER, "inspect", "--type", "container"] + ids)
        if rc == 0:
            docs = json.loads(out)
        else:
            for cid in ids:
                rc, out, _ = runner([DOCKER, "inspect", "--type", "container", cid])
                if rc == 0:
                    docs.extend(json.loads(out))
    real = os.path.realpath(data_dir) if data_dir else "\0"
    entries = []
    for doc in docs:
        entry = container_entry(doc, real, project)
        if entry["oneoff"] or not entry["compose_managed"]:
            continue
        if services is not None and entry["service"] not in services:
            continue
        entry["healthcheck"] = healthcheck_of(doc)
        entries.append(entry)
    return entries


def healthcheck_of(doc):
    """{'argv': [...], 'timeout': s} of the container's healthcheck, or None when it has none."""
    check = (doc.get("Config") or {}).get("Healthcheck") or {}
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        argv = list(test[1:])
    elif test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", " ".join(test[1:])]
    else:
        return None
    timeout = (check.get("Timeout") or 30 * 10 ** 9) / 1e9
    return {"argv": argv, "timeout": timeout} if argv else None


def stop_services(project, services, depends_on=None, stop_timeout=10, check_mode=False, runner=run, data_dir=None):
    """Stop the running containers of `services`; returns the result dict (stopped, layers, seconds).

    With `data_dir`, fails when any running container (of this project or not) still mounts it afterwards.
    """
    started = time.monotonic()
    entries = project_entries(project, services, runner)
    running = {}
    for entry in entries:
        if entry["running"]:
            running.setdefault(entry["service"], []).append(entry["id"])
    layers = [[name for name in layer if name in running] for layer in stop_layers(services, depends_on)]
    layers = [layer for layer in layers if layer]
    result = {"stopped": [name for layer in layers for name in layer], "layers": layers,
              "changed": bool(layers), "running_before": sorted(running),
              "running_after": [] if not check_mode else sorted(running)}
    if check_mode or not layers:
        result["seconds"] = round(time.monotonic() - started, 3)
        return result
    for layer in layers:
        ids = [cid for name in layer for cid in running[name]]
        rc, out, err = runner([DOCKER, "stop", "-t", str(int(stop_timeout))] + ids)
        if rc != 0:
            raise DockerCommandError("docker stop of %s failed: %s" % (", ".join(layer), (err or out).strip()))
    # One look at every container after the stop (one `docker ps` and one `docker inspect`: this is downtime).
    real = os.path.realpath(data_dir) if data_dir else "\0"
    after = [container_entry(doc, real, project) for doc in inspect_all(runner)]
    still = sorted({e["service"] for e in after if e["running"] and e["compose_managed"] and not e["oneoff"]
                    and e["service"] in services})
    if still:
        raise ServicesNotStoppedError("still running after docker stop: %s" % ", ".join(still))
    if data_dir:
        writing = sorted(e["name"] for e in after if e["running"] and e["mounts_data"])
        if writing:
            raise ServicesNotStoppedError("still running and mounting %s after the stop: %s" % (real, ", ".join(writing)))
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


class _Probe(object):
    """One `docker exec` of a container's healthcheck command, run in the background."""

    def __init__(self, entry):
        check = entry["healthcheck"]
        self.deadline = time.monotonic() + max(0.5, check["timeout"])
        try:
            self.proc = subprocess.Popen([DOCKER, "exec", entry["id"]] + check["argv"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None

    def poll(self):
        """True (passed), False (failed or timed out), None (still running)."""
        if self.proc is None:
            return False
        rc = self.proc.poll()
        if rc is None and time.monotonic() > self.deadline:
            self.proc.kill()
            self.proc.wait()
            return False
        return None if rc is None else rc == 0

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_ready(project, services, timeout=120, poll_interval=0.1, runner=run, probe_factory=_Probe):
    """Wait until every service has a running container that is healthy; returns {service: how}.

    how: 'healthy' (the engine says so), 'probed' (its healthcheck command passed under docker exec),
    'running' (no healthcheck). Raises ServicesNotReadyError with each service's state at the timeout.
    """
    deadline = time.monotonic() + timeout
    passed, probes, ready = set(), {}, {}
    try:
        while True:
            entries = project_entries(project, services, runner)
            by_service = {}
            for entry in entries:
                by_service.setdefault(entry["service"], []).append(entry)
            for cid, probe in list(probes.items()):
                outcome = probe.poll()
                if outcome is not None:
                    del probes[cid]
                    if outcome:
                        passed.add(cid)
            for name in services:
                if name in ready:
                    continue
                found = by_service.get(name) or []
                if not found or not all(e["running"] for e in found):
                    continue
                hows = []
                for entry in found:
                    if entry["healthcheck"] is None:
                        hows.append("running")
                    elif entry["health"] == "healthy":
                        hows.append("healthy")
                    elif entry["id"] in passed:
                        hows.append("probed")
                    else:
                        hows.append(None)
                        if entry["id"] not in probes:
                            probes[entry["id"]] = probe_factory(entry)
                if all(hows):
                    ready[name] = "probed" if "probed" in hows else hows[0]
            if len(ready) == len(set(services)):
                return ready
            if time.monotonic() > deadline:
                states = {name: ", ".join("%s/%s" % (e["status"], e["health"]) for e in by_service.get(name) or [])
                          or "no container" for name in services if name not in ready}
                raise ServicesNotReadyError("not running and healthy after %d s: %s" % (timeout, "; ".join(
                    "%s (%s)" % (name, state) for name, state in sorted(states.items()))))
            time.sleep(poll_interval)
    finally:
        for probe in probes.values():
            probe.stop()


def start_services(command, project_dir, project, services, compose_files=None, timeout=120, poll_interval=0.1,
                   wait=True, check_mode=False, runner=run, entries=None):
    """`compose up -d --no-deps <services>`, then wait until they are ready; returns the result dict.

    changed: a container of the services was created or started (its id or start time differs).
    entries: the project_entries() of the services as they are now, from a caller that knows them (the downtime
    window: its look before the stop, with the containers it stopped marked so): saves a docker call before the `up`.
    """
    started = time.monotonic()
    names = list(dict.fromkeys(services or []))
    if entries is None:
        entries = project_entries(project, names, runner)
    entries = [e for e in entries if e["service"] in names]
    running = sorted({e["service"] for e in entries if e["running"]})
    result = {"started": [], "recreated": [], "ready": {}, "changed": False, "running_before": running,
              "running_after": running if check_mode else sorted(names)}
    if not names:
        result["seconds"] = 0.0
        return result
    if check_mode:
        result["started"] = [name for name in names if name not in running]
        result["changed"] = bool(result["started"])
        result["seconds"] = round(time.monotonic() - started, 3)
        return result
    before = {e["id"]: e["started_at"] for e in entries if e["running"]}
    old = {e["service"]: e["id"] for e in entries}
    rc, out, err = runner(compose_base(command, project_dir, project, compose_files) + ["up", "-d", "--no-deps"] + names,
                          cwd=project_dir)
    if rc != 0:
        raise ComposeUpError("compose up -d of %s failed: %s" % (", ".join(names), (err or out).strip()[-2000:]))
    after = project_entries(project, names, runner)
    result["started"] = sorted({e["service"] for e in after if before.get(e["id"]) != e["started_at"]})
    result["recreated"] = sorted({e["service"] for e in after if old.get(e["service"]) not in (None, e["id"])})
    result["changed"] = bool(result["started"])
    if wait:
        result["ready"] = wait_ready(project, names, timeout, poll_interval, runner)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result
