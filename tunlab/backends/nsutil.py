"""Network-namespace primitives through libc (no fork, no helper process).

A thread can live in another network namespace than the rest of the process (``setns`` and ``unshare``
act on the calling thread): :func:`entered` moves the current thread into a namespace and back, and
:func:`create_named` makes a named namespace the way ``ip netns add`` (and pyroute2) do -- a bind mount of
the thread's namespace on ``/run/netns/NAME`` -- so ``ip netns exec NAME`` works from any shell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunlab.plan import LabPlan, NodePlan

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread in the namespace ``path`` (/run/netns/NAME or /proc/PID/ns/net)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def share_netns_dir() -> None:
    """Make /run/netns a shared mount point (once per boot), as iproute2 does, so bind mounts in it
    are seen from every mount namespace."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
           f"bind-mount {NETNS_DIR}")
    _check(_libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None), f"share {NETNS_DIR}")


@contextmanager
def create_named(name: str) -> Iterator[None]:
    """Create the named namespace ``name`` and run the body inside it (this thread only)."""
    path = netns_path(name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                       f"bind-mount {path}")
            except OSError:
                setns(home)
                raise
        except OSError:
            os.unlink(path)
            raise
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def remove_named(name: str) -> bool:
    """Unmount and remove /run/netns/NAME; False when it was not there. The namespace itself goes when
    nothing else holds it (processes in it, open fds)."""
    path = netns_path(name)
    if not os.path.lexists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (half-made)
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    os.unlink(path)
    return True


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the current thread's network namespace (``net.ipv4.ip_forward`` style)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """``ethtool -K IFNAME tx off`` through the SIOCETHTOOL ioctl (``sock`` lives in the device's netns)."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def create_persistent_tun(name: str) -> None:
    """A persistent L3 TUN device without packet-info header in the current thread's namespace; a relay
    started with ``--attach`` opens it."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


# sysctls of every lab namespace, before any interface exists (so "default" applies to all of them)
QUIET = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
)
ROUTE_TYPES = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
# what a relay does to a TUN it creates itself (tunlab.relay.fast); the lab's TUNs are persistent and
# attached (--attach: used as they are), so the backend sets the same: a queue long enough for a burst of
# TCP segments with offload off, and GSO packets small enough for one UDP GSO send with offload on
TUN_TXQLEN = 4096
TUN_GSO_MAX_SIZE = 64900

def gso_links(plan: LabPlan) -> frozenset[str]:
    """The links whose veths keep transmit checksum offload: UDP hops of the fast datapath.

    Their relays send with UDP GSO; a veth without tx checksum offload makes the kernel cut every send
    into datagrams before the veth (still correct, but one receive per datagram: about 5x slower through
    a three-VNF chain here). Captures then show the outer UDP checksums unfinished, which no check
    reads. Other links (TCP, the simple datapath) keep the quiet profile: tx checksum offload off."""
    return frozenset(lk.name for lk in plan.links if lk.transport == "udp" and lk.datapath != "simple")


def configure_node(ipr: Any, sock: socket.socket, n: NodePlan, tx_csum: frozenset[str] = frozenset()) -> None:
    """Addresses, links up (tx checksum offload off, except on the links named in ``tx_csum``), the TUN
    (MTU, queue, GSO size, address, up) and routes of one node, from inside its namespace; both backends
    configure nodes with this."""
    for iface in n.ifaces:
        idx = socket.if_nametoindex(iface.ifname)
        ip, plen = iface.addr.split("/")
        ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        if iface.link.name not in tx_csum:
            tx_checksum_off(sock, iface.ifname)
        ipr.link("set", index=idx, state="up")
    tun = socket.if_nametoindex(n.overlay_dev)
    ipr.link("set", index=tun, mtu=n.mtu, txqlen=TUN_TXQLEN, state="up")
    try:  # the fast datapath sends one GSO packet in one UDP GSO send only if it fits (docs/fastpath.md)
        ipr.link("set", index=tun, gso_max_size=TUN_GSO_MAX_SIZE)
    except Exception:  # noqa: BLE001 - an older kernel: super-packets then take two sends
        pass
    ipr.addr("add", index=tun, address=n.overlay_ip, prefixlen=n.overlay_prefixlen)
    for r in n.routes:
        dst, _, plen_s = r.dst.partition("/")
        kw: dict[str, Any] = {"dst": dst, "dst_len": int(plen_s or 32), "type": ROUTE_TYPES[r.type]}
        if r.type == "unicast":
            kw["oif"] = tun
        ipr.route("add", **kw)
