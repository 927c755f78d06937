"""NSH interop with a real SFF nobody here wrote (issue 18): Open vSwitch's userspace datapath (Debian's
openvswitch-switch, no kernel module) between two tunlab relays in NSH mode, over VXLAN-GPE both ways.

    A (relay: classifier SPI 10; end of SPI 11) -- OVS (br-phy 10.9.0.2; br-int with two VXLAN-GPE ptap ports)
      -- B (relay: end of SPI 10; classifier SPI 11)

OVS forwards SPI 10 as an SFF would after its SF: ``dec_nsh_ttl, set_field:254->nsh_si``, metadata kept;
and SPI 11 by popping and pushing the header: ``decap(), encap(nsh(md_type=1)), set_field`` of SPI, SI and
context word 4 (a fresh header: TTL 63). ovsdb-server and ovs-vswitchd run privately in the OVS namespace
with their own run directory (as the Mininet backend's OVS switch does); their pids are killed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from relay_helpers import NetLab, netlab, nsexec, ping, wait_until  # noqa: F401

from tunlab.relay import nsh
from tunlab.traffic.capture import Capture, CapturePoint
from tunlab.traffic.decap import nsh_of, parse_ipv4

pytestmark = pytest.mark.netns

OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
MARK = "00" * 15 + "2a"


class PrivateOvs:
    """ovsdb-server + ovs-vswitchd inside namespace ``ns``, every file in ``rundir``."""

    def __init__(self, ns: str, rundir: Path) -> None:
        self.ns, self.d = ns, rundir
        self.env = {**os.environ, "OVS_RUNDIR": str(rundir), "OVS_DBDIR": str(rundir), "OVS_LOGDIR": str(rundir)}

    def run(self, *argv: str) -> str:
        res = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, env=self.env,
                             timeout=30)
        assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr.strip()}"
        return res.stdout

    def start(self) -> None:
        d = self.d
        self.run("ovsdb-tool", "create", f"{d}/conf.db", OVS_SCHEMA)
        self.run("ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
                 f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", "--detach", "--no-chdir")
        self.vsctl("--no-wait", "init")
        self.run("ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/vswitchd.pid", f"--unixctl={d}/vswitchd.ctl",
                 f"--log-file={d}/vswitchd.log", "--detach", "--no-chdir")

    def vsctl(self, *argv: str) -> str:
        return self.run("ovs-vsctl", f"--db=unix:{self.d}/db.sock", "--timeout=10", *argv)

    def ofctl(self, *argv: str) -> str:
        return self.run("ovs-ofctl", "-O", "OpenFlow15", *argv)

    def stop(self) -> None:
        for name in ("vswitchd.pid", "ovsdb.pid"):
            try:
                pid = int((self.d / name).read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def ovs_ns(netlab: NetLab):  # type: ignore[no-untyped-def]
    missing = [t for t in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl") if not shutil.which(t)]
    if missing or not os.path.exists(OVS_SCHEMA):
        pytest.fail(f"Open vSwitch is not installed (missing {missing or OVS_SCHEMA}): sudo bash scripts/setup.sh")
    ns = netlab.ns("o")
    ovs = PrivateOvs(ns, netlab.tmp / "ovs")
    ovs.d.mkdir()
    try:
        ovs.start()
        yield ns, ovs
    finally:
        ovs.stop()


def test_relays_and_open_vswitch_exchange_nsh_both_ways(netlab: NetLab, ovs_ns) -> None:  # type: ignore[no-untyped-def]
    ns_o, ovs = ovs_ns
    a, b = netlab.ns("a"), netlab.ns("b")
    va, oa = netlab.veth(a, ns_o, ["10.9.0.1/24"], [], tag="x")
    vb, ob = netlab.veth(b, ns_o, ["10.9.0.3/24"], [], tag="y")
    for ns, dev in ((a, va), (b, vb), (ns_o, oa), (ns_o, ob)):
        nsexec(ns, "ethtool", "-K", dev, "tx", "off")  # userspace datapaths and checksum offload do not mix
    ovs.vsctl("add-br", "brphy", "--", "set", "bridge", "brphy", "datapath_type=netdev", "fail-mode=standalone",
              "--", "add-port", "brphy", oa, "--", "add-port", "brphy", ob)
    nsexec(ns_o, "ip", "addr", "add", "10.9.0.2/24", "dev", "brphy")  # the tunnel endpoint
    nsexec(ns_o, "ip", "link", "set", "brphy", "up")
    ports = []
    for name, remote, ofport in (("vxa", "10.9.0.1", "1"), ("vxb", "10.9.0.3", "2")):
        ports += ["--", "add-port", "brint", name, "--", "set", "interface", name, "type=vxlan",
                  f"options:remote_ip={remote}", "options:exts=gpe", "options:dst_port=4790",
                  "options:packet_type=ptap", f"ofport_request={ofport}"]
    ovs.vsctl("add-br", "brint", "--", "set", "bridge", "brint", "datapath_type=netdev", "fail-mode=secure", *ports)
    mgmt = f"unix:{ovs.d}/brint.mgmt"
    ovs.ofctl("add-flow", mgmt, "priority=10,in_port=vxa,packet_type=(1,0x894f),nsh_spi=10,nsh_si=255,"
                                "actions=dec_nsh_ttl,set_field:254->nsh_si,output:vxb")
    ovs.ofctl("add-flow", mgmt, "priority=10,in_port=vxb,packet_type=(1,0x894f),nsh_spi=11,nsh_si=255,"
                                "actions=decap(),encap(nsh(md_type=1)),set_field:11->nsh_spi,set_field:254->nsh_si,"
                                "set_field:0x2a->nsh_c4,output:vxa")
    tables = {
        "a": {"classifier": [{"spi": 10, "src": "10.70.0.1/32", "dst": "10.70.0.2/32", "context": MARK}],
              "forward": [{"spi": 10, "si": 255, "to": "ovs"}, {"spi": 11, "si": 254, "to": "end"}]},
        "b": {"classifier": [{"spi": 11, "src": "10.70.0.2/32", "dst": "10.70.0.1/32"}],
              "forward": [{"spi": 10, "si": 254, "to": "end"}, {"spi": 11, "si": 255, "to": "ovs"}]},
    }
    relays = {}
    for node, ns, ip, ov in (("a", a, "10.9.0.1", "10.70.0.1"), ("b", b, "10.9.0.3", "10.70.0.2")):
        f = netlab.tmp / f"{node}.nsh.json"
        f.write_text(json.dumps(tables[node]))
        # OVS sends from a port of its own choosing (a flow hash) and listens on 4790: "ovsin" takes the
        # former, "ovs" is where this relay sends
        relays[node] = netlab.relay(ns, node, "--dev", netlab.ifname("t"), "--addr", f"{ov}/24", "--mtu", "1400",
                                    "--listen", f"{ip}:4790", "--peer", "ovs=10.9.0.2:4790",
                                    "--accept", "ovsin=10.9.0.2", "--route", "default=ovs", "--nsh", str(f))
    points = [CapturePoint("a", f"/run/netns/{a}", va, "udp port 4790"),
              CapturePoint("b", f"/run/netns/{b}", vb, "udp port 4790")]
    ping(a, "10.70.0.2", count=1, deadline=10)  # OVS has resolved its tunnel neighbours (ARP) after this
    before = relays["b"].counters()["nsh"], relays["a"].counters()["nsh"]
    with Capture(points) as cap:
        ping(a, "10.70.0.2", count=3)
        cap.wait_quiet(0.3, 5)
        frames = cap.frames()
    seen = {}
    for point, frs in frames.items():
        for fr in frs:
            ip = parse_ipv4(fr.data)
            got = nsh_of(ip.payload[8:]) if ip is not None and ip.proto == 17 else None
            assert got is not None, f"{point}: not VXLAN-GPE + NSH: {fr.data[:60].hex()}"
            h, inner = got
            seen.setdefault((point, ip.src), set()).add((h.spi, h.si, h.ttl, h.context.hex(), h.next_proto))
            assert inner[0] >> 4 == 4
            _scapy_agrees(fr.data, h)
    assert seen == {
        ("a", "10.9.0.1"): {(10, 255, 63, MARK, 1)},                 # tunlab's classifier
        ("b", "10.9.0.2"): {(10, 254, 62, MARK, 1)},                 # OVS: dec_nsh_ttl, SI set, metadata kept
        ("b", "10.9.0.3"): {(11, 255, 63, "00" * 16, 1)},            # B's classifier, no metadata
        ("a", "10.9.0.2"): {(11, 254, 63, MARK, 1)},                 # OVS: pop + push, fresh TTL, c4 = 0x2a
    }, seen
    # OVS's flow statistics lag (its revalidators): at least the warm-up's and the 3 probes' way, each flow
    wait_until(lambda: min(_flow_packets(ovs, mgmt)) >= 4, "OVS's two NSH flows counted the packets")
    assert relays["b"].counters()["nsh"]["lookups"]["10/254"] - before[0]["lookups"]["10/254"] == 3
    assert relays["a"].counters()["nsh"]["delivered"] - before[1]["delivered"] == 3


def _flow_packets(ovs: PrivateOvs, mgmt: str) -> list[int]:
    """n_packets of the SPI 10 flow and of the SPI 11 flow."""
    import re

    lines = ovs.ofctl("dump-flows", mgmt).splitlines()
    return [int(re.search(r"n_packets=(\d+)", next(ln for ln in lines if f"nsh_spi={spi}" in ln)).group(1))
            for spi in ("0xa", "0xb")]


def _scapy_agrees(frame: bytes, h: nsh.Nsh) -> None:
    """scapy's VXLAN (GPE) and NSH layers read the same header from OVS's and tunlab's datagrams."""
    from scapy.contrib.nsh import NSH
    from scapy.layers.inet import IP
    from scapy.layers.vxlan import VXLAN

    p = IP(frame)
    assert p[VXLAN].flags & 0x04 and p[VXLAN].NextProtocol == 4
    assert (p[NSH].spi, p[NSH].si, p[NSH].ttl, p[NSH].mdtype) == (h.spi, h.si, h.ttl, 1)
