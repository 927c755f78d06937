"""Kernel interfaces of the fast datapath: TUN with virtio-net headers and offloads, UDP GSO/GRO sockets.

Everything here is a thin wrapper over one ioctl or socket option. Nothing is per packet except
``send_gso``/``recv_gro``, which are one syscall each.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from tunlab.errors import TunlabError

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETFEATURES = 0x800454CF
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOAD_TSO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
OFFLOAD_ALL = OFFLOAD_TSO | TUN_F_USO4 | TUN_F_USO6

# linux/udp.h
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

#: the most bytes one UDP datagram (or one UDP GSO send) may carry over IPv4
UDP_MAX_PAYLOAD = 65507
#: segments per UDP GSO send the kernel accepts (UDP_MAX_SEGMENTS is 64 on older kernels, 128 later)
UDP_MAX_SEGS = 64

_CMSG_GRO_SPACE = socket.CMSG_SPACE(4)


class TunOpenError(TunlabError):
    """The TUN/TAP device could not be opened as asked."""


def open_tun(name: str, *, tap: bool = False, vnet_hdr: bool = True, multi_queue: bool = False) -> tuple[int, str]:
    """Open (creating if needed) TUN/TAP ``name``; returns (fd, actual name). The fd is non-blocking."""
    flags = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if len(name.encode()) > 15:
        raise TunOpenError(f"device name {name!r} is longer than 15 characters", "choose a shorter --dev")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunOpenError(f"cannot open /dev/net/tun: {exc.strerror}", "load the tun module; run as root") from exc
    try:
        ifr = struct.pack("16sH22x", name.encode(), flags)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as exc:
        os.close(fd)
        hint = "another process holds it without multi-queue" if exc.errno == errno.EBUSY else None
        raise TunOpenError(f"cannot open device {name!r}: {exc.strerror}", hint) from exc
    actual = res[:16].rstrip(b"\0").decode()
    if vnet_hdr:
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
            fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
        except OSError as exc:
            os.close(fd)
            raise TunOpenError(f"device {actual}: cannot set the virtio-net header: {exc.strerror}") from exc
    return fd, actual


def tun_features(fd: int) -> int:
    """The flags this kernel's TUN driver supports (TUNGETFEATURES)."""
    res = fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0))
    return int(struct.unpack("I", res)[0])


def set_offload(fd: int, flags: int) -> int:
    """Ask the kernel to hand us packets with these offloads; falls back to TSO only, then none.

    Returns the flags that were accepted.
    """
    for candidate in (flags, flags & OFFLOAD_TSO, 0):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, candidate)
            return candidate
        except OSError:
            continue
    return 0


def make_udp_socket(bind: tuple[str, int], *, gro: bool = True, buf_bytes: int = 4 << 20) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind`` with UDP_GRO on and large buffers."""
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE need root
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, buf_bytes)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, buf_bytes)
        if gro:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.bind(bind)
    except OSError as exc:
        sock.close()
        raise TunlabError(f"cannot bind UDP {bind[0]}:{bind[1]}: {exc.strerror}",
                          "is the address configured in this namespace and the port free?") from exc
    sock.setblocking(False)
    return sock


def path_mtu(addr: tuple[str, int]) -> int | None:
    """The kernel's path MTU toward ``addr`` (IP_MTU on a connected probe socket), or None."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    level, opt = (socket.IPPROTO_IPV6, 24) if family == socket.AF_INET6 else (socket.IPPROTO_IP, 14)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return int(s.getsockopt(level, opt))
    except OSError:
        return None


def gso_cmsg(segment: int) -> list[tuple[int, int, bytes]]:
    """Ancillary data for one UDP GSO send with this segment size."""
    return [(SOL_UDP, UDP_SEGMENT, struct.pack("H", segment))]


def gro_segment(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a UDP GRO receive, 0 when the datagram was not coalesced."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
            return int.from_bytes(data[:4] if len(data) >= 4 else data[:2], "little")
    return 0


GRO_CMSG_SPACE = _CMSG_GRO_SPACE
