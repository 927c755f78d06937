#!/usr/bin/env bash
# Build tunlab's Vagrant box for the libvirt provider from Debian's packages only: a Debian 12 root file
# system (mmdebstrap: minbase, Debian's kernel, systemd, an SSH server, sudo, rsync, and the packages
# scripts/setup.sh installs, so that provisioning needs no apt), the vagrant user with Vagrant's insecure
# key (Vagrant swaps it for a key of its own at the first `vagrant up`), on an 8 GiB MBR disk that boots
# by itself (SYSLINUX on a small FAT partition, the root file system on ext4), packaged as a libvirt box
# (box.img in qcow2 + metadata.json) with a catalog that vagrant/Vagrantfile adds it from as
# tunlab/debian12. No loop device and no mount: mkfs.ext4 -d, mkfs.vfat, mtools and syslinux write
# straight into the disk file.
#
#   sudo bash vagrant/build-box.sh              # build, or reuse the cached box (seconds); add it to Vagrant
#   sudo bash vagrant/build-box.sh --force      # build again even when the cached box is current
#   sudo bash vagrant/build-box.sh --no-add     # build only (the Vagrantfile adds it at `vagrant up`)
#   bash vagrant/build-box.sh --print-catalog   # where the catalog is
#   bash vagrant/build-box.sh --package ROOT OUT.box   # only the disk and box steps, for a prepared root
#                                               # file system (tests/unit/test_vm_box.py)
#
# Cache: TUNLAB_VM_CACHE (default /var/cache/tunlab/vm), outside the clone so that a fresh clone on the
# same machine reuses it. The cached box is current when its key matches: a hash of this script, the
# package lists, Vagrant's insecure public key and the apt sources the guest is built from.
# Environment: TUNLAB_VM_SOURCES=FILE apt sources (one-line or deb822) for the guest (default: this
# host's Debian sources); TUNLAB_VM_SUITE (default bookworm).
set -euo pipefail
TUNLAB_SCRIPT_TAG="box"
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$TUNLAB_ROOT"

BOX_NAME="tunlab/debian12"
CACHE="${TUNLAB_VM_CACHE:-/var/cache/tunlab/vm}"
CATALOG="$CACHE/tunlab-debian12.json"
SUITE="${TUNLAB_VM_SUITE:-bookworm}"
DISK_GIB=8           # virtual size of the box disk (metadata.json virtual_size, in GiB)
BOOT_START=2048      # sectors: the FAT boot partition starts at 1 MiB ...
BOOT_SECTORS=262144  # ... and is 128 MiB (a kernel and an initrd of ~45 MiB)
ROOT_START=$((BOOT_START + BOOT_SECTORS))
HOSTNAME_GUEST="tunlab"
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
# What makes it a Vagrant box, beside the lab's own packages (no Recommends: mmdebstrap's default).
BOX_DEBS=(linux-image-amd64 systemd-sysv udev openssh-server sudo rsync ifupdown isc-dhcp-client
          ca-certificates less)

force=0 add=1 package_root="" package_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --no-add) add=0 ;;
    --print-catalog) echo "$CATALOG"; exit 0 ;;
    --package) [ $# -ge 3 ] || die "--package needs ROOT and OUT.box"; package_root="$2"; package_out="$3"; shift 2 ;;
    -h|--help) usage "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (known: --force, --no-add, --print-catalog, --package ROOT OUT.box)" ;;
  esac
  shift
done

need_tools() {
  local t need=()
  for t in "$@"; do command -v "${t%%:*}" >/dev/null || need+=("${t#*:}"); done
  [ -f "$MBR_BIN" ] || need+=(syslinux-common)
  [ "${#need[@]}" -eq 0 ] || die "missing tools to build the box (Debian packages: ${need[*]}): 'sudo bash scripts/setup.sh --vagrant' installs them"
}
DISK_TOOLS=(mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux sfdisk:fdisk qemu-img:qemu-utils)

# ---- the disk: MBR, FAT boot partition with SYSLINUX, ext4 root; no loop device, no mount ----------
# make_disk ROOT UUID CMDLINE OUT.qcow2: the kernel and initrd are ROOT/boot/vmlinuz-* and initrd.img-*
make_disk() {
  local r="$1" uuid="$2" cmdline="$3" out="$4" disk="$4.raw" kver total boot_img
  kver="$(basename "$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)")"
  kver="${kver#vmlinuz-}"
  [ -n "$kver" ] && [ -f "$r/boot/initrd.img-$kver" ] || die "no kernel with an initrd in $r/boot"
  total=$((DISK_GIB * 1024 * 1024 * 2))  # sectors
  rm -f "$disk"
  truncate -s "$((total * 512))" "$disk"
  printf 'label: dos\nstart=%s, size=%s, type=e, bootable\nstart=%s, type=83\n' \
    "$BOOT_START" "$BOOT_SECTORS" "$ROOT_START" | sfdisk -q "$disk" >/dev/null
  # FAT16 at the partition's offset; its boot sector counts the sectors before it (hidden sectors)
  mkfs.vfat -F 16 -n TUNLABBOOT -h "$BOOT_START" --offset "$BOOT_START" "$disk" "$((BOOT_SECTORS / 2))" \
    >/dev/null 2>&1 || die "mkfs.vfat failed"
  boot_img="$disk@@$((BOOT_START * 512))"
  printf 'SERIAL 0 115200\nDEFAULT tunlab\nPROMPT 0\nTIMEOUT 0\nLABEL tunlab\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
    "$cmdline" > "$disk.cfg"
  export MTOOLS_SKIP_CHECK=1
  mcopy -i "$boot_img" "$r/boot/vmlinuz-$kver" ::/vmlinuz
  mcopy -i "$boot_img" "$r/boot/initrd.img-$kver" ::/initrd.img
  mcopy -i "$boot_img" "$disk.cfg" ::/syslinux.cfg
  rm -f "$disk.cfg"
  syslinux --offset "$((BOOT_START * 512))" --install "$disk" || die "syslinux --install failed"
  dd if="$MBR_BIN" of="$disk" bs=440 count=1 conv=notrunc status=none
  mkfs.ext4 -q -F -L tunlab-root -U "$uuid" -d "$r" -E "offset=$((ROOT_START * 512))" "$disk" \
    "$(((total - ROOT_START) / 2))k" || die "mkfs.ext4 -d failed"
  qemu-img convert -f raw -O qcow2 "$disk" "$out" || die "qemu-img convert failed"
  rm -f "$disk"
  echo "$kver"
}

# package_box DIR OUT.box INFO_JSON: DIR holds box.img; writes metadata.json, Vagrantfile, tunlab-box.json
package_box() {
  local dir="$1" out="$2" info="$3"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$DISK_GIB" > "$dir/metadata.json"
  cat > "$dir/Vagrantfile" <<'EOF'
# tunlab/debian12: built by tunlab's vagrant/build-box.sh from Debian's packages.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
  printf '%s\n' "$info" > "$dir/tunlab-box.json"
  tar -C "$dir" -cf "$out.tmp" metadata.json Vagrantfile tunlab-box.json box.img
  mv "$out.tmp" "$out"
}

if [ -n "$package_root" ]; then
  need_tools "${DISK_TOOLS[@]}"
  [ -d "$package_root/boot" ] || die "--package: $package_root has no boot/ folder"
  out_dir="$(mktemp -d "$(dirname "$package_out")/.box.XXXXXX")"
  trap 'rm -rf "$out_dir"' EXIT
  uuid="$(cat /proc/sys/kernel/random/uuid)"
  kver="$(make_disk "$package_root" "$uuid" "root=UUID=$uuid ro console=ttyS0" "$out_dir/box.img")"
  package_box "$out_dir" "$package_out" "{\"name\": \"$BOX_NAME\", \"kernel\": \"$kver\", \"root_uuid\": \"$uuid\"}"
  say "packaged $package_root as $package_out"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap builds the guest's root file system with chroot): run it with sudo, e.g. 'sudo bash $0'"

# ---- inputs ---------------------------------------------------------------------------------------
insecure_pub=""
for f in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
  [ -f "$f" ] && { insecure_pub="$f"; break; }
done
[ -n "$insecure_pub" ] || die "Vagrant's insecure public key (keys/vagrant.pub of the vagrant package) was not found: 'sudo bash scripts/setup.sh --vagrant' installs Vagrant"

sources="${TUNLAB_VM_SOURCES:-}"
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ] && grep -qE '^[^#]*(deb|URIs:)' "$f"; then sources="$f"; break; fi
  done
fi
[ -n "$sources" ] && [ -s "$sources" ] || die "no apt sources for the guest (looked at /etc/apt/sources.list.d/debian.sources and /etc/apt/sources.list): set TUNLAB_VM_SOURCES=FILE"

mapfile -t lab_debs < <(bash scripts/setup.sh --print-debs)
[ "${#lab_debs[@]}" -gt 0 ] || die "'bash scripts/setup.sh --print-debs' printed no packages"

key="$( { cat "${BASH_SOURCE[0]}"; echo "$SUITE"; printf '%s\n' "${lab_debs[@]}" "${BOX_DEBS[@]}";
          cat "$insecure_pub"; grep -v '^#' "$sources"; } | sha256sum | cut -c1-16)"
box_file="$CACHE/tunlab-debian12-$key.box"

catalog_version() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["versions"][0]["version"])' "$CATALOG"; }

# ---- add: into the Vagrant home of whoever runs vagrant (the Vagrantfile's box_url does the same) ---
box_versions() {  # the versions of tunlab/debian12 in Vagrant's box store
  "$@" vagrant box list --machine-readable 2>/dev/null \
    | awk -F, -v n="$BOX_NAME" '$3 == "box-name" { name = $4 } $3 == "box-version" && name == n { print $4 }'
}

add_box() {
  local version run_as=() old
  version="$(catalog_version)"
  command -v vagrant >/dev/null || { say "vagrant is not installed: box not added (the Vagrantfile adds it at 'vagrant up')"; return 0; }
  # under sudo the box belongs in the invoking user's Vagrant home, where their `vagrant up` looks
  if [ -n "${SUDO_USER:-}" ] && [ "${SUDO_USER}" != root ] && [ -z "${VAGRANT_HOME:-}" ]; then
    run_as=(sudo -u "$SUDO_USER" -H)
  fi
  export VAGRANT_CHECKPOINT_DISABLE=1
  if box_versions "${run_as[@]}" | grep -qxF "$version"; then
    say "box $BOX_NAME $version is in Vagrant already"
  else
    say "adding box $BOX_NAME $version to Vagrant"
    "${run_as[@]}" vagrant box add --force --provider libvirt "$CATALOG" >/dev/null \
      || die "'vagrant box add $CATALOG' failed"
  fi
  # older versions of this box go (vagrant/vm.sh removes their copies in libvirt's storage pool)
  while read -r old; do
    [ -n "$old" ] && [ "$old" != "$version" ] || continue
    "${run_as[@]}" vagrant box remove --force --provider libvirt --box-version "$old" "$BOX_NAME" >/dev/null 2>&1 \
      && say "removed the older box version $old from Vagrant"
  done < <(box_versions "${run_as[@]}")
}

if [ "$force" -eq 0 ] && [ -s "$box_file" ] && [ -s "$CATALOG" ] && grep -q "$(basename "$box_file")" "$CATALOG"; then
  say "cached: $box_file (key $key, version $(catalog_version))"
  [ "$add" -eq 0 ] || add_box
  exit 0
fi

need_tools mmdebstrap:mmdebstrap "${DISK_TOOLS[@]}"
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock -w 1800 9 || die "another build holds $CACHE/build.lock"
work="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
t_start=$SECONDS

# ---- root file system -----------------------------------------------------------------------------
include="$(IFS=,; echo "${BOX_DEBS[*]},${lab_debs[*]}")"
say "mmdebstrap $SUITE (minbase + $include) from $sources"
# docs, man pages and translations are left out of the box (copyright files stay); the initrd (made
# once, when the kernel is installed) holds only what finds the root disk, virtio or SATA/SCSI: Debian's
# default, most modules, takes 15 s to unpack under TCG
initrd_hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"
  echo MODULES=list > "$1/etc/initramfs-tools/conf.d/tunlab.conf"
  printf "%s\n" virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix ext4 crc32c_generic \
    > "$1/usr/share/initramfs-tools/modules.d/tunlab"'
if ! mmdebstrap --variant=minbase --include="$include" --setup-hook="$initrd_hook" \
       --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
       --dpkgopt='path-include=/usr/share/locale/locale.alias' \
       --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
       "$SUITE" "$work/root" "$sources" >"$work/mmdebstrap.log" 2>&1; then
  tail -n 20 "$work/mmdebstrap.log" >&2
  die "mmdebstrap failed (above)"
fi
say "root file system built in $((SECONDS - t_start)) s ($(du -sh "$work/root" | cut -f1))"

r="$work/root"
root_uuid="$(cat /proc/sys/kernel/random/uuid)"
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
version="$(date -u +%Y.%m%d.%H%M%S | sed 's/\.0*\([0-9]\)/.\1/g')"  # a Gem::Version that grows with time

echo "$HOSTNAME_GUEST" > "$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$HOSTNAME_GUEST" > "$r/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$root_uuid" > "$r/etc/fstab"
rm -f "$r/etc/resolv.conf"  # the build host's; dhclient writes the guest's
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > "$r/etc/network/interfaces"
# SSH host keys are made at the guest's first boot, never shared by every VM of the box
rm -f "$r"/etc/ssh/ssh_host_*
mkdir -p "$r/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > "$r/etc/systemd/system/ssh.service.d/tunlab-host-keys.conf"
printf 'UseDNS no\n' > "$r/etc/ssh/sshd_config.d/tunlab.conf"
# nothing runs apt behind the tests' back (the guest may have no network); no desktop target, no
# e2scrub (LVM only): boot under software emulation is short enough as it is
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done
ln -sf /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
# the vagrant user: password vagrant, passwordless sudo, Vagrant's insecure key
chroot "$r" useradd --create-home --shell /bin/bash --user-group vagrant
echo 'vagrant:vagrant' | chroot "$r" chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > "$r/etc/sudoers.d/vagrant"
chmod 0440 "$r/etc/sudoers.d/vagrant"
vuid="$(chroot "$r" id -u vagrant)"
install -d -m 0700 -o "$vuid" -g "$vuid" "$r/home/vagrant/.ssh"
install -m 0600 -o "$vuid" -g "$vuid" "$insecure_pub" "$r/home/vagrant/.ssh/authorized_keys"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*_* "$r"/tmp/* "$r"/var/tmp/*
: > "$r/etc/machine-id"  # systemd makes one at first boot
kver="$(basename "$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)")"  # as make_disk picks it
info="$(python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2])), indent=1))' \
  name "$BOX_NAME" version "$version" key "$key" suite "$SUITE" kernel "${kver#vmlinuz-}" cmdline "$cmdline" root_uuid "$root_uuid" \
  built "$(date -u +%Y-%m-%dT%H:%M:%SZ)" packages "$include")"
printf '%s\n' "$info" > "$r/etc/tunlab-box.json"  # also tells vagrant/vm.sh that it runs inside the VM

t_disk=$SECONDS
kver="$(make_disk "$r" "$root_uuid" "$cmdline" "$work/box.img")"
install -m 0644 "$r/boot/vmlinuz-$kver" "$CACHE/probe-vmlinuz.tmp"  # vagrant/accel.sh's KVM probe boots it
rm -rf "$r"
package_box "$work" "$work/box" "$info"
mv "$work/box" "$box_file"
mv "$CACHE/probe-vmlinuz.tmp" "$CACHE/probe-vmlinuz"
say "disk and box made in $((SECONDS - t_disk)) s"

sum="$(sha256sum "$box_file" | cut -d' ' -f1)"
python3 - "$CATALOG.tmp" "$BOX_NAME" "$version" "$box_file" "$sum" <<'PY'
import json, sys
path, name, version, box, sha = sys.argv[1:]
json.dump({"name": name, "description": "Debian 12 for tunlab, built from Debian's packages",
           "versions": [{"version": version, "providers": [
               {"name": "libvirt", "url": "file://" + box, "checksum_type": "sha256", "checksum": sha}]}]},
          open(path, "w"), indent=1)
PY
mv "$CATALOG.tmp" "$CATALOG"
for f in "$CACHE"/tunlab-debian12-*.box; do  # one box file in the cache: older builds go
  [ "$f" = "$box_file" ] || rm -f "$f"
done
say "built $box_file ($(du -h "$box_file" | cut -f1), version $version, kernel $kver) in $((SECONDS - t_start)) s"
[ "$add" -eq 0 ] || add_box
