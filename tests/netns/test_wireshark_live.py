"""Link pcaps of real labs, one per datapath (gso chunks, plain, simple, TCP framing), decoded by tshark with
the shipped dissector and by `tunlab pcap inner`: the probes' inner packets are all there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab import Lab
from tunlab.model.scenario import load_scenario
from tunlab.run.runner import check_scenario

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (Debian package "
                                 "tshark; scripts/setup.sh installs it)")]

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tunlab" / "wireshark" / "tunlab.lua"
SENDER, RECEIVER = "172.16.0.1", "172.16.0.2"


@pytest.mark.parametrize(("transport", "datapath"), [("udp", "gso"), ("udp", "plain"), ("udp", "simple"),
                                                     ("tcp", "auto")])
def test_tshark_decodes_the_inner_packets_of_a_link_pcap(tmp_path: Path, transport: str, datapath: str) -> None:
    scenario = tmp_path / f"dp_{transport}_{datapath}.py"
    scenario.write_text("from tunlab import Ping, Udp\ntopology = 'linear'\n"
                        f"params = {{'n_vnfs': 1, 'transport': {transport!r}, 'datapath': {datapath!r}}}\n"
                        "traffic = [Ping(count=3), Udp(5000, size=1200, count=2)]\n")
    sc = load_scenario(scenario)
    with Lab(sc.topology) as lab:
        result = check_scenario(sc, lab, seed=7, evidence=lambda: tmp_path / "evidence", keep=True)
    assert result.passed, result.error or [c.message for c in result.failed]
    pcap = tmp_path / "evidence" / "pcaps" / "link_sender-vnf1.pcap"
    res = subprocess.run(["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-T", "fields", "-e", "ip.src",
                          "-e", "icmp.type", "-e", "udp.dstport", "-e", "tunlab.count", "-e", "tunlab.hello.kind"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    requests = sum(r[1].split(",").count("8") for r in rows if SENDER in r[0].split(","))
    replies = sum(r[1].split(",").count("0") for r in rows if RECEIVER in r[0].split(","))
    # (the receiver answers each UDP probe with an ICMP port unreachable quoting it: not counted)
    udp_5000 = sum(r[2].split(",").count("5000") for r in rows if "3" not in r[1].split(","))
    assert (requests, replies, udp_5000) == (3, 3, 2), res.stdout
    if datapath == "gso":
        assert any(r[3] for r in rows), "no chunk decoded on the gso datapath"
    inner = tmp_path / "inner.pcap"
    out = subprocess.run([sys.executable, "-m", "tunlab", "pcap", "inner", str(pcap), "-o", str(inner)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.utils import rdpcap

    got = rdpcap(str(inner))
    assert all(p[IP].src in (SENDER, RECEIVER) for p in got)
    assert sum(1 for p in got if p.haslayer(ICMP) and p[ICMP].type in (0, 8)) == 6
    assert sum(1 for p in got if p.haslayer(UDP) and not p.haslayer(ICMP)) == 2


def test_tshark_says_sealed_on_a_keyed_link(tmp_path: Path) -> None:
    import dataclasses

    scenario = tmp_path / "keyed.py"
    scenario.write_text("from tunlab import Ping\ntopology = 'linear'\nparams = {'n_vnfs': 1}\n"
                        "traffic = [Ping(count=3)]\n")
    sc = load_scenario(scenario)
    sc = sc.with_topology(dataclasses.replace(sc.topology, keyed=True))
    with Lab(sc.topology) as lab:
        result = check_scenario(sc, lab, seed=7, evidence=lambda: tmp_path / "evidence", keep=True)
    assert result.passed, result.error or [c.message for c in result.failed]
    pcap = tmp_path / "evidence" / "pcaps" / "link_sender-vnf1.pcap"
    res = subprocess.run(["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-T", "fields", "-e", "tunlab.sealed",
                          "-e", "tunlab.sealed.counter", "-e", "icmp.type", "-e", "_ws.col.Info"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    data = [r for r in rows if r[0] == "data"]
    assert len(data) >= 6, res.stdout  # 3 echo requests and 3 replies, each sealed
    assert all(r[1].isdigit() for r in data) and all(not r[2] for r in rows), res.stdout  # nothing inner in clear
    assert all("keyed link" in r[3] for r in data), res.stdout
