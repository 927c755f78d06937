"""The keyed gso datapath's chunk path (tunlab/relay/fast/sealedudp.py): streams cut into chunks, each chunk
sealed on its own, opened before reassembly; forged, replayed and truncated chunks dropped by reason before
the reassembler sees them."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from tunlab.relay.fast import encap
from tunlab.relay.fast.sealedudp import SEAL_CHUNK_OVERHEAD, chunk_size, open_datagram, seal_stream
from tunlab.relay.seal import OVERHEAD, Sealer

PSK = bytes(range(32))
SEG = 1472


def pair(now: float = 1000.0) -> tuple[Sealer, Sealer]:
    a, b = Sealer(PSK, nonce=b"A" * 16), Sealer(PSK, nonce=b"B" * 16)
    _, _, reply = b.open(a.hello(now), now)
    assert reply is not None
    a.open(reply, now)
    assert a.tx is not None and b.tx is not None
    return a, b


def stream_of(n: int) -> bytes:
    return encap.ZERO_VNET + os.urandom(n)


def receive(b: Sealer, reasm: encap.Reassembler, dgrams: list[bytes]) -> list[tuple[str, bytes | None]]:
    return [(k, p) for k, p, _ in (open_datagram(b, reasm, "peer", d, 1000.0) for d in dgrams)]


def test_a_stream_round_trips_as_equal_size_sealed_chunks() -> None:
    a, b = pair()
    stream = stream_of(64000)
    dgrams = seal_stream(a, stream, pid=7, segment=SEG, now=1000.0)
    assert dgrams is not None and len(dgrams) == -(-len(stream) // chunk_size(SEG))
    assert all(len(d) == SEG for d in dgrams[:-1]) and len(dgrams[-1]) <= SEG  # one UDP GSO send
    assert all(d[0] == 2 for d in dgrams)  # every datagram is a sealed data record
    assert stream[20:40] not in b"".join(dgrams)  # nothing in the clear
    got = receive(b, encap.Reassembler(), dgrams)
    assert [k for k, _ in got] == ["partial"] * (len(dgrams) - 1) + ["stream"]
    assert got[-1][1] == stream


def test_no_session_no_chunks() -> None:
    assert seal_stream(Sealer(PSK), stream_of(3000), pid=1, segment=SEG, now=1.0) is None


def test_a_plain_sealed_packet_is_a_packet() -> None:
    a, b = pair()
    sealed = a.seal(b"\x45" + bytes(39), 1000.0)
    assert sealed is not None
    assert open_datagram(b, encap.Reassembler(), "peer", sealed, 1000.0)[:2] == ("packet", b"\x45" + bytes(39))


def test_forged_replayed_truncated_chunks_never_reach_the_reassembler() -> None:
    a, b = pair()
    drops: dict[str, int] = {}
    reasm = encap.Reassembler(max_streams=2, drops=drops)
    real = seal_stream(a, stream_of(10000), pid=5, segment=SEG, now=1000.0)
    assert real is not None
    assert receive(b, reasm, real[:1])[0][0] == "partial"  # a real stream is being reassembled
    # forgeries: random bytes under the data type and the real key id, a flipped bit, chunks in the clear
    kid = real[0][1:5]
    forged = [b"\x02" + kid + os.urandom(8) + os.urandom(SEG - 13) for _ in range(200)]
    flipped = bytearray(real[1])
    flipped[40] ^= 1
    clear = encap.split_stream(stream_of(10000), queue=0, pid=99, csize=chunk_size(SEG))
    kinds = [k for k, _ in receive(b, reasm, [*forged, bytes(flipped), *clear, real[0], real[1][:20], b""])]
    assert set(kinds) == {"seal_auth", "seal_unknown", "seal_replay", "seal_short"}
    assert b.drops == {"seal_auth": 201, "seal_unknown": len(clear), "seal_replay": 1, "seal_short": 2}
    assert drops == {} and len(reasm.partials) == 1  # nothing evicted or touched the real stream
    got = receive(b, reasm, real[1:])
    assert got[-1] == ("stream", got[-1][1]) and got[-1][1] is not None


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 65536), min_size=1, max_size=4), segment=st.integers(600, 9000),
       order=st.randoms(use_true_random=False))
def test_streams_round_trip_in_any_order(sizes: list[int], segment: int, order: object) -> None:
    a, b = pair()
    streams = [stream_of(n) for n in sizes]
    dgrams = []
    for pid, s in enumerate(streams):
        d = seal_stream(a, s, pid=pid, segment=segment, now=1000.0)
        assert d is not None and all(len(x) == segment for x in d[:-1])
        assert all(len(x) - SEAL_CHUNK_OVERHEAD <= chunk_size(segment) for x in d)
        dgrams += d
    order.shuffle(dgrams)  # type: ignore[attr-defined]
    got = [p for k, p in receive(b, encap.Reassembler(), dgrams) if k == "stream"]
    assert sorted(got) == sorted(streams)
    assert OVERHEAD == 29


def test_the_lab_decoder_opens_sealed_chunks_one_by_one_and_glued() -> None:
    """traffic/decap.py with the lab's session keys: sealed chunks (captured one per datagram, or as one UDP
    GSO send glued before the kernel cut it) are opened, reassembled and seen as their inner packets."""
    from scapy.layers.inet import ICMP, IP, UDP

    from tunlab.traffic.decap import Frame, RelayEnd, decode_link

    keys: dict[int, bytes] = {}
    a = Sealer(PSK, nonce=b"A" * 16, on_key=lambda kid, k: keys.__setitem__(kid, k))
    b = Sealer(PSK, nonce=b"B" * 16)
    _, _, reply = b.open(a.hello(1.0), 1.0)
    a.open(reply, 1.0)  # type: ignore[arg-type]
    inner = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / ICMP() / os.urandom(3000))
    stream = encap.ZERO_VNET + inner
    ea, eb = RelayEnd("a", "10.1.0.1", 5000), RelayEnd("b", "10.1.0.2", 5000)

    def frame(ts: float, payload: bytes) -> Frame:
        return Frame(ts, bytes(IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5000, dport=5000) / payload))

    one = seal_stream(a, stream, pid=1, segment=SEG, now=1.0)
    glued = seal_stream(a, stream, pid=2, segment=SEG, now=1.0)
    assert one is not None and glued is not None and len(one) == 3
    frames = [frame(1.0, d) for d in one] + [frame(2.0, b"".join(glued))]
    got = decode_link(frames, ea, eb, "udp", ["172.16.0.0/16"], keys=keys)
    assert [(s.kind, s.inner) for s in got] == [("encap", inner)] * 2
    assert all(s.outer.startswith("UDP sealed gso") and "(3 chunks)" in s.outer for s in got)
    assert [s.kind for s in decode_link(frames, ea, eb, "udp", ["172.16.0.0/16"], keys={})] == ["other"] * 4


def test_seal_many_is_seal_after_seal_byte_for_byte() -> None:
    a1, _ = pair()
    a2, _ = pair()  # same nonces: the same session keys
    chunks = [os.urandom(n) for n in (1431, 1431, 7)]
    assert a1.seal_many(chunks, 1000.0) == [a2.seal(c, 1000.0) for c in chunks]
    assert a1.counter == a2.counter == 3
    a1.counter = 2**64 - 2**13 - 2  # near the end: all or nothing
    assert a1.seal_many(chunks, 1000.0) is None and a1.counter == 2**64 - 2**13 - 2
