#!/usr/bin/env bash
# Stand-in hosts for labs across hosts (docs/multihost.md): sandboxes with their own network, mount and PID
# namespaces, each running sshd, joined by a bridge.   scripts/standin.sh up -n 3 --dir DIR | down --dir DIR
set -euo pipefail
TUNLAB_SCRIPT_TAG=standin
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
py="$TUNLAB_ROOT/.venv/bin/python"
[ -x "$py" ] || die "no .venv: run 'sudo bash scripts/setup.sh' first"
exec "$py" -m tunlab.testing.standin "$@"
