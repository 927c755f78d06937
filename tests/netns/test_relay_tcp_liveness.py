"""Issue 13 (4): the TCP transport reconnects within a second of its peer becoming reachable (even after
its SYNs were dropped for a while), keeps established connections under keepalive, and acknowledges at
once, so a legacy peer that writes a frame's length and packet in two writes (simpletun, TunConnector,
Nagle on) is not held back by a delayed ACK."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

import pytest
from relay_helpers import NetLab, netlab, nsexec, read_line, sh, two_nodes, wait_until  # noqa: F401

pytestmark = pytest.mark.netns

PORT = 47500

#: a legacy peer: TUN <-> TCP client, 2-byte length then the packet in two writes, no TCP_NODELAY
LEGACY_PEER = r"""
import fcntl, os, select, socket, struct, subprocess, sys
name, addr, server, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
subprocess.run(["ip", "addr", "add", addr, "dev", name], check=True)
subprocess.run(["ip", "link", "set", name, "up"], check=True)
sock = socket.create_connection((server, port))
print("ready", flush=True)
buf = b""
while True:
    r, _, _ = select.select([fd, sock], [], [])
    if fd in r:
        pkt = os.read(fd, 2048)
        sock.send(struct.pack("!H", len(pkt)))   # first write: the length
        sock.send(pkt)                           # second write: the packet (Nagle holds it for an ACK)
    if sock in r:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            os.write(fd, buf[2:2 + n])
            buf = buf[2 + n:]
"""


def rtts(ns: str, dst: str, count: int = 30) -> list[float]:
    res = nsexec(ns, "ping", "-c", str(count), "-i", "0.05", "-W", "2", dst, check=False, timeout=60)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", res.stdout)]


def test_a_two_write_legacy_peer_is_acknowledged_at_once(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    netlab.relay(b, "rb", "--transport", "tcp", "--dev", netlab.ifname("t"), "--addr", "10.79.0.2/24",
                 "--listen", f"10.1.0.2:{PORT}", "--accept", "a=10.1.0.1")
    peer = netlab.spawn(a, sys.executable, "-c", LEGACY_PEER, netlab.ifname("l"), "10.79.0.1/24", "10.1.0.2",
                        str(PORT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert peer.stdout is not None
    assert "ready" in read_line(peer.stdout.fileno(), 20.0)
    got = rtts(a, "10.79.0.2")
    assert len(got) >= 25, got
    late = statistics.median(got[10:])  # after the kernel left its quick-ACK start-up mode
    assert late < 20, f"ping through the legacy peer: median {late:.1f} ms (a delayed ACK costs ~40 ms): {got}"


def test_tcp_reconnects_within_a_second_after_a_syn_blackhole(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    server = ["--transport", "tcp", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", f"10.1.0.2:{PORT}",
              "--accept", "a=10.1.0.1"]
    rb = netlab.relay(b, "rb", *server)
    ra = netlab.relay(a, "ra", "--transport", "tcp", "--dev", dev, "--addr", "10.77.0.1/24", "--peer",
                      f"b=10.1.0.2:{PORT}")
    ra.wait_connected("b")
    assert "keepalive" in nsexec(a, "ss", "-tnoH", "state", "established").stdout  # liveness timer on
    # the server goes away and its SYNs are dropped from now on (a blackhole, not a refusal)
    nsexec(b, "nft", "add table inet tlbh; add chain inet tlbh in { type filter hook input priority 0; }; "
           f"add rule inet tlbh in tcp dport {PORT} drop")
    rb.stop()
    wait_until(lambda: not ra.peer("b")["connected"], "the client noticed the server is gone")
    rb2 = netlab.relay(b, "rb2", *server)
    until = time.monotonic() + 8.0  # long enough for the kernel's SYN backoff to reach 8 s
    wait_until(lambda: time.monotonic() > until and not ra.peer("b")["connected"], "8 s of dropped SYNs", 15)
    nsexec(b, "nft", "delete table inet tlbh")
    opened = time.monotonic()
    wait_until(lambda: ra.peer("b")["connected"], "reconnected", 20, interval=0.01)
    took = time.monotonic() - opened
    assert took < 1.0, f"reconnected {took:.2f} s after the peer became reachable"
    rb2.wait_connected("a")
    sh("ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", "10.77.0.2")
