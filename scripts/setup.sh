#!/usr/bin/env bash
# The one setup path: the README commands (scripts/demo.sh, scripts/test.sh), .ci/run and the Vagrant
# provisioning all run this. Idempotent: a second run changes nothing and takes a second or two.
#
#   sudo bash scripts/setup.sh            # as root: Debian packages, .venv, tunlab editable + test extras
#   sudo bash scripts/setup.sh --vagrant  # also what runs the VM: Vagrant, vagrant-libvirt, libvirt, QEMU and
#                                         # the box builder's tools (vagrant/README.md)
#   bash scripts/setup.sh --print-debs    # print the Debian packages of the lab (one a line) and stop
#
# Environment: TUNLAB_PYTHON=/path/to/python3 picks the interpreter for a new .venv (>= 3.11, with venv
# and ensurepip); by default `python3` from PATH, else Debian's /usr/bin/python3.
# TUNLAB_LAUNCHER=/path/tunlab: where the `tunlab` launcher goes (default /usr/local/bin/tunlab, on root's and
# sudo's PATH; "none" for no launcher). It runs this clone's .venv, so `tunlab ...` and `sudo tunlab ...` work
# from any folder. A launcher of another clone whose .venv works is left alone (TUNLAB_LAUNCHER_TAKEOVER=1
# takes it over).
set -euo pipefail
TUNLAB_SCRIPT_TAG="setup"
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TUNLAB_ROOT"

# ---- Debian packages (apt-get update only when something is missing) -----------------------------
# Keep these lists in step with README.md ("What setup does"). vagrant/build-box.sh puts debs in the box.
debs=(python3 python3-venv iproute2 iputils-ping procps kmod util-linux
      socat iperf3 tcpdump tshark ethtool nftables mininet bridge-utils graphviz openvswitch-switch
      openssh-server
      build-essential python3-dev)  # the compiled datapath (issue 20): a C compiler and Python's headers
# --vagrant: the VM host (vagrant/): Vagrant and its libvirt provider, libvirt with QEMU (its NAT network
# needs dnsmasq), and what vagrant/build-box.sh builds the box with.
vm_debs=(vagrant libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils dnsmasq-base
         mmdebstrap e2fsprogs dosfstools mtools syslinux syslinux-common fdisk)

with_vagrant=0
for arg in "$@"; do
  case "$arg" in
    --vagrant) with_vagrant=1 ;;
    --print-debs) printf '%s\n' "${debs[@]}"; exit 0 ;;
    -h|--help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$arg' (known: --vagrant, --print-debs)" ;;
  esac
done

require_lab_machine

if [ "$with_vagrant" -eq 1 ]; then
  debs+=("${vm_debs[@]}")
fi

is_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]; }

missing=()
for d in "${debs[@]}"; do
  is_installed "$d" || missing+=("$d")
done
if [ "$with_vagrant" -eq 1 ] && ! is_installed vagrant-libvirt && command -v apt-cache >/dev/null \
   && apt-cache show vagrant-libvirt >/dev/null 2>&1; then
  missing+=(vagrant-libvirt)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null \
    || die "apt-get not found (tunlab's setup targets Debian 12): install by hand: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
  apt_log="$(mktemp /tmp/tunlab-setup-apt.XXXXXX)"
  say "installing Debian packages: ${missing[*]}"
  if ! apt-get "${apt_opts[@]}" update >"$apt_log" 2>&1; then
    tail -n 15 "$apt_log" >&2
    die "'apt-get update' failed (above; full log: $apt_log): check the network and /etc/apt/sources.list*"
  fi
  # Mininet recommends Open vSwitch, whose kernel datapath tunlab does not use: no recommends.
  if ! apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
    tail -n 15 "$apt_log" >&2
    die "'apt-get install ${missing[*]}' failed (above; full log: $apt_log)"
  fi
  rm -f "$apt_log"
fi

# ---- Python: the interpreter for .venv --------------------------------------------------------------
# Usable = Python >= 3.11 that has venv and ensurepip (Debian's python3 gets them from python3-venv;
# pyenv/python.org builds ship them).
py_ok() {
  "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

pick_python() {
  local c
  if [ -n "${TUNLAB_PYTHON:-}" ]; then
    py_ok "$TUNLAB_PYTHON" || die "TUNLAB_PYTHON=$TUNLAB_PYTHON is not a Python >= 3.11 with venv and ensurepip"
    echo "$TUNLAB_PYTHON"; return
  fi
  for c in python3 /usr/bin/python3; do
    if command -v "$c" >/dev/null && py_ok "$c"; then command -v "$c"; return; fi
  done
  die "no Python >= 3.11 with venv and ensurepip: 'apt-get install python3 python3-venv' (Debian 12 has 3.11)"
}

venv_ok() {
  [ -x .venv/bin/python ] \
    && .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1 \
    && .venv/bin/python -m pip --version >/dev/null 2>&1
}

if [ -e .venv ] && ! venv_ok; then
  say ".venv is unusable (no working python >= 3.11 or pip in it): making it again"
  rm -rf .venv
fi
if [ ! -e .venv ]; then
  py="$(pick_python)"
  say "creating .venv with $py ($("$py" --version 2>&1))"
  "$py" -m venv .venv || { rm -rf .venv; die "'$py -m venv .venv' failed (on Debian: apt-get install python3-venv)"; }
  venv_ok || { rm -rf .venv; die "'$py -m venv .venv' made a venv without pip (ensurepip is broken for $py)"; }
fi

# ---- tunlab, editable, with its test extras (re-installed only when pyproject.toml changed) ---------
stamp=".venv/.tunlab-setup"
# (the compiled datapath is built by this install: its source and setup.py count too)
want="$(cat pyproject.toml setup.py tunlab/relay/fast/_cfast.c | sha256sum | cut -d' ' -f1) $TUNLAB_ROOT $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])')"
installed_here() {
  .venv/bin/python - "$TUNLAB_ROOT" >/dev/null 2>&1 <<'PY'
import pathlib, sys
import tunlab, pytest, hypothesis, xdist  # noqa: F401  (the test extras must import)
sys.exit(0 if pathlib.Path(tunlab.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()) else 1)
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed_here; then
  say "installing tunlab (editable) with its test extras into .venv"
  pip_log="$(mktemp /tmp/tunlab-setup-pip.XXXXXX)"
  if ! .venv/bin/python -m pip install --disable-pip-version-check --no-input -q -e ".[test]" >"$pip_log" 2>&1; then
    tail -n 20 "$pip_log" >&2
    die "'pip install -e .[test]' failed (above; full log: $pip_log): is PyPI reachable (proxy: PIP_INDEX_URL)?"
  fi
  rm -f "$pip_log"
  installed_here || die "tunlab was installed but does not import from $TUNLAB_ROOT"
  echo "$want" > "$stamp"
fi

# ---- Debian's mininet module, and only it, visible in .venv ---------------------------------------
# A .pth file points at a folder that holds a single link to the mininet package: adding all of
# dist-packages instead would shadow the venv's own packages with Debian's.
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mn_src=""
for d in /usr/lib/python3/dist-packages/mininet /usr/local/lib/python3*/dist-packages/mininet; do
  if [ -f "$d/__init__.py" ]; then mn_src="$d"; break; fi
done
[ -n "$mn_src" ] || die "Debian's mininet package is installed but its Python module was not found"
link_dir=.venv/mininet-link
# left alone when already right, so a test importing mininet meanwhile never sees it missing
if [ "$(ls -A "$link_dir" 2>/dev/null)" != "mininet" ] || [ "$(readlink "$link_dir/mininet")" != "$mn_src" ]; then
  rm -rf "$link_dir"
  mkdir "$link_dir"
  ln -s "$mn_src" "$link_dir/mininet"
fi
pth_line="$TUNLAB_ROOT/$link_dir"
[ "$(cat "$site/tunlab-mininet.pth" 2>/dev/null)" = "$pth_line" ] || echo "$pth_line" > "$site/tunlab-mininet.pth"
.venv/bin/python -c 'import mininet.net' 2>/dev/null \
  || die "the venv cannot import Debian's mininet ($mn_src): try 'rm -rf .venv' and run this again"

# ---- Bytecode: relays start by the hundred, and some environments set PYTHONDONTWRITEBYTECODE -------
# (Python still reads existing .pyc files; compiling is a no-op when they are up to date)
.venv/bin/python -m compileall -q tunlab >/dev/null 2>&1 || true

# ---- The `tunlab` launcher: root-owned, on sudo's secure_path, running this clone's venv ------------
launcher="${TUNLAB_LAUNCHER:-/usr/local/bin/tunlab}"
marker="# tunlab launcher (written by scripts/setup.sh)"
if [ "$launcher" != "none" ]; then
  if [ -e "$launcher" ] && ! grep -qF "$marker" "$launcher" 2>/dev/null; then
    say "warning: $launcher exists and is not tunlab's launcher: left alone (run $TUNLAB_ROOT/.venv/bin/tunlab)"
  else
    want_launcher="$(printf '#!/bin/sh\n%s\n# runs %s/.venv (TUNLAB_LAUNCHER=none skips it)\n%s\n' "$marker" "$TUNLAB_ROOT" \
      "[ -x '$TUNLAB_ROOT/.venv/bin/tunlab' ] || { echo \"tunlab: $TUNLAB_ROOT/.venv is gone: run 'sudo bash $TUNLAB_ROOT/scripts/setup.sh'\" >&2; exit 3; }
exec '$TUNLAB_ROOT/.venv/bin/tunlab' \"\$@\"")"
    previous="$(sed -n 's/^# runs \(.*\)\/\.venv .*/\1/p' "$launcher" 2>/dev/null || true)"
    if [ "$(cat "$launcher" 2>/dev/null)" != "$want_launcher" ] && [ -n "$previous" ] \
       && [ "$previous" != "$TUNLAB_ROOT" ] && [ -x "$previous/.venv/bin/tunlab" ] && [ -z "${TUNLAB_LAUNCHER_TAKEOVER:-}" ]; then
      # another clone on this machine (another user's, perhaps) owns it and still works: not taken over
      say "$launcher runs $previous/.venv (another clone): left alone; here use $TUNLAB_ROOT/.venv/bin/tunlab," \
          "or take it over with TUNLAB_LAUNCHER_TAKEOVER=1"
    elif [ "$(cat "$launcher" 2>/dev/null)" != "$want_launcher" ]; then
      mkdir -p "$(dirname "$launcher")"
      tmp_launcher="$(mktemp "$launcher.XXXXXX")"
      printf '%s\n' "$want_launcher" > "$tmp_launcher"
      chmod 0755 "$tmp_launcher"
      mv -f "$tmp_launcher" "$launcher"
      say "$launcher runs $TUNLAB_ROOT/.venv${previous:+ (it ran $previous/.venv)}"
    fi
  fi
fi

# ---- Files made here under sudo belong to the invoking user ---------------------------------------
give_to_invoking_user .venv tunlab.egg-info build
give_caches_to_invoking_user

say "ready: $(.venv/bin/tunlab --version), $(.venv/bin/python --version) in $TUNLAB_ROOT/.venv"
