"""The shipped Wireshark dissector (tunlab/wireshark/tunlab.lua) with tshark, and `tunlab pcap inner`, on
synthetic captures of every wire format (no root): chunks glued in one datagram and spread over several,
single-chunk streams, glued plain packets, hellos, TCP framing; both Ethernet and raw-IP link types."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from tunlab.relay.fast import encap

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tunlab" / "wireshark" / "tunlab.lua"
DATA = ROOT / "tests" / "data"
A, B = "10.0.0.1", "10.0.0.2"          # underlay (relay addresses)
SRC, DST = "172.16.0.1", "172.16.0.2"  # overlay (inner packets)
PORT = 55555

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark is not installed (Debian package tshark; scripts/setup.sh installs it)")


def udp(payload: bytes, *, sport: int = PORT, l2: bool = True) -> object:
    pkt = IP(src=A, dst=B) / UDP(sport=sport, dport=PORT) / Raw(payload)
    return Ether() / pkt if l2 else pkt


def stream_of(inner: bytes) -> bytes:
    return bytes(10) + inner  # an empty virtio-net header, then the packet


def inner_tcp(size: int, seq: int = 1000) -> bytes:
    return bytes(IP(src=SRC, dst=DST, id=7) / TCP(sport=40000, dport=5201, seq=seq, flags="PA") / Raw(b"x" * size))


def link_capture(l2: bool) -> list[object]:
    big = encap.split_stream(stream_of(inner_tcp(3000)), queue=0, pid=11, csize=1000)   # 4 chunks
    spread = encap.split_stream(stream_of(inner_tcp(2500, seq=5000)), queue=0, pid=12, csize=1000)  # 3 chunks
    ping = bytes(IP(src=SRC, dst=DST) / ICMP(id=1, seq=1) / Raw(b"p" * 56))
    reply = bytes(IP(src=DST, dst=SRC) / ICMP(type=0, id=1, seq=1) / Raw(b"p" * 56))
    return [
        udp(encap.pack_hello(encap.HELLO_KIND, caps=3, session=0x1234, segment=1472), l2=l2),   # 1 hello
        udp(b"".join(big), l2=l2),                                   # 2 one GSO send: 4 chunks glued
        udp(b"".join(spread[:2]), l2=l2),                            # 3 chunks 1-2 of a stream ...
        udp(spread[2], l2=l2),                                       # 4 ... and its last chunk
        udp(encap.split_stream(stream_of(ping), queue=0, pid=13, csize=1400)[0], l2=l2),  # 5 one-chunk stream
        udp(ping + reply, l2=l2),                                    # 6 plain packets, glued
    ]


def tshark(pcap: Path, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    argv = ["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), *extra, "-T", "fields",
            *(a for fld in fields for a in ("-e", fld))]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Lua" not in res.stderr or "error" not in res.stderr.lower(), res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()]


@needs_tshark
@pytest.mark.parametrize("l2", [True, False], ids=["ethernet", "raw-ip"])
def test_tshark_decodes_every_wire_format(tmp_path: Path, l2: bool) -> None:
    pcap = tmp_path / "link.pcap"
    wrpcap(str(pcap), link_capture(l2))
    rows = tshark(pcap, "frame.number", "ip.src", "ip.dst", "tunlab.hello.kind", "tunlab.count", "tcp.len",
                  "icmp.type")
    by_frame = {int(r[0]): r for r in rows}
    # 1: a hello, not "0.0.0.0 -> 0.0.0.0 Unknown (253)"
    assert by_frame[1][3] == "1"
    # 2: one send of 4 chunks glued: every chunk's header, and the reassembled inner TCP packet
    assert by_frame[2][4] == "4,4,4,4" and SRC in by_frame[2][1].split(",") and by_frame[2][5] == "3000"
    # 3-4: a stream spread over two datagrams is decoded where it completes
    assert SRC not in by_frame[3][1] and SRC in by_frame[4][1].split(",") and by_frame[4][5] == "2500"
    # 5: a one-chunk stream; 6: two plain packets glued in one datagram, both decoded
    assert SRC in by_frame[5][1] and by_frame[5][6] == "8"
    assert by_frame[6][1].split(",") == [A, SRC, DST] and by_frame[6][6] == "8,0"


@needs_tshark
def test_without_the_dissector_tshark_sees_only_udp(tmp_path: Path) -> None:
    """What users got before (so the test above can fail): opaque UDP, or 'Bogus IP version' as IP."""
    pcap = tmp_path / "link.pcap"
    wrpcap(str(pcap), link_capture(True))
    res = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src"], capture_output=True, text=True)
    assert SRC not in res.stdout


@needs_tshark
def test_tshark_decodes_tcp_framing_and_socat_datagrams() -> None:
    rows = tshark(DATA / "tcp-framing.pcap", "ip.src", "icmp.type", "tunlab.frame_len")
    inner = [r for r in rows if "10.252.0.1" in r[0].split(",") or "10.252.0.2" in r[0].split(",")]
    assert sum(len([t for t in r[1].split(",") if t]) for r in inner) == 20  # ten pings: requests and replies
    rows = tshark(DATA / "udp-datagram.pcap", "ip.src", "icmp.type", extra=("-o", "tunlab.udp_ports:40000"))
    assert sum(1 for r in rows if r[1]) == 18


def run_tunlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, timeout=120)


def test_pcap_inner_writes_the_inner_packets(tmp_path: Path) -> None:
    pcap = tmp_path / "link.pcap"
    wrpcap(str(pcap), link_capture(True))
    res = run_tunlab("pcap", "inner", str(pcap))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "link.inner.pcap"
    assert f"{out}: " in res.stdout
    inner = rdpcap(str(out))
    assert all(p.haslayer(IP) and p[IP].src in (SRC, DST) for p in inner)
    tcp_payload = sum(len(p[TCP].payload) for p in inner if p.haslayer(TCP))
    assert tcp_payload == 5500 and sum(1 for p in inner if p.haslayer(ICMP)) == 3


def test_pcap_inner_deframes_tcp_and_takes_ports(tmp_path: Path) -> None:
    out = tmp_path / "tcp.pcap"
    assert run_tunlab("pcap", "inner", str(DATA / "tcp-framing.pcap"), "-o", str(out)).returncode == 0
    assert len(rdpcap(str(out))) == 159  # 109 + 50 frames (tests/data/CAPTURES.md)
    res = run_tunlab("pcap", "inner", str(DATA / "udp-datagram.pcap"), "-o", str(out))
    assert res.returncode == 2 and "no relay traffic on port(s) 55555" in res.stderr and "-p PORT" in res.stderr
    assert run_tunlab("pcap", "inner", str(DATA / "udp-datagram.pcap"), "-p", "40000", "-o", str(out)).returncode == 0
    assert len(rdpcap(str(out))) == 18


def test_pcap_wireshark_prints_the_dissector() -> None:
    res = run_tunlab("pcap", "wireshark")
    assert res.returncode == 0 and Path(res.stdout.strip()) == LUA and "lua_script" in res.stderr


def test_tun_pcapng_says_each_packets_direction(tmp_path: Path) -> None:
    from tunlab.traffic.capture import write_pcapng
    from tunlab.traffic.decap import Frame

    ping = bytes(IP(src=SRC, dst=DST) / ICMP(id=1, seq=1))
    reply = bytes(IP(src=DST, dst=SRC) / ICMP(type=0, id=1, seq=1))
    path = tmp_path / "tun_sender.pcapng"
    write_pcapng(path, [Frame(1700000000.123456789, ping, outgoing=True), Frame(1700000000.5, reply)],
                 ifname="tun@sender")
    got = rdpcap(str(path))
    assert [bytes(p) for p in got] == [ping, reply]
    assert [p.direction for p in got] == [2, 1]  # outbound, inbound
    assert abs(float(got[0].time) - 1700000000.123456789) < 1e-6
    if shutil.which("tshark"):
        res = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.packet_flags_direction",
                              "-e", "ip.src"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert [int(line.split("\t")[0], 0) for line in res.stdout.splitlines()] == [2, 1], res.stdout


@needs_tshark
def test_nsh_datagrams_on_the_relays_port_go_to_wiresharks_vxlan_gpe(tmp_path: Path) -> None:
    """NSH mode (issue 18) on a lab port (55555, the dissector's): VXLAN-GPE + NSH, decoded by Wireshark's own
    dissectors; a plain packet whose length ends in 0x04 is still a plain packet."""
    from scapy.layers.inet import ICMP, IP, UDP

    from tunlab.relay import nsh
    from tunlab.traffic.capture import write_pcap
    from tunlab.traffic.decap import Frame

    inner = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / ICMP())
    wire = nsh.gpe_header() + nsh.Nsh(10, 254, 62).encode() + inner
    plain = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / ICMP() / (b"x" * (260 - 28)))
    pcap = tmp_path / "nsh.pcap"
    write_pcap(pcap, [Frame(1.0, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=55555, dport=55555) / p))
                      for p in (wire, plain)])
    rows = tshark(pcap, "nsh.spi", "nsh.si", "ip.dst")
    assert rows == [["10", "254", "10.0.0.2,172.16.0.2"], ["", "", "10.0.0.2,172.16.0.2"]], rows
