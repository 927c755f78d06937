"""Keyed relay links (--psk-file): a tunnel only tunlab relays holding the key can use; forged, replayed and
spoofed datagrams from the peer's own address reach the device 0 times and change nothing."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from relay_helpers import NetLab, netlab, ns_socket, ping, sh, two_nodes, wait_until  # noqa: F401

pytestmark = pytest.mark.netns


def key(tmp: Path, name: str = "psk", content: bytes | None = None) -> str:
    p = tmp / name
    p.write_bytes(content if content is not None else os.urandom(32))
    os.chmod(p, 0o600)
    return str(p)


def tcpdump(lab: NetLab, ns: str, path: Path, count: int, bpf: str) -> subprocess.Popen[str]:
    """tcpdump on ``ns``'s uplink writing ``count`` packets to ``path``, listening when this returns."""
    dump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", lab.ifname("vb"), "-U", "-w", str(path),
                             "-c", str(count), "--immediate-mode", "-Z", "root", bpf], stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None
    wait_until(lambda: "listening" in (dump.stderr.readline() or ""), "tcpdump listening")
    return dump


def keyed_pair(lab: NetLab, a: str, b: str, key_a: str, key_b: str, *extra: str):
    dev = lab.ifname("t")
    ra = lab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", "10.1.0.1:5000",
                   "--peer", "b=10.1.0.2:5000", "--psk-file", key_a, *extra)
    rb = lab.relay(b, "rb", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", "10.1.0.2:5000",
                   "--peer", "a=10.1.0.1:5000", "--psk-file", key_b, *extra)
    return ra, rb


def test_a_keyed_tunnel_carries_traffic_sealed(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    k = key(tmp_path)
    ra, rb = keyed_pair(netlab, a, b, k, k)
    wait_until(lambda: ra.counters()["datapath"]["peers"]["b"]["session"], "the session is up")
    cap = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-i", netlab.ifname("vb"), "-U", "-n", "-c", "6",
                            "-A", "--immediate-mode", "udp port 5000"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    wait_until(lambda: "listening" in (cap.stderr.readline() or ""), "tcpdump listening")
    ping(a, "10.77.0.2", size=100)
    ping(a, "10.77.0.2", size=1443 - 28)  # the keyed MTU: 1472 minus 29 bytes of seal
    out, _ = cap.communicate(timeout=30)
    assert "abcdefghijklmnop" not in out  # ping's payload pattern never appears on the wire
    link = sh("ip", "-n", a, "link", "show", "dev", netlab.ifname("t")).stdout
    assert "mtu 1443" in link
    c = rb.counters()
    assert c["datapath"]["datapath"] == "sealed" and c["peers"]["a"]["rx_packets"] >= 6
    # (the kernel's own first packets on a fresh TUN may meet no session yet: seal_no_session; nothing else)
    assert not {r for r in c["drops"] if r.startswith("seal_")} - {"seal_no_session"}, c["drops"]


def test_different_keys_never_talk(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    ra, rb = keyed_pair(netlab, a, b, key(tmp_path, "ka"), key(tmp_path, "kb"))
    wait_until(lambda: rb.drops("seal_bad_hello") >= 2, "hellos under the wrong key refused")
    assert ping(a, "10.77.0.2", count=1, deadline=2, check=False).returncode != 0
    assert rb.counters()["dev"]["tx_packets"] == 0 and not rb.counters()["datapath"]["peers"]["a"]["session"]



def settled(ra: Any, rb: Any) -> tuple[dict, int]:  # type: ignore[type-arg]
    """b's counters and what a's relay has sent b, once nothing a sent is still on its way: a's kernel may
    send a packet of its own at any time (an IPv6 router solicitation on the fresh TUN), and one caught
    between the two reads was counted on one side only (CI saw b's device one ahead, and one behind)."""
    got: list[tuple[dict, int]] = []  # type: ignore[type-arg]

    def same() -> bool:
        sent = ra.counters()["peers"]["b"]["tx_packets"]
        c = rb.counters()
        got[:] = [(c, sent)]
        return c["peers"]["a"]["rx_packets"] == sent
    wait_until(same, "a's packets to b all arrived")
    return got[0]


def test_forgeries_replays_and_spoofed_ports_reach_the_device_zero_times(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    k = key(tmp_path)
    ra, rb = keyed_pair(netlab, a, b, k, k)
    wait_until(lambda: rb.counters()["datapath"]["peers"]["a"]["session"], "the session is up")
    ping(a, "10.77.0.2")
    # record what a sends, to replay it
    cap = tmp_path / "a.pcap"
    dump = tcpdump(netlab, b, cap, 3, "udp and src port 5000 and src host 10.1.0.1")
    try:
        ping(a, "10.77.0.2")  # three sealed echo requests from a
        dump.wait(timeout=30)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    recorded = [bytes(p[UDP].payload) for p in rdpcap(str(cap)) if p.haslayer(UDP)]
    assert recorded

    before, sent_before = settled(ra, rb)
    # the attacker sits on a's own address: a second address on a's side is not needed, a's IP is spoofable
    # by binding it from another socket in a's namespace with another port, and with a's own port
    spoof_port = ns_socket(a, socket.AF_INET)
    spoof_port.bind(("10.1.0.1", 0))
    rnd = __import__("random").Random(9)
    key_id = recorded[0][1:5]  # half the forgeries carry the session's real key id: only the tag stops them

    def dropped() -> int:
        return sum(rb.counters()["drops"].values())

    sent = 0
    while sent < 100_000:  # in bursts the relay has counted before the next (no kernel buffer overflow)
        mark = dropped()
        for i in range(2000):
            head = bytes([2]) + (key_id if i % 2 else rnd.randbytes(4)) + rnd.randbytes(8)
            spoof_port.sendto(head + rnd.randbytes(rnd.randrange(0, 200)), ("10.1.0.2", 5000))
        sent += 2000
        wait_until(lambda: dropped() - mark >= 2000, "a burst of forgeries counted", timeout=30)
    mark = dropped()
    for data in recorded:  # replays of real, recorded datagrams, from a's address (another port)
        spoof_port.sendto(data, ("10.1.0.2", 5000))
    wait_until(lambda: dropped() - mark >= len(recorded), "the replays counted")
    after, sent_after = settled(ra, rb)
    # b's device gets exactly what a's relay sealed and sent, nothing more
    authentic = sent_after - sent_before
    assert after["dev"]["tx_packets"] - before["dev"]["tx_packets"] == authentic, "nothing forged reached the device"
    gained = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items()}
    assert gained.get("seal_auth", 0) > 40_000 and gained.get("seal_replay", 0) == len(recorded), gained
    assert sum(gained.values()) == 100_000 + len(recorded)
    ping(b, "10.77.0.1")  # b still answers a at a's real address: its endpoint never moved
    spoof_port.close()


def test_a_keyed_lab_passes_the_per_hop_checks_with_sealed_links(tmp_path: Path) -> None:
    import dataclasses

    from tunlab import load_topology, run_scenario
    from tunlab.model.scenario import load_scenario

    scenario = tmp_path / "keyed.py"
    scenario.write_text("from tunlab import Ping, Tcp, Udp\ntopology = 'three_vnf'\n"
                        "traffic = [Ping(), Ping(size='mtu'), Udp(5000, size=300), Tcp(80)]\n")
    topo = dataclasses.replace(load_topology("three_vnf"), keyed=True)
    assert topo.mtu == 1443
    sc = load_scenario(scenario).with_topology(topo)
    result = run_scenario(sc, results_root=tmp_path / "results")
    assert result.passed, [c.message for f in result.flows for c in f.checks if not c.passed] + \
        [c.message for c in result.links if not c.passed] + [result.error or ""]
    outers = {row.outer for f in result.flows for row in f.hops if row.outer}
    assert any(o.startswith("UDP sealed") for o in outers), outers


def test_a_peer_that_roams_to_a_new_port_is_followed(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    k = key(tmp_path)
    ra, rb = keyed_pair(netlab, a, b, k, k)
    ping(a, "10.77.0.2")
    assert ra.stop() == 0
    # a comes back on another port (a NAT rebinding, a restart): its authentic hello moves b's reply address
    dev = netlab.ifname("t")
    netlab.relay(a, "ra2", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", "10.1.0.1:5999",
                 "--peer", "b=10.1.0.2:5000", "--psk-file", k)
    ping(a, "10.77.0.2")
    ping(b, "10.77.0.1")
    assert rb.counters()["peers"]["a"]["rx_packets"] >= 6


# -- keyed TCP: every frame a sealed record

def keyed_tcp_pair(lab: NetLab, a: str, b: str, key_a: str, key_b: str):
    dev = lab.ifname("t")
    rb = lab.relay(b, "rb", "--transport", "tcp", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", "10.1.0.2:5000",
                   "--accept", "a=10.1.0.1", "--psk-file", key_b)
    ra = lab.relay(a, "ra", "--transport", "tcp", "--dev", dev, "--addr", "10.77.0.1/24",
                   "--peer", "b=10.1.0.2:5000", "--psk-file", key_a)
    return ra, rb


def test_a_keyed_tcp_tunnel_carries_traffic_sealed_and_survives_a_reconnect(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    k = key(tmp_path)
    ra, rb = keyed_tcp_pair(netlab, a, b, k, k)
    wait_until(lambda: rb.counters()["datapath"]["peers"]["a"]["session"], "the session is up")
    cap = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-i", netlab.ifname("vb"), "-U", "-n", "-c", "8",
                            "-A", "--immediate-mode", "tcp port 5000 and greater 100"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    wait_until(lambda: "listening" in (cap.stderr.readline() or ""), "tcpdump listening")
    ping(a, "10.77.0.2", size=100)
    ping(a, "10.77.0.2", size=1443 - 28)  # the keyed MTU: the same as over UDP
    out, _ = cap.communicate(timeout=30)
    assert "abcdefghijklmnop" not in out  # ping's payload pattern never appears on the wire
    c = rb.counters()
    assert c["datapath"]["datapath"] == "sealed" and c["peers"]["a"]["rx_packets"] >= 6
    assert not {r for r in c["drops"] if r.startswith("seal_")} - {"seal_no_session"}, c["drops"]
    # the client comes back (a new connection, a fresh session): traffic flows again, both ways
    assert ra.stop() == 0
    netlab.relay(a, "ra2", "--transport", "tcp", "--dev", netlab.ifname("t"), "--addr", "10.77.0.1/24",
                 "--peer", "b=10.1.0.2:5000", "--psk-file", k)
    ping(a, "10.77.0.2")
    ping(b, "10.77.0.1")


def test_keyed_tcp_with_different_keys_never_talks(netlab: NetLab, tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    ra, rb = keyed_tcp_pair(netlab, a, b, key(tmp_path, "ka"), key(tmp_path, "kb"))
    wait_until(lambda: rb.drops("seal_bad_hello") >= 1, "a hello under the wrong key refused")
    assert ping(a, "10.77.0.2", count=1, deadline=2, check=False).returncode != 0
    assert rb.counters()["dev"]["tx_packets"] == 0 and not rb.counters()["datapath"]["peers"]["a"]["session"]


def test_keyed_tcp_forgeries_and_replays_on_a_second_connection_change_nothing(netlab: NetLab,
                                                                               tmp_path: Path) -> None:
    a, b = two_nodes(netlab)
    k = key(tmp_path)
    ra, rb = keyed_tcp_pair(netlab, a, b, k, k)
    wait_until(lambda: rb.counters()["datapath"]["peers"]["a"]["session"], "the session is up")
    # record a's side of the live connection (its hello and sealed echo requests), to replay it
    cap = tmp_path / "a.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-i", netlab.ifname("vb"), "-U", "-w", str(cap),
                             "--immediate-mode", "-Z", "root", "tcp and dst port 5000 and src host 10.1.0.1"],
                            stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None
    wait_until(lambda: "listening" in (dump.stderr.readline() or ""), "tcpdump listening")
    try:
        ping(a, "10.77.0.2")
    finally:
        dump.terminate()
        dump.wait(timeout=10)
    from relay_helpers import deframe_exact, tcp_streams

    records = [r for stream in tcp_streams(cap).values() for r in deframe_exact(b"".join(stream))]
    assert len(records) >= 3
    before, sent_before = settled(ra, rb)
    # an attacker on a's machine connects from a's address: its connection waits on probation
    atk = ns_socket(a, socket.AF_INET, socket.SOCK_STREAM)
    atk.settimeout(10)
    atk.connect(("10.1.0.2", 5000))
    rnd = __import__("random").Random(5)
    forged = b"".join(len(r).to_bytes(2, "big") + r for r in
                      (bytes([2]) + rnd.randbytes(rnd.randrange(12, 200)) for _ in range(2000)))
    atk.sendall(forged + b"".join(len(r).to_bytes(2, "big") + r for r in records))  # then a replay of a's records

    def dropped() -> int:
        return sum(v for r, v in rb.counters()["drops"].items() if r.startswith("seal_"))
    wait_until(lambda: dropped() - sum(v for r, v in before["drops"].items() if r.startswith("seal_"))
               >= 2000 + len(records), "the forgeries and replays counted", timeout=30)
    after, sent_after = settled(ra, rb)
    assert after["dev"]["tx_packets"] - before["dev"]["tx_packets"] == sent_after - sent_before
    gained = {r: v - before["drops"].get(r, 0) for r, v in after["drops"].items()}
    assert gained.get("seal_replay", 0) >= len(records) - 1, gained  # the hello and every data record refused
    # the live connection was never replaced: traffic between the real ends still flows both ways
    ping(a, "10.77.0.2")
    ping(b, "10.77.0.1")
    assert "replaced" not in rb.output()
    atk.close()


def test_a_keyed_lab_over_tcp_links_passes_the_per_hop_checks(tmp_path: Path) -> None:
    import dataclasses

    from tunlab import run_scenario
    from tunlab.model.scenario import load_scenario

    scenario = tmp_path / "keyed_tcp.py"
    scenario.write_text("from tunlab import Ping, Tcp, Udp\ntopology = 'linear'\n"
                        "params = {'n_vnfs': 2, 'transport': 'tcp'}\n"
                        "traffic = [Ping(), Ping(size='mtu'), Udp(5000, size=300), Tcp(80)]\n")
    sc = load_scenario(scenario)
    sc = sc.with_topology(dataclasses.replace(sc.topology, keyed=True))
    result = run_scenario(sc, results_root=tmp_path / "results")
    assert result.passed, [c.message for f in result.flows for c in f.checks if not c.passed] + \
        [c.message for c in result.links if not c.passed] + [result.error or ""]
    outers = {row.outer for f in result.flows for row in f.hops if row.outer}
    assert any(o.startswith("TCP sealed") for o in outers), outers


# -- keyed gso: every chunk sealed


def test_a_keyed_gso_pair_carries_tcp_in_sealed_chunks(netlab: NetLab, tmp_path: Path) -> None:
    """The default datapath of a keyed UDP link: GSO super-packets cross as chunks, each sealed; a TCP
    transfer arrives intact and every datagram on the wire is a sealed record (opened with the keylog, the
    data ones carry chunks)."""
    from test_fast import send_file

    from tunlab.relay.fast.encap import MAGIC
    from tunlab.relay.seal import DATA, HELLO, open_with, read_keylog

    a, b = two_nodes(netlab)
    k = key(tmp_path)
    keylog = tmp_path / "a.keys"
    ra, rb = keyed_pair(netlab, a, b, k, k, "--seal-keylog", str(keylog))
    wait_until(lambda: ra.counters()["datapath"]["peers"]["b"]["datapath"] == "sealed-gso"
               and rb.counters()["datapath"]["peers"]["a"]["datapath"] == "sealed-gso", "both ends send sealed chunks")
    before = rb.counters()["drops"]  # (a packet of b's kernel may have found no session before the handshake)
    cap = tmp_path / "wire.pcap"
    dump = tcpdump(netlab, b, cap, 3000, "udp port 5000")
    try:
        send_file(netlab, a, b, "10.77.0.2", size=4 << 20)
    finally:
        if dump.poll() is None:
            dump.terminate()
        dump.wait(timeout=10)
    ca = ra.counters()["datapath"]
    assert ca["offload"] and ca["chunks_tx"] > ca["streams_tx"] > 0, ca
    assert rb.counters()["drops"] == before, "an authentic sealed chunk was dropped"
    cb = rb.counters()["datapath"]
    assert cb["streams_rx"] >= cb["whole_streams_rx"] > 0, cb  # GRO batches opened whole, and some
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    payloads = [bytes(p[UDP].payload) for p in rdpcap(str(cap)) if p.haslayer(UDP)]
    assert len(payloads) > 100
    assert all(d[:1] in (bytes([HELLO]), bytes([DATA])) for d in payloads), "a datagram in the clear"
    keys = read_keylog(str(keylog))
    opened = [open_with(keys, d) for d in payloads if d[0] == DATA]
    chunks = [o for o in opened if o is not None and o[:1] == MAGIC[:1]]
    assert len(chunks) > len(opened) // 4, (len(chunks), len(opened))


def test_keyed_gso_and_keyed_simple_relays_talk_one_sealed_packet_per_datagram(netlab: NetLab,
                                                                                 tmp_path: Path) -> None:
    """A keyed gso relay asks its peer by a sealed hello; a keyed --datapath simple peer never answers (its
    kernel drops the hello it writes to its TUN), so it keeps getting sealed packets, and traffic flows."""
    from test_fast import send_file

    a, b = two_nodes(netlab)
    k = key(tmp_path)
    dev = netlab.ifname("t")
    ra = netlab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", "10.1.0.1:5000",
                      "--peer", "b=10.1.0.2:5000", "--psk-file", k)
    rb = netlab.relay(b, "rb", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", "10.1.0.2:5000",
                      "--peer", "a=10.1.0.1:5000", "--psk-file", k, "--datapath", "simple")
    wait_until(lambda: ra.counters()["datapath"]["peers"]["b"]["session"], "the session is up")
    send_file(netlab, a, b, "10.77.0.2", size=1 << 20)
    ca = ra.counters()["datapath"]
    assert ca["peers"]["b"]["datapath"] == "sealed" and not ca["offload"] and ca["chunks_tx"] == 0, ca
    assert rb.counters()["peers"]["a"]["rx_packets"] > 700
