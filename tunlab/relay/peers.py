"""The peer table: who may send to us, where device packets go (longest-prefix match), and counters.

Independent of the transport and of the datapath, so another datapath can reuse it as it is.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .config import PeerSpec, RouteSpec

_CACHE_MAX = 4096


class Peer:
    """A peer and its counters (relay's point of view: rx = received from the peer, tx = sent to it)."""

    __slots__ = ("name", "spec", "addr", "conn", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "path")

    def __init__(self, spec: PeerSpec) -> None:
        self.name = spec.name
        self.spec = spec
        # UDP: where to send (None until an accepted peer shows up); TCP: set while connected
        self.addr: tuple[Any, ...] | None = (spec.ip, spec.port) if spec.outgoing else None
        self.conn: Any = None
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.path: Any = None  # its LinkPath (relay/linkpath.py) while it has stages: per-packet datapath

    def stats(self, connected: bool) -> dict[str, int | bool]:
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "tx_packets": self.tx_packets,
                "tx_bytes": self.tx_bytes, "connected": connected}

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.addr}>"


class Routes:
    """Longest-prefix match over IPv4 and IPv6 destinations, with a small cache of recent answers."""

    def __init__(self, routes: list[tuple[str, Peer]]) -> None:
        self.v4: list[tuple[int, int, Peer]] = []
        self.v6: list[tuple[int, int, Peer]] = []
        entries: list[tuple[int, int, int, int, Peer]] = []
        for prefix, peer in routes:
            nets = ["0.0.0.0/0", "::/0"] if prefix == "default" else [prefix]
            for text in nets:
                net = ipaddress.ip_network(text)
                entries.append((net.version, net.prefixlen, int(net.network_address), int(net.netmask), peer))
        # later --route options for the same prefix win; longest prefixes are tried first
        seen: dict[tuple[int, int, int], tuple[int, int, int, int, Peer]] = {}
        for e in entries:
            seen[(e[0], e[1], e[2])] = e
        for version, plen, net_int, mask, peer in sorted(seen.values(), key=lambda e: -e[1]):
            (self.v4 if version == 4 else self.v6).append((net_int, mask, peer))
        self._cache: dict[bytes, Peer | None] = {}

    def lookup_ip(self, dst: bytes) -> Peer | None:
        """The peer for a destination address given as 4 or 16 raw bytes."""
        cache = self._cache
        try:
            return cache[dst]
        except KeyError:
            pass
        value = int.from_bytes(dst, "big")
        found = None
        for net_int, mask, peer in (self.v4 if len(dst) == 4 else self.v6):
            if value & mask == net_int:
                found = peer
                break
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[dst] = found
        return found


def l3_destination(pkt: bytes | bytearray | memoryview, n: int) -> bytes | None:
    """Destination address bytes of an IPv4/IPv6 packet, or None."""
    if n >= 20 and pkt[0] >> 4 == 4:
        return bytes(pkt[16:20])
    if n >= 40 and pkt[0] >> 4 == 6:
        return bytes(pkt[24:40])
    return None


def l2_destination(frame: bytes | bytearray | memoryview, n: int) -> bytes | None:
    """The IP address an Ethernet frame is headed for: IPv4/IPv6 destination, or ARP's target address."""
    if n < 14:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == 0x0800:
        return l3_destination(frame[14:], n - 14)
    if etype == 0x86DD:
        return l3_destination(frame[14:], n - 14)
    if etype == 0x0806 and n >= 42:
        return bytes(frame[38:42])
    return None


class PeerTable:
    """Peers by name and by underlay source, plus the routes for packets leaving the device."""

    def __init__(self, specs: tuple[PeerSpec, ...], routes: tuple[RouteSpec, ...], *, tap: bool) -> None:
        self.peers: dict[str, Peer] = {s.name: Peer(s) for s in specs}
        self.tap = tap
        # UDP source (ip, port) -> peer, for outgoing peers and accepted peers once seen
        self.by_addr: dict[tuple[str, int], Peer] = {}
        # IP -> accepted peer (any port); "" holds the peer that accepts the first source of all
        self.by_ip: dict[str, Peer] = {}
        for p in self.peers.values():
            if p.spec.outgoing:
                self.by_addr[(p.spec.ip, p.spec.port)] = p  # type: ignore[index]
            else:
                self.by_ip[p.spec.ip or ""] = p
        if routes:
            self.routes: Routes | None = Routes([(r.prefix, self.peers[r.peer]) for r in routes])
        else:
            self.routes = None
        only = next(iter(self.peers.values())) if len(self.peers) == 1 else None
        # the common case: one peer, all packets to it, no lookup at all
        self.fixed: Peer | None = only if routes == () or _all_default(routes) else None

    def route(self, pkt: bytes | bytearray | memoryview, n: int) -> Peer | None:
        """Where a packet leaving the device (or a hook) goes; None = no route."""
        if self.fixed is not None:
            return self.fixed
        if self.routes is None:
            return None
        dst = l2_destination(pkt, n) if self.tap else l3_destination(pkt, n)
        if dst is None:
            # not IP (for TAP: broadcast that is not ARP, LLDP, ...): the default route, if any
            dst = b"\0\0\0\0"
        return self.routes.lookup_ip(dst)

    def udp_candidate(self, ip: str) -> Peer | None:
        """The accepted peer an unknown UDP source from ``ip`` may be, or None (foreign). Nothing changes
        until :meth:`accept_udp` is called, once a datagram from that source has proved valid: a spoofed
        or empty datagram from the peer's IP and another port never moves the reply address."""
        peer = self.by_ip.get(ip)
        if peer is None:
            peer = self.by_ip.get("")
        return peer

    def accept_udp(self, ip: str, port: int, peer: Peer | None = None) -> Peer | None:
        """Make (ip, port) the reply address of its accepted peer (call it only after a valid datagram from
        it); returns that peer, or None if the source is foreign."""
        if peer is None:
            peer = self.udp_candidate(ip)
            if peer is None:
                return None
        if self.by_ip.get(ip) is not peer and self.by_ip.get("") is peer:
            # TunConnector's server without -r: the first source is the peer, and only its IP from now on
            del self.by_ip[""]
            self.by_ip[ip] = peer
        old = peer.addr
        if old is not None:
            self.by_addr.pop(old, None)  # type: ignore[arg-type]
        peer.addr = (ip, port)
        self.by_addr[(ip, port)] = peer
        return peer

    def accept_tcp(self, ip: str) -> Peer | None:
        """The accepted peer a TCP connection from ``ip`` belongs to, or None (foreign)."""
        peer = self.by_ip.get(ip)
        if peer is None:
            peer = self.by_ip.get("")
            if peer is not None:
                del self.by_ip[""]
                self.by_ip[ip] = peer
        return peer


def _all_default(routes: tuple[RouteSpec, ...]) -> bool:
    return all(r.prefix == "default" for r in routes)
