"""Receive-side coalescing of plain TCP segments into one GSO packet (tunlab/relay/fast/gro.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from tunlab.relay.fast import encap
from tunlab.relay.fast.gro import ACK, BatchViews, merge_run, super_header, whole_batch
from tunlab.relay.fast.scapy_encap import stream_packets

MSS = 1408


def segment(seq: int, payload: bytes, *, flags: str = "A", sport: int = 40000, ident: int = 1,
            options: bool = True) -> bytes:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))] if options else []
    return bytes(IP(src="10.2.0.1", dst="10.2.0.2", id=ident, flags="DF", ttl=64)
                 / TCP(sport=sport, dport=5201, seq=seq, ack=777, flags=flags, window=501, options=opts)
                 / Raw(payload))


def batch(segs: list[bytes], stride: int) -> tuple[bytearray, int]:
    buf = bytearray(70000)
    for i, s in enumerate(segs):
        buf[i * stride:i * stride + len(s)] = s
    return buf, (len(segs) - 1) * stride + len(segs[-1])


def flow(k: int, seq: int = 5000, last: int = MSS, last_flags: str = "A") -> list[bytes]:
    out = []
    for i in range(k):
        size = MSS if i < k - 1 else last
        out.append(segment((seq + i * MSS) & 0xFFFFFFFF, bytes([i]) * size, ident=10 + i,
                           flags=last_flags if i == k - 1 else "A"))
    return out


def written(buf: bytearray, end: int, stride: int, hl: int) -> bytes:
    """What the relay writes to the device for a whole batch: virtio header, header, payloads."""
    k = -(-end // stride)
    vnet, hdr = super_header(buf, 0, hl, end - k * hl, stride - hl, bool(buf[(k - 1) * stride + 33] & 0x08))
    return vnet + hdr + b"".join(bytes(v) for v in BatchViews(buf).payloads(stride, hl, end))


def test_a_run_becomes_one_gso_packet_that_cuts_back_into_the_same_segments() -> None:
    segs = flow(6, last=500, last_flags="PA")
    stride = len(segs[0])
    buf, end = batch(segs, stride)
    hl = whole_batch(buf, end, stride)
    assert hl == 52
    stream = written(buf, end, stride, hl)
    vnet = encap.parse_vnet(stream)
    assert vnet == encap.Vnet(encap.VNET_F_NEEDS_CSUM, encap.GSO_TCPV4, 52, MSS, 20, 16)
    big = IP(stream[encap.VNET_LEN:])
    assert big.len == 52 + 5 * MSS + 500 and str(big[TCP].flags) == "PA"
    fresh = big.copy()
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == big.chksum  # the IP header checksum is valid
    again = stream_packets(stream)  # what the receiving kernel will make of it
    assert [bytes(p[TCP].payload) for p in again] == [bytes(IP(s)[TCP].payload) for s in segs]
    assert [p[TCP].seq for p in again] == [IP(s)[TCP].seq for s in segs]


@pytest.mark.parametrize("spoil", ["gap", "port", "syn", "fin", "ack", "window", "middle_short", "options",
                                   "ip_options", "fragment"])
def test_anything_but_one_clean_run_is_refused(spoil: str) -> None:
    segs = flow(4)
    if spoil == "gap":
        segs[2] = segment(5000 + 2 * MSS + 1, bytes(MSS), ident=12)
    elif spoil == "port":
        segs[1] = segment(5000 + MSS, bytes(MSS), sport=40001, ident=11)
    elif spoil == "syn":
        segs[0] = segment(5000, bytes(MSS), flags="SA")
    elif spoil == "fin":
        segs[1] = segment(5000 + MSS, bytes(MSS), flags="FA", ident=11)
    elif spoil == "ack":
        p = IP(segs[3])
        p[TCP].ack = 778
        del p[TCP].chksum
        segs[3] = bytes(p)
    elif spoil == "window":
        p = IP(segs[2])
        p[TCP].window = 1
        del p[TCP].chksum
        segs[2] = bytes(p)
    elif spoil == "middle_short":
        segs[1] = segment(5000 + MSS, bytes(MSS - 8), ident=11)
    elif spoil == "options":
        segs[2] = segment(5000 + 2 * MSS, bytes(MSS + 12), ident=12, options=False)  # same size, no options
    elif spoil == "ip_options":
        segs[0] = bytes(IP(src="10.2.0.1", dst="10.2.0.2", options=[b"\x01\x01\x01\x00"])
                        / TCP(seq=5000, flags="A") / Raw(bytes(MSS)))
    elif spoil == "fragment":
        p = IP(segs[0])
        p.flags = "MF"
        del p.chksum
        segs[0] = bytes(p)
    stride = max(len(s) for s in segs)
    buf, end = batch(segs, stride)
    assert whole_batch(buf, end, stride) == 0


def test_packet_by_packet_runs_split_at_a_foreign_segment() -> None:
    segs = flow(3) + [segment(1, bytes(MSS), sport=1234)]
    stride = len(segs[0])
    buf, end = batch(segs, stride)
    assert whole_batch(buf, end, stride) == 0
    assert merge_run(buf, 0, stride, 4, end) == (3, 52)
    assert merge_run(buf, 3 * stride, stride, 1, end)[0] == 1


def test_sequence_wrap_is_left_to_the_slow_path() -> None:
    segs = flow(3, seq=0xFFFFFFFF - MSS)
    stride = len(segs[0])
    buf, end = batch(segs, stride)
    assert whole_batch(buf, end, stride) == 0
    assert merge_run(buf, 0, stride, 3, end)[0] == 3


def test_a_pushed_segment_ends_a_run() -> None:
    segs = flow(2, last_flags="PA") + flow(2, seq=5000 + 2 * MSS)
    stride = len(segs[0])
    buf, end = batch(segs, stride)
    assert merge_run(buf, 0, stride, 4, end)[0] == 2
    assert buf[33] == ACK


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(1, MSS), st.integers(0, 0xFFFFFFFF))
def test_merge_then_cut_is_the_identity(k: int, last: int, seq: int) -> None:
    segs = flow(k, seq=seq % (2**32 - 50 * MSS), last=last)
    stride = len(segs[0])
    buf, end = batch(segs, stride)
    hl = whole_batch(buf, end, stride)
    assert hl and merge_run(buf, 0, stride, k, end) == (k, hl)
    again = stream_packets(written(buf, end, stride, hl))
    assert [bytes(p) for p in again] == [bytes(IP(s)) for s in segs]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000), st.integers(1, 1500))
def test_garbage_never_raises(data: bytes, stride: int) -> None:
    buf = bytearray(data) + bytearray(8)
    whole_batch(buf, len(data), stride)
    if data:
        merge_run(buf, 0, stride, -(-len(data) // stride), len(data))
