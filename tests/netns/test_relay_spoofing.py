"""Issue 13 (5): peer identity is as strict as it can be without cryptography. A datagram, a hello or a
connection from a peer's address (or another port of its IP) changes nothing unless it is valid: the reply
address moves only on a valid packet, hellos never switch a peer's datapath, chunks are checked like
packets, and a second TCP connection replaces the live one only when it proves itself."""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest
from relay_helpers import NetLab, netlab, ns_socket, ping, sh, two_nodes, wait_until  # noqa: F401

from tunlab.relay.fast import encap

pytestmark = pytest.mark.netns

PORT = 47400


def spoof_udp(ns: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """One UDP datagram with a forged source address and port (a raw socket inside ``ns``)."""
    s = ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src[0]),
                         socket.inet_aton(dst[0]))
        s.sendto(ip + udp, (dst[0], 0))
    finally:
        s.close()


def bound(ns: str, ip: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    s = ns_socket(ns, socket.AF_INET, kind)
    s.bind((ip, 0))
    return s


@pytest.mark.parametrize("datapath", ["simple", "auto"])
def test_udp_reply_address_moves_only_on_a_valid_packet(netlab: NetLab, datapath: str) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    rb = netlab.relay(b, "rb", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", f"10.1.0.2:{PORT}",
                      "--accept", "a=10.1.0.1", "--datapath", datapath)
    netlab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", f"10.1.0.1:{PORT}",
                 "--peer", f"b=10.1.0.2:{PORT}", "--datapath", datapath)
    ping(a, "10.77.0.2")
    intruder = bound(a, "10.1.0.1")  # the peer's IP, another port
    intruder.sendto(b"", ("10.1.0.2", PORT))
    intruder.sendto(b"\x00" * 40, ("10.1.0.2", PORT))
    wait_until(lambda: rb.drops("empty") >= 1 and rb.drops("not_ip") >= 1, "both datagrams counted")
    ping(b, "10.77.0.1")  # server -> client traffic still goes to the peer's own port
    intruder.settimeout(1.0)
    with pytest.raises(socket.timeout):
        got = intruder.recv(2048)
        raise AssertionError(f"the intruder's port received {len(got)} bytes from the relay")
    intruder.close()


def test_a_spoofed_hello_does_not_switch_a_socat_peer(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev_b = netlab.ifname("sb")
    netlab.spawn(b, "socat", f"TUN:10.2.0.2/24,tun-name={dev_b},tun-type=tun,iff-no-pi,iff-up",
                 f"UDP-DATAGRAM:10.1.0.1:{PORT},bind=10.1.0.2:{PORT}", stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    wait_until(lambda: "UP" in sh("ip", "-n", b, "link", "show", "dev", dev_b, check=False).stdout, "socat's TUN")
    sh("ip", "-n", b, "link", "set", dev_b, "mtu", "1472")
    ra = netlab.relay(a, "ra", "--dev", netlab.ifname("ta"), "--addr", "10.2.0.1/24", "--listen",
                      f"10.1.0.1:{PORT}", "--peer", f"s=10.1.0.2:{PORT}")

    def state() -> dict[str, object]:
        return ra.counters()["datapath"]["peers"]["s"]  # type: ignore[no-any-return]

    wait_until(lambda: state()["negotiation"] == "silent", "the relay gives up on hellos to socat", 15)
    ping(a, "10.2.0.2")
    # one forged hello (and one forged reply) from socat's own address and port
    hello = encap.pack_hello(encap.HELLO_KIND, caps=encap.CAP_PLAIN | encap.CAP_GSO, session=0x1234)
    reply = encap.pack_hello(encap.REPLY_KIND, caps=encap.CAP_PLAIN | encap.CAP_GSO, session=0x1234, echo=77)
    spoof_udp(b, ("10.1.0.2", PORT), ("10.1.0.1", PORT), hello)
    spoof_udp(b, ("10.1.0.2", PORT), ("10.1.0.1", PORT), reply)
    wait_until(lambda: ra.counters()["datapath"]["hello_rx"] >= 1, "the forged hello seen")
    assert state()["datapath"] == "plain"
    wait_until(lambda: state()["negotiation"] == "silent", "the relay asked again and gave up again", 15)
    assert state()["datapath"] == "plain"
    assert ra.drops("unverified_hello") == 1  # the reply that echoes no hello of ours
    ping(a, "10.2.0.2")


def test_chunks_are_checked_like_packets(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    rb = netlab.relay(b, "rb", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", f"10.1.0.2:{PORT}",
                      "--peer", f"a=10.1.0.1:{PORT}")
    ra = netlab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", f"10.1.0.1:{PORT}",
                      "--peer", f"b=10.1.0.2:{PORT}")
    ping(a, "10.77.0.2")
    ra.stop()  # from now on only the forged chunks come from a's address
    before = rb.counters()
    chunk = encap.HDR.pack(encap.MAGIC, encap.VER_TYPE, 0, 99, 0, 1, 512) + encap.ZERO_VNET + b"\x00" * 40
    for _ in range(3):
        spoof_udp(a, ("10.1.0.1", PORT), ("10.1.0.2", PORT), chunk)
    wait_until(lambda: rb.drops("not_ip") >= 3, "3 chunks that carry no IP packet counted as not_ip")
    after = rb.counters()
    assert after["peers"]["a"]["rx_packets"] == before["peers"]["a"]["rx_packets"]
    assert after["dev"]["tx_packets"] == before["dev"]["tx_packets"]


def test_a_second_tcp_connection_replaces_the_live_one_only_when_it_proves_itself(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    rb = netlab.relay(b, "rb", "--transport", "tcp", "--dev", dev, "--addr", "10.77.0.2/24", "--listen",
                      f"10.1.0.2:{PORT}", "--accept", "a=10.1.0.1")
    ra = netlab.relay(a, "ra", "--transport", "tcp", "--dev", dev, "--addr", "10.77.0.1/24", "--peer",
                      f"b=10.1.0.2:{PORT}")
    ra.wait_connected("b")
    ping(a, "10.77.0.2")
    squatter = bound(a, "10.1.0.1", socket.SOCK_STREAM)  # connects from the peer's IP, says nothing
    squatter.settimeout(5)
    squatter.connect(("10.1.0.2", PORT))
    wait_until(lambda: "waits for a valid frame" in rb.output(), "the relay saw the second connection")
    squatter.sendall(b"\x00\x05" + bytes(5))  # a frame that is no IP packet proves nothing
    wait_until(lambda: rb.drops("not_ip") >= 1, "the bad frame counted")
    ping(a, "10.77.0.2")  # server->client traffic still on the live connection
    squatter.close()
    wait_until(lambda: "connection on probation" in rb.output(), "the squatter's connection closed")
    ping(a, "10.77.0.2")
    # the real peer reconnecting (its old connection dead) is taken at once
    ra.stop()
    wait_until(lambda: not rb.peer("a")["connected"], "the old connection gone")
    ra2 = netlab.relay(a, "ra2", "--transport", "tcp", "--dev", netlab.ifname("t2"), "--addr", "10.78.0.1/24",
                       "--peer", f"b=10.1.0.2:{PORT}")
    ra2.wait_connected("b")
    wait_until(lambda: rb.peer("a")["connected"], "the new connection is the peer's")
