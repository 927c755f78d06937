"""Captures and injection inside namespaces, on two namespaces joined by a veth (root)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.utils import RawPcapReader

from tunlab.errors import TunlabError
from tunlab.traffic.capture import Capture, CapturePoint
from tunlab.traffic.inject import Injector
from tunlab.system.netns import in_netns

pytestmark = pytest.mark.netns


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces (s4t<random>a/b) joined by a veth with 10.250.77.1/30 and .2, IPv6 off."""
    tag = "s4t" + secrets.token_hex(2)
    from tunlab.lab.ledger import log_run

    log_run(tag)  # scripts/suite.py's leak check judges this suite's own names only
    a, b = f"{tag}a", f"{tag}b"
    made: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, addr in ((a, "va", "10.250.77.1/30"), (b, "vb", "10.250.77.2/30")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield f"/run/netns/{a}", f"/run/netns/{b}"
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_capture_is_ready_before_sending_filters_and_keeps_direction(pair: tuple[str, str],
                                                                     tmp_path: Path) -> None:
    na, nb = pair
    points = [CapturePoint("b:all-ip", nb, "vb"), CapturePoint("a:udp", na, "va", "udp and dst port 9")]
    ping = bytes(IP(src="10.250.77.1", dst="10.250.77.2", id=4321) / ICMP(id=1, seq=1) / b"probe")
    udp = bytes(IP(src="10.250.77.1", dst="10.250.77.2", id=4322) / UDP(sport=5, dport=9) / b"x")
    with Capture(points) as cap:
        with Injector(na, "a") as inj:  # sent at once: the sockets were bound before __enter__ returned
            inj.send(ping)
            inj.send(udp)
        assert cap.wait_for(lambda f: any(IP(x.data).id == 4322 for x in f["b:all-ip"])
                            and any(ICMP in IP(x.data) and IP(x.data)[ICMP].type == 0 for x in f["b:all-ip"]), 5)
        cap.wait_quiet(0.1, 5)
    frames = cap.frames()
    got = [(IP(f.data).src, f.outgoing) for f in frames["b:all-ip"]]
    assert ("10.250.77.1", False) in got and ("10.250.77.2", True) in got  # request in, reply out (b's view)
    request = next(f for f in frames["b:all-ip"] if f.data[:20] == ping[:20])
    assert request.data == ping  # byte for byte what scapy built: the kernel kept our id and checksum
    assert not any(f.data[:2] == b"\x00\x01" for f in frames["b:all-ip"])  # no ARP: "ip" filter
    assert [IP(f.data).id for f in frames["a:udp"]] == [4322] and frames["a:udp"][0].outgoing
    ts = [f.ts for f in frames["b:all-ip"]]
    assert ts == sorted(ts) and all(t > 1e9 for t in ts)  # kernel wall-clock timestamps
    paths = cap.write_pcaps(tmp_path)
    reader = RawPcapReader(str(tmp_path / "b_all-ip.pcap"))
    assert reader.linktype == 101 and [p for p, _ in reader] == [f.data for f in frames["b:all-ip"]]
    assert len(paths) == 2 and cap.stats["b:all-ip"][1] == 0


def test_capture_errors_are_one_line(pair: tuple[str, str]) -> None:
    na, _ = pair
    with pytest.raises(TunlabError, match="cannot capture on nosuchdev"):
        with Capture([CapturePoint("x", na, "nosuchdev")]):
            pass
    with pytest.raises(TunlabError, match="bad capture filter"):
        with Capture([CapturePoint("x", na, "va", "ip and nonsense(")]):
            pass
    with pytest.raises(TunlabError, match="cannot open the network namespace"):
        in_netns("/run/netns/s4t-no-such-namespace", lambda: None)


def test_injector_names_an_oversized_packet(pair: tuple[str, str]) -> None:
    na, _ = pair
    big = bytes(IP(src="10.250.77.1", dst="10.250.77.2", flags="DF") / UDP(sport=5, dport=9) / (b"x" * 1600))
    with Injector(na, "a") as inj, pytest.raises(TunlabError, match="a could not send 1628 bytes"):
        inj.send(big)
