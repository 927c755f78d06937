"""TUN/TAP devices: open through ``/dev/net/tun`` (ioctl TUNSETIFF), configure through pyroute2.

Opening or attaching needs only ``fcntl``/``socket``; pyroute2 is imported inside :func:`configure` so the
``--attach`` path and the packet loop never pay for it. A device we create is transient: it disappears
when its file descriptor is closed (relay exit, even ``kill -9``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from tunlab.errors import NeedRoot, TunlabError

from .config import check_ifname

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCGIFMTU = 0x8921
IFA_F_NODAD = 0x02


class DeviceError(TunlabError):
    pass


class Device:
    """An open TUN/TAP file descriptor (nonblocking) and what we know about its interface."""

    def __init__(self, fd: int, name: str, *, tap: bool, created: bool, flags: int = 0) -> None:
        self.fd = fd
        self.name = name
        self.tap = tap
        self.created = created
        self.flags = flags

    @classmethod
    def from_fd(cls, fd: int, name: str, *, tap: bool = False) -> "Device":
        """Wrap any packet-oriented descriptor (used by unprivileged tests with a SOCK_SEQPACKET pair)."""
        os.set_blocking(fd, False)
        return cls(fd, name, tap=tap, created=False)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        kind = "tap" if self.tap else "tun"
        return f"<Device {self.name} {kind} fd={self.fd}>"


def interface_exists(name: str) -> bool:
    """True if ``name`` exists in this thread's network namespace (asks the kernel, not /sys)."""
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def interface_mtu(name: str) -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si12x", name.encode(), 0))
        except OSError:
            return None
    return int(struct.unpack("16si12x", res)[1])


def open_device(name: str, *, tap: bool = False, attach: bool = False, extra_flags: int = 0) -> Device:
    """Create a transient TUN/TAP device ``name`` (or, with ``attach``, open the existing one).

    ``extra_flags`` is for other datapaths (e.g. IFF_VNET_HDR); IFF_NO_PI is always set.
    """
    check_ifname(name)
    exists = interface_exists(name)
    if attach and not exists:
        raise DeviceError(f"--attach: there is no device {name!r} in this network namespace",
                          f"create it first (ip tuntap add {name} mode {'tap' if tap else 'tun'}) or drop --attach")
    if not attach and exists:
        raise DeviceError(f"device {name!r} already exists", "pick another name, or --attach to use it")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DeviceError(f"{TUN_PATH} is missing: this kernel or container has no TUN support",
                          "load the tun module (modprobe tun) or give the container /dev/net/tun") from None
    except PermissionError:
        raise NeedRoot(f"opening {TUN_PATH} needs root (CAP_NET_ADMIN)", "run it with sudo") from None
    flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI | extra_flags
    try:
        res = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        raise _setiff_error(exc, name, tap, attach) from None
    real = struct.unpack("16sH22x", res)[0].rstrip(b"\0").decode()
    return Device(fd, real, tap=tap, created=not attach, flags=flags)


def create_persistent(name: str, *, tap: bool = False) -> None:
    """A persistent TUN (or TAP) device without packet-info header in this thread's namespace, left closed:
    a relay started with ``--attach`` opens it (the lab makes its nodes' devices this way)."""
    dev = open_device(name, tap=tap)
    try:
        fcntl.ioctl(dev.fd, TUNSETPERSIST, 1)
    finally:
        dev.close()


def _setiff_error(exc: OSError, name: str, tap: bool, attach: bool) -> TunlabError:
    kind = "TAP" if tap else "TUN"
    if exc.errno == errno.EPERM:
        return NeedRoot(f"creating {kind} device {name!r} needs root (CAP_NET_ADMIN)", "run it with sudo")
    if exc.errno == errno.EBUSY:
        return DeviceError(f"device {name!r} is already open in another process", "use another name")
    if exc.errno == errno.EINVAL and attach:
        other = "TUN" if tap else "TAP"
        return DeviceError(f"device {name!r} is not a {kind} device with these flags (a {other}? multi-queue?)",
                           "drop --tap" if tap else "add --tap if it is a TAP device")
    return DeviceError(f"cannot open {kind} device {name!r}: {exc.strerror}")


def configure(dev: Device, *, addr: str | None, mtu: int | None, up: bool = True) -> None:
    """Set MTU and address and bring the link up, in this thread's network namespace (via pyroute2)."""
    from pyroute2 import IPRoute  # lazy: ~0.2 s of imports nobody on the --attach path should pay
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=dev.name)
            if not found:
                raise DeviceError(f"device {dev.name!r} vanished while being configured")
            idx = found[0]
            if mtu is not None:
                ipr.link("set", index=idx, mtu=mtu)
            if addr is not None:
                ip, _, plen = addr.partition("/")
                extra = {"flags": IFA_F_NODAD} if ":" in ip else {}
                ipr.addr("add", index=idx, address=ip, prefixlen=int(plen), **extra)
            if up:
                ipr.link("set", index=idx, state="up")
    except NetlinkError as exc:
        what = f"address {addr}" if addr else f"MTU {mtu}"
        code = exc.code if isinstance(exc.code, int) else 0
        if code == errno.EEXIST:
            raise DeviceError(f"cannot set {what} on {dev.name}: it is already in use here") from None
        if code == errno.EPERM:
            raise NeedRoot(f"configuring {dev.name} needs root (CAP_NET_ADMIN)", "run it with sudo") from None
        raise DeviceError(f"cannot configure {dev.name} ({what}): {os.strerror(code) if code else exc}") from None
