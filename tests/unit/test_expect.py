"""Mask: field-by-field comparison of expected and received packets (no root)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tunlab.verdict.masks import Mask, bad_checksums, decode, summary


def probe() -> IP:
    return IP(src="10.77.0.1", dst="10.77.0.2", ttl=64, id=4242) / ICMP(id=9, seq=1) / (b"tunlab-probe" * 8)


def forwarded(pkt: IP, hops: int) -> bytes:
    """What a kernel that forwards ``hops`` times makes of the packet: TTL lowered, IP checksum fixed."""
    q = IP(bytes(pkt))
    q.ttl -= hops
    q.chksum = None
    return bytes(q)


def test_equal_packets_match() -> None:
    p = probe()
    assert Mask(p).diff(bytes(p)) == []
    assert Mask(p).matches(bytes(p))


def test_ttl_lowered_by_forwarding_is_a_difference_unless_masked_or_expected() -> None:
    p = probe()
    got = forwarded(p, 3)
    diffs = Mask(p).diff(got)
    assert [(d.layer, d.field) for d in diffs] == [("IP", "ttl")]
    assert diffs[0].expected == "64" and diffs[0].received == "61"
    assert Mask(p).set_do_not_care_packet(IP, "ttl").matches(got)
    expected = IP(bytes(p))
    expected.ttl = 61
    expected.chksum = None
    assert Mask(expected).matches(got)  # checksums follow: the IP checksum differs but is valid


def test_wrong_inner_payload_is_named_with_its_offset_and_bad_checksum() -> None:
    p = probe()
    got = bytearray(bytes(p))
    got[-5] ^= 0xFF
    diffs = Mask(p).diff(bytes(got))
    where = {(d.layer, d.field) for d in diffs}
    assert ("Raw", f"load[{len(bytes(p[ICMP].payload)) - 5}]") in where
    assert ("ICMP", "chksum") in where  # the payload was rewritten without fixing the checksum


def test_rewritten_payload_with_fixed_checksum_is_still_caught() -> None:
    p = probe()
    q = IP(bytes(p))
    q[ICMP].remove_payload()
    q = q / (b"tunlab-probX" + b"tunlab-probe" * 7)
    q[ICMP].chksum = None
    diffs = Mask(p).diff(bytes(q))
    assert [d.field for d in diffs] == ["load[11]"]


def test_checksum_modes() -> None:
    p = probe()
    bad = bytearray(bytes(p))
    bad[10] ^= 1  # corrupt the IP checksum only
    assert bad_checksums(IP(bytes(bad)))
    assert [d.field for d in Mask(p).diff(bytes(bad))] == ["chksum"]
    assert [d.field for d in Mask(p, checksums="equal").diff(bytes(bad))] == ["chksum"]
    assert Mask(p, checksums="ignore").matches(bytes(bad))


def test_layer_mismatch_and_unknown_field() -> None:
    p = probe()
    other = IP(src="10.77.0.1", dst="10.77.0.2", ttl=64, id=4242) / UDP(sport=1, dport=2) / b"x"
    diffs = Mask(p).diff(bytes(other))
    fields = [d.field for d in diffs]
    assert "proto" in fields and fields[-1] == "(layer)"
    with pytest.raises(ValueError, match="no field"):
        Mask(p).set_do_not_care_packet(IP, "nonsense")


def test_udp_without_checksum_is_valid() -> None:
    p = IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=5, dport=6, chksum=0) / b"abc"
    assert bad_checksums(IP(bytes(p))) == []


def test_decode_and_summary_are_short_and_the_same_for_bytes_and_packets() -> None:
    p = IP(src="10.77.0.1", dst="10.77.0.2", id=3) / TCP(sport=40000, dport=80, flags="S", seq=7)
    assert decode(p) == decode(bytes(p))
    assert decode(p)[1].startswith("TCP sport=40000 dport=80")
    assert summary(p).startswith("TCP 40000>80 [S] seq=7 10.77.0.1 > 10.77.0.2")
    big = probe() / (b"z" * 2000)
    lines = decode(big, payload_cap=8)
    assert all(len(line) < 200 for line in lines)
    assert decode(b"\x01\x02") and "bytes" in decode(b"\x01\x02")[0]
