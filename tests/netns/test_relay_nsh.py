"""NSH mode (issue 18) on a real chain of relays in namespaces: A (classifier) - V1 (firewall: kernel VNF behind
the NSH proxy) - V2 (NSH-aware Python SF) - B, VXLAN-GPE/NSH on every link, checked hop by hop from captures.

Paths: SPI 10 A->B (ICMP and the rest) through V1's and V2's SFs, SI 255 -> 253; SPI 11 B->A, its reverse;
SPI 20 A->B (UDP to port 5353) through V1's firewall only, SI 100 -> 99 (two paths share the firewall with
different SIs). tshark decodes SPI/SI from a link's pcap as is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from relay_helpers import NetLab, netlab, nsexec, ping, wait_until  # noqa: F401

from tunlab.relay import nsh
from tunlab.relay.control import request
from tunlab.traffic.capture import Capture, CapturePoint
from tunlab.traffic.decap import nsh_of, parse_ipv4

pytestmark = pytest.mark.netns

A_IP, B_IP = "10.70.0.1", "10.70.0.2"
MARK = bytes.fromhex("0000000000000000000000000000002a")   # A's classifier: context word 4 = 42

# V2: an NSH-aware SF. It reads the context, writes "v2" into its first bytes, decrements SI; with MD type 2 it
# requires on path 10 the TLV (class 0xfff0, type 1) that V1's aware SF adds in the metadata test (drops without)
AWARE_V2 = '''
from tunlab.relay.nsh import Nsh, Tlv, decode

def sf(pkt: bytes):
    h = decode(pkt)
    inner = pkt[h.length:]
    if h.md_type == 1:
        out = h.replace(si=h.si - 1, context=b"v2" + h.context[2:])
    else:
        tags = [t for t in h.tlvs if (t.cls, t.type) == (0xFFF0, 1)]
        if h.spi == 10 and not tags:  # the forward path must come through V1's SF first
            return None
        seen = b"seen " + tags[0].value if tags else b"seen none"
        out = h.replace(si=h.si - 1, tlvs=h.tlvs + (Tlv(0xFFF0, 2, seen),))
    return out.encode() + inner
'''

AWARE_V1 = '''
from tunlab.relay.nsh import Tlv, decode

def sf(pkt: bytes):
    h = decode(pkt)
    return h.replace(si=h.si - 1, tlvs=h.tlvs + (Tlv(0xFFF0, 1, b"v1ok"),)).encode() + pkt[h.length:]
'''


def tables(md2: bool = False, start_ttl: int = 63, start_si: int = 255) -> dict[str, dict]:
    md: dict = {"md_type": 2, "tlvs": []} if md2 else {"context": MARK.hex()}
    s0 = start_si
    return {
        "a": {"classifier": [{"spi": 20, "si": 100, "proto": "udp", "dport": 5353, **md},
                             {"spi": 10, "si": s0, "ttl": start_ttl, "src": f"{A_IP}/32", "dst": f"{B_IP}/32", **md}],
              "forward": [{"spi": 10, "si": s0, "to": "v1"}, {"spi": 20, "si": 100, "to": "v1"},
                          {"spi": 11, "si": 253, "to": "end"}]},
        "v1": {"forward": [{"spi": 10, "si": s0, "to": "sf"}, {"spi": 10, "si": s0 - 1, "to": "v2"},
                           {"spi": 20, "si": 100, "to": "sf"}, {"spi": 20, "si": 99, "to": "v2"},
                           {"spi": 11, "si": 254, "to": "sf"}, {"spi": 11, "si": 253, "to": "a"}]},
        "v2": {"forward": [{"spi": 10, "si": s0 - 1, "to": "sf"}, {"spi": 10, "si": s0 - 2, "to": "b"},
                           {"spi": 20, "si": 99, "to": "b"},
                           {"spi": 11, "si": 255, "to": "sf"}, {"spi": 11, "si": 254, "to": "v1"}]},
        "b": {"classifier": [{"spi": 11, "si": 255, "src": f"{B_IP}/32", "dst": f"{A_IP}/32", **md}],
              "forward": [{"spi": 10, "si": s0 - 2, "to": "end"}, {"spi": 20, "si": 99, "to": "end"},
                          {"spi": 11, "si": 255, "to": "v2"}]},
    }


class Chain:
    def __init__(self, lab: NetLab, t: dict[str, dict], *, v1_aware: bool = False) -> None:
        self.lab = lab
        a, v1, v2, b = (lab.ns(x) for x in ("a", "v1", "v2", "b"))
        self.ns = {"a": a, "v1": v1, "v2": v2, "b": b}
        self.links = {"a-v1": lab.veth(a, v1, ["10.1.0.1/24"], ["10.1.0.2/24"], tag="x"),
                      "v1-v2": lab.veth(v1, v2, ["10.2.0.1/24"], ["10.2.0.2/24"], tag="y"),
                      "v2-b": lab.veth(v2, b, ["10.3.0.1/24"], ["10.3.0.2/24"], tag="z")}
        (lab.tmp / "aware_v2.py").write_text(AWARE_V2)
        (lab.tmp / "aware_v1.py").write_text(AWARE_V1)
        t["v2"]["aware_hook"] = f"{lab.tmp}/aware_v2.py:sf"
        if v1_aware:
            t["v1"]["aware_hook"] = f"{lab.tmp}/aware_v1.py:sf"
        # V1's firewall (kernel VNF behind the proxy): drops UDP to port 9 and counts what it passes
        rules = lab.tmp / "fw.nft"
        rules.write_text("table inet t18fw {\n chain pass {\n  type filter hook forward priority 0;\n"
                         "  udp dport 9 counter drop\n  counter\n }\n}\n")
        nsexec(v1, "nft", "-f", str(rules))
        dev = lab.ifname("t")
        peers = {"a": [("v1", "10.1.0.2")], "v1": [("a", "10.1.0.1"), ("v2", "10.2.0.2")],
                 "v2": [("v1", "10.2.0.1"), ("b", "10.3.0.2")], "b": [("v2", "10.3.0.1")]}
        addrs = {"a": A_IP, "v1": "10.70.0.254", "v2": "10.70.0.253", "b": B_IP}
        self.relays = {}
        for node, ps in peers.items():
            f = lab.tmp / f"{node}.nsh.json"
            f.write_text(json.dumps(t[node]))
            args = ["--dev", dev, "--addr", f"{addrs[node]}/24", "--mtu", "1400", "--listen", "0.0.0.0:4790",
                    "--nsh", str(f)]
            for name, ip in ps:
                args += ["--peer", f"{name}={ip}:4790"]
            args += ["--route", f"default={ps[0][0]}"]
            self.relays[node] = lab.relay(self.ns[node], node, *args)

    def points(self) -> list[CapturePoint]:
        return [CapturePoint(name, f"/run/netns/{self.ns[name.split('-')[0]]}", devs[0], "udp port 4790")
                for name, devs in self.links.items()]

    def nsh(self, name: str) -> dict:
        return self.relays[name].counters()["nsh"]


def sightings(frames) -> list[tuple[str, str, nsh.Nsh, bytes]]:
    out = []
    for fr in frames:
        ip = parse_ipv4(fr.data)
        if ip is None or ip.proto != 17:
            continue
        got = nsh_of(ip.payload[8:])
        assert got is not None, f"a datagram on the link is not VXLAN-GPE + NSH: {ip.payload[:16].hex()}"
        out.append((ip.src, ip.dst, got[0], got[1]))
    return out


def icmp_type(inner: bytes) -> int:
    return inner[(inner[0] & 0x0F) * 4]


def test_chain_paths_hop_by_hop_and_tshark(netlab: NetLab, tmp_path: Path) -> None:
    ch = Chain(netlab, tables())
    with Capture(ch.points()) as cap:
        ping(ch.ns["a"], B_IP, count=3)
        send_udp(ch, 5353)
        wait_until(lambda: ch.nsh("b")["delivered"] >= 4, "B delivered 3 pings and 1 UDP datagram")
        cap.wait_quiet(0.3, 5)
        frames = cap.frames()
        pcaps = cap.write_pcaps(tmp_path)
    # expected (SPI, SI, TTL, context) on every link, derived from the tables: the classifier pushes TTL 63,
    # every receiving SFF takes one, SFs take one SI each; V2 writes "v2" into the context
    expect = {
        ("a-v1", "10.1.0.1"): {(10, 255, 63, MARK), (20, 100, 63, MARK)},
        ("v1-v2", "10.2.0.1"): {(10, 254, 62, MARK), (20, 99, 62, MARK)},
        ("v2-b", "10.3.0.1"): {(10, 253, 61, b"v2" + MARK[2:]), (20, 99, 61, MARK)},
        ("v2-b", "10.3.0.2"): {(11, 255, 63, MARK)},
        ("v1-v2", "10.2.0.2"): {(11, 254, 62, b"v2" + MARK[2:])},
        ("a-v1", "10.1.0.2"): {(11, 253, 61, b"v2" + MARK[2:])},
    }
    seen: dict[tuple[str, str], set] = {}
    for link, fr in frames.items():
        for src, _dst, h, inner in sightings(fr):
            seen.setdefault((link, src), set()).add((h.spi, h.si, h.ttl, h.context))
            assert h.next_proto == nsh.NP_IPV4 and inner[0] >> 4 == 4
            if h.spi == 20:
                assert inner[9] == 17  # the UDP flow took path 20, ICMP path 10/11
            else:
                # path 11 carries the echo replies and B's port unreachable for the UDP probe
                assert inner[9] == 1 and icmp_type(inner) in ((8,) if h.spi == 10 else (0, 3))
    assert seen == expect
    # the firewall SF saw three paths: 3 echo requests, 3 replies + 1 port unreachable, 1 UDP datagram
    fw = nsexec(ch.ns["v1"], "nft", "list", "table", "inet", "t18fw").stdout
    assert "counter packets 8 " in fw, fw
    v1 = ch.nsh("v1")
    assert v1["lookups"] == {"10/254": 3, "10/255": 3, "11/253": 4, "11/254": 4, "20/100": 1, "20/99": 1}
    assert v1["to_sf"] == 8 and v1["from_sf"] == 8
    assert ch.relays["b"].counters()["dev"]["tx_packets"] == 4  # NSH stripped at the final hop
    wait_until(lambda: ch.nsh("a")["delivered"] == 4, "A delivered 3 replies and the port unreachable")
    # tshark dissects VXLAN-GPE (udp 4790) and NSH out of the box
    pcap = next(p for p in pcaps if "v2-b" in p.name)
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (scripts/setup.sh installs it)")
    res = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "nsh.spi", "-e", "nsh.si",
                          "-e", "nsh.ttl", "-e", "ip.dst"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = {tuple(line.split("\t")) for line in res.stdout.strip().splitlines()}
    assert rows == {("10", "253", "0x003d", "10.3.0.2,10.70.0.2"),                 # TTL 61 (tshark: hex)
                    ("20", "99", "0x003d", "10.3.0.2,10.70.0.2"),
                    ("11", "255", "0x003f", "10.3.0.1,10.70.0.1"),
                    ("11", "255", "0x003f", "10.3.0.1,10.70.0.1,10.70.0.2")}, rows  # + the quoted packet


def test_metadata_set_by_one_sf_read_by_a_later_one(netlab: NetLab) -> None:
    """MD type 2: V1's aware SF adds a TLV, V2's requires it (drops without it) and adds another."""
    ch = Chain(netlab, tables(md2=True), v1_aware=True)
    with Capture(ch.points()[2:]) as cap:
        ping(ch.ns["a"], B_IP, count=2)
        cap.wait_quiet(0.3, 5)
        frames = cap.frames()
    fwd = [h for src, _, h, _ in sightings(frames["v2-b"]) if h.spi == 10]
    assert len(fwd) == 2
    assert all(h.tlvs == (nsh.Tlv(0xFFF0, 1, b"v1ok"), nsh.Tlv(0xFFF0, 2, b"seen v1ok")) for h in fwd), fwd
    assert ch.nsh("v2")["from_sf"] >= 4  # both directions went through V2's aware SF
    # V1's SF skipped (path 10 handed to V2's SF at SI 255): V2 finds no V1 metadata and drops
    v1, v2 = ch.relays["v1"].control, ch.relays["v2"].control
    assert request(v1, {"cmd": "nsh", "set": {"forward": [{"spi": 10, "si": 255, "to": "v2"}]}})["ok"]
    assert request(v2, {"cmd": "nsh", "set": {"forward": [{"spi": 10, "si": 255, "to": "sf"},
                                                          {"spi": 10, "si": 254, "to": "b"}]}})["ok"]
    before = ch.relays["v2"].drops("hook_drop")
    send_udp(ch, 7)
    wait_until(lambda: ch.relays["v2"].drops("hook_drop") == before + 1, "V2 dropped what lacks V1's metadata")
    assert ch.nsh("b")["delivered"] == 2


def send_udp(ch: Chain, port: int) -> None:
    """One UDP datagram from A's overlay address to B's: exactly one packet into the chain."""
    from relay_helpers import ns_socket

    s = ns_socket(ch.ns["a"])
    try:
        s.sendto(b"probe", (B_IP, port))
    finally:
        s.close()


def test_si_exhaustion_ttl_expiry_malformed_counted(netlab: NetLab) -> None:
    ch = Chain(netlab, tables(start_ttl=2))
    # TTL 2 from A: V1 forwards with TTL 1, V2 must not forward it (TTL 0 after its decrement)
    send_udp(ch, 7)
    wait_until(lambda: ch.relays["v2"].drops("nsh_ttl_expired") == 1, "V2 counted the expired TTL")
    assert ch.nsh("b")["delivered"] == 0
    # an SI of 1 at the firewall: its proxy gives back SI 0, which is never forwarded
    ok = request(ch.relays["a"].control, {"cmd": "nsh", "set": {"classifier": [
        {"spi": 10, "si": 1, "src": f"{A_IP}/32"}], "forward": [{"spi": 10, "si": 1, "to": "v1"}]}})
    assert ok["ok"], ok
    ok = request(ch.relays["v1"].control, {"cmd": "nsh", "set": {"forward": [{"spi": 10, "si": 1, "to": "sf"}]}})
    assert ok["ok"], ok
    send_udp(ch, 7)
    wait_until(lambda: ch.relays["v1"].drops("nsh_si_exhausted") == 1, "V1 counted SI exhaustion")
    assert ch.relays["v2"].counters()["peers"]["v1"]["rx_packets"] == 1  # only the TTL probe ever left V1
    # malformed datagrams from a peer's address: counted by reason, never forwarded or delivered
    import socket

    from relay_helpers import ns_socket
    from scapy.layers.inet import IP, UDP

    s = ns_socket(ch.ns["a"], socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:  # from A's relay's own address and port (the only source V1 takes from peer a), not from its socket
        for payload in (b"\x08\0\0\0" + b"\0" * 20,                                  # plain VXLAN
                        nsh.gpe_header() + b"\x40" + b"\0" * 23,                         # NSH version 1
                        nsh.gpe_header() + b"\x0f\xc3\x01\x01" + b"\0" * 4):            # MD 1 of 3 words
            s.sendto(bytes(IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=4790, dport=4790) / payload),
                     ("10.1.0.2", 0))
    finally:
        s.close()
    d = lambda r: ch.relays["v1"].drops(r)  # noqa: E731
    wait_until(lambda: d("nsh_not_gpe") == 1 and d("nsh_version") == 1 and d("nsh_length") == 1,
               "V1 counted the three malformed datagrams")
    # bad run-time tables are refused in one line and change nothing
    bad = request(ch.relays["v1"].control, {"cmd": "nsh", "set": {"forward": [{"spi": 10, "si": 3, "to": "zz"}]}})
    assert not bad["ok"] and "to 'zz' is not a peer" in bad["error"] and "\n" not in bad["error"]
    assert request(ch.relays["v1"].control, {"cmd": "nsh"})["tables"]["forward"] == [{"spi": 10, "si": 1, "to": "sf"}]


def test_reclassification_moves_the_next_probes(netlab: NetLab) -> None:
    """A control request changes A's classifier: ICMP to B moves from path 10 (both SFs) to path 20 (the
    firewall only); the next probes follow path 20 and V2's SF sees none of them."""
    ch = Chain(netlab, tables())
    ping(ch.ns["a"], B_IP, count=2)
    v2_sf = ch.nsh("v2")["to_sf"]
    rules = request(ch.relays["a"].control, {"cmd": "nsh"})["tables"]["classifier"]
    moved = [{**r, "spi": 20, "si": 100} if r["spi"] == 10 else r for r in rules]
    assert request(ch.relays["a"].control, {"cmd": "nsh", "set": {"classifier": moved}})["ok"]
    with Capture(ch.points()[2:]) as cap:
        # replies still come back on path 11 (B's classifier did not change), so ping works
        ping(ch.ns["a"], B_IP, count=3)
        cap.wait_quiet(0.3, 5)
        frames = cap.frames()
    fwd = [(h.spi, h.si) for src, _, h, _ in sightings(frames["v2-b"]) if src == "10.3.0.1"]
    assert fwd == [(20, 99)] * 3
    assert ch.nsh("v2")["to_sf"] == v2_sf + 3  # only the 3 replies (path 11) went through V2's SF
    assert ch.nsh("b")["lookups"]["20/99"] == 3
    # NSH forwarding goes through a peer's stages (issue 17's seam 2): a link taken down at run time drops
    down = request(ch.relays["v2"].control, {"cmd": "link", "peer": "b", "state": "down"})
    assert down["ok"], down
    delivered = ch.nsh("b")["delivered"]
    assert ping(ch.ns["a"], B_IP, count=1, deadline=1, check=False).returncode != 0
    assert ch.nsh("b")["delivered"] == delivered
    drops = ch.relays["v2"].counters()["drops"]
    assert any("down" in k and v > 0 for k, v in drops.items()), drops
    assert request(ch.relays["v2"].control, {"cmd": "link", "peer": "b", "state": "up"})["ok"]
    ping(ch.ns["a"], B_IP, count=1)
