#!/usr/bin/env bash
# The README's main command: run the consolidation on the built-in demo Zoe host.
#
#   tools/demo.sh            set up (venv, images), create the demo host if it is not there, start its
#                            stack, show its databases and logins, then run consolidate.yml on it
#   ZOE_DEMO_RESET=1 tools/demo.sh   rebuild the demo host from scratch first
#   extra arguments go to ansible-playbook, e.g. tools/demo.sh --check --diff
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tools/bootstrap.sh
py=.venv/bin/python
root=$repo/.demo/zoe

if [ "${ZOE_DEMO_RESET:-0}" = 1 ] && [ -f "$root.record.json" ]; then
  $py tools/demo_host.py down --root "$root" || true
fi
if [ "${ZOE_DEMO_RESET:-0}" = 1 ] || [ ! -f "$root.record.json" ]; then
  $py tools/demo_host.py create --root "$root" --force
fi
$py tools/demo_host.py up --root "$root"
echo "== databases of the demo host"
$py tools/demo_host.py audit --root "$root"
echo "== services and logins before"
$py tools/demo_host.py status --root "$root" || true

if [ -f consolidate.yml ]; then
  echo "== ansible-playbook consolidate.yml $*"
  .venv/bin/ansible-playbook consolidate.yml "$@"
  echo "== services and logins after"
  dry_run=0
  for arg in "$@"; do
    case "$arg" in --check|-C) dry_run=1 ;; esac
  done
  if [ "$dry_run" = 1 ]; then
    # A dry run changed nothing: the logins that failed before still fail, and that is no error.
    $py tools/demo_host.py status --root "$root" || true
  else
    $py tools/demo_host.py status --root "$root"
  fi
fi
