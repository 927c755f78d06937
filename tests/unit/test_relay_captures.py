"""The recorded captures (tests/data/CAPTURES.md) go through the relay's own de-framer and checks."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

from tunlab.relay.framing import Deframer, check_l3, frame_limit
from tunlab.relay.peers import l3_destination


def _helpers() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "netns" / "relay_helpers.py"
    spec = importlib.util.spec_from_file_location("relay_helpers_for_unit", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = _helpers()


def deframe_segments(segments: list[bytes], limit: int = 1500) -> tuple[list[bytes], Deframer]:
    d = Deframer(max_len=frame_limit(limit))
    out: list[bytes] = []
    for seg in segments:
        out += d.push(seg)
    return out, d


def protocols(packets: list[bytes]) -> tuple[int, int]:
    return sum(p[9] == 1 for p in packets), sum(p[9] == 6 for p in packets)


def test_tcp_capture_client_stream() -> None:
    to_server, _ = H.recorded_tcp_streams()
    assert sum(map(len, to_server)) == 131214
    packets, d = deframe_segments(to_server)
    assert len(packets) == 109
    assert protocols(packets) == (10, 99)
    assert d.error is None and d.pending == 0  # no bytes left over
    assert all(check_l3(p, len(p), 1500) is None for p in packets)
    assert {l3_destination(p, len(p)) for p in packets} == {bytes([10, 252, 0, 2])}


def test_tcp_capture_server_stream() -> None:
    _, to_client = H.recorded_tcp_streams()
    assert sum(map(len, to_client)) == 9665
    packets, d = deframe_segments(to_client)
    assert len(packets) == 50
    assert protocols(packets) == (10, 40)
    assert d.error is None and d.pending == 0
    assert {l3_destination(p, len(p)) for p in packets} == {bytes([10, 252, 0, 1])}


def test_tcp_capture_segments_do_not_follow_frames_and_any_resplit_gives_the_same() -> None:
    to_server, _ = H.recorded_tcp_streams()
    stream = b"".join(to_server)
    want = H.deframe_exact(stream)
    packets, _ = deframe_segments(to_server)
    assert packets == want
    # the recording's own segment boundaries cut frames: the de-framer had to carry partial frames
    offsets, i = set(), 0
    for p in want:
        offsets.add(i)
        i += 2 + len(p)
    seg_starts, j = [], 0
    for seg in to_server:
        seg_starts.append(j)
        j += len(seg)
    assert any(s not in offsets for s in seg_starts)
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 40))
        parts = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        assert deframe_segments(parts)[0] == want


def test_tcp_capture_survives_our_smaller_mtu() -> None:
    # relay MTU 1472: 1500-byte packets are too big for the device but the stream stays in sync
    to_server, _ = H.recorded_tcp_streams()
    packets, d = deframe_segments(to_server, limit=1472)
    assert len(packets) == 109 and d.error is None
    assert sum(check_l3(p, len(p), 1472) == "too_big" for p in packets) == sum(len(p) > 1472 for p in packets)


def test_udp_capture_datagrams_accepted() -> None:
    payloads = H.udp_payloads(H.DATA / "udp-datagram.pcap")
    assert len(payloads) == 18
    assert all(check_l3(p, len(p), 1472) is None for p in payloads)
    assert all(p[0] >> 4 == 4 and p[9] == 1 for p in payloads)  # each exactly one IPv4 ICMP packet
    assert all(len(p) == int.from_bytes(p[2:4], "big") for p in payloads)  # no header, nothing extra


def test_udp_capture_through_the_engine() -> None:
    """The 18 recorded socat datagrams, sent to a relay, all reach its device unchanged."""
    import socket

    from tunlab.relay import PeerSpec, Relay, RelayConfig
    from tunlab.relay.device import Device

    payloads = H.udp_payloads(H.DATA / "udp-datagram.pcap")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg = RelayConfig(dev="cap", listen=("127.0.0.1", 0), peers=(PeerSpec("socat", "127.0.0.1"),))
    with Relay(cfg, device=Device.from_fd(theirs.detach(), "cap")) as relay:
        port = int(relay.ready_info()["listen"][0].rsplit(":", 1)[1])
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for p in payloads:
            sender.sendto(p, ("127.0.0.1", port))
        mine.settimeout(5)
        got = []
        while len(got) < len(payloads):
            relay.loop.ep.poll(0.05)
            relay.datapath.on_socket(0)  # type: ignore[union-attr]  # drive the loop by hand, one thread
            mine.setblocking(False)
            try:
                while True:
                    got.append(mine.recv(70000))
            except BlockingIOError:
                pass
        assert got == payloads
        assert relay.counters()["drops"] == {}
        sender.close()
    mine.close()


def test_tcp_capture_through_the_engine() -> None:
    """TunConnector's recorded client stream, sent in its recorded segments, reaches the device packet for
    packet (MTU 1500 as TunConnector's own device)."""
    import socket

    from tunlab.relay import PeerSpec, Relay, RelayConfig
    from tunlab.relay.device import Device

    to_server, _ = H.recorded_tcp_streams()
    want = H.deframe_exact(b"".join(to_server))
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    cfg = RelayConfig(dev="cap", transport="tcp", mtu=1500, listen=("127.0.0.1", 0),
                      peers=(PeerSpec("client", None),))
    with Relay(cfg, device=Device.from_fd(theirs.detach(), "cap")) as relay:
        port = int(relay.ready_info()["listen"][0].rsplit(":", 1)[1])
        conn = socket.create_connection(("127.0.0.1", port))
        mine.setblocking(False)
        got: list[bytes] = []

        def turn(timeout: float) -> bool:
            """One loop turn by hand, then empty the device end (a unix pair queues only a few packets)."""
            events = relay.loop.ep.poll(timeout)
            for fd, ev in events:
                relay.loop.handlers[fd](ev)
            try:
                while True:
                    got.append(mine.recv(70000))
            except BlockingIOError:
                pass
            return bool(events)

        assert turn(5.0)  # accept
        for seg in to_server:  # the recorded segments, one at a time, each fully handled before the next
            conn.sendall(seg)
            assert turn(5.0)
            while turn(0):
                pass
        assert got == want
        c = relay.counters()
        assert c["peers"]["client"]["rx_packets"] == 109 and c["drops"] == {}
        conn.close()
    mine.close()
