#!/usr/bin/env bash
# The README's test command: set everything up (scripts/setup.sh), then run the whole suite tier by
# tier (unit, netns, mininet, vm) with scripts/suite.py. The vm tier boots the Vagrant VM and runs part of
# the suite inside it (vagrant/vm.sh --ci); where no VM can start it says so in one line and is skipped.
#
#   sudo bash scripts/test.sh                      # everything
#   sudo bash scripts/test.sh --tier unit -x       # one tier; arguments after the tiers go to pytest
#   sudo bash scripts/test.sh --no-leak-check      # no leak check (it judges only this suite's own runs)
#   sudo TUNLAB_TIER_TIMEOUT=300 bash scripts/test.sh   # time limit per tier in s (default 900)
#   sudo TUNLAB_VM_TIER=off bash scripts/test.sh        # without the vm tier (required: it must run;
#                                                       # setup then installs what the VM needs, --vagrant)
#
# Fails when any tier fails, collects no tests (pytest exit 5), or leaves a named namespace, a
# root-namespace link or a TUNLAB_RUN process behind (those are reported, never removed).
# Files the run writes in the tree (caches, results) belong to the invoking user afterwards.
set -euo pipefail
TUNLAB_SCRIPT_TAG="test"
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TUNLAB_ROOT"

case "${1:-}" in
  -h|--help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
esac

require_lab_machine
setup_args=()
if [ "${TUNLAB_VM_TIER:-auto}" = required ]; then setup_args+=(--vagrant); fi
bash scripts/setup.sh "${setup_args[@]}"
rc=0
.venv/bin/python scripts/suite.py "$@" || rc=$?
give_to_invoking_user .pytest_cache .hypothesis tunlab-results
give_caches_to_invoking_user
exit "$rc"  # nothing printed after suite.py: its "N passed, N failed, N skipped" line closes the output
