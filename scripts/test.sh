#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the whole test suite: unit, netns and mininet tiers.
# Fails if any tier fails or if a test left a namespace, link or relay process of tunlab behind.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
