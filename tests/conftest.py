"""Shared pytest setup.

The project's module_utils are imported in tests exactly as modules import them
(`from ansible.module_utils.<topic> import ...`): the repository's module_utils/ directory is
appended to the `ansible.module_utils` package path, as Ansible does for a configured
module_utils path.
"""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import ansible.module_utils  # noqa: E402

_MU = os.path.join(REPO, "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)
sys.path.insert(0, os.path.join(REPO, "tools"))


# Fixtures that reach the Docker engine: a test using one (directly or through another fixture) must carry the
# `docker` marker, so that `-m "not docker"` (tools/test.sh --fast) selects exactly the tests that need no engine.
DOCKER_FIXTURES = {"docker_engine", "images"}


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if DOCKER_FIXTURES & set(item.fixturenames) and item.get_closest_marker("docker") is None]
    if unmarked:
        raise pytest.UsageError("these tests use the Docker engine but are not marked `docker`:\n  " + "\n  ".join(unmarked))


def docker_available():
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def compose_cli():
    """The compose CLI as an argv prefix: `docker compose` (v2) when the plugin answers, else `docker-compose` (v1)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="session")
def compose_tool():
    """A compose CLI is required, not optional: without one the test fails instead of skipping.

    `compose config` needs no engine, so these tests belong to the fast loop; tools/bootstrap.sh installs
    Debian's docker-compose when neither `docker compose` nor `docker-compose` is present.
    """
    tool = compose_cli()
    if tool is None:
        pytest.fail("neither `docker compose` (v2) nor `docker-compose` (v1) is installed; run tools/bootstrap.sh")
    return tool


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def docker_engine():
    """Docker is required, not optional: a missing engine fails the test instead of skipping it."""
    if not docker_available():
        pytest.fail("the Docker engine is not reachable; these tests need a real engine")
    return True


@pytest.fixture(scope="session")
def images(docker_engine):
    """Build (or reuse) the local base and service images once per session."""
    subprocess.run(["bash", os.path.join(REPO, "tools", "images", "build.sh")], check=True)
    return {"base": "zoe-consolidate/base:bookworm", "service": "zoe-consolidate/service:latest"}
