#!/usr/bin/env bash
# The README's test command: lint, unit and integration tests, Molecule scenarios. Needs Docker.
#   tools/test.sh                 everything
#   tools/test.sh -k merge        extra arguments go to pytest (lint and Molecule still run)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tools/bootstrap.sh
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$repo/ansible.cfg"

echo "== yamllint"
yamllint -s .
echo "== ansible-lint (production profile)"
ansible-lint --offline -q
echo "== pytest"
pytest "$@"
if compgen -G "molecule/*/molecule.yml" >/dev/null; then
  echo "== molecule test --all"
  molecule test --all
fi
