"""Interop with programs nobody here wrote: socat's TUN + UDP-DATAGRAM (a live peer, both directions),
and TunConnector/simpletun (their binaries are not available: their recorded TCP streams are replayed
into a tunlab server and a tunlab client, and what reaches the TUN device is compared packet by packet)."""

from __future__ import annotations

import select
import socket
import subprocess
import time

import pytest
from relay_helpers import (NetLab, deframe_exact, netlab, ns_socket, ping, recorded_tcp_streams, sh,  # noqa: F401
                           two_nodes, wait_until)

from tunlab.relay.framing import Deframer

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
PACKET_HOST = 0


def start_socat(lab: NetLab, ns: str, dev: str, overlay: str, local: str, remote: str) -> subprocess.Popen[bytes]:
    proc = lab.spawn(ns, "socat", f"TUN:{overlay},tun-name={dev},tun-type=tun,iff-no-pi,iff-up",
                     f"UDP-DATAGRAM:{remote},bind={local}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: proc.poll() is not None or "UP" in sh("ip", "-n", ns, "link", "show", "dev", dev,
                                                            check=False).stdout, "socat's TUN device")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


@pytest.mark.parametrize("relay_role", ["peer", "server"])
def test_socat_udp_datagram_interop_both_directions(netlab: NetLab, relay_role: str) -> None:
    a, b = two_nodes(netlab)
    sdev = netlab.ifname("s")
    start_socat(netlab, b, sdev, "10.60.0.2/24", "10.1.0.2:6000", "10.1.0.1:6000")
    if relay_role == "peer":
        relay = netlab.relay(a, "r", "--dev", netlab.ifname("t"), "--addr", "10.60.0.1/24", "--listen",
                             "10.1.0.1:6000", "--peer", "socat=10.1.0.2:6000")
        peer = "socat"
        ping(a, "10.60.0.2")  # relay -> socat first
        ping(b, "10.60.0.1")
    else:  # TunConnector-style server: socat speaks first and is latched as the peer
        relay = netlab.relay(a, "r", "-m", "server", "-p", "tun0", "-s", "10.60.0.1", "-i", "6000")
        peer = "client"
        ping(b, "10.60.0.1")
        ping(a, "10.60.0.2")
    ping(a, "10.60.0.2", size=1400)
    c = relay.counters()
    assert c["peers"][peer]["rx_packets"] >= 9 and c["peers"][peer]["tx_packets"] >= 9
    assert not any(k in c["drops"] for k in ("foreign", "not_ip", "too_big", "truncated"))


def capture_socket(ns: str, dev: str) -> socket.socket:
    s = ns_socket(ns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for the whole replay, read afterwards
    s.bind((dev, ETH_P_ALL))
    return s


def collect_incoming(cap: socket.socket, want: int, timeout: float = 10.0) -> list[bytes]:
    """Packets written into the TUN by the relay (PACKET_HOST), until ``want`` or the deadline."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        ready, _, _ = select.select([cap], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data, addr = cap.recvfrom(70000)
        if addr[2] == PACKET_HOST:
            got.append(data)
    return got


def test_tunconnector_client_stream_replayed_into_tunlab_server(netlab: NetLab) -> None:
    to_server, _ = recorded_tcp_streams()
    want = deframe_exact(b"".join(to_server))
    assert len(want) == 109
    a, b = two_nodes(netlab)
    server = netlab.relay(b, "srv", "-m", "server", "-p", "tun0", "-s", "10.252.0.2", "-i", "55555",
                          "--transport", "tcp", "--mtu", "1500")
    cap = capture_socket(b, "tun0")
    conn = ns_socket(a, socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(("10.1.0.2", 55555))
    for seg in to_server:  # the recorded segments, whose boundaries do not follow the frames
        conn.sendall(seg)
    got = collect_incoming(cap, len(want))
    assert got == want
    # b's kernel answers the recorded pings (and resets the recorded iperf3 flow): framed the same way back
    replies = Deframer(max_len=1518)
    packets: list[bytes] = []
    deadline = time.monotonic() + 10
    while sum(p[9] == 1 for p in packets) < 10 and time.monotonic() < deadline:
        packets += replies.push(conn.recv(65536))
    assert replies.error is None
    assert sum(p[9] == 1 and p[20] == 0 for p in packets) == 10  # ICMP echo replies
    # (the kernel's own IPv6 chatter on the fresh tun0, e.g. a router solicitation, may be framed back too)
    assert all(p[16:20] == bytes([10, 252, 0, 1]) for p in packets if p[0] >> 4 == 4)
    c = server.counters()
    assert c["peers"]["client"]["rx_packets"] == 109 and c["peers"]["client"]["rx_bytes"] == sum(map(len, want))
    assert set(c["drops"]) <= {"peer_down"}  # only the kernel's own IPv6 chatter from before we connected
    conn.close()
    cap.close()


def test_simpletun_server_stream_replayed_into_tunlab_client(netlab: NetLab) -> None:
    _, to_client = recorded_tcp_streams()
    want = deframe_exact(b"".join(to_client))
    assert len(want) == 50
    a, b = two_nodes(netlab)
    listener = ns_socket(b, socket.AF_INET, socket.SOCK_STREAM)  # plays simpletun's server
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("10.1.0.2", 55555))
    listener.listen(1)
    listener.settimeout(10)
    client = netlab.relay(a, "cli", "-m", "client", "-n", "tun0", "-c", "10.252.0.1", "-r", "10.1.0.2", "-o", "55555",
                          "--transport", "tcp", "--mtu", "1500")
    conn, _ = listener.accept()
    conn.settimeout(10)
    client.wait_connected("server")
    cap = capture_socket(a, "tun0")
    for seg in to_client:
        conn.sendall(seg)
    assert collect_incoming(cap, len(want)) == want
    # and the tunlab client's own frames are what simpletun expects: a ping from a, de-framed exactly
    proc = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "1", "10.252.0.2"],
                            stdout=subprocess.DEVNULL)
    frames = Deframer(max_len=1518)
    echo: list[bytes] = []
    deadline = time.monotonic() + 10
    while not echo and time.monotonic() < deadline:
        echo = [p for p in frames.push(conn.recv(65536)) if p[9] == 1 and p[20] == 8]
    proc.wait(10)
    assert echo and echo[0][12:20] == bytes([10, 252, 0, 1, 10, 252, 0, 2]) and frames.error is None
    assert client.counters()["peers"]["server"]["rx_packets"] == 50
    for s in (conn, listener, cap):
        s.close()
