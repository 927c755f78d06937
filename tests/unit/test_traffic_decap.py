"""Underlay decoding: UDP datagrams, TCP streams cut anywhere, bare and fragmented packets (no root)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import RawPcapReader

from tunlab.traffic.decap import Frame, RelayEnd, decode_link, frame_error, relay_deframe

DATA = Path(__file__).resolve().parents[1] / "data"
A = RelayEnd("a", "10.251.0.1", None)


def pcap_frames(name: str) -> list[Frame]:
    reader = RawPcapReader(str(DATA / name))
    assert reader.linktype == 1  # Ethernet
    out = [Frame(meta.sec + meta.usec / 1e6, data[14:]) for data, meta in reader]
    reader.close()
    return out


def test_recorded_tunconnector_tcp_stream_deframes_completely() -> None:
    s = decode_link(pcap_frames("tcp-framing.pcap"), A, RelayEnd("b", "10.251.0.2", 55555), "tcp",
                    ["10.252.0.0/24"])
    assert {x.kind for x in s} == {"encap"}
    kinds = Counter((x.src_node, "icmp" if ICMP in IP(x.inner) else "tcp") for x in s)
    assert kinds == {("a", "icmp"): 10, ("a", "tcp"): 99, ("b", "icmp"): 10, ("b", "tcp"): 40}
    assert sum(len(x.inner) + 2 for x in s if x.src_node == "a") == 131214
    assert sum(len(x.inner) + 2 for x in s if x.src_node == "b") == 9665


def test_recorded_socat_udp_datagrams() -> None:
    s = decode_link(pcap_frames("udp-datagram.pcap"), RelayEnd("a", "10.251.0.1", 40000),
                    RelayEnd("b", "10.251.0.2", 40000), "udp", ["10.253.0.0/24"])
    assert len(s) == 18 and all(x.kind == "encap" and ICMP in IP(x.inner) for x in s)
    assert s[0].outer == "UDP 10.251.0.1:40000 > 10.251.0.2:40000"


def test_wrong_port_is_not_encapsulation() -> None:
    s = decode_link(pcap_frames("udp-datagram.pcap"), RelayEnd("a", "10.251.0.1", 40000),
                    RelayEnd("b", "10.251.0.2", 40001), "udp", ["10.253.0.0/24"])
    assert {x.kind for x in s} == {"other"}


def inner(i: int, size: int) -> bytes:
    return bytes(IP(src="10.77.0.1", dst="10.77.0.2", id=i) / UDP(sport=1, dport=2) / (bytes([i % 256]) * size))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 1400), min_size=1, max_size=8),
       cuts=st.lists(st.integers(1, 3000), max_size=12), isn=st.integers(0, 2**32 - 1),
       shuffle=st.randoms(use_true_random=False), with_syn=st.booleans())
def test_tcp_stream_cut_anywhere_and_reordered(sizes: list[int], cuts: list[int], isn: int,
                                               shuffle: object, with_syn: bool) -> None:
    packets = [inner(i, n) for i, n in enumerate(sizes)]
    stream = b"".join(len(p).to_bytes(2, "big") + p for p in packets)
    bounds = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    frames = []
    if with_syn:
        frames.append(Frame(0.0, bytes(IP(src="10.9.0.1", dst="10.9.0.2")
                                       / TCP(sport=33000, dport=55555, flags="S", seq=(isn - 1) % 2**32))))
    segs = []
    for lo, hi in zip(bounds, bounds[1:]):
        seg = IP(src="10.9.0.1", dst="10.9.0.2") / TCP(sport=33000, dport=55555, flags="PA",
                                                        seq=(isn + lo) % 2**32) / stream[lo:hi]
        segs.append(Frame(1.0 + hi / 1e6, bytes(seg)))
    first, rest = segs[0], segs[1:]
    shuffle.shuffle(rest)  # type: ignore[attr-defined]
    frames += [first] + rest + [first]  # reordered, and one retransmission
    s = decode_link(frames, RelayEnd("c", "10.9.0.1", None), RelayEnd("s", "10.9.0.2", 55555), "tcp",
                    ["10.77.0.0/24"])
    assert [x.inner for x in s if x.kind == "encap"] == packets
    assert not [x for x in s if x.kind == "stream-error"]


def test_tcp_gap_and_garbage_are_stream_errors() -> None:
    p = inner(1, 100)
    stream = len(p).to_bytes(2, "big") + p + len(p).to_bytes(2, "big") + p
    mk = lambda seq, data: Frame(1.0, bytes(IP(src="10.9.0.1", dst="10.9.0.2")  # noqa: E731
                                           / TCP(sport=3, dport=55555, seq=seq, flags="PA") / data))
    ends = (RelayEnd("c", "10.9.0.1", None), RelayEnd("s", "10.9.0.2", 55555))
    gap = decode_link([mk(100, stream[:50]), mk(200, stream[150:])], *ends, "tcp", [])
    assert [x.kind for x in gap] == ["stream-error"] and "missing from the capture" in gap[0].outer
    junk = decode_link([mk(100, b"\x00\x05\x11ello")], *ends, "tcp", [])
    assert [x.kind for x in junk] == ["stream-error"] and "IP version" in junk[0].outer


def test_bare_fragment_and_other() -> None:
    ends = (RelayEnd("a", "10.9.0.1", 4000), RelayEnd("b", "10.9.0.2", 4001))
    bare = Frame(1.0, inner(3, 10))
    frag = Frame(2.0, bytes(IP(src="10.9.0.1", dst="10.9.0.2", flags="MF") / UDP(sport=4000, dport=4001)
                            / (b"x" * 100)))
    unreach = Frame(3.0, bytes(IP(src="10.9.0.2", dst="10.9.0.1") / ICMP(type=3, code=3)))
    arp_like = Frame(4.0, b"\x00\x01\x08\x00")
    s = decode_link([bare, frag, unreach, arp_like], *ends, "udp", ["10.77.0.0/24"])
    assert [x.kind for x in s] == ["bare", "fragment", "other", "other"]
    assert s[0].inner == bare.data


def test_deframer_and_frame_validation() -> None:
    p = inner(1, 5)
    pkts, used = relay_deframe(len(p).to_bytes(2, "big") + p + b"\x00")
    assert pkts == [p] and used == len(p) + 2
    pkts, used = relay_deframe(b"\x00\x00" + len(p).to_bytes(2, "big") + p)  # length 0: not framed
    assert pkts == [] and used == 0
    assert frame_error(p) is None
    assert "length" in (frame_error(p + b"x") or "")
    assert frame_error(b"") == "empty frame"
