"""NSH codec (RFC 8300) and VXLAN-GPE framing against scapy's layers and the RFC's bit layout; classifier rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.errors import TunlabError
from tunlab.relay import nsh
from tunlab.relay.nsh import Classifier, Nsh, NshError, Rule, Tlv

tlvs = st.lists(st.builds(Tlv, cls=st.integers(0, 0xFFFF), type=st.integers(0, 255),
                          value=st.binary(max_size=24)), max_size=5)
headers = st.one_of(
    st.builds(Nsh, spi=st.integers(0, nsh.MAX_SPI), si=st.integers(0, 255), ttl=st.integers(0, 63),
              md_type=st.just(1), next_proto=st.sampled_from([1, 2, 3, 4, 5]), context=st.binary(min_size=16, max_size=16),
              oam=st.booleans()),
    st.builds(Nsh, spi=st.integers(0, nsh.MAX_SPI), si=st.integers(0, 255), ttl=st.integers(0, 63),
              md_type=st.just(2), next_proto=st.sampled_from([1, 2]), context=st.just(b""), tlvs=tlvs.map(tuple),
              oam=st.booleans()))


@settings(max_examples=300, deadline=None)
@given(headers, st.binary(max_size=64))
def test_round_trip_and_fixed_field_readers(h: Nsh, inner: bytes) -> None:
    raw = h.encode()
    assert len(raw) == h.length and len(raw) % 4 == 0
    assert nsh.decode(raw + inner) == h
    ttl, length, np, spi, si = nsh.peek(raw + inner, 0, len(raw) + len(inner))
    assert (ttl, length, np, spi, si) == (h.ttl, h.length, h.next_proto, h.spi, h.si)
    buf = bytearray(raw)
    nsh.set_ttl_si(buf, 0, (h.ttl + 7) % 64, (h.si + 1) % 256)
    assert nsh.decode(buf) == h.replace(ttl=(h.ttl + 7) % 64, si=(h.si + 1) % 256)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_rfc8300_bit_layout(h: Nsh) -> None:
    """Figure 2 of RFC 8300: Ver(2) O(1) U(1) TTL(6) Length(6) U(4) MD Type(4) Next Protocol(8); SPI(24) SI(8)."""
    w0, w1 = struct.unpack("!II", h.encode()[:8])
    assert w0 >> 30 == 0
    assert (w0 >> 29) & 1 == h.oam
    assert (w0 >> 28) & 1 == 0
    assert (w0 >> 22) & 0x3F == h.ttl
    assert (w0 >> 16) & 0x3F == h.length // 4
    assert (w0 >> 12) & 0xF == 0
    assert (w0 >> 8) & 0xF == h.md_type
    assert w0 & 0xFF == h.next_proto
    assert (w1 >> 8, w1 & 0xFF) == (h.spi, h.si)
    if h.md_type == 1:
        assert h.length == 24  # fixed length: 6 words


@settings(max_examples=200, deadline=None)
@given(headers)
def test_same_bytes_as_scapy(h: Nsh) -> None:
    from scapy.contrib.nsh import NSH, NSHTLV

    if h.md_type == 1:
        ref = NSH(ver=0, oam=int(h.oam), ttl=h.ttl, mdtype=1, nextproto=h.next_proto, spi=h.spi, si=h.si,
                  context_header=h.context)
    else:
        vlch = []
        for t in h.tlvs:  # scapy's TLV holds 4-byte words: compare headers whose values are whole words
            if len(t.value) % 4:
                return
            words = list(struct.unpack(f"!{len(t.value) // 4}I", t.value))
            vlch.append(NSHTLV(class_=t.cls, type=t.type, metadata=words))
        ref = NSH(ver=0, oam=int(h.oam), ttl=h.ttl, mdtype=2, nextproto=h.next_proto, spi=h.spi, si=h.si,
                  vlch=vlch)
    assert bytes(ref) == h.encode()
    parsed = NSH(h.encode())
    assert (parsed.spi, parsed.si, parsed.ttl, parsed.mdtype, parsed.length) == \
        (h.spi, h.si, h.ttl, h.md_type, h.length // 4)


def test_vxlan_gpe_header_is_scapys() -> None:
    from scapy.contrib.nsh import NSH
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN

    h = Nsh(spi=42, si=254, context=bytes(range(16)))
    inner = bytes(IP(src="10.70.0.1", dst="10.70.0.2") / ICMP())
    wire = nsh.gpe_header(vni=7) + h.encode() + inner
    ref = VXLAN(flags=0x0C, NextProtocol=4, vni=7) / NSH(mdtype=1, nextproto=1, spi=42, si=254,
                                                         context_header=bytes(range(16))) / IP(inner)
    assert bytes(ref) == wire
    pkt = IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=4790, dport=4790) / wire
    dec = IP(bytes(pkt))
    assert dec[NSH].spi == 42 and dec[NSH].si == 254 and dec[NSH].context_header == bytes(range(16))
    assert dec[NSH][IP].dst == "10.70.0.2"
    nsh.check_gpe(wire, len(wire))


def test_ip_packets_are_never_taken_for_gpe() -> None:
    """A bare IPv4 packet whose length ends in 0x04 (0x45 .. .. 0x04) is not VXLAN-GPE + NSH."""
    from tunlab.traffic.decap import nsh_of

    ip = bytes([0x45, 0, 0x01, 0x04]) + bytes(256)
    assert not nsh.is_gpe_nsh(ip) and nsh_of(ip) is None
    assert not nsh.is_gpe_nsh(bytes([0x60, 0, 0, 4]) + bytes(40))
    wire = nsh.gpe_header() + Nsh(1, 2).encode() + ip
    assert nsh_of(wire) == (Nsh(1, 2), ip)


@pytest.mark.parametrize("raw,reason", [
    (b"\x0c\x00\x00\x04" + b"\0" * 4, "nsh_short"),
    (b"\x08\x00\x00\x00" + b"\0" * 4 + Nsh(1, 1).encode(), "nsh_not_gpe"),  # plain VXLAN, Ethernet inside
    (b"\x0c\x00\x00\x01" + b"\0" * 4 + Nsh(1, 1).encode(), "nsh_not_gpe"),  # GPE carrying IPv4, not NSH
])
def test_gpe_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(NshError) as e:
        nsh.check_gpe(raw, len(raw))
    assert e.value.reason == reason


@pytest.mark.parametrize("mutate,reason", [
    (lambda b: b[:7], "nsh_short"),
    (lambda b: bytes([b[0] | 0x40]) + b[1:], "nsh_version"),
    (lambda b: b[:1] + bytes([(b[1] & 0xC0) | 5]) + b[2:], "nsh_length"),        # MD 1 must be 6 words
    (lambda b: b[:1] + bytes([(b[1] & 0xC0) | 9]) + b[2:], "nsh_length"),        # longer than the datagram
    (lambda b: b[:2] + bytes([3]) + b[3:], "nsh_md_type"),
])
def test_malformed_headers_named(mutate, reason: str) -> None:
    raw = mutate(Nsh(5, 9).encode())
    with pytest.raises(NshError) as e:
        nsh.decode(raw)
    assert e.value.reason == reason
    with pytest.raises(NshError):
        nsh.peek(raw, 0, len(raw))


def test_tlv_past_end_and_bad_values() -> None:
    h = Nsh(1, 2, md_type=2, context=b"", tlvs=(Tlv(0x10, 1, b"abcd"),)).encode()
    broken = h[:8 + 3] + bytes([20]) + h[12:]  # TLV says 20 bytes, 4 present
    with pytest.raises(NshError, match="past"):
        nsh.decode(broken)
    with pytest.raises(NshError):
        Nsh(1 << 24, 1)
    with pytest.raises(NshError):
        Nsh(1, 256)
    with pytest.raises(NshError):
        Nsh(1, 1, ttl=64)
    with pytest.raises(NshError):
        Nsh(1, 1, context=b"short")


# ------------------------------------------------------------------------------------------ classifier

def _pkt(src="10.70.0.1", dst="10.70.0.2", proto="udp", sport=1000, dport=53, tos=0):
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    ip = IPv6(src=src, dst=dst, tc=tos) if ":" in src else IP(src=src, dst=dst, tos=tos)
    l4 = {"udp": UDP(sport=sport, dport=dport), "tcp": TCP(sport=sport, dport=dport), "icmp": ICMP()}[proto]
    return bytes(ip / l4)


def test_rules_match_each_field() -> None:
    c = Classifier([
        Rule.from_json({"name": "dns", "spi": 10, "proto": "udp", "dport": 53}, "r0"),
        Rule.from_json({"name": "web", "spi": 20, "si": 200, "proto": 6, "dport": "80-90", "src": "10.70.0.0/24"}, "r1"),
        Rule.from_json({"name": "ef", "spi": 30, "dscp": 46}, "r2"),
        Rule.from_json({"name": "v6", "spi": 40, "dst": "fd70::/64"}, "r3"),
        Rule.from_json({"name": "src-port", "spi": 50, "sport": 7000}, "r4"),
    ])

    def name(p):
        r = c.classify(p)
        return r.name if r else None

    assert name(_pkt(dport=53)) == "dns"
    assert name(_pkt(proto="tcp", dport=53)) is None
    assert name(_pkt(proto="tcp", dport=85)) == "web"
    assert name(_pkt(proto="tcp", dport=85, src="10.71.0.1")) is None
    assert name(_pkt(proto="tcp", dport=91)) is None
    assert name(_pkt(proto="icmp", tos=46 << 2)) == "ef"
    assert name(_pkt(proto="icmp", tos=45 << 2)) is None
    assert name(_pkt(src="fd71::1", dst="fd71::2", proto="icmp")) is None
    assert name(_pkt(src="fd70::1", dst="fd70::2", proto="tcp", dport=1)) == "v6"
    assert name(_pkt(src="fd70::1", dst="fd70::2", proto="udp", dport=53)) == "dns"  # first match wins
    assert name(_pkt(src="fd71::1", dst="fd71::2", proto="udp", dport=9, tos=46 << 2)) == "ef"  # IPv6 traffic class
    assert name(_pkt(proto="udp", sport=7000, dport=1)) == "src-port"
    assert c.classify(b"\x45" + b"\0" * 5) is None  # too short: not classified
    assert c.classify(b"\x00" * 40) is None  # not IP


def test_rule_header_carries_metadata() -> None:
    r = Rule.from_json({"spi": 7, "si": 9, "ttl": 10, "context": "00" * 15 + "2a"}, "r")
    h = r.header(nsh.NP_IPV4)
    assert (h.spi, h.si, h.ttl, h.md_type, h.context[-1]) == (7, 9, 10, 1, 42)
    r2 = Rule.from_json({"spi": 7, "tlvs": [{"class": 0xFFF0, "type": 1, "value": "cafe"}]}, "r")
    assert r2.md_type == 2 and r2.header(2).tlvs == (Tlv(0xFFF0, 1, b"\xca\xfe"),)
    assert Rule.from_json(r2.to_json(), "again") == r2
    assert Rule.from_json(r.to_json(), "again") == r


@pytest.mark.parametrize("rule,msg", [
    ({"si": 3}, "needs spi"),
    ({"spi": 1, "si": 0}, "si 0 is out of range"),
    ({"spi": 1, "dport": "90-80"}, "out of range"),
    ({"spi": 1, "src": "10.0.0.1/24"}, "not a network prefix"),
    ({"spi": 1, "proto": "quic"}, "not a protocol"),
    ({"spi": 1, "dscp": 64}, "DSCP" ),
    ({"spi": 1, "context": "00"}, "context is 1 bytes"),
    ({"spi": 1, "prot": 6}, "unknown field 'prot'"),
    ({"spi": 1, "src": "10.0.0.0/8", "dst": "fd00::/8"}, "different IP versions"),
])
def test_bad_rules_one_line(rule, msg) -> None:
    with pytest.raises(TunlabError) as e:
        Rule.from_json(rule, "nsh.json: classifier[0]")
    text = str(e.value) + " " + (e.value.hint or "")
    assert "nsh.json: classifier[0]" in str(e.value) and msg in text and "\n" not in text
