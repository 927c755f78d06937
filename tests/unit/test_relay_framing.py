"""The TCP de-framer and packet checks, including hypothesis fuzzing: arbitrary bytes split at arbitrary
points never raise, and every valid frame is recovered whatever the split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.relay.framing import (BAD_LENGTH, EMPTY, NOT_IP, TOO_BIG, TRUNCATED, Deframer, FrameReader, check_l2,
                                  check_l3, frame, frame_limit)

IPV4 = bytes([0x45]) + bytes(19)
IPV6 = bytes([0x60]) + bytes(39)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def test_frame_round_trip_simple() -> None:
    d = Deframer()
    assert d.push(frame(b"abc") + frame(b"d")[:2]) == [b"abc"]
    assert d.pending == 2
    assert d.push(b"d" + frame(b"xy")) == [b"d", b"xy"]
    assert d.pending == 0 and d.error is None


def test_zero_length_is_bad_and_stops() -> None:
    d = Deframer()
    assert d.push(frame(b"ok") + b"\x00\x00" + frame(b"never")) == [b"ok"]
    assert d.error == BAD_LENGTH
    assert d.push(frame(b"after")) == []  # a broken stream yields nothing more


def test_length_0xffff_is_bad_not_a_crash() -> None:
    d = Deframer(max_len=frame_limit(1472))
    assert d.push(b"\xff\xff" + bytes(100)) == []
    assert d.error == BAD_LENGTH


def test_frame_limit_keeps_standard_mtu_peers_in_sync() -> None:
    # our MTU 1472, a simpletun/TunConnector peer with MTU 1500 sends 1500-byte packets: stream stays valid
    assert frame_limit(1472) == 1518
    assert frame_limit(9018) == 9018
    assert frame_limit(70000) == 0xFFFE
    d = Deframer(max_len=frame_limit(1472))
    assert d.push(frame(bytes(1500)) + frame(IPV4)) == [bytes(1500), IPV4]
    assert d.error is None


def test_reader_hands_out_views_without_copying() -> None:
    r = FrameReader(100, size=256)
    space = r.space()
    data = frame(b"hello") + frame(b"w")
    space[:len(data)] = data
    r.commit(len(data))
    frames = list(r.frames())
    assert [bytes(f) for f in frames] == [b"hello", b"w"]
    assert all(isinstance(f, memoryview) for f in frames)


def test_reader_compacts_and_always_offers_a_whole_frame_of_space() -> None:
    r = FrameReader(100, size=102)  # grows to header + max_len
    for i in range(50):
        chunk = frame(bytes([i]) * 60)
        taken = 0
        got: list[bytes] = []
        while taken < len(chunk):
            space = r.space()
            assert len(space) >= 102 - r.pending
            n = min(len(space), len(chunk) - taken, 37)
            space[:n] = chunk[taken:taken + n]
            r.commit(n)
            taken += n
            got += [bytes(f) for f in r.frames()]
        assert got == [bytes([i]) * 60]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4000), st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
       st.integers(min_value=1, max_value=0xFFFF))
def test_fuzz_arbitrary_bytes_never_raise(data: bytes, cuts: list[int], max_len: int) -> None:
    d = Deframer(max_len=max_len)
    out: list[bytes] = []
    for part in split(data, cuts):
        out += d.push(part)
    # whatever came out is a prefix of the input, re-framed exactly
    rebuilt = b"".join(frame(p) for p in out)
    assert data.startswith(rebuilt)
    assert all(0 < len(p) <= max_len for p in out)
    if d.error is None:
        assert len(rebuilt) + d.pending == len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=1600), max_size=30),
       st.lists(st.integers(min_value=0, max_value=50000), max_size=40))
def test_fuzz_every_valid_frame_recovered(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in packets)
    d = Deframer(max_len=frame_limit(1472))
    out: list[bytes] = []
    for part in split(stream, cuts):
        out += d.push(part)
    assert out == packets
    assert d.error is None and d.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=10), st.binary(max_size=50),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_fuzz_valid_frames_before_garbage_all_recovered(packets: list[bytes], garbage: bytes,
                                                        cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in packets) + b"\x00\x00" + garbage
    d = Deframer(max_len=1518)
    out: list[bytes] = []
    for part in split(stream, cuts):
        out += d.push(part)
    assert out == packets
    assert d.error == BAD_LENGTH


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2100))
def test_fuzz_packet_checks_never_raise(data: bytes, limit: int) -> None:
    for check in (check_l3, check_l2):
        why = check(data, len(data), limit)
        assert why in (None, EMPTY, TOO_BIG, NOT_IP, TRUNCATED)
        if why is None:
            assert 0 < len(data) <= limit


@pytest.mark.parametrize("pkt, limit, want", [
    (b"", 1500, EMPTY), (IPV4, 1500, None), (IPV6, 1500, None), (IPV4[:19], 1500, TRUNCATED),
    (IPV6[:39], 1500, TRUNCATED), (b"\x50" + bytes(30), 1500, NOT_IP), (b"\x00" * 40, 1500, NOT_IP),
    (IPV4 + bytes(100), 100, TOO_BIG),
])
def test_check_l3(pkt: bytes, limit: int, want: str | None) -> None:
    assert check_l3(pkt, len(pkt), limit) == want


def test_check_l2() -> None:
    assert check_l2(bytes(14), 14, 1518) is None
    assert check_l2(bytes(13), 13, 1518) == TRUNCATED
    assert check_l2(bytes(1519), 1519, 1518) == TOO_BIG
    assert check_l2(b"", 0, 1518) == EMPTY


def test_frame_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(bytes(0x10000))
