#!/usr/bin/env bash
# The README's test commands.
#   tools/test.sh                  everything: lint, every pytest test, the Molecule scenarios (needs Docker; CI runs this)
#   tools/test.sh --fast           the contributor loop: lint (beside pytest) and the tests marked neither `docker`
#                                  nor `slow`: unit and property tests of module_utils, plugins, docs and generator
#   tools/test.sh --no-docker      lint and every test not marked `docker` (the slow ones too: ansible runs, the
#                                  guard role's playbooks, the collection build)
#   tools/test.sh [--fast] -k merge   extra arguments go to pytest (lint, and Molecule without --fast, still run)
# --fast and --no-docker point DOCKER_HOST at a socket that does not exist, so a test that reaches the engine without the
# `docker` marker fails there instead of passing by accident (tests/conftest.py also refuses, at collection, a
# test that uses the engine fixtures without the marker).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
fast=false
select="not docker and not slow"
case "${1:-}" in
  --fast) fast=true; shift ;;
  --no-docker) fast=true; select="not docker"; shift ;;
esac
if $fast; then
  bash tools/bootstrap.sh --no-images
else
  bash tools/bootstrap.sh
fi
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$repo/ansible.cfg"

lint() {
  echo "== yamllint"
  yamllint -s .
  echo "== ansible-lint (production profile)"
  ansible-lint --offline -q
}
if $fast; then
  # Lint on one core while pytest runs on the other; the loop fails when either fails.
  lint_log=$(mktemp)
  trap 'rm -f "$lint_log"' EXIT
  lint >"$lint_log" 2>&1 &
  lint_pid=$!
  echo "== pytest -m '$select' (no Docker engine; lint runs beside it)"
  status=0
  DOCKER_HOST="unix://$repo/.no-docker-in-the-fast-loop.sock" pytest -m "$select" "$@" || status=$?
  wait "$lint_pid" || status=$((status ? status : 1))
  cat "$lint_log"
  exit "$status"
fi
lint
echo "== pytest"
pytest "$@"
if compgen -G "molecule/*/molecule.yml" >/dev/null; then
  echo "== molecule test --all"
  molecule test --all
fi
