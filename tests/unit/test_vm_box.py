"""vagrant/build-box.sh makes a valid libvirt box: checked on its output, without booting it.

The disk and box steps run for real on a small root file system made here (a kernel and an initrd
that are only bytes, a few files): the box's members, metadata.json, the qcow2 image, its MBR with the
SYSLINUX boot code and the two partitions, the FAT boot partition's kernel, initrd and boot line, and
the ext4 root file system (read back with debugfs). A box already built on this machine (the cache of
vagrant/vm.sh) is checked too, from its tar stream alone. Booting it is the vm tier's job.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "vagrant/build-box.sh"
TOOLS = ["mkfs.ext4", "mkfs.vfat", "mcopy", "mtype", "syslinux", "sfdisk", "qemu-img", "debugfs"]
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
BOX_MEMBERS = {"metadata.json", "Vagrantfile", "tunlab-box.json", "box.img"}
QCOW2_MAGIC = b"QFI\xfb"
SECTOR = 512
BOOT_START, ROOT_START = 2048, 2048 + 262144  # as vagrant/build-box.sh lays the disk out

missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if MBR_BIN.exists() else ["syslinux-common"])
needs_tools = pytest.mark.skipif(bool(missing), reason=f"box tools missing ({', '.join(missing)}): "
                                                       "sudo bash scripts/setup.sh --vagrant installs them")


def check_metadata(meta: dict) -> None:
    """What vagrant-libvirt requires of a v1 box (action/handle_box_image.rb)."""
    assert meta["provider"] == "libvirt"
    assert meta["format"] == "qcow2"
    assert isinstance(meta["virtual_size"], int) and meta["virtual_size"] > 0
    assert "disks" not in meta  # v1: one box.img


def qcow2_virtual_size(header: bytes) -> int:
    assert header[:4] == QCOW2_MAGIC, f"box.img is not qcow2 (magic {header[:4]!r})"
    version, = struct.unpack(">I", header[4:8])
    assert version in (2, 3)
    size, = struct.unpack(">Q", header[24:32])
    return size


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if missing:
        pytest.skip(f"box tools missing ({', '.join(missing)}): sudo bash scripts/setup.sh --vagrant installs them")
    tmp = tmp_path_factory.mktemp("box")
    root = tmp / "root"
    (root / "boot").mkdir(parents=True)
    (root / "etc").mkdir()
    kernel = os.urandom(300_000)
    initrd = os.urandom(200_000)
    (root / "boot/vmlinuz-6.1.0-99-amd64").write_bytes(kernel)
    (root / "boot/initrd.img-6.1.0-99-amd64").write_bytes(initrd)
    (root / "etc/hostname").write_text("tunlab\n")
    box = tmp / "test.box"
    r = subprocess.run(["bash", str(BUILDER), "--package", str(root), str(box)], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp / "out"
    out.mkdir()
    with tarfile.open(box) as tar:
        names = set(tar.getnames())
        tar.extractall(out, filter="data")
    return {"tmp": tmp, "box": box, "names": names, "out": out, "kernel": kernel, "initrd": initrd}


@needs_tools
def test_box_has_the_libvirt_box_members_and_metadata(packaged: dict) -> None:
    assert packaged["names"] == BOX_MEMBERS
    meta = json.loads((packaged["out"] / "metadata.json").read_text())
    check_metadata(meta)
    info = json.loads((packaged["out"] / "tunlab-box.json").read_text())
    assert info["name"] == "tunlab/debian12" and info["kernel"] == "6.1.0-99-amd64"
    assert "Vagrant.configure" in (packaged["out"] / "Vagrantfile").read_text()


@needs_tools
def test_box_image_is_qcow2_of_the_declared_size(packaged: dict) -> None:
    img = packaged["out"] / "box.img"
    meta = json.loads((packaged["out"] / "metadata.json").read_text())
    q = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(img)], capture_output=True,
                                  text=True, check=True, timeout=60).stdout)
    assert q["format"] == "qcow2"
    assert q["virtual-size"] == meta["virtual_size"] * 1024**3
    assert qcow2_virtual_size(img.read_bytes()[:32]) == q["virtual-size"]


@pytest.fixture(scope="module")
def raw_disk(packaged: dict) -> Path:
    raw = packaged["tmp"] / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(packaged["out"] / "box.img"), str(raw)],
                   check=True, timeout=300)
    return raw


@needs_tools
def test_disk_boots_by_itself_mbr_and_partitions(raw_disk: Path) -> None:
    with raw_disk.open("rb") as f:
        mbr = f.read(SECTOR)
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[:440] == MBR_BIN.read_bytes()[:440], "the MBR does not hold SYSLINUX's boot code"
    parts = [struct.unpack("<B3xB3xII", mbr[446 + 16 * i:446 + 16 * (i + 1)]) for i in range(2)]
    (flag1, type1, start1, _), (flag2, type2, start2, size2) = parts
    assert (flag1, type1, start1) == (0x80, 0x0E, BOOT_START), "partition 1: active FAT16 (LBA) at 1 MiB"
    assert (flag2, type2, start2) == (0x00, 0x83, ROOT_START), "partition 2: Linux after the boot partition"
    assert (start2 + size2) * SECTOR == raw_disk.stat().st_size


@needs_tools
def test_boot_partition_holds_kernel_initrd_and_boot_line(packaged: dict, raw_disk: Path) -> None:
    fat = f"{raw_disk}@@{BOOT_START * SECTOR}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")

    def mtype(name: str) -> bytes:
        return subprocess.run(["mtype", "-i", fat, f"::/{name}"], env=env, capture_output=True, check=True,
                              timeout=60).stdout

    listing = subprocess.run(["mdir", "-a", "-i", fat, "::"], env=env, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert "ldlinux  sys" in listing, listing  # SYSLINUX installed into the partition
    assert mtype("vmlinuz") == packaged["kernel"]
    assert mtype("initrd.img") == packaged["initrd"]
    cfg = mtype("syslinux.cfg").decode()
    uuid = json.loads((packaged["out"] / "tunlab-box.json").read_text())["root_uuid"]
    assert "KERNEL /vmlinuz" in cfg and "INITRD /initrd.img" in cfg
    assert f"APPEND root=UUID={uuid} " in cfg


@needs_tools
def test_root_partition_is_ext4_with_the_root_file_system(packaged: dict, raw_disk: Path) -> None:
    offset = ROOT_START * SECTOR
    with raw_disk.open("rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    assert sb[56:58] == b"\x53\xef", "no ext2/3/4 superblock on partition 2"
    uuid = json.loads((packaged["out"] / "tunlab-box.json").read_text())["root_uuid"]
    assert sb[104:120].hex() == uuid.replace("-", "")
    r = subprocess.run(["debugfs", "-R", "cat /etc/hostname", f"{raw_disk}?offset={offset}"], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == "tunlab\n", r.stdout + r.stderr


def test_a_builder_without_its_tools_says_which_packages(tmp_path: Path) -> None:
    """One line naming the Debian packages, before any work (PATH without the disk tools)."""
    (tmp_path / "root/boot").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "cat", "mktemp", "rm", "basename", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    r = subprocess.run(["bash", str(BUILDER), "--package", str(tmp_path / "root"), str(tmp_path / "x.box")],
                       cwd=ROOT, env={"PATH": str(bin_dir)}, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("box: error: missing tools to build the box (Debian packages: ")
    assert "e2fsprogs" in lines[0] and "'sudo bash scripts/setup.sh --vagrant' installs them" in lines[0]
    assert not (tmp_path / "x.box").exists()


def cached_box() -> Path | None:
    catalog = Path(os.environ.get("TUNLAB_VM_CACHE", "/var/cache/tunlab/vm")) / "tunlab-debian12.json"
    try:
        url = json.loads(catalog.read_text())["versions"][0]["providers"][0]["url"]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    path = Path(url.removeprefix("file://"))
    return path if path.is_file() else None


@pytest.mark.skipif(cached_box() is None, reason="no box built on this machine yet (sudo bash vagrant/build-box.sh)")
def test_the_cached_box_is_a_valid_libvirt_box() -> None:
    """The real box of this machine, from its tar stream: no extraction of its 800 MB image."""
    box = cached_box()
    assert box is not None
    with tarfile.open(box) as tar:
        assert set(tar.getnames()) == BOX_MEMBERS
        meta = json.load(tar.extractfile("metadata.json"))
        check_metadata(meta)
        info = json.load(tar.extractfile("tunlab-box.json"))
        header = tar.extractfile("box.img").read(32)
    assert qcow2_virtual_size(header) == meta["virtual_size"] * 1024**3
    assert info["name"] == "tunlab/debian12" and info["kernel"].endswith("-amd64")
    for pkg in ("linux-image-amd64", "openssh-server", "sudo", "rsync", "mininet"):
        assert pkg in info["packages"].split(",")
