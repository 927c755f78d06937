#!/usr/bin/env bash
# tunlab's suite in the privileged Vagrant VM, from the box to the teardown, on this machine; nothing is
# left running. Each step is timed:
#   box        vagrant/build-box.sh: the tunlab/debian12 box, built from Debian's packages or cached
#   wheels     the Python packages setup.sh installs, downloaded once on the host (cached): the guest
#              installs them from there, with no network of its own
#   libvirt    the running libvirtd when there is one (e.g. systemd's); otherwise libvirtd and virtlogd
#              are started here, in a network namespace of their own (the VM's network, its bridge,
#              dnsmasq and firewall rules stay in it), and stopped at the end
#   boot       vagrant up --no-provision (KVM when vagrant/accel.sh shows that it works, else TCG)
#   provision  vagrant provision: scripts/setup.sh as root in the guest, as on any machine
#   demo       vagrant ssh -c 'cd /tunlab && sudo bash scripts/demo.sh'
#   tests      vagrant ssh -c 'cd /tunlab && sudo bash scripts/test.sh ...'
#   teardown   vagrant destroy -f; the daemons started here are stopped and checked gone
#
#   sudo bash vagrant/vm.sh                 # the whole suite inside (unit, netns and mininet tiers)
#   sudo bash vagrant/vm.sh --ci            # what CI runs (the suite's vm tier): the demo command and the
#                                           # netns tier's chain, scenario and plugin tests
#   sudo bash vagrant/vm.sh --check         # can a VM start here? one line; exit 0, or 77 when it cannot
#   sudo bash vagrant/vm.sh --ci --counts FILE   # also write "PASSED FAILED SKIPPED" of the tests inside
#
# Exit status: 0 passed, 1 failed, 77 the VM cannot start here at all (no QEMU, libvirt or Vagrant).
# Environment: TUNLAB_VM_CACHE (default /var/cache/tunlab/vm: box, wheels, Vagrant's box store),
# TUNLAB_VM_ACCEL=kvm|tcg, TUNLAB_VM_CPUS (2), TUNLAB_VM_MEMORY (MiB; 4096, --ci 2048),
# TUNLAB_VM_TESTS (the --ci test files inside, space separated), TUNLAB_VM_TIME_SCALE (default 4: how much
# longer default readiness deadlines are inside a VM without KVM; tunlab/system/pace.py).
set -euo pipefail
TUNLAB_SCRIPT_TAG="vm"
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$TUNLAB_ROOT"

CANNOT=77
CACHE="${TUNLAB_VM_CACHE:-/var/cache/tunlab/vm}"
CI_TESTS="${TUNLAB_VM_TESTS:-tests/netns/test_lab_chain.py tests/netns/test_scenarios.py tests/netns/test_plugin_labs.py}"

mode=suite counts_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) mode=ci ;;
    --check) mode=check ;;
    --counts) [ $# -ge 2 ] || die "--counts needs a file"; counts_file="$2"; shift ;;
    -h|--help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (known: --ci, --check, --counts FILE)" ;;
  esac
  shift
done

# ---- can a VM start here at all? (one line when not) ----------------------------------------------
cannot() { say "cannot start the VM here: $*"; exit "$CANNOT"; }

check_host() {
  local t missing=()
  [ "$(uname -s)" = Linux ] || cannot "this is $(uname -s), not Linux"
  [ "$(id -u)" -eq 0 ] || die "needs root (it builds the box and may start libvirtd): run it with sudo, e.g. 'sudo bash $0'"
  [ ! -e /etc/tunlab-box.json ] || cannot "this is the tunlab VM itself (no VM inside the VM)"
  for t in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils virsh:libvirt-clients vagrant:vagrant \
           mmdebstrap:mmdebstrap mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux sfdisk:fdisk; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
  done
  if ! virsh_ok && ! command -v libvirtd >/dev/null; then missing+=(libvirt-daemon-system); fi
  [ "${#missing[@]}" -eq 0 ] \
    || cannot "missing ${missing[*]} ('sudo bash scripts/setup.sh --vagrant' installs them)"
  VAGRANT_CHECKPOINT_DISABLE=1 vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt' \
    || cannot "Vagrant has no vagrant-libvirt plugin ('sudo bash scripts/setup.sh --vagrant' installs it)"
}

virsh_ok() { timeout 15 virsh -c qemu:///system uri >/dev/null 2>&1; }

check_host
if [ "$mode" = check ]; then
  say "a VM can start here ($(bash vagrant/accel.sh))"
  exit 0
fi

# ---- ownership: everything started here is recorded and stopped by cleanup ------------------------
mkdir -p "$CACHE"
exec 8>"$CACHE/vm.lock"
flock -w 900 8 || die "another VM run holds $CACHE/vm.lock"
work="$(mktemp -d /tmp/tunlab-vm.XXXXXX)"
chmod 0755 "$work"  # qemu (user libvirt-qemu) writes the serial log here
run_id="tunlab-vm-$(basename "$work" | cut -d. -f2 | tr 'A-Z' 'a-z')"
holder=""     # pid of the process that holds our network namespace (when we start libvirtd)
ns=()         # command prefix that enters it
vagrant_up=0
steps=()

export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_HOME="$CACHE/vagrant-home"        # the box store, kept between runs like the box
export VAGRANT_DOTFILE_PATH="$work/vagrant-state" # this run's machine, never a user's vagrant/.vagrant
export TUNLAB_VM_PREFIX="$run_id-"               # the libvirt domain: $run_id-default
export TUNLAB_VM_SERIAL_LOG="$work/serial.log"
export TUNLAB_VM_CACHE="$CACHE"
if [ "$mode" = ci ]; then export TUNLAB_VM_MEMORY="${TUNLAB_VM_MEMORY:-2048}"; fi

step() {  # step NAME COMMAND...: run, time, record
  local name="$1" t0=$SECONDS rc=0
  shift
  say "---- $name"
  "$@" || rc=$?
  steps+=("$(printf '%-10s %5d s  %s' "$name" "$((SECONDS - t0))" "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)")")")
  return "$rc"
}

in_ns() { "${ns[@]}" "$@"; }

vagrant_cmd() {  # vagrant in vagrant/ (and in our namespace), without its upload progress meter
  (cd vagrant && in_ns vagrant "$@") 2>&1 | sed -u -E 's/(\x1b\[K)?Progress: [0-9]+%//g; s/\x1b\[K//g'
  return "${PIPESTATUS[0]}"
}

pids_in_netns() {  # every process whose network namespace is the holder's
  local target p
  target="$(readlink "/proc/$holder/ns/net" 2>/dev/null)" || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$target" ] && echo "${p#/proc/}"
  done
  return 0
}

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 20 s, then KILL
  local pid="$1" name="$2" i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  say "warning: $name (pid $pid) did not stop on TERM: KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
  local left=() d pid
  if [ "$vagrant_up" -eq 1 ]; then
    timeout 300 bash -c "cd vagrant && $(printf '%q ' "${ns[@]}") vagrant destroy -f" || say "warning: 'vagrant destroy -f' failed"
  fi
  # a domain or a volume of this run that vagrant did not remove (it was interrupted, say)
  if virsh_ok; then
    for d in $(virsh -c qemu:///system list --all --name 2>/dev/null | grep "^$run_id-" || true); do
      say "removing the leftover domain $d"
      virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
      virsh -c qemu:///system undefine "$d" --remove-all-storage >/dev/null 2>&1 || true
    done
  fi
  if [ -n "$holder" ]; then
    # our libvirtd: its networks first (they own dnsmasq), then the daemons, then whatever is left in
    # the namespace (only this run's processes can be there), then the namespace itself
    for d in $(virsh -c qemu:///system net-list --name 2>/dev/null || true); do
      virsh -c qemu:///system net-destroy "$d" >/dev/null 2>&1 || true
    done
    stop_pid "$(cat "$work/libvirtd.pid" 2>/dev/null)" libvirtd
    stop_pid "$(cat "$work/virtlogd.pid" 2>/dev/null)" virtlogd
    for pid in $(pids_in_netns); do
      [ "$pid" = "$holder" ] && continue
      say "stopping $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-80) (pid $pid, in the VM's namespace)"
      stop_pid "$pid" "pid $pid"
    done
    stop_pid "$holder" "network namespace holder"
    for pid in $(cat "$work"/*.pid 2>/dev/null) "$holder"; do
      kill -0 "$pid" 2>/dev/null && left+=("pid $pid")
    done
  fi
  if [ "${#left[@]}" -gt 0 ]; then
    say "LEFT BEHIND: ${left[*]}"
    return 1
  fi
  return 0
}

cleanup_done=0
cleanup() {
  local rc=$?
  [ "$cleanup_done" -eq 1 ] && return
  cleanup_done=1
  trap - INT TERM
  step teardown teardown || rc=1
  say "---- times"
  printf 'vm:   %s\n' "${steps[@]}"
  if [ "$rc" -ne 0 ] && [ -s "$work/serial.log" ]; then
    say "the guest's serial console, last lines ($work/serial.log is removed now):"
    tail -n 30 "$work/serial.log" | sed 's/^/vm:   | /'
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted: tearing down"; exit 130' INT TERM

# ---- box ------------------------------------------------------------------------------------------
step box bash vagrant/build-box.sh

# ---- wheels: the guest's pip installs from the host's download, not from the network ---------------
wheels() {
  local py key dir
  py=".venv/bin/python"; [ -x "$py" ] || py="python3"
  key="$( { cat pyproject.toml; "$py" -c 'import sys; print(sys.version_info[:2])'; } | sha256sum | cut -c1-12)"
  dir="$CACHE/wheels-$key"
  if [ -f "$dir/.complete" ]; then
    say "cached: $dir ($(find "$dir" -name '*.whl' | wc -l) wheels)"
  else
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    "$py" -m pip download --disable-pip-version-check --no-input -q -d "$dir.tmp" ".[test]" "setuptools>=64" wheel \
      >"$work/pip.log" 2>&1 || { tail -n 20 "$work/pip.log" >&2; die "pip download failed (above)"; }
    rm -f "$dir.tmp"/tunlab-*  # the project itself comes from /tunlab
    touch "$dir.tmp/.complete"
    mv "$dir.tmp" "$dir"
    say "downloaded $(find "$dir" -name '*.whl' | wc -l) wheels to $dir"
    for old in "$CACHE"/wheels-*; do [ "$old" = "$dir" ] || rm -rf "$old"; done
  fi
  export TUNLAB_VM_WHEELS="$dir"
}
step wheels wheels

# ---- libvirt --------------------------------------------------------------------------------------
libvirt() {
  local i
  if virsh_ok; then
    say "using the running libvirtd ($(virsh -c qemu:///system version --daemon 2>/dev/null | grep -i daemon | head -n 1))"
    return 0
  fi
  # a network namespace of our own, held by a sleeping process, that the daemons, the VM and vagrant use
  unshare --net -- sleep infinity 8>&- &  # (the lock on fd 8 stays with this script)
  holder=$!
  for i in $(seq 1 50); do
    [ "$(readlink "/proc/$holder/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.1
  done
  ns=(nsenter "--net=/proc/$holder/ns/net")
  in_ns ip link set lo up
  in_ns virtlogd --daemon --pid-file "$work/virtlogd.pid" 8>&-
  in_ns libvirtd --daemon --pid-file "$work/libvirtd.pid" 8>&-
  for i in $(seq 1 120); do
    virsh_ok && break
    sleep 0.5
  done
  virsh_ok || die "libvirtd did not answer within 60 s"
  say "started libvirtd (pid $(cat "$work/libvirtd.pid")) and virtlogd (pid $(cat "$work/virtlogd.pid")) in a network namespace of their own (held by pid $holder)"
}
step libvirt libvirt

# the libvirt pool's copies of older box versions (vagrant-libvirt uploads each version once)
version="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["versions"][0]["version"])' "$CACHE/tunlab-debian12.json")"
for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk '{print $1}' \
             | grep '^tunlab-VAGRANTSLASH-debian12_vagrant_box_image_' | grep -v "_${version}_" || true); do
  virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null 2>&1 && say "removed the older box volume $vol"
done

say "accelerator: $(bash vagrant/accel.sh)"

# ---- boot, provision, run -------------------------------------------------------------------------
vagrant_up=1
step boot vagrant_cmd up --provider libvirt --no-provision
step provision vagrant_cmd provision

rc=0
step demo vagrant_cmd ssh -c 'cd /tunlab && sudo bash scripts/demo.sh' || rc=1
if [ "$mode" = ci ]; then
  # shellcheck disable=SC2086  # the test files are words
  # without KVM the guest runs several times slower (and slower still on a loaded host): default readiness
  # deadlines are scaled (tunlab/system/pace.py), explicit ones in tests stay as written
  scale=1
  case "$(bash vagrant/accel.sh)" in tcg*) scale=${TUNLAB_VM_TIME_SCALE:-4} ;; esac
  inside="cd /tunlab && sudo TUNLAB_TIME_SCALE=$scale TUNLAB_TIER_TIMEOUT=${TUNLAB_VM_TIER_TIMEOUT:-1800} bash scripts/test.sh --tier netns $CI_TESTS"
else
  inside="cd /tunlab && sudo bash scripts/test.sh"
fi
run_inside() { vagrant_cmd ssh -c "$1" 2>&1 | tee "$work/tests.log"; }
step tests run_inside "$inside" || rc=1
closing="$(grep -aE '^suite: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$work/tests.log" | tail -n 1 || true)"
if [ -z "$closing" ]; then
  say "the suite inside the VM printed no closing line"
  rc=1
elif [ -n "$counts_file" ]; then
  echo "$closing" | awk '{print $2, $4, $6}' > "$counts_file"
fi
grep -aq 'suite: every tier passed' "$work/tests.log" || rc=1
exit "$rc"
