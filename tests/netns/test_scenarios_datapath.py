"""The scenario checks on each relay datapath: the three-VNF scenario with the relays forced to gso and to
plain (every hop checked, the counters say which datapath ran), and a bulk TCP transfer through an auto
(gso) chain whose underlay captures decode into every TCP segment exactly once on every link (root)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from dataclasses import replace

import pytest

from tunlab.lab.lab import Lab
from tunlab.model import load_topology
from tunlab.model.scenario import Tcp, load_scenario
from tunlab.traffic.capture import Capture, CapturePoint
from tunlab.verdict.checks import ScenarioResult
from tunlab.traffic.decap import RelayEnd, decode_link
from tunlab.verdict.report import render_text
from tunlab.run.runner import run_scenario

pytestmark = pytest.mark.netns

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def report(result: ScenarioResult) -> str:
    return render_text(result, 160)


@pytest.mark.parametrize("datapath", ["gso", "plain"])
def test_three_vnf_scenario_on_a_forced_datapath(datapath: str, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "three_vnf.py")
    # plus a port that listens: its SYN-ACK is made by the receiver's kernel, which leaves the TCP checksum
    # to the TUN's offload on gso (the captures complete it, as the sender's kernel gets it)
    sc = replace(sc.with_topology(load_topology("three_vnf", {"datapath": datapath})),
                 traffic=(*sc.traffic, Tcp(6000)))
    seen: dict[str, Any] = {}
    listeners: list[Any] = []

    def before_send(lab: Lab) -> None:
        seen.update(lab.relay_counters())
        rx = lab.node("receiver")
        listeners.append(rx.popen(["socat", f"TCP-LISTEN:6000,bind={rx.overlay_ip},reuseaddr", "OPEN:/dev/null"]))
        wait_listening(rx, f"{rx.overlay_ip}:6000")

    try:
        result = run_scenario(sc, results_root=tmp_path, before_send=before_send)
    finally:
        for p in listeners:
            p.kill()
            p.wait()
    assert result.passed, report(result)
    synack = [f for f in result.flows if "6000" in f.probe.name]
    assert synack and all(r.status == "seen" for r in synack[0].reply_hops), report(result)
    for flow in result.flows:
        rows = flow.hops + flow.reply_hops
        assert all(r.status == "seen" for r in rows if not r.expected_missing), report(result)
        links = [r for r in rows if r.step.direction == "link" and r.status == "seen"]
        assert len(links) >= 4
        # the outer column says which encapsulation each hop used
        assert all(r.outer.startswith("UDP gso " if datapath == "gso" else "UDP 10.") for r in links), report(result)
    assert set(seen) == {"sender", "vnf1", "vnf2", "vnf3", "receiver"}
    for node, c in seen.items():
        info = c["datapath"]
        assert info["requested"] == datapath and info["offload"] == (datapath == "gso"), (node, info)
        assert {p["datapath"] for p in c["peers"].values()} == {datapath}
        assert info["hello_tx"] == 0  # a forced datapath does not negotiate


def test_bulk_tcp_through_an_auto_chain_is_seen_once_per_segment_on_every_link(tmp_path: Path) -> None:
    payload = os.urandom(600_000)
    src = tmp_path / "in.bin"
    src.write_bytes(payload)
    with Lab(load_topology("three_vnf")) as lab:
        sender, receiver = lab.node("sender"), lab.node("receiver")
        # auto: every hop negotiates gso (the lab's relays are all tunlab relays)
        lab_deadline_wait(lab)
        links = lab.underlay_links
        # the lab tuned for it: veths keep tx checksum offload (UDP GSO sends cross whole), the TUN takes
        # GSO packets that fit one UDP GSO send and queues a burst
        vnf1 = lab.node("vnf1")
        assert "tx-checksumming: on" in vnf1.cmd_raises(["ethtool", "-k", links[0].b.ifname])
        tun = vnf1.cmd_raises(["ip", "-d", "link", "show", "dev", vnf1.overlay_dev])
        assert "gso_max_size 64900" in tun and "qlen 64" in tun, tun  # a burst, not seconds (issue 13)
        points = [CapturePoint(lk.name, lab.node(lk.b.node).netns_file, lk.b.ifname, "udp") for lk in links]
        with Capture(points) as cap:
            rx = receiver.popen(["socat", "-u", f"TCP-LISTEN:6100,bind={receiver.overlay_ip},reuseaddr",
                                 f"OPEN:{tmp_path / 'out.bin'},creat,trunc"])
            wait_listening(receiver, f"{receiver.overlay_ip}:6100")
            sender.cmd_raises(["socat", "-u", f"OPEN:{src}", f"TCP:{receiver.overlay_ip}:6100"], timeout=60)
            assert rx.wait(30) == 0
            cap.wait_quiet(0.3, 10)
        counters = lab.relay_counters()
        frames = cap.frames()
        nstat = sender.cmd_raises(["nstat", "-asz", "TcpRetransSegs"]).split()
        retrans = int(nstat[nstat.index("TcpRetransSegs") + 1])
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert all(p["datapath"] == "gso" for c in counters.values() for p in c["peers"].values()), counters
    assert not any(drops for drops in cap.stats.values() if drops[1]), cap.stats
    for lk in links:
        a, b = RelayEnd(lk.a.node, lk.a.ip, lk.a.port), RelayEnd(lk.b.node, lk.b.ip, lk.b.port)
        sightings = decode_link(frames[lk.name], a, b, "udp", ["172.16.0.0/16"])
        assert not [s for s in sightings if s.kind not in ("encap", "hello")], lk.name
        data, again = segments_to(sightings, lk.a.node, 6100)
        stream = bytearray(len(payload))
        for off, d in data.items():
            stream[off:off + len(d)] = d
        assert sum(len(d) for d in data.values()) >= len(payload) and stream == payload, lk.name
        assert again <= retrans, f"{again} segments seen twice on {lk.name}, {retrans} retransmitted"
        assert max(len(d) for d in data.values()) <= 1472 - 40  # cut back into MTU-size segments
        assert any("chunks)" in s.outer for s in sightings), f"no multi-chunk stream on {lk.name}"


def segments_to(sightings: list[Any], sender_node: str, port: int) -> tuple[dict[int, bytes], int]:
    """Sequence offset -> payload of the TCP segments toward ``port``, and how many were seen again (only
    a retransmission may be: the same bytes at the same offset)."""
    from scapy.layers.inet import IP, TCP

    out: dict[int, bytes] = {}
    again = 0
    isn: int | None = None
    for s in sightings:
        if s.kind != "encap" or s.src_node != sender_node:
            continue
        p = IP(s.inner)
        if TCP not in p or p[TCP].dport != port:
            continue
        if p[TCP].flags.S:
            isn = p[TCP].seq
            continue
        data = bytes(p[TCP].payload)
        if not data:
            continue
        assert isn is not None
        off = (p[TCP].seq - isn - 1) % 2**32
        if off in out:
            n = min(len(data), len(out[off]))
            assert out[off][:n] == data[:n], f"two different segments at offset {off}"
            again += 1
        if len(data) >= len(out.get(off, b"")):
            out[off] = data
    return out, again


def lab_deadline_wait(lab: Lab, timeout: float = 10.0) -> None:
    """Until every relay has settled each peer's datapath (hello answered or given up)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        counters = lab.relay_counters()
        if all(p.get("negotiation") != "probing" for c in counters.values()
               for p in c["datapath"]["peers"].values()):
            return
        assert time.monotonic() < deadline, f"negotiation did not settle: {counters}"
        time.sleep(0.02)  # polling with a deadline


def wait_listening(node: Any, addr: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while addr not in node.cmd_raises(["ss", "-ltnH"]):
        assert time.monotonic() < deadline, f"nothing listens on {addr}"
        time.sleep(0.02)  # polling with a deadline
