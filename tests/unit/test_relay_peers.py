"""The peer table: longest-prefix routes (IPv4, IPv6, TAP frames) and who counts as a peer."""

from __future__ import annotations

import socket

from tunlab.relay.config import PeerSpec, RouteSpec
from tunlab.relay.peers import PeerTable, Routes, l2_destination, l3_destination


def v4(dst: str) -> bytes:
    return bytes([0x45]) + bytes(15) + socket.inet_aton(dst)


def v6(dst: str) -> bytes:
    return bytes([0x60]) + bytes(23) + socket.inet_pton(socket.AF_INET6, dst)


def eth(etype: int, payload: bytes) -> bytes:
    return bytes(12) + etype.to_bytes(2, "big") + payload


PEERS = (PeerSpec("a", "10.0.0.1", 1, True), PeerSpec("b", "10.0.0.2", 1, True), PeerSpec("c", "10.0.0.3"))


def test_lpm_v4_and_v6_with_default() -> None:
    t = PeerTable(PEERS, (RouteSpec("default", "a"), RouteSpec("10.0.0.0/8", "b"), RouteSpec("10.1.0.0/16", "c"),
                          RouteSpec("10.1.2.3/32", "a"), RouteSpec("fd00::/16", "b")), tap=False)
    assert t.fixed is None
    want = {"10.1.2.3": "a", "10.1.2.4": "c", "10.9.9.9": "b", "192.0.2.1": "a"}
    for dst, name in want.items():
        for _ in range(2):  # second time from the cache
            assert t.route(v4(dst), 20).name == name  # type: ignore[union-attr]
    assert t.route(v6("fd00:1::1"), 40).name == "b"  # type: ignore[union-attr]
    assert t.route(v6("2001:db8::1"), 40).name == "a"  # type: ignore[union-attr]


def test_no_default_means_no_route() -> None:
    t = PeerTable(PEERS, (RouteSpec("10.0.0.0/8", "b"),), tap=False)
    assert t.route(v4("192.0.2.1"), 20) is None
    assert t.route(v6("fd00::1"), 40) is None


def test_single_peer_needs_no_lookup() -> None:
    t = PeerTable((PeerSpec("only", "10.0.0.1", 1, True),), (), tap=False)
    assert t.fixed is t.peers["only"]
    assert t.route(b"\x00garbage", 8) is t.peers["only"]


def test_later_route_for_the_same_prefix_wins() -> None:
    r = Routes([("10.0.0.0/8", "x"), ("10.0.0.0/8", "y")])  # type: ignore[list-item]
    assert r.lookup_ip(socket.inet_aton("10.1.1.1")) == "y"


def test_tap_routes_by_ip_or_arp_target() -> None:
    t = PeerTable(PEERS, (RouteSpec("default", "a"), RouteSpec("10.7.0.0/16", "c")), tap=True)
    arp = bytes(24) + socket.inet_aton("10.7.0.9")  # ARP body: target protocol address at 24..28
    assert l2_destination(eth(0x0806, arp), 42) == socket.inet_aton("10.7.0.9")
    assert t.route(eth(0x0806, arp), 42).name == "c"  # type: ignore[union-attr]
    assert t.route(eth(0x0800, v4("10.7.1.1")), 34).name == "c"  # type: ignore[union-attr]
    assert t.route(eth(0x86DD, v6("fd00::1")), 54).name == "a"  # type: ignore[union-attr]
    assert t.route(eth(0x88CC, bytes(40)), 54).name == "a"  # type: ignore[union-attr]  # LLDP: default
    assert l3_destination(b"\x45", 1) is None


def test_udp_sources() -> None:
    t = PeerTable(PEERS, (RouteSpec("default", "a"),), tap=False)
    assert t.by_addr[("10.0.0.1", 1)].name == "a"
    assert t.accept_udp("10.0.0.1", 2) is None  # --peer: exactly its port
    c = t.accept_udp("10.0.0.3", 777)
    assert c is not None and c.name == "c" and c.addr == ("10.0.0.3", 777)
    assert t.accept_udp("10.0.0.3", 778) is c and c.addr == ("10.0.0.3", 778)  # replies follow the last port
    assert ("10.0.0.3", 777) not in t.by_addr
    assert t.accept_udp("10.0.0.9", 1) is None


def test_first_source_latch() -> None:
    t = PeerTable((PeerSpec("client", None),), (), tap=False)
    assert t.fixed is not None and t.fixed.addr is None
    p = t.accept_udp("10.0.0.5", 4000)
    assert p is not None and p.addr == ("10.0.0.5", 4000)
    assert t.accept_udp("10.0.0.6", 4000) is None  # someone else: foreign from now on
    assert t.accept_udp("10.0.0.5", 4001) is p
    t2 = PeerTable((PeerSpec("client", None),), (), tap=False)
    assert t2.accept_tcp("10.0.0.5") is not None
    assert t2.accept_tcp("10.0.0.6") is None
    assert t2.accept_tcp("10.0.0.5") is not None
