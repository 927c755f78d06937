"""The relay engine without root: real sockets on loopback, and a SOCK_SEQPACKET pair standing in for
the TUN device (it keeps packet boundaries the way a TUN descriptor does). The same engine runs on real
TUN/TAP devices in tests/netns/test_relay_*.py."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tunlab.relay import PeerSpec, Relay, RelayConfig, RouteSpec, query_stats
from tunlab.relay.device import Device
from tunlab.relay.framing import Deframer, frame


def ipv4(dst: str, src: str = "10.9.0.1", size: int = 60, fill: int = 0) -> bytes:
    body = bytes([fill]) * (size - 20)
    hdr = bytes([0x45, 0, size >> 8, size & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0]) + socket.inet_aton(src) + socket.inet_aton(dst)
    return hdr + body


def ipv6(dst: str, size: int = 80) -> bytes:
    plen = size - 40
    return bytes([0x60, 0, 0, 0, plen >> 8, plen & 0xFF, 17, 64]) + bytes(16) + socket.inet_pton(socket.AF_INET6, dst) + bytes(size - 40)


class FakeDev:
    """Test end of the device: ``send`` = a packet leaving the device, ``recv`` = one written into it."""

    def __init__(self, name: str) -> None:
        self.mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.device = Device.from_fd(theirs.detach(), name)

    def send(self, pkt: bytes) -> None:
        self.mine.send(pkt)

    def recv(self, timeout: float = 5.0) -> bytes:
        ready, _, _ = select.select([self.mine], [], [], timeout)
        assert ready, "nothing was written to the device"
        return self.mine.recv(70000)

    def quiet(self, timeout: float = 0.2) -> bool:
        """True if nothing arrives within ``timeout`` (only used to check that a drop stays dropped)."""
        ready, _, _ = select.select([self.mine], [], [], timeout)
        return not ready

    def close(self) -> None:
        self.mine.close()


@contextmanager
def running(relay: Relay, **kw: object) -> Iterator[Relay]:
    relay.open()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["counters"] = relay.run(handle_signals=False, **kw)  # type: ignore[arg-type]
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        yield relay
    finally:
        relay.stop()
        t.join(10)
        assert not t.is_alive(), "relay did not stop"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]


def port_of(relay: Relay) -> int:
    return int(relay.ready_info()["listen"][0].rsplit(":", 1)[1])


def wait_until(cond, what: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return v


@pytest.fixture
def devs() -> Iterator[dict[str, FakeDev]]:
    made: dict[str, FakeDev] = {}

    class Maker(dict):  # type: ignore[type-arg]
        def __missing__(self, key: str) -> FakeDev:
            made[key] = self[key] = FakeDev(key)
            return made[key]

    yield Maker()  # type: ignore[misc]
    for d in made.values():
        d.close()


def udp_pair(devs: dict[str, FakeDev], **kw: object) -> tuple[Relay, Relay]:
    a = Relay(RelayConfig(dev="a", listen=("127.0.0.1", 0), peers=(PeerSpec("b", "127.0.0.1"),), **kw),  # type: ignore[arg-type]
              device=devs["a"].device)
    a.open()
    b = Relay(RelayConfig(dev="b", listen=("127.0.0.1", 0), peers=(PeerSpec("a", "127.0.0.1", port_of(a), True),),
                          **kw), device=devs["b"].device)  # type: ignore[arg-type]
    return a, b


def test_udp_both_ways_and_counters(devs: dict[str, FakeDev]) -> None:
    a, b = udp_pair(devs)
    with running(a), running(b):
        p1 = ipv4("10.9.0.2", size=100)
        devs["b"].send(p1)
        assert devs["a"].recv() == p1  # b -> a, and a latches b's source port
        p2 = ipv6("fd00::1", size=1472)
        devs["a"].send(p2)
        assert devs["b"].recv() == p2
        wait_until(lambda: b.counters()["dev"]["tx_packets"] == 1 and a.counters()["dev"]["rx_packets"] == 1,
                   "counters added up after the batch")
        ca, cb = a.counters(), b.counters()
    assert ca["dev"] == {"rx_packets": 1, "rx_bytes": 1472, "tx_packets": 1, "tx_bytes": 100}
    assert ca["peers"]["b"] == {"rx_packets": 1, "rx_bytes": 100, "tx_packets": 1, "tx_bytes": 1472,
                                "connected": True, "datapath": "simple"}
    assert cb["peers"]["a"]["tx_packets"] == 1 and cb["drops"] == {}


def test_udp_foreign_and_malformed_are_dropped_and_counted(devs: dict[str, FakeDev]) -> None:
    a, b = udp_pair(devs)
    with running(a), running(b):
        intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        intruder.bind(("127.0.0.2", 0))
        for _ in range(5):
            intruder.sendto(ipv4("10.9.0.1"), ("127.0.0.1", port_of(a)))  # a accepts 127.0.0.1 only
            intruder.sendto(ipv4("10.9.0.2"), ("127.0.0.1", port_of(b)))  # b accepts a's exact address
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # 127.0.0.1, another port: a's peer IP
        junk = [b"", bytes(2000), b"\x50" + bytes(40), b"\x45" + bytes(10), b"\x60" + bytes(20)]
        sent = 5  # the intruder's
        for burst in [junk * 5] * 10 + [[bytes(65000)]] * 3:  # bursts that fit an unprivileged socket buffer
            for j in burst:
                flood.sendto(j, ("127.0.0.1", port_of(a)))
            sent += len(burst)
            wait_until(lambda: sum(a.counters()["drops"].values()) == sent, "the flood to be counted")
        assert devs["a"].quiet()
        pkt = ipv4("10.9.0.1", size=200)
        devs["b"].send(pkt)  # b's next datagram re-latches a's reply port
        assert devs["a"].recv() == pkt
        devs["a"].send(pkt)
        assert devs["b"].recv() == pkt
        da, db = a.counters()["drops"], b.counters()["drops"]
        intruder.close()
        flood.close()
    assert da == {"empty": 50, "foreign": 5, "not_ip": 50, "too_big": 53, "truncated": 100}
    assert db == {"foreign": 5}
    assert a.counters()["dev"]["tx_packets"] == 1


def test_tcp_tunnel_and_client_started_first(devs: dict[str, FakeDev]) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    b = Relay(RelayConfig(dev="b", transport="tcp", peers=(PeerSpec("a", "127.0.0.1", port, True),)),
              device=devs["b"].device)
    with running(b):
        # the client fails (nobody listens yet) and keeps retrying with backoff
        assert b.transport is not None
        wait_until(lambda: b.transport.backoff.get("a", 0) >= 0.2, "a few failed connection attempts")  # type: ignore[union-attr]
        assert not b.counters()["peers"]["a"]["connected"]
        a = Relay(RelayConfig(dev="a", transport="tcp", listen=("127.0.0.1", port), peers=(PeerSpec("b", "127.0.0.1"),)),
                  device=devs["a"].device)
        with running(a):
            wait_until(lambda: b.counters()["peers"]["a"]["connected"], "b to connect")
            for size in (20, 100, 1472):
                p = ipv4("10.9.0.2", size=size)
                devs["a"].send(p)
                assert devs["b"].recv() == p
                devs["b"].send(p)
                assert devs["a"].recv() == p
            big = ipv4("10.9.0.2", size=1500)  # over our MTU, under the frame limit: dropped, stream fine
            devs["b"].send(big)
            devs["b"].send(ipv4("10.9.0.2", size=40))
            assert devs["a"].recv() == ipv4("10.9.0.2", size=40)
            assert a.counters()["drops"] == {"too_big": 1}  # dropped by the receiver, connection kept
            assert a.counters()["peers"]["b"]["connected"]
        # a went away: b notices, retries, and gets back in when a new server shows up
        wait_until(lambda: not b.counters()["peers"]["a"]["connected"], "b to see the drop")
        a2 = Relay(RelayConfig(dev="a", transport="tcp", listen=("127.0.0.1", port), peers=(PeerSpec("b", "127.0.0.1"),)),
                   device=FakeDev("a2").device)
        with running(a2):
            wait_until(lambda: b.counters()["peers"]["a"]["connected"], "b to reconnect")


def test_tcp_bad_stream_closes_only_that_connection(devs: dict[str, FakeDev]) -> None:
    a = Relay(RelayConfig(dev="a", transport="tcp", listen=("127.0.0.1", 0),
                          peers=(PeerSpec("b", "127.0.0.1"), PeerSpec("x", "127.0.0.2")),
                          routes=(RouteSpec("default", "b"),)), device=devs["a"].device)
    a.open()
    b = Relay(RelayConfig(dev="b", transport="tcp", peers=(PeerSpec("a", "127.0.0.1", port_of(a), True),)),
              device=devs["b"].device)
    with running(a), running(b):
        wait_until(lambda: a.counters()["peers"]["b"]["connected"], "b connected")
        bad_streams = [
            frame(b"\x50" + bytes(30)) + frame(b"\x45" + bytes(5)) + b"\x00\x00",  # not_ip, truncated, then 0
            b"\xff\xff" + bytes(3000),                                            # 0xffff
            b"\x10\x00" + bytes(100),                                             # 4096 > any packet
        ]
        for data in bad_streams:
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port_of(a)))
            s.sendall(data)
            s.settimeout(5)
            assert s.recv(10) == b""  # the relay closed this connection
            s.close()
        foreign = socket.create_connection(("127.0.0.1", port_of(a)), source_address=("127.0.0.3", 0))
        foreign.settimeout(5)
        assert foreign.recv(10) == b""
        foreign.close()
        wait_until(lambda: a.counters()["drops"].get("foreign_connection") == 1, "foreign connection counted")
        pkt = ipv4("10.9.0.1", size=300)
        devs["b"].send(pkt)
        assert devs["a"].recv() == pkt
        devs["a"].send(pkt)
        assert devs["b"].recv() == pkt
        drops = a.counters()["drops"]
        assert a.counters()["peers"]["b"]["connected"]
    assert drops == {"bad_length": 3, "foreign_connection": 1, "not_ip": 1, "truncated": 1}


def test_routes_pick_the_longest_prefix_among_peers(devs: dict[str, FakeDev]) -> None:
    sinks = {n: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for n in ("p1", "p2", "p3")}
    for s in sinks.values():
        s.bind(("127.0.0.1", 0))
    peers = tuple(PeerSpec(n, "127.0.0.1", s.getsockname()[1], True) for n, s in sinks.items())
    routes = (RouteSpec("default", "p1"), RouteSpec("10.1.0.0/16", "p2"), RouteSpec("10.1.2.0/24", "p3"),
              RouteSpec("fd00::/8", "p2"), RouteSpec("fd00:1::/32", "p3"))
    r = Relay(RelayConfig(dev="r", peers=peers, routes=routes), device=devs["r"].device)
    cases = [("10.1.2.3", "p3"), ("10.1.9.9", "p2"), ("8.8.8.8", "p1"), ("fd00:1::5", "p3"), ("fd99::1", "p2"),
             ("2001:db8::1", "p1")]
    with running(r):
        for dst, want in cases:
            pkt = ipv6(dst) if ":" in dst else ipv4(dst)
            devs["r"].send(pkt)
            sinks[want].settimeout(5)
            assert sinks[want].recv(2000) == pkt, dst
    for s in sinks.values():
        s.close()


def test_tcp_burst_split_by_route_keeps_order(devs: dict[str, FakeDev]) -> None:
    servers = {n: socket.create_server(("127.0.0.1", 0)) for n in ("p", "q")}
    peers = tuple(PeerSpec(n, "127.0.0.1", s.getsockname()[1], True) for n, s in servers.items())
    r = Relay(RelayConfig(dev="r", transport="tcp", peers=peers,
                          routes=(RouteSpec("10.1.0.0/16", "p"), RouteSpec("default", "q"))), device=devs["r"].device)
    with running(r):
        conns = {}
        for n, s in servers.items():
            s.settimeout(5)
            conns[n] = s.accept()[0]
            conns[n].settimeout(5)
        wait_until(lambda: all(p["connected"] for p in r.counters()["peers"].values()), "both connected")
        sent: dict[str, list[bytes]] = {"p": [], "q": []}
        for i in range(300):  # a burst, read by the relay in batches that switch peer often
            to_p = (i % 3) != 0
            pkt = ipv4("10.1.0.9" if to_p else "10.2.0.9", size=40 + i % 1400, fill=i % 256)
            sent["p" if to_p else "q"].append(pkt)
            devs["r"].send(pkt)
        for n, conn in conns.items():
            d = Deframer()
            got: list[bytes] = []
            while len(got) < len(sent[n]):
                got += d.push(conn.recv(65536))
            assert got == sent[n]
        # counters are added up after each batch: poll until the relay thread has done so
        wait_until(lambda: [p["tx_packets"] for p in r.counters()["peers"].values()] == [200, 100], "counters")
    for s in list(servers.values()) + list(conns.values()):
        s.close()


def test_hook_vnf_filters_and_forwards(devs: dict[str, FakeDev], tmp_path: Path) -> None:
    seen: list[int] = []

    def hook(pkt: bytes) -> bytes | None:
        seen.append(len(pkt))
        if len(pkt) == 66:
            raise ValueError("boom")
        return None if len(pkt) == 77 else pkt[:8] + bytes([pkt[8] - 1]) + pkt[9:]  # drop or TTL-1

    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (up, down):
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
    cfg = RelayConfig(dev="v", addr="10.9.0.254/24", listen=("127.0.0.1", 0), vnf="hook", hook="unused:fn",
                      peers=(PeerSpec("up", "127.0.0.1", up.getsockname()[1], True),
                             PeerSpec("down", "127.0.0.1", down.getsockname()[1], True)),
                      routes=(RouteSpec("10.9.1.0/24", "up"), RouteSpec("default", "down")))
    v = Relay(cfg, device=devs["v"].device, hook=hook)
    with running(v, stats_file=str(tmp_path / "s.json"), control=str(tmp_path / "c.sock")):
        addr = ("127.0.0.1", port_of(v))
        up.sendto(ipv4("10.9.2.1", src="10.9.1.1"), addr)
        assert down.recv(2000)[8] == 63  # through the hook to the downstream peer
        down.sendto(ipv4("10.9.1.1", src="10.9.2.1"), addr)
        assert up.recv(2000)[8] == 63  # and back up
        up.sendto(ipv4("10.9.0.254", size=50), addr)
        assert devs["v"].recv()[8] == 63  # addressed to the relay's own device
        up.sendto(ipv4("10.9.2.1", size=77), addr)
        up.sendto(ipv4("10.9.2.1", size=66), addr)
        wait_until(lambda: query_stats(str(tmp_path / "c.sock"))["drops"].get("hook_error") == 1, "hook error")
        assert v.counters()["drops"] == {"hook_drop": 1, "hook_error": 1}
    assert seen == [60, 60, 50, 77, 66]
    final = json.loads((tmp_path / "s.json").read_text())
    assert final["drops"] == {"hook_drop": 1, "hook_error": 1}
    assert final["peers"]["up"]["rx_packets"] == 4
    assert not (tmp_path / "c.sock").exists()
    up.close()
    down.close()


def test_port_in_use_is_a_one_line_error(devs: dict[str, FakeDev]) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    r = Relay(RelayConfig(dev="x", listen=holder.getsockname(), peers=(PeerSpec("p", "127.0.0.1"),)),
              device=devs["x"].device)
    with pytest.raises(Exception, match="the port is in use") as info:
        r.open()
    assert "\n" not in str(info.value)
    holder.close()
    r2 = Relay(RelayConfig(dev="x", listen=("10.255.255.254", 5000), peers=(PeerSpec("p", "10.255.255.1"),)),
               device=FakeDev("y").device)
    with pytest.raises(Exception, match="no interface in this network namespace has 10.255.255.254"):
        r2.open()


def test_ready_fd_reports_failure(devs: dict[str, FakeDev]) -> None:
    import os

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    rfd, wfd = os.pipe()
    r = Relay(RelayConfig(dev="x", listen=holder.getsockname(), peers=(PeerSpec("p", "127.0.0.1"),)),
              device=devs["x"].device)
    with pytest.raises(Exception):
        r.run(ready_fd=wfd, handle_signals=False)
    msg = json.loads(os.read(rfd, 4096))
    assert msg["ready"] is False and "port is in use" in msg["error"]
    os.close(rfd)
    holder.close()
