"""Issue 12 on real labs: replies to UDP and repeated TCP probes, leaks seen by every capture point (root)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunlab.model.scenario import load_scenario
from tunlab.run.runner import run_scenario
from tunlab.verdict.checks import ScenarioResult
from tunlab.verdict.report import render_text

pytestmark = pytest.mark.netns


def report(result: ScenarioResult) -> str:
    return render_text(result, 160)


def scenario_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sc.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_five_vnf_chain_udp_replies_and_repeated_tcp(transport: str, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, f"""
        from tunlab import Ping, Tcp, Udp, linear_chain

        topology = linear_chain(5, "{transport}", name="five")
        traffic = [
            Udp(5001, expect="reply"),                      # ICMP port unreachable comes back
            Udp(5002, size=600, expect="reply", count=2),   # quoted past 128 bytes, twice
            Tcp(80, count=3),                               # three RST-ACKs, IP id 0 each
            Tcp(81, flags="PA", payload=b"data", count=2),  # RSTs with seq = the ack number
            Ping(count=3),
            Ping(payload=b"x" * 100),
        ]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert result.passed, report(result)
    assert [f.probe.name for f in result.flows][-1] == "ping 128"
    for flow in result.flows:
        assert flow.reply_hops and all(r.status == "seen" for r in flow.reply_hops), report(result)


def test_readme_blackhole_flow_is_checked_at_vnf3(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, """
        from tunlab import Ping, Udp

        topology = "three_vnf"
        traffic = [Ping(), Udp(5000, expect="dropped at vnf3", dst="172.16.9.1")]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert result.passed, report(result)
    drop = next(c for c in result.flows[1].checks if c.name == "dropped at vnf3")
    assert drop.passed and "vnf3 TUN in" in drop.message


FLOOD_HOOK = '''
import socket
import struct

_sock = None


def _csum(data):
    s = int.from_bytes(data, "big") % 0xFFFF
    return ~s & 0xFFFF


def flood(pkt):
    """Pass every packet on, and copy those for branch a onto branch b as well (forged from this relay's
    own address and port on that link, so fw_b's relay takes it)."""
    global _sock
    if pkt[16:19] == bytes([172, 16, 1]):
        if _sock is None:
            _sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        udp = struct.pack("!HHHH", 55555, 55555, 8 + len(pkt), 0) + pkt
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                          socket.inet_aton("10.0.2.1"), socket.inet_aton("10.0.2.2"))
        hdr = hdr[:10] + _csum(hdr).to_bytes(2, "big") + hdr[12:]
        _sock.sendto(hdr + udp, ("10.0.2.2", 0))
    return pkt
'''


def test_flooding_classifier_on_the_fork_is_caught_by_name(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(FLOOD_HOOK)
    path = scenario_file(tmp_path, """
        from dataclasses import replace

        from tunlab import Ping, Udp, Vnf, load_topology

        fork = load_topology("fork", {"datapath": "simple"})
        topology = replace(fork, source=None, vnfs=tuple(Vnf("classifier", v.overlay, kind="hook", hook="flood.py:flood")
                                            if v.name == "classifier" else v for v in fork.vnfs))
        traffic = [Ping(dst="rx_a"), Udp(5000, dst="rx_a")]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert not result.passed, report(result)
    for flow in result.flows:
        by = {c.name: c for c in flow.checks}
        assert by["every hop"].passed and by["delivered"].passed, report(result)  # its own path is fine
        assert not by["nowhere else"].passed, report(result)
        assert "link classifier-fw_b classifier>fw_b" in by["nowhere else"].message, report(result)
        assert "fw_b TUN in" in by["nowhere else"].message, report(result)


@pytest.mark.parametrize("transport,datapath,mtu", [("udp", "plain", 4000), ("udp", "simple", 4000),
                                                    ("udp", "gso", 9000), ("tcp", "simple", 9000),
                                                    ("udp", "plain", 1472)])
def test_probes_at_the_overlay_mtu_cross_whole(transport: str, datapath: str, mtu: int, tmp_path: Path) -> None:
    """Above 1472 on UDP hops the veths grow with the TUNs: nothing is lost, nothing fragmented outside."""
    path = scenario_file(tmp_path, f"""
        from tunlab import Ping, Tcp, Udp, linear_chain

        topology = linear_chain(2, "{transport}", name="bigmtu", mtu={mtu}, datapath="{datapath}")
        traffic = [Ping(size="mtu"), Udp(5000, size="mtu", expect="reply"), Tcp(80, flags="PA", size="mtu"),
                   Ping(size={mtu} - 1)]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert result.passed, report(result)
    assert all(c.passed and "none bare" in c.message for c in result.links), report(result)


def test_nat_scenario_passes_with_its_declared_rewrite_and_fails_without(tmp_path: Path) -> None:
    from dataclasses import replace

    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "nat.py")
    result = run_scenario(sc, results_root=tmp_path / "ok")
    assert result.passed, report(result)
    assert all(f.reply_hops and all(r.status == "seen" for r in f.reply_hops) for f in result.flows), report(result)
    undeclared = run_scenario(replace(sc, rewrites=()), results_root=tmp_path / "bad")
    assert not undeclared.passed and undeclared.error is None, report(undeclared)
    for flow in undeclared.flows:
        hops = next(c for c in flow.checks if c.name == "every hop")
        assert not hops.passed and hops.hop == "vnf2 TUN out", report(undeclared)
        assert "altered" in hops.message and "IP.src" in hops.message, report(undeclared)
        assert hops.expected and hops.nearest  # EXPECTED / RECEIVED in the report


NO_DNS = "table inet f {\n chain c {\n type filter hook forward priority 0;\n udp dport 53 drop\n }\n}\n"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ipv6_overlay_chain(transport: str, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, f"""
        from tunlab import Ping, Tcp, Udp, Vnf, linear_chain

        NO_DNS = {NO_DNS!r}

        def vnf(i, name, overlay):
            return Vnf(name, overlay, nft=NO_DNS) if i == 3 else Vnf(name, overlay)

        topology = linear_chain(5, "{transport}", name="v6chain", overlay_net="fd00:16::/64", vnf=vnf)
        traffic = [Ping(count=2), Ping(size="mtu"), Udp(5000, expect="reply"), Udp(5001, size=900, expect="reply"),
                   Tcp(80, count=2), Tcp(81, flags="PA", payload=b"data", count=2),
                   Udp(53, expect="dropped at vnf3")]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert result.passed, report(result)
    assert all(f.probe.packet[0] >> 4 == 6 for f in result.flows)
    assert result.flows[0].hops[-1].received and result.flows[0].hops[-1].received[7] == 64 - 5  # hop limit


def test_dual_stack_scenario_ships_and_passes(tmp_path: Path) -> None:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "dual_stack.py")
    result = run_scenario(sc, results_root=tmp_path)
    assert result.passed, report(result)
    versions = {f.probe.packet[0] >> 4 for f in result.flows}
    assert versions == {4, 6}


@pytest.mark.parametrize("transport,datapath", [("udp", "auto"), ("udp", "plain"), ("tcp", "simple")])
def test_relays_over_an_ipv6_underlay(transport: str, datapath: str, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, f"""
        from tunlab import Ping, Tcp, Udp, linear_chain

        topology = linear_chain(3, "{transport}", name="u6", overlay_net6="fd00:16::/64", underlay_net="fd01::/64",
                                datapath="{datapath}")
        traffic = [Ping(), Ping(size="mtu"), Ping(family=6, size="mtu"), Udp(5000, family=6, expect="reply"),
                   Tcp(80, count=2), Tcp(81, family=6)]
    """)
    result = run_scenario(load_scenario(path), results_root=tmp_path / "res")
    assert result.passed, report(result)
    outer = [r.outer for f in result.flows for r in f.hops if r.step.direction == "link"]
    assert outer and all("[fd01::" in o for o in outer), outer
