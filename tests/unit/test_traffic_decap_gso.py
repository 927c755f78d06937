"""Underlay decoding of the fast datapath: gso chunks, UDP GSO sends captured whole, hellos (no root)."""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from tunlab.relay.fast import encap
from tunlab.verdict.checks import Captures, Chain, LinkInfo, check_links
from tunlab.traffic.decap import Frame, RelayEnd, decode_link
from tunlab.verdict.masks import bad_checksums

PORT = 55555
A = RelayEnd("a", "10.0.0.1", PORT)
B = RelayEnd("b", "10.0.0.2", PORT)
OVERLAY = ["172.16.0.0/16"]


def outer(payload: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=PORT, dport=PORT) / Raw(payload))


def frames(payloads: list[bytes], **kw: str) -> list[Frame]:
    return [Frame(1.0 + i / 1000, outer(p, **kw)) for i, p in enumerate(payloads)]


def super_packet(data: bytes, mss: int = 1400) -> bytes:
    """A TUN read with TSO on: virtio-net header (TCPv4, NEEDS_CSUM) + one TCP packet of ``data``."""
    pkt = IP(src="172.16.0.1", dst="172.16.0.2", id=7, flags="DF") / TCP(sport=40000, dport=80, seq=1000,
                                                                          flags="PA") / Raw(data)
    raw = bytearray(bytes(pkt))
    raw[36:38] = b"\x12\x34"  # a partial checksum, as the sending kernel leaves it
    return encap.VNET.pack(encap.VNET_F_NEEDS_CSUM, encap.GSO_TCPV4, 40, mss, 20, 16) + bytes(raw)


def ping(i: int, size: int = 56) -> bytes:
    return bytes(IP(src="172.16.0.1", dst="172.16.0.2", id=i) / ICMP(id=1, seq=i) / Raw(bytes(size)))


DATA = bytes(random.Random(3).getrandbits(8) for _ in range(5000))


def check_segments(sightings: list) -> None:  # type: ignore[type-arg]
    enc = [s for s in sightings if s.kind == "encap"]
    assert len(enc) == 4 and all(s.outer == "UDP gso 10.0.0.1:55555 > 10.0.0.2:55555 (4 chunks)" for s in enc)
    inner = [IP(s.inner) for s in enc]
    assert [p[TCP].seq for p in inner] == [1000, 2400, 3800, 5200]
    assert b"".join(bytes(p[TCP].payload) for p in inner) == DATA
    assert all(not bad_checksums(p) for p in inner)  # the partial checksum was completed
    assert all((s.src_node, s.dst_node) == ("a", "b") for s in enc)


def test_chunks_one_per_datagram_reassemble_into_the_segments_the_receiver_makes() -> None:
    chunks = encap.split_stream(super_packet(DATA), queue=0, pid=41, csize=1460)
    assert len(chunks) == 4
    check_segments(decode_link(frames(chunks[::-1]), A, B, "udp", OVERLAY))


def test_a_gso_send_captured_whole_on_a_veth() -> None:
    chunks = encap.split_stream(super_packet(DATA), queue=0, pid=41, csize=1460)
    check_segments(decode_link(frames([b"".join(chunks)]), A, B, "udp", OVERLAY))


def test_single_chunk_stream_and_glued_plain_packets() -> None:
    one = encap.split_stream(encap.ZERO_VNET + ping(1), queue=0, pid=1, csize=1460)
    glued = ping(2, 1000) + ping(3, 1000) + ping(4, 500)  # the plain datapath's UDP GSO send, captured whole
    s = decode_link(frames([*one, glued]), A, B, "udp", OVERLAY)
    assert [x.kind for x in s] == ["encap"] * 4
    assert s[0].outer == "UDP gso 10.0.0.1:55555 > 10.0.0.2:55555" and s[0].inner == ping(1)
    assert [x.inner for x in s[1:]] == [ping(2, 1000), ping(3, 1000), ping(4, 500)]
    assert s[1].outer == "UDP 10.0.0.1:55555 > 10.0.0.2:55555"


def test_hellos_are_neither_inner_packets_nor_bare() -> None:
    hello = encap.pack_hello(encap.HELLO_KIND, caps=3, session=5)
    reply = encap.pack_hello(encap.REPLY_KIND, caps=3, session=6, echo=5)
    s = decode_link(frames([hello]) + frames([reply], src="10.0.0.2", dst="10.0.0.1"), A, B, "udp", OVERLAY)
    assert [x.kind for x in s] == ["hello", "hello"] and all(x.inner is None for x in s)
    chain = Chain(("a", "b"), (LinkInfo("a-b", A, B),), overlay=tuple(OVERLAY))
    caps = Captures({"link:a-b": frames([hello])})
    [res] = check_links(chain, caps)
    assert res.passed and res.message.startswith("0 encapsulated")


def test_missing_and_duplicate_chunks_fail_the_link_check() -> None:
    chunks = encap.split_stream(super_packet(DATA), queue=0, pid=41, csize=1460)
    chain = Chain(("a", "b"), (LinkInfo("a-b", A, B),), overlay=tuple(OVERLAY))
    lost = Captures({"link:a-b": frames(chunks[:2] + chunks[3:])})
    [res] = check_links(chain, lost)
    assert not res.passed and "gso chunks do not reassemble" in res.message
    assert "incomplete in the capture (3 seen)" in res.message
    twice = Captures({"link:a-b": frames(chunks + chunks[1:2])})
    [res] = check_links(chain, twice)
    assert not res.passed and "chunk duplicate" in res.message
    assert len([s for s in twice.sightings(chain, chain.links[0]) if s.kind == "encap"]) == 4


def test_checksums_left_to_offload_are_completed() -> None:
    from scapy.layers.inet6 import IPv6

    from tunlab.traffic.decap import complete_checksum

    for pkt in (IP(src="172.16.0.2", dst="172.16.0.1") / TCP(sport=6000, dport=4000, flags="SA") / Raw(b"x" * 33),
                IP(src="172.16.0.2", dst="172.16.0.1") / UDP(sport=53, dport=4000) / Raw(b"y" * 20),
                IPv6(src="fd00::2", dst="fd00::1") / TCP(sport=1, dport=2) / Raw(b"z" * 7)):
        good = bytes(pkt)
        l4 = 20 if IP in pkt else 40
        at = l4 + (16 if TCP in pkt else 6)
        partial = good[:at] + b"\x12\x34" + good[at + 2:]  # what a packet left to checksum offload carries
        assert complete_checksum(partial) == good
    frag = bytes(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP() / Raw(b"q" * 10))
    assert complete_checksum(frag[:26] + b"\x00\x01" + frag[28:]) == frag[:26] + b"\x00\x01" + frag[28:]
    glued = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / Raw(b"w" * 30))
    glued = glued[:24] + (10).to_bytes(2, "big") + glued[26:]  # UDP length of one segment: a GSO send
    assert complete_checksum(glued) == glued
