#!/usr/bin/env bash
# The README's first command: set everything up (scripts/setup.sh), then run the headline scenario,
# a three-VNF chain (sender -> vnf1 -> vnf2 -> vnf3 -> receiver) checked at every hop.
#
#   sudo bash scripts/demo.sh                        # tunlab run scenarios/three_vnf.py
#   sudo bash scripts/demo.sh scenarios/other.py     # any scenario files and `tunlab run` options
set -euo pipefail
TUNLAB_SCRIPT_TAG="demo"
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TUNLAB_ROOT"

case "${1:-}" in
  -h|--help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
esac

require_lab_machine
args=("$@")
if [ "${#args[@]}" -eq 0 ]; then
  args=(scenarios/three_vnf.py)
  [ -e "${args[0]}" ] || die "${args[0]} is not in this checkout (scenarios here: $(cd scenarios 2>/dev/null && printf '%s ' ./*.py))"
fi

bash scripts/setup.sh
rc=0
.venv/bin/tunlab run "${args[@]}" || rc=$?
give_to_invoking_user tunlab-results
exit "$rc"
