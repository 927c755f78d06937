"""The fault hooks used by negative scenario tests (no root)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tunlab.traffic import faults
from tunlab.verdict.masks import Mask, bad_checksums


@pytest.mark.parametrize("l4", [ICMP(id=1, seq=1), UDP(sport=5, dport=6), TCP(sport=5, dport=6, flags="PA")])
def test_flip_payload_byte_keeps_checksums_valid_and_changes_one_byte(l4: object) -> None:
    p = bytes(IP(src="172.16.0.1", dst="172.16.0.2", id=5) / l4 / (b"payload" * 5))
    q = faults.flip_payload_byte(p)
    assert len(q) == len(p) and sum(a != b for a, b in zip(p, q)) >= 1
    assert bad_checksums(IP(q)) == []
    diffs = Mask(p).diff(q)
    assert [d.layer for d in diffs if d.field != "chksum"] == ["Raw"]


def test_small_or_foreign_packets_pass_untouched() -> None:
    assert faults.flip_payload_byte(b"\x60" * 40) == b"\x60" * 40
    assert faults.drop_all(b"x") is None and faults.passthrough(b"x") == b"x"


def test_next_hop_from_the_relay_command_line() -> None:
    args = ["tunlab", "relay", "--listen", "10.0.1.1:55555", "--peer", "vnf1=10.0.0.1:55555",
            "--listen", "10.0.1.5:55555", "--peer", "vnf3=10.0.1.6:55555",
            "--route", "172.16.0.1/32=vnf1", "--route", "172.16.0.0/24=vnf3", "--route", "default=vnf1"]
    assert faults._next_hop_ip("172.16.0.2", args) == "10.0.1.6"
    assert faults._next_hop_ip("172.16.0.1", args) == "10.0.0.1"
    assert faults._next_hop_ip("172.16.9.9", args) == "10.0.0.1"
    tcp = ["--listen", "10.0.0.2:55555", "--accept", "sender=10.0.0.1", "--peer", "rx=10.0.1.2:55555",
           "--route", "172.16.0.1/32=sender"]
    assert faults._next_hop_ip("172.16.0.1", tcp) == "10.0.0.1"
    assert faults._next_hop_ip("172.16.0.2", tcp) is None
