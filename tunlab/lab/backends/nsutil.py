"""What the backends do inside a node's namespace: sysctls, checksum offload, the node's persistent TUN,
and the one node configuration both backends share (:func:`configure_node`).

Entering namespaces is :mod:`tunlab.system.netns`.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunlab.model.plan import LabPlan, NodePlan

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17

def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the current thread's network namespace (``net.ipv4.ip_forward`` style)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)

def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """``ethtool -K IFNAME tx off`` through the SIOCETHTOOL ioctl (``sock`` lives in the device's netns)."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)

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
# an IPv6 overlay: the stack on, but quiet (no link-local addresses, no DAD, no router solicitations or
# advertisements), so that no packet appears in a capture that the scenario did not send
QUIET_IPV6 = (
    ("net.ipv6.conf.all.disable_ipv6", "0"),
    ("net.ipv6.conf.default.disable_ipv6", "0"),
    ("net.ipv6.conf.default.addr_gen_mode", "1"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.default.dad_transmits", "0"),
    ("net.ipv6.conf.all.router_solicitations", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
)


def node_sysctls(n: NodePlan) -> list[tuple[str, str]]:
    """Every sysctl of one node, in order, before any interface exists: the quiet profile, IPv6 on when the
    overlay carries it, forwarding in kernel VNFs, a default TTL for long chains. Both backends write these."""
    out = list(QUIET)
    fwd = "1" if n.forward else "0"
    out.append(("net.ipv4.ip_forward", fwd))
    if getattr(n, "ipv6", False):
        out += list(QUIET_IPV6)
        out.append(("net.ipv6.conf.all.forwarding", fwd))
    ttl = getattr(n, "default_ttl", None)
    if ttl:
        out.append(("net.ipv4.ip_default_ttl", str(ttl)))
        if getattr(n, "ipv6", False):
            out += [("net.ipv6.conf.all.hop_limit", str(ttl)), ("net.ipv6.conf.default.hop_limit", str(ttl))]
    return out


ROUTE_TYPES = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
# what a relay does to a TUN it creates itself (tunlab.relay.fast.udp); the lab's TUNs are persistent and
# attached (--attach: used as they are), so the backend sets the same: a queue long enough for a burst of
# TCP segments with offload off, and GSO packets small enough for one UDP GSO send with offload on
TUN_TXQLEN = 64  # a 45-packet TSO burst fits; 4096 queued ~1.7 s under load (bench/load_latency_bench.py)
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
        # the overlay MTU plus the encapsulation fits the veth (model/plan.py:underlay_mtu)
        ipr.link("set", index=idx, mtu=iface.link.mtu, state="up")
    tun = socket.if_nametoindex(n.overlay_dev)
    ipr.link("set", index=tun, mtu=n.mtu, txqlen=TUN_TXQLEN, state="up")
    try:  # the fast datapath sends one GSO packet in one UDP GSO send only if it fits (docs/fastpath.md)
        ipr.link("set", index=tun, gso_max_size=TUN_GSO_MAX_SIZE)
    except Exception:  # noqa: BLE001 - an older kernel: super-packets then take two sends
        pass
    ipr.addr("add", index=tun, address=n.overlay_ip, prefixlen=n.overlay_prefixlen)
    for extra in getattr(n, "extra_addrs", ()):  # dual stack: the IPv6 address (no DAD: the sysctls say so)
        ip, plen = extra.split("/")
        ipr.addr("add", index=tun, address=ip, prefixlen=int(plen))
    for r in n.routes:
        dst, _, plen_s = r.dst.partition("/")
        v6 = ":" in dst
        kw: dict[str, Any] = {"dst": dst, "dst_len": int(plen_s or (128 if v6 else 32)), "type": ROUTE_TYPES[r.type],
                              "family": socket.AF_INET6 if v6 else socket.AF_INET}
        if r.type == "unicast":
            kw["oif"] = tun
        ipr.route("add", **kw)
