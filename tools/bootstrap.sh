#!/usr/bin/env bash
# Prepare this machine for the project: the pinned Python virtualenv (.venv) and the local images.
# Idempotent and quick when nothing changed. Run by tools/demo.sh and tools/test.sh.
#   tools/bootstrap.sh              the virtualenv, a compose CLI, the Docker engine check and the images
#   tools/bootstrap.sh --no-images  the virtualenv and a compose CLI only (tools/test.sh --fast: no engine needed)
set -euo pipefail
images=true
if [ "${1:-}" = --no-images ]; then
  images=false
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.requirements.sha256"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { log "Python 3.11 is required (ansible-core 2.19); set PYTHON=/path/to/python3.11"; exit 1; }

want=$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python dependencies into .venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements.txt"
  echo "$want" > "$stamp"
fi

apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The tests need a compose CLI (they fail without one). Debian bookworm packages only v1 (docker-compose
# 1.29.2-3); the code supports v2 (`docker compose`) as well and uses it when the plugin is installed.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  log "installing docker-compose ${ZOE_DOCKER_COMPOSE_VERSION:=1.29.2-3} (no compose CLI found)"
  apt_install "docker-compose=$ZOE_DOCKER_COMPOSE_VERSION"
fi
$images || exit 0
command -v docker >/dev/null || { log "docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { log "the Docker engine is not reachable"; exit 1; }
if ! docker image inspect "${ZOE_BASE_IMAGE:-zoe-consolidate/base:bookworm}" >/dev/null 2>&1 \
   && ! command -v debootstrap >/dev/null; then
  log "installing debootstrap (needed once, to build the base image)"
  apt_install debootstrap
fi
bash "$repo/tools/images/build.sh"
