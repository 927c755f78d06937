# Shared helpers for scripts/setup.sh, scripts/test.sh and scripts/demo.sh (sourced, not run).
# shellcheck shell=bash

TUNLAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tag="${TUNLAB_SCRIPT_TAG:-tunlab}"

say() { printf '%s: %s\n' "$_tag" "$*"; }
die() { printf '%s: error: %s\n' "$_tag" "$*" >&2; exit 1; }

# Stop early, with one line that says what is wrong, when this machine cannot run a lab.
require_lab_machine() {
  local os
  os="$(uname -s)"
  [ "$os" = "Linux" ] || die "tunlab needs Linux network namespaces; this is $os (use the Vagrant VM: vagrant/README.md)"
  [ "$(id -u)" -eq 0 ] || die "needs root (it installs Debian packages and creates namespaces): run it with sudo, e.g. 'sudo bash $0'"
  [ -e /proc/self/ns/net ] || die "this kernel has no network namespaces (/proc/self/ns/net is missing; CONFIG_NET_NS)"
  if command -v unshare >/dev/null && ! unshare --net true 2>/dev/null; then
    die "cannot create a network namespace here ('unshare --net true' failed): in a container, run it privileged (--privileged or CAP_SYS_ADMIN + CAP_NET_ADMIN)"
  fi
  if [ ! -c /dev/net/tun ] && command -v modprobe >/dev/null; then
    modprobe tun 2>/dev/null || true
  fi
  [ -c /dev/net/tun ] || die "/dev/net/tun is missing: load the module ('modprobe tun'), or in a container pass the device (--device /dev/net/tun)"
}

# Give files made under sudo back to the user who ran sudo (no-op when not under sudo).
give_to_invoking_user() {
  local uid="${SUDO_UID:-}" gid="${SUDO_GID:-${SUDO_UID:-}}" p
  [ -n "$uid" ] && [ "$uid" != 0 ] || return 0
  for p in "$@"; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    chown -Rh "$uid:$gid" "$p" 2>/dev/null || say "warning: could not give $p to uid $uid"
  done
}

# __pycache__ folders that a root run left in the tree, given back as well.
give_caches_to_invoking_user() {
  local d
  [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ] || return 0
  for d in tunlab tests scenarios topologies bench scripts; do
    [ -d "$TUNLAB_ROOT/$d" ] || continue
    while IFS= read -r -d '' c; do give_to_invoking_user "$c"; done \
      < <(find "$TUNLAB_ROOT/$d" -name __pycache__ -type d -prune -print0)
  done
}

# The comment block at the top of a script (after the #! line), as its --help.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }
