#!/usr/bin/env bash
# Which accelerator the tunlab VM uses: prints one line, "kvm: REASON" or "tcg: REASON" (exit 0).
# KVM only when a probe shows that a guest really boots with it: /dev/kvm existing is not enough (with
# nested virtualisation switched off or broken, a KVM guest can hang right after the boot loader). The
# probe boots the box's kernel under KVM with no root file system and waits for the kernel to reach its
# end ("Unable to mount root fs"), which takes a second or two where KVM works; otherwise TCG (software
# emulation: slower, works everywhere).
#
#   bash vagrant/accel.sh            # the verdict, cached for this boot of the host
#   bash vagrant/accel.sh --fresh    # probe again
#
# Environment: TUNLAB_VM_ACCEL=kvm|tcg forces one (no probe); TUNLAB_VM_CACHE (default /var/cache/tunlab/vm)
# holds the probe's kernel (vagrant/build-box.sh puts it there); TUNLAB_KVM_PROBE_TIMEOUT (s, default 30).
set -uo pipefail

fresh=0
case "${1:-}" in
  --fresh) fresh=1 ;;
  -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
  "") ;;
  *) echo "accel: error: unknown option '$1' (known: --fresh)" >&2; exit 2 ;;
esac

case "${TUNLAB_VM_ACCEL:-}" in
  kvm|tcg) echo "$TUNLAB_VM_ACCEL: forced by TUNLAB_VM_ACCEL"; exit 0 ;;
  "") ;;
  *) echo "accel: error: TUNLAB_VM_ACCEL=$TUNLAB_VM_ACCEL: use kvm or tcg" >&2; exit 2 ;;
esac

cache="${TUNLAB_VM_CACHE:-/var/cache/tunlab/vm}"
kernel="$cache/probe-vmlinuz"
boot_id="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)"
verdict_file="${XDG_RUNTIME_DIR:-/tmp}/tunlab-kvm-probe-$(id -u)"

if [ "$fresh" -eq 0 ] && [ -f "$verdict_file" ]; then
  read -r cached_boot cached_kernel verdict < "$verdict_file"
  if [ "$cached_boot" = "$boot_id" ] && [ "$cached_kernel" = "$(stat -c %Y "$kernel" 2>/dev/null || echo none)" ]; then
    echo "$verdict (probed earlier in this boot)"
    exit 0
  fi
fi

probe() {
  local qemu log timeout_s
  if [ ! -e /dev/kvm ]; then echo "tcg: no /dev/kvm"; return; fi
  if ! { : <>/dev/kvm; } 2>/dev/null; then echo "tcg: /dev/kvm is not usable by $(id -un) (group kvm?)"; return; fi
  qemu="$(command -v qemu-system-x86_64)" || { echo "tcg: qemu-system-x86_64 is not installed"; return; }
  [ -s "$kernel" ] || { echo "tcg: no probe kernel at $kernel (sudo bash vagrant/build-box.sh makes it)"; return; }
  timeout_s="${TUNLAB_KVM_PROBE_TIMEOUT:-30}"
  log="$(mktemp "${TMPDIR:-/tmp}/tunlab-kvm-probe.XXXXXX")"
  timeout --kill-after=5 "$timeout_s" "$qemu" -accel kvm -m 256 -nodefaults -display none \
    -no-reboot -serial "file:$log" -kernel "$kernel" -append "console=ttyS0 panic=-1 loglevel=2" \
    >"$log.err" 2>&1 </dev/null
  local rc=$?
  if grep -aq "Unable to mount root fs\|Kernel panic" "$log"; then
    echo "kvm: a KVM guest booted its kernel to the end"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "tcg: a KVM guest did not boot within ${timeout_s} s (it hangs: no usable nested virtualisation)"
  else
    echo "tcg: qemu -accel kvm failed (exit $rc: $(grep -v warning "$log.err" | head -n 1 | cut -c1-120))"
  fi
  rm -f "$log" "$log.err"
}

verdict="$(probe)"
printf '%s %s %s\n' "$boot_id" "$(stat -c %Y "$kernel" 2>/dev/null || echo none)" "$verdict" > "$verdict_file" 2>/dev/null || true
echo "$verdict"
