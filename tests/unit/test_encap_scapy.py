"""Scapy decoding of the fast datapath: chunk layers, hellos, and inner packets of a capture."""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tunlab.relay.fast import encap
from tunlab.relay.fast.scapy_encap import (TunlabChunk, TunlabHello, VirtioNetHdr, bind_ports, decode_datagram,
                                      inner_packets, stream_packets)

PORT = 47911


def tcp_super_packet(payload: bytes, mss: int = 1400) -> bytes:
    """What a TUN with TSO hands over: vnet header (TCPv4, NEEDS_CSUM) + one big TCP packet."""
    pkt = IP(src="10.2.0.1", dst="10.2.0.2", id=100, flags="DF") / TCP(sport=40000, dport=5201, seq=1000,
                                                                        flags="PA") / Raw(payload)
    raw = bytearray(bytes(pkt))
    raw[36:38] = b"\x12\x34"  # a partial checksum, as the kernel leaves it
    vnet = encap.VNET.pack(encap.VNET_F_NEEDS_CSUM, encap.GSO_TCPV4, 40, mss, 20, 16)
    return vnet + bytes(raw)


def on_wire(datagrams: list[bytes], sport: int = PORT, dport: int = PORT) -> list[Ether]:
    return [Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=sport, dport=dport) / Raw(d)
            for d in datagrams]


def checksum_ok(p: IP) -> bool:
    fresh = p.copy()
    del fresh[TCP].chksum
    del fresh.chksum
    again = IP(bytes(fresh))
    return bool(again[TCP].chksum == p[TCP].chksum and again.chksum == p.chksum)


def test_super_packet_is_cut_like_the_kernel_cuts_it() -> None:
    data = bytes(random.Random(1).getrandbits(8) for _ in range(5000))
    stream = tcp_super_packet(data)
    chunks = encap.split_stream(stream, queue=0, pid=9, csize=1460)
    frames = [Ether(bytes(f)) for f in on_wire(list(reversed(chunks)))]
    inner = inner_packets(frames, ports=[PORT])
    assert len(inner) == 4  # 5000 bytes in segments of 1400
    assert b"".join(bytes(p[TCP].payload) for p in inner) == data
    assert [p[TCP].seq for p in inner] == [1000, 2400, 3800, 5200]
    assert [p.id for p in inner] == [100, 101, 102, 103]
    assert [str(p[TCP].flags) for p in inner] == ["A", "A", "A", "PA"]
    assert all(checksum_ok(p) for p in inner)


def test_without_segmenting_the_super_packet_comes_whole() -> None:
    stream = tcp_super_packet(bytes(3000))
    [p] = stream_packets(stream, segment=False)
    assert len(p[TCP].payload) == 3000 and checksum_ok(p)


def test_plain_datagrams_and_hellos() -> None:
    ping = IP(src="10.2.0.1", dst="10.2.0.2") / ICMP(id=7, seq=1) / Raw(b"x" * 56)
    hello = encap.pack_hello(encap.HELLO_KIND, caps=3, session=0xABCD)
    frames = on_wire([bytes(ping), hello])
    got = inner_packets(frames, ports=[PORT])
    assert len(got) == 1 and got[0][ICMP].id == 7
    assert len(inner_packets(frames, ports=[PORT], hellos=True)) == 2
    assert inner_packets(frames) == []  # plain datagrams only count on the relay's ports
    h = decode_datagram(hello)
    assert h[TunlabHello].session == 0xABCD and h[IP].proto == encap.HELLO_PROTO


def test_bound_ports_decode_layers_in_place() -> None:
    bind_ports(PORT)
    small = encap.split_stream(encap.ZERO_VNET + bytes(IP(dst="10.2.0.2") / ICMP()), queue=0, pid=1, csize=1460)
    pkt = Ether(bytes(on_wire(small)[0]))
    assert pkt.haslayer(TunlabChunk) and pkt.haslayer(VirtioNetHdr) and pkt.haslayer(ICMP)
    plain = Ether(bytes(on_wire([bytes(IP(dst="10.2.0.2") / ICMP())])[0]))
    assert plain[UDP].payload.haslayer(ICMP) and not plain.haslayer(TunlabChunk)
    big = encap.split_stream(tcp_super_packet(bytes(4000)), queue=0, pid=2, csize=1460)
    first = Ether(bytes(on_wire(big)[0]))
    assert first[TunlabChunk].count == len(big) and first[TunlabChunk].index == 0


def test_a_lost_chunk_loses_only_its_stream() -> None:
    a = encap.split_stream(tcp_super_packet(bytes(4000)), queue=0, pid=1, csize=1460)
    b = encap.split_stream(tcp_super_packet(bytes(2000)), queue=0, pid=2, csize=1460)
    got = inner_packets(on_wire(a[:1] + a[2:] + b), ports=[PORT])
    assert sum(len(p[TCP].payload) for p in got) == 2000


def test_a_udp_gso_buffer_captured_whole_is_split() -> None:
    """On a veth, tcpdump sees a UDP GSO send as one datagram holding every chunk (or packet)."""
    data = bytes(random.Random(2).getrandbits(8) for _ in range(6000))
    chunks = encap.split_stream(tcp_super_packet(data), queue=0, pid=4, csize=1460)
    got = inner_packets(on_wire([b"".join(chunks)]), ports=[PORT])
    assert b"".join(bytes(p[TCP].payload) for p in got) == data
    pings = [bytes(IP(dst="10.2.0.2", id=i) / ICMP() / Raw(b"y" * 100)) for i in range(3)]
    got = inner_packets(on_wire([b"".join(pings)]), ports=[PORT])
    assert [p.id for p in got] == [0, 1, 2]


def test_a_tun_capture_of_a_super_packet_is_cut_to_the_mtu() -> None:
    data = bytes(random.Random(3).getrandbits(8) for _ in range(4000))
    big = IP(src="10.2.0.1", dst="10.2.0.2", id=5) / TCP(sport=1, dport=2, seq=10, flags="PA") / Raw(data)
    small = IP(dst="10.2.0.2") / ICMP()
    from tunlab.relay.fast.scapy_encap import cut_to_mtu

    out = cut_to_mtu([IP(bytes(big)), IP(bytes(small))], 1472)
    assert [len(p) for p in out[:-1]] == [1472, 1472, 1176] and out[-1].haslayer(ICMP)
    assert b"".join(bytes(p[TCP].payload) for p in out[:-1]) == data
    assert [str(p[TCP].flags) for p in out[:-1]] == ["A", "A", "PA"] and all(checksum_ok(p) for p in out[:-1])


def test_nsh_datagrams_give_their_inner_packet_on_any_port() -> None:
    """`tunlab pcap inner` on an NSH lab's link capture (issue 18): VXLAN-GPE + NSH stripped."""
    from tunlab.relay import nsh

    ping = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / ICMP())
    frames = on_wire([nsh.gpe_header() + nsh.Nsh(10, 254, 62).encode() + ping,
                      nsh.gpe_header() + b"\x40" + bytes(23) + ping], sport=4790, dport=4790)  # 2nd: NSH version 1
    got = inner_packets(frames)
    assert [bytes(p) for p in got] == [ping]
