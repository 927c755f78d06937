"""The per-hop NSH check on hand-made captures (issue 18): each way a header can be wrong is named with its
hop; the live cases run in tests/netns/test_scenarios_nsh.py."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from tunlab.model.nsh import HopHeader
from tunlab.relay import nsh
from tunlab.traffic.decap import Frame, RelayEnd
from tunlab.verdict.checks import Captures, Chain, LinkInfo
from tunlab.verdict.nsh import check_nsh

A, V, B = RelayEnd("a", "10.0.0.1", 4790), RelayEnd("v", "10.0.0.2", 4790), RelayEnd("v", "10.0.0.5", 4790)
B2 = RelayEnd("b", "10.0.0.6", 4790)
CHAIN = Chain(("a", "v", "b"), (LinkInfo("a-v", A, V), LinkInfo("v-b", B, B2)), overlay=("172.16.0.0/16",))
PROBE = bytes(IP(src="172.16.0.1", dst="172.16.0.2", id=7) / ICMP(id=1, seq=1))
CTX = bytes.fromhex("00" * 15 + "0a")
EXPECT = [HopHeader("a", "v", 10, 255, 63, {"context": CTX.hex()}), HopHeader("v", "b", 10, 254, 62,
                                                                             {"context": CTX.hex()})]


def frame(src: RelayEnd, dst: RelayEnd, h: nsh.Nsh, inner: bytes = PROBE, ts: float = 1.0) -> Frame:
    wire = nsh.gpe_header() + h.encode() + inner
    return Frame(ts, bytes(IP(src=src.ip, dst=dst.ip) / UDP(sport=4790, dport=4790) / wire))


def run(second: nsh.Nsh | None) -> list[str]:
    frames = {"link:a-v": [frame(A, V, nsh.Nsh(10, 255, 63, context=CTX))],
              "link:v-b": [frame(B, B2, second)] if second else []}
    return [("ok " if c.passed else "FAIL ") + c.message for c in check_nsh(CHAIN, Captures(frames), PROBE, EXPECT,
                                                                          "delivered at b")]


def test_all_hops_right() -> None:
    assert run(nsh.Nsh(10, 254, 62, context=CTX)) == [
        f"ok NSH probe at hop a>v: SPI 10 SI 255 TTL 63, context {CTX.hex()}",
        f"ok NSH probe at hop v>b: SPI 10 SI 254 TTL 62, context {CTX.hex()}"]


@pytest.mark.parametrize("second,msg", [
    (nsh.Nsh(20, 254, 62, context=CTX), "FAIL NSH probe at hop v>b: SPI 20, expected 10 (wrong path)"),
    (nsh.Nsh(10, 255, 62, context=CTX), "FAIL NSH probe at hop v>b: SI 255, expected 254 (wrong SI decrement"),
    (nsh.Nsh(10, 254, 63, context=CTX), "FAIL NSH probe at hop v>b: TTL 63, expected 62"),
    (nsh.Nsh(10, 254, 62), "FAIL NSH probe at hop v>b: metadata lost: context " + "00" * 16),
    (nsh.Nsh(10, 254, 62, context=b"\x01" + CTX[1:]), "FAIL NSH probe at hop v>b: metadata altered"),
    (None, "FAIL NSH probe at hop v>b: not seen; expected SPI 10 SI 254 TTL 62"),
])
def test_each_fault_named_with_its_hop(second: nsh.Nsh | None, msg: str) -> None:
    out = run(second)
    assert out[0].startswith("ok ") and out[1].startswith(msg), out


def test_forwarded_after_si_zero() -> None:
    out = run(nsh.Nsh(10, 0, 62, context=CTX))
    assert "FAIL NSH probe forwarded after SI reached 0 at hop v>b" in out, out


def test_reply_and_no_path() -> None:
    reply = bytes(IP(src="172.16.0.2", dst="172.16.0.1") / ICMP(type=0, id=1, seq=1))
    frames = {"link:v-b": [frame(B2, B, nsh.Nsh(11, 255, 63, context=CTX), reply)]}
    got = check_nsh(CHAIN, Captures(frames), PROBE, [HopHeader("b", "v", 11, 255, 63, None)], "x", reply=True)
    assert [c.passed for c in got] == [True] and got[0].message == "NSH reply at hop b>v: SPI 11 SI 255 TTL 63"
    none = check_nsh(CHAIN, Captures({}), PROBE, [], "unclassified")
    assert [(c.passed, c.message) for c in none] == [(False, "NSH probe: the relays' tables give it no hop "
                                                             "(unclassified)")]
