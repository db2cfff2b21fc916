#!/usr/bin/env bash
# The README's test commands.
#   tools/test.sh                  everything: lint, every pytest test, the Molecule scenarios (needs Docker; CI runs this)
#   tools/test.sh --fast           the contributor loop: lint and every test not marked `docker` (no engine used)
#   tools/test.sh [--fast] -k merge   extra arguments go to pytest (lint, and Molecule without --fast, still run)
# --fast points DOCKER_HOST at a socket that does not exist, so a test that reaches the engine without the
# `docker` marker fails there instead of passing by accident (tests/conftest.py also refuses, at collection, a
# test that uses the engine fixtures without the marker).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
fast=false
if [ "${1:-}" = --fast ]; then
  fast=true
  shift
fi
if $fast; then
  bash tools/bootstrap.sh --no-images
else
  bash tools/bootstrap.sh
fi
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$repo/ansible.cfg"

echo "== yamllint"
yamllint -s .
echo "== ansible-lint (production profile)"
ansible-lint --offline -q
if $fast; then
  echo "== pytest -m 'not docker' (no Docker engine)"
  DOCKER_HOST="unix://$repo/.no-docker-in-the-fast-loop.sock" pytest -m "not docker" "$@"
  exit 0
fi
echo "== pytest"
pytest "$@"
if compgen -G "molecule/*/molecule.yml" >/dev/null; then
  echo "== molecule test --all"
  molecule test --all
fi
