"""Kernel interfaces of the fast datapath: TUN virtio-net headers and offloads, UDP GSO/GRO options.

Each helper is a thin wrapper over one ioctl or socket option; none of them runs per packet.
"""

from __future__ import annotations

import errno
import logging
import fcntl
import socket
import struct

# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
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


def set_offload(fd: int, flags: int) -> int:
    """Ask the kernel to hand us packets with these offloads; falls back to TSO only, then none.

    Returns the flags that were accepted. A descriptor that is not a TUN/TAP (a socket pair standing
    in for the device in unprivileged tests) accepts anything: its writer decides what it hands over.
    """
    for candidate in (flags, flags & OFFLOAD_TSO, 0):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, candidate)
            return candidate
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                return flags
            continue
    return 0


def set_vnet_header(fd: int, size: int = 10) -> bool:
    """Virtio-net header of ``size`` bytes, little-endian, on every read and write; False if not a TUN."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", size))
    except OSError as exc:
        if exc.errno == errno.ENOTTY:
            return False
        raise
    try:
        fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
    except OSError:
        pass  # only kernels with cross-endian support have it; native order is little-endian here
    return True


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


GRO_CMSG_SPACE = _CMSG_GRO_SPACE


def switch_offload(fd: int, name: str, want: bool, what: str) -> bool:
    """Device offload all on (whole GSO packets, ``what`` says where they go) or off; returns whether it is on."""
    on = set_offload(fd, OFFLOAD_ALL) != 0 if want else False
    if not want:
        set_offload(fd, 0)
    log.info("device %s: offload %s", name, f"on: {what}" if on else "off: one packet per read")
    return on

log = logging.getLogger("tunlab.relay.fast")


#: TCP super-packets are capped so one, with its virtio header and 45 chunk headers of 12 bytes,
#: fits the 65507 bytes of one UDP GSO send over IPv4 (64900 + 10 + 45 * 12 = 65450)
GSO_MAX_SIZE = 64900
#: the device's queue toward us (TUN default 500): with offload off, one TSO burst of the kernel is
#: 45 packets in it, and a relay that was not scheduled for a moment must not lose them; longer queues
#: only add delay under load (4096 queued ~1.7 s behind a loaded relay: bench/load_latency_bench.py)
TXQLEN = 64


def tune_device(name: str, **attrs: int) -> None:
    """Best effort: cap GSO packets so one fits a single UDP GSO send, lengthen the device queue."""
    try:
        from pyroute2 import IPRoute  # lazy, as in device.configure

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            for key, value in attrs.items():
                if found:
                    ipr.link("set", index=found[0], **{key: value})
    except Exception as exc:  # an older kernel: super-packets then take two sends
        log.info("cannot tune %s (%s): %s", name, attrs, exc)
