#!/usr/bin/env bash
# The one setup path: README commands, .ci/run and the Vagrant provisioning all call this.
# Idempotent. Installs Debian packages, creates .venv, installs tunlab with its test extras,
# and links Debian's mininet module into the venv (without the rest of dist-packages).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

die() { echo "setup: $*" >&2; exit 1; }

[ "$(uname -s)" = "Linux" ] || die "tunlab needs Linux (network namespaces); this is $(uname -s)"
[ "$(id -u)" -eq 0 ] || die "needs root to install packages and create namespaces: run it with sudo"
[ -e /proc/self/ns/net ] || die "this kernel has no network namespaces"

export DEBIAN_FRONTEND=noninteractive
debs=(python3 python3-venv python3-pip iproute2 socat iperf3 tcpdump ethtool nftables mininet bridge-utils iputils-ping procps)
missing=()
for d in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "ok installed" || missing+=("$d")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

py="${TUNLAB_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]"

# Debian's mininet is a dist-packages module; expose only it to the venv through a .pth file
# pointing at a folder that holds a single link to it.
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mn_src=""
for d in /usr/lib/python3/dist-packages/mininet /usr/local/lib/python3*/dist-packages/mininet; do
  [ -d "$d" ] && { mn_src="$d"; break; }
done
if [ -n "$mn_src" ]; then
  mkdir -p .venv/mininet-link
  ln -sfn "$mn_src" .venv/mininet-link/mininet
  echo "$here/.venv/mininet-link" > "$site/tunlab-mininet.pth"
fi

# Files created here under sudo belong to the invoking user.
if [ -n "${SUDO_UID:-}" ]; then
  chown -R "${SUDO_UID}:${SUDO_GID:-$SUDO_UID}" .venv tunlab.egg-info 2>/dev/null || true
fi
echo "setup: ready ($(.venv/bin/tunlab --version))"
