"""The fast datapath's wire format: chunks, hello, send layout, fast receive check, reassembly."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.relay.fast import encap

CSIZE = 1460


def stream_of(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    body = bytes(rnd.getrandbits(8) for _ in range(max(0, n - encap.VNET_LEN)))
    return encap.VNET.pack(0, 0, 0, 0, 0, 0)[:min(n, encap.VNET_LEN)] + body


# ---------------------------------------------------------------------------------------------- header


def test_header_round_trip() -> None:
    raw = encap.pack_header(3, 0xDEADBEEF, 4, 9, 1460) + b"x" * 1460
    assert encap.parse_header(raw) == encap.ChunkHeader(3, 0xDEADBEEF, 4, 9, 1460)
    assert len(encap.pack_header(0, 0, 0, 1, 1460)) == encap.HDR_LEN == 12


@pytest.mark.parametrize("mutate", [
    lambda b: b"\x00" + b[1:],                              # magic
    lambda b: b[:2] + bytes([0x21]) + b[3:],                 # version 2
    lambda b: b[:2] + bytes([0x12]) + b[3:],                 # type 2
    lambda b: b[:8] + bytes([9]) + b[9:],                    # index == count
    lambda b: b[:9] + bytes([0]) + b[10:],                   # count 0
    lambda b: b[:10] + struct.pack("!H", 100) + b[12:],      # chunk size below the minimum
    lambda b: b[:-1],                                        # a middle chunk shorter than csize
    lambda b: b[:12],                                        # no payload
])
def test_header_rejects_malformed(mutate: object) -> None:
    good = encap.pack_header(0, 1, 4, 9, 1460) + b"x" * 1460
    assert encap.parse_header(good) is not None
    assert encap.parse_header(mutate(good)) is None  # type: ignore[operator]


def test_classify() -> None:
    chunk = encap.split_stream(stream_of(100), queue=0, pid=1, csize=CSIZE)[0]
    assert encap.classify(chunk) == "chunk"
    assert encap.classify(bytes([0x45]) + bytes(19)) == "plain"
    assert encap.classify(bytes([0x60]) + bytes(39)) == "plain"
    assert encap.classify(encap.pack_hello(encap.HELLO_KIND, caps=3, session=5)) == "hello"
    assert encap.classify(b"\x00abc") == "bad"
    assert encap.classify(b"") == "bad"


def test_chunk_first_byte_is_never_an_ip_version() -> None:
    assert encap.MAGIC[0] >> 4 not in (4, 6)


# ---------------------------------------------------------------------------------------------- hello


def test_hello_round_trip() -> None:
    data = encap.pack_hello(encap.REPLY_KIND, caps=encap.CAP_GSO | encap.CAP_PLAIN, session=0xABCDEF01,
                            echo=0x12345678, segment=1472)
    assert len(data) == encap.HELLO_LEN
    hello = encap.parse_hello(data)
    assert hello == encap.Hello(encap.REPLY_KIND, encap.VERSION, 3, 0xABCDEF01, 0x12345678, 1472)


def test_hello_is_an_ipv4_packet_a_kernel_drops() -> None:
    data = encap.pack_hello(encap.HELLO_KIND, caps=3, session=1)
    assert data[0] == 0x45 and data[9] == encap.HELLO_PROTO
    assert struct.unpack("!H", data[2:4])[0] == len(data)  # total length is right...
    words = struct.unpack("!10H", data[:20])
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total != 0xFFFF  # ...but the header checksum never verifies
    assert data[12:20] == bytes(8)  # source and destination 0.0.0.0


def test_hello_rejects_lookalikes() -> None:
    data = bytearray(encap.pack_hello(encap.HELLO_KIND, caps=3, session=1))
    assert encap.parse_hello(bytes(data[:-1])) is None
    data[28] = 9  # unknown kind
    assert encap.parse_hello(bytes(data)) is None


# ---------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("length", [11, 100, CSIZE - 1, CSIZE, CSIZE + 1, 2 * CSIZE, 62010, encap.MAX_STREAM - 64])
def test_tx_layout_produces_the_reference_chunks(length: int) -> None:
    stream = stream_of(length, seed=length)
    layout = encap.TxLayout(CSIZE + encap.HDR_LEN, queue=2)
    layout.fill(stream)
    data, count = layout.finish(length, pid=0x01020304)
    ref = encap.split_stream(stream, queue=2, pid=0x01020304, csize=CSIZE)
    assert count == len(ref)
    assert bytes(data) == b"".join(ref)


def test_tx_layout_reuse_overwrites_the_previous_stream() -> None:
    layout = encap.TxLayout(CSIZE + encap.HDR_LEN)
    layout.fill(stream_of(60000, seed=1))
    layout.finish(60000, 1)
    small = stream_of(50, seed=2)
    layout.fill(small)
    data, count = layout.finish(50, 2)
    assert count == 1 and bytes(data) == encap.split_stream(small, queue=0, pid=2, csize=CSIZE)[0]


def test_send_pieces_respect_the_udp_gso_limits() -> None:
    seg = CSIZE + encap.HDR_LEN
    count = encap.chunk_count(65546, CSIZE)
    total = 65546 + count * encap.HDR_LEN
    pieces = encap.send_pieces(count, total, seg, 65507, 64)
    assert pieces[0][0] == 0 and pieces[-1][1] == total
    for (a, b), (c, _) in zip(pieces, pieces[1:]):
        assert b == c and b % seg == 0
    assert all(b - a <= 65507 for a, b in pieces)
    assert encap.send_pieces(3, 3 * seg, seg) == [(0, 3 * seg)]


# ---------------------------------------------------------------------------------------------- fast receive


def wire(length: int, pid: int = 7, seed: int = 3) -> tuple[bytes, list[bytes]]:
    stream = stream_of(length, seed)
    return stream, encap.split_stream(stream, queue=0, pid=pid, csize=CSIZE)


def test_gro_columns_accept_one_whole_stream_and_views_give_it_back() -> None:
    stream, chunks = wire(50000)
    buf = bytearray(70000)
    data = b"".join(chunks)
    buf[:len(data)] = data
    count = encap.gro_columns_ok(buf, len(data), CSIZE + encap.HDR_LEN)
    assert count == len(chunks)
    views = encap.RxViews(buf).payloads(CSIZE + encap.HDR_LEN, count, len(data))
    assert b"".join(bytes(v) for v in views) == stream


def test_gro_columns_single_chunk() -> None:
    stream, chunks = wire(200)
    buf = bytearray(chunks[0])
    assert encap.gro_columns_ok(buf, len(buf), len(buf)) == 1


@pytest.mark.parametrize("case", ["missing_middle", "missing_last", "other_pid", "swapped", "two_streams"])
def test_gro_columns_refuse_anything_but_one_whole_stream(case: str) -> None:
    _, chunks = wire(20000, pid=7)
    _, other = wire(20000, pid=8)
    if case == "missing_middle":
        chunks = chunks[:3] + chunks[4:]
    elif case == "missing_last":
        chunks = chunks[:-1]
    elif case == "other_pid":
        chunks = chunks[:5] + other[5:6] + chunks[6:]
    elif case == "swapped":
        chunks[2], chunks[3] = chunks[3], chunks[2]
    else:
        chunks = chunks[:-1] + other[:1]
    data = bytearray(b"".join(chunks))
    assert encap.gro_columns_ok(data, len(data), CSIZE + encap.HDR_LEN) == 0


# ---------------------------------------------------------------------------------------------- reassembly


def test_reassembly_in_any_order() -> None:
    stream, chunks = wire(30000)
    r = encap.Reassembler()
    random.Random(5).shuffle(chunks)
    out = [r.add("peer", c) for c in chunks]
    assert out[:-1] == [None] * (len(chunks) - 1) and out[-1] == stream
    assert r.drops == {} and not r.partials


def test_loss_of_one_chunk_costs_only_its_stream() -> None:
    r = encap.Reassembler(max_streams=4)
    results = []
    for pid in range(10):
        stream, chunks = wire(9000, pid=pid, seed=pid)
        if pid == 3:
            del chunks[2]
        got = [s for s in (r.add("p", c) for c in chunks) if s is not None]
        results.append(got == [stream])
    assert results == [pid != 3 for pid in range(10)]
    assert len(r.partials) == 1  # the broken one waits, bounded...
    for pid in range(10, 16):  # ...until newer partial streams push it out
        r.add("p", wire(9000, pid=pid)[1][0])
    assert len(r.partials) == 4 and r.drops["chunk_incomplete"] == 3


def test_duplicates_are_counted_and_ignored() -> None:
    stream, chunks = wire(5000)
    r = encap.Reassembler()
    assert r.add("p", chunks[0]) is None
    assert r.add("p", chunks[0]) is None
    done = [r.add("p", c) for c in chunks[1:]]
    assert done[-1] == stream
    assert r.add("p", chunks[1]) is None  # late duplicate of a finished stream
    assert r.drops == {"chunk_duplicate": 2} and not r.partials


def test_sources_and_queues_do_not_mix() -> None:
    stream_a, chunks_a = wire(5000, pid=1, seed=1)
    stream_b, chunks_b = wire(5000, pid=1, seed=2)
    r = encap.Reassembler()
    out = []
    for a, b in zip(chunks_a, chunks_b):
        out += [r.add("a", a), r.add("b", b)]
    assert [s for s in out if s] == [stream_a, stream_b]


def test_inconsistent_chunks_are_malformed() -> None:
    _, chunks = wire(5000, pid=1)
    _, longer = wire(9000, pid=1)
    r = encap.Reassembler()
    r.add("p", chunks[0])
    assert r.add("p", longer[1]) is None
    assert r.drops == {"chunk_malformed": 1}


def test_reassembly_memory_is_bounded() -> None:
    r = encap.Reassembler(max_streams=8)
    for pid in range(1000):
        r.add("p", wire(3000, pid=pid)[1][0])
    assert len(r.partials) == 8 and r.drops["chunk_incomplete"] == 992
    assert r.expire() == 8 and not r.partials


def test_gso_segments() -> None:
    hdr = encap.VNET.pack(encap.VNET_F_NEEDS_CSUM, encap.GSO_TCPV4, 52, 1420, 20, 16)
    assert encap.gso_segments(hdr + bytes(52 + 1420 * 3), None) == 3
    assert encap.gso_segments(hdr + bytes(52 + 1420 * 3 + 1)) == 4
    assert encap.gso_segments(encap.ZERO_VNET + bytes(100)) == 1


# ---------------------------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    encap.parse_header(data)
    encap.parse_hello(data)
    encap.classify(data)
    encap.parse_vnet(data)
    r = encap.Reassembler(max_streams=2)
    r.add("p", data)
    buf = bytearray(data)
    for seg in (1, 13, 100, 1472, len(data) or 1):
        encap.gro_columns_ok(buf, len(buf), seg)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=16), st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
       st.binary(max_size=3000))
def test_header_shaped_garbage_never_raises(prefix: bytes, index: int, count: int, csize: int, tail: bytes) -> None:
    data = encap.MAGIC + bytes([encap.VER_TYPE, 0]) + prefix[:4].ljust(4, b"\0") + bytes([index, count]) \
        + struct.pack("!H", csize) + tail
    r = encap.Reassembler(max_streams=2)
    for _ in range(3):
        r.add("p", data)


@settings(max_examples=60, deadline=None)
@given(st.integers(encap.VNET_LEN + 1, encap.MAX_STREAM), st.sampled_from([512, 1000, 1460, 8948]), st.randoms())
def test_split_then_reassemble_with_reorder_and_duplicates(length: int, csize: int, rnd: random.Random) -> None:
    stream = os.urandom(length)
    chunks = encap.split_stream(stream, queue=1, pid=rnd.getrandbits(32), csize=csize)
    # single-chunk streams are not deduplicated (like plain datagrams): duplicate only longer ones
    fed = chunks + (rnd.sample(chunks, k=min(3, len(chunks))) if len(chunks) > 1 else [])
    rnd.shuffle(fed)
    r = encap.Reassembler()
    outs = [s for s in (r.add(("10.0.0.1", 1), c) for c in fed) if s is not None]
    assert outs == [stream]
