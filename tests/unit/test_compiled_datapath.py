"""The compiled datapath (issue 20) against the Python one, byte for byte, and its decoders fuzzed.

Differential: the same packet sequences through the C and the Python encoders and decoders (chunking,
the GRO receive checks, TCP run merging and its super-packet header, packet checks, TCP de-framing)
give the same bytes and the same answers. Fuzzing: hypothesis drives every compiled decoder through
Python with arbitrary bytes and lengths; none may crash or read past its input.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunlab.relay import framing
from tunlab.relay.fast import encap, gro

_cfast = pytest.importorskip("tunlab.relay.fast._cfast",
                             reason="the compiled datapath is not built (no C compiler at install time)")

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# encoders


@given(st.binary(min_size=1, max_size=encap.MAX_STREAM), st.integers(0, 255), st.integers(0, 2**32 - 1),
       st.sampled_from([512, 1000, 1460, 8948]))
@FUZZ
def test_chunks_are_the_python_chunks(stream: bytes, queue: int, pid: int, csize: int) -> None:
    if encap.chunk_count(len(stream), csize) > encap.MAX_COUNT:
        with pytest.raises(ValueError):
            _cfast.chunk_stream(stream, queue, pid, csize)
        return
    assert _cfast.chunk_stream(stream, queue, pid, csize) == encap.split_stream(stream, queue=queue, pid=pid,
                                                                                csize=csize)


def tcp_segment(seq: int, payload: bytes, *, flags: int = gro.ACK, ident: int = 1, opts: bytes = b"") -> bytes:
    tcp_len = 20 + len(opts)
    total = 20 + tcp_len + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, 6, 0,
                               socket.inet_aton("10.1.0.1"), socket.inet_aton("10.1.0.2")))
    csum = gro.ip_checksum(bytes(ip))
    ip[10], ip[11] = csum >> 8, csum & 0xFF
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, (tcp_len // 4) << 4, flags, 512, 0xBEEF, 0) + opts
    return bytes(ip) + tcp + payload


def batch(packets: list[bytes], stride: int) -> bytes:
    """A GRO receive: packets every ``stride`` bytes (the last may be shorter)."""
    return b"".join(p.ljust(stride, b"\0") for p in packets[:-1]) + packets[-1]


@given(st.integers(2, 45), st.integers(1, 1400), st.integers(0, 2**32 - 1), st.booleans(),
       st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]))
@FUZZ
def test_tcp_runs_merge_to_the_same_super_packet(k: int, last: int, seq: int, psh: bool, opts: bytes) -> None:
    mss = 1400
    segs = [tcp_segment((seq + i * mss) & 0xFFFFFFFF, bytes([i]) * mss, ident=i, opts=opts) for i in range(k - 1)]
    segs.append(tcp_segment((seq + (k - 1) * mss) & 0xFFFFFFFF, b"z" * last, ident=k,
                            flags=gro.ACK | (gro.PSH if psh else 0), opts=opts))
    stride = len(segs[0])
    data = bytearray(batch(segs, stride))
    end = len(data)
    assert _cfast.whole_batch(bytes(data), end, stride) == gro.whole_batch(data, end, stride)
    assert _cfast.merge_run(bytes(data), 0, stride, k, end) == gro.merge_run(data, 0, stride, k, end)
    hl = 40 + len(opts)
    payload = end - k * hl
    assert _cfast.super_header(bytes(data), 0, hl, payload, mss, psh) == gro.super_header(data, 0, hl, payload,
                                                                                           mss, psh)


@given(st.binary(max_size=3000), st.integers(0, 3000), st.integers(1, 3000), st.booleans())
@FUZZ
def test_packet_checks_agree(data: bytes, n: int, limit: int, tap: bool) -> None:
    n = min(n, len(data))
    assert _cfast.check(data, n, limit, tap) == (framing.check_l2 if tap else framing.check_l3)(data, n, limit)


# ---------------------------------------------------------------------------------------------
# decoders, fuzzed (and compared where Python has the same decoder)


@given(st.binary(max_size=8000), st.integers(13, 3000))
@FUZZ
def test_gro_column_check_agrees_on_any_bytes(data: bytes, segment: int) -> None:
    assert _cfast.columns_ok(data, len(data), segment) == encap.gro_columns_ok(data, len(data), segment)


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=30), st.integers(0, 2000),
       st.integers(0, 5))
@FUZZ
def test_gro_column_check_agrees_on_mangled_chunks(streams: list[bytes], pos: int, flip: int) -> None:
    stream = b"".join(streams)[:encap.MAX_STREAM]
    chunks = encap.split_stream(stream, queue=1, pid=9, csize=600)
    data = bytearray(b"".join(c.ljust(612, b"\0") for c in chunks[:-1]) + chunks[-1])
    if flip and pos < len(data):
        data[pos] ^= flip
    assert _cfast.columns_ok(bytes(data), len(data), 612) == encap.gro_columns_ok(data, len(data), 612)


@given(st.binary(max_size=6000), st.integers(40, 1600))
@FUZZ
def test_tcp_batch_checks_agree_on_any_bytes(data: bytes, stride: int) -> None:
    buf = bytearray(data)
    assert _cfast.whole_batch(data, len(data), stride) == gro.whole_batch(buf, len(data), stride)
    if data:
        k = -(-len(data) // stride)
        assert _cfast.merge_run(data, 0, stride, k, len(data)) == gro.merge_run(buf, 0, stride, k, len(data))


@given(st.lists(st.binary(max_size=300), max_size=20), st.binary(max_size=40), st.integers(1, 0xFFFF),
       st.integers(1, 2000), st.booleans())
@FUZZ
def test_deframer_is_the_python_deframer(packets: list[bytes], tail: bytes, max_len: int, limit: int,
                                         tap: bool) -> None:
    stream = b"".join(len(p).to_bytes(2, "big") + p for p in packets) + tail
    start, error, frames, fbytes, written, wbytes, drops, out = _cfast.deframe(stream, 0, len(stream), max_len,
                                                                               limit, tap, -1)
    reader = framing.FrameReader(max_len, size=max(1 << 18, len(stream) + 2))
    reader.feed(stream)
    check = framing.check_l2 if tap else framing.check_l3
    want, want_drops = [], {}
    for f in reader.frames():
        why = check(f, len(f), limit)
        if why is None:
            want.append(bytes(f))
        else:
            want_drops[why] = want_drops.get(why, 0) + 1
    assert out == want and drops == want_drops
    assert (start, bool(error)) == (reader.start, reader.error is not None)
    assert frames == len(want) and fbytes == sum(map(len, want)) and written == wbytes == 0


@given(st.binary(max_size=3000), st.integers(-10, 4000), st.integers(-10, 4000), st.integers(0, 0x1FFFF))
@FUZZ
def test_decoders_never_crash_on_bad_ranges(data: bytes, a: int, b: int, c: int) -> None:
    """Out-of-range offsets and lengths are refused (ValueError) or answered, never read past the input."""
    for call in (lambda: _cfast.deframe(data, a, b, c, 1500, False, -1),
                 lambda: _cfast.merge_run(data, a, max(1, b), c, len(data)),
                 lambda: _cfast.super_header(data, a, 40 + (c % 11) * 4, b, c, True),
                 lambda: _cfast.columns_ok(data, b, a),
                 lambda: _cfast.whole_batch(data, b, a),
                 lambda: _cfast.check(data, b, c, bool(a & 1))):
        try:
            call()
        except ValueError:
            pass


def test_pump_refuses_bad_set_up() -> None:
    ok = dict(tx=bytearray(1472 * 46), rx=bytearray(70000), p=bytearray(1500 * 4), sc=bytearray(10),
              ov=bytearray(70000))
    with pytest.raises(ValueError):
        _cfast.Pump(-1, -1, False, False, 100, 1500, ok["tx"], ok["rx"], ok["p"], 1500, ok["sc"], ok["ov"], 1)
    with pytest.raises(ValueError):
        _cfast.Pump(-1, -1, False, False, 1472, 1500, ok["tx"], ok["rx"], ok["p"], 1500, ok["sc"], ok["ov"], 65)
    pump = _cfast.Pump(-1, -1, False, False, 1472, 1500, ok["tx"], ok["rx"], ok["p"], 1500, ok["sc"], ok["ov"], 2)
    with pytest.raises(IndexError):
        pump.set_peer(2, None, True, False)
    with pytest.raises(ValueError):
        pump.set_peer(0, ("not an address", 1), True, False)
    with pytest.raises(ValueError):
        pump.set_routes(-1, True, [(b"\0" * 4, b"\0" * 4, 5)], [])
    with pytest.raises(ValueError):
        pump.tcp_read(bytearray(10), 20, 1, -1)
    assert pump.take()[1] == {}
    bare = _cfast.Pump.__new__(_cfast.Pump)  # never initialised: refuses to run instead of crashing
    for call in (lambda: bare.tx(1, True, 0), lambda: bare.rx(1), lambda: bare.poll(-1, 0, 1, True, 0),
                 lambda: bare.tcp_read(bytearray(10), 0, 1, -1), lambda: bare.set_peer(0, None, True, False)):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()


# ---------------------------------------------------------------------------------------------
# the compiled loops themselves, fed junk through real descriptors


def test_compiled_loops_survive_junk_from_the_peer_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random datagrams and UDP GSO batches from the peer's own address (they reach the C receive loop:
    GRO column checks, TCP batch merging, plain packets), and random reads from the device with random
    virtio headers (the C send loop): nothing crashes, and the relays still carry a stream afterwards."""
    from test_fast_datapath import Node, gso_stream, pair, wait_until

    from tunlab.relay.fast import sockio

    monkeypatch.setenv("TUNLAB_DATAPATH_IMPL", "c")
    with pair() as (a, b):
        assert a.impl == b.impl == "c"
        wait_until(lambda: a.dp.offload and b.dp.offload, "both ends on gso")
        port_a = a.relay.config.listen[1]  # type: ignore[index]
        sock_b = b.dp.sock

        @given(st.lists(st.binary(max_size=1600), min_size=1, max_size=40), st.integers(0, 3),
               st.binary(min_size=10, max_size=10), st.integers(11, 65000))
        @settings(max_examples=120, deadline=None)
        def feed(datagrams: list[bytes], style: int, vnet: bytes, length: int) -> None:
            if style == 0:
                for d in datagrams:
                    sock_b.sendto(d, ("127.0.0.1", port_a))
            elif style in (1, 2):  # a GSO send: the receiver gets one GRO batch of these
                seg = max(1, max(len(d) for d in datagrams))
                data = b"".join(d.ljust(seg, b"\x45") for d in datagrams) if style == 1 else b"".join(datagrams)
                if data and len(data) <= 65000 and seg <= 65000:
                    try:
                        sock_b.sendmsg([data], sockio.gso_cmsg(seg), 0, ("127.0.0.1", port_a))
                    except OSError:
                        pass
            else:  # a device read with any virtio header
                try:
                    a.dev.send(vnet + bytes([0x45]) + bytes(min(length, 64000)))
                except OSError:
                    pass

        feed()
        assert a.relay.error is None and b.relay.error is None and a.thread.is_alive() and b.thread.is_alive()
        # drain what the junk made a's relay write to its device, then a real stream still crosses
        a.dev.setblocking(False)
        try:
            while a.dev.recv(70000):
                pass
        except BlockingIOError:
            pass
        a.dev.settimeout(5)
        stream = gso_stream(30000)
        b.dev.send(stream)
        got = a.dev.recv(70000)
        while got != stream:
            got = a.dev.recv(70000)
        assert isinstance(a, Node) and sum(a.counters()["drops"].values()) > 0


def test_a_table_too_big_for_the_c_loops_runs_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """More routes than the C table holds: the relay still opens, with the Python loops, and says why."""
    from test_fast_datapath import LO, free_port

    from tunlab.relay import PeerSpec, Relay, RelayConfig, RouteSpec
    from tunlab.relay.device import Device
    from tunlab.relay.loop import Loop

    monkeypatch.setenv("TUNLAB_DATAPATH_IMPL", "c")
    routes = tuple(RouteSpec(f"10.{i // 256}.{i % 256}.0/24", "p") for i in range(_cfast.MAX_ROUTES + 1))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg = RelayConfig(dev="fr", listen=(LO, free_port()), peers=(PeerSpec("p", LO, free_port(), outgoing=True),),
                      routes=routes, datapath="plain", mtu=1472)
    with Relay(cfg, loop=Loop(), device=Device.from_fd(theirs.detach(), "fr")) as relay:
        info = relay.counters()["datapath"]
        assert info["impl"] == "python" and "routes" in info["impl_reason"]
    ours.close()
