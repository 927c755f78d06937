"""Scenario files: the API, probe building, and one-line errors naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tunlab.errors import DescriptionError
from tunlab.model.scenario import Ping, Tcp, Udp, build_probes, chain_nodes, load_scenario, parse_expect
from tunlab.model.flows import Expect

ROOT = Path(__file__).resolve().parents[2]
HEAD = "from tunlab.model.scenario import Ping, Udp, Tcp\n"


def write(tmp_path: Path, body: str, name: str = "sc.py") -> Path:
    p = tmp_path / name
    p.write_text(HEAD + body)
    return p


def test_shipped_scenarios_load_and_build() -> None:
    files = sorted((ROOT / "scenarios").glob("*.py"))
    assert {f.stem for f in files} >= {"three_vnf", "tunconnector_pair", "firewall", "tcp_chain"}
    for f in files:
        sc = load_scenario(f)
        probes = build_probes(sc)
        assert probes and sc.description
        assert any(len(p.probe.packet) == sc.topology.mtu for p in probes), f"{f.name}: no full-MTU packet"


def test_positional_arguments_mean_the_obvious_thing() -> None:
    assert Udp(5000).dport == 5000 and Tcp(80, "PA").flags == "PA" and Ping(100).size == 100


def test_probes_are_unique_sized_and_routed(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, 'topology = "three_vnf"\n'
                             'traffic = [Ping(), Ping(size="mtu", count=3), Udp(53, size=100), '
                             'Tcp(80), Tcp(443, "PA", payload=b"hello")]\n'))
    probes = build_probes(sc, seed=7)
    assert len(probes) == 7
    pkts = [IP(p.probe.packet) for p in probes]
    assert len({p.id for p in pkts}) == 7
    assert [len(p) for p in pkts[:4]] == [84, 1472, 1472, 1472]
    assert [p[ICMP].seq for p in pkts[1:4]] == [1, 2, 3]
    assert len(pkts[4]) == 100 and pkts[4][UDP].dport == 53
    assert pkts[5][TCP].flags == "S" and bytes(pkts[6][TCP].payload) == b"hello"
    assert all(p.nodes == ("sender", "vnf1", "vnf2", "vnf3", "receiver") for p in probes)
    assert [p.probe.expect.reply for p in probes] == [True] * 4 + [False, True, True]
    assert b"tunlab sc 0.0" in bytes(pkts[0][ICMP].payload)
    assert build_probes(sc, seed=7)[0].probe.packet == probes[0].probe.packet


def test_expectations() -> None:
    kw = dict(default="delivered", source="f.py", where="expect")
    assert parse_expect(None, **kw) == Expect()
    assert parse_expect("reply", **kw) == Expect(reply=True)
    assert parse_expect("Dropped  at vnf2", **kw) == Expect(delivered=False, dropped_at="vnf2")
    with pytest.raises(DescriptionError, match=r"f.py, expect: 'lost' is not an expectation.*dropped at NODE"):
        parse_expect("lost", **kw)


def test_reverse_and_missing_chains(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, 'topology = "three_vnf"\nsrc = "receiver"\ndst = "sender"\n'
                             'traffic = [Ping(src="vnf1", dst="vnf3"), Ping()]\n'))
    assert [p.nodes for p in build_probes(sc)] == [("vnf1", "vnf2", "vnf3"),
                                                   ("receiver", "vnf3", "vnf2", "vnf1", "sender")]
    assert chain_nodes(sc.topology, "sender", "sender") is None


@pytest.mark.parametrize("body, field, fix", [
    ('traffic = [Ping()]\n', "topology", "set topology"),
    ('topology = "nonexistent"\ntraffic = [Ping()]\n', "", "known:"),
    ('topology = "three_vnf"\nparams = {"hops": 3}\ntraffic = [Ping()]\n', "params", "it takes"),
    ('topology = "three_vnf"\ntraffic = []\n', "traffic", "set traffic"),
    ('topology = "three_vnf"\ntraffic = ["ping"]\n', "traffic[0]", "use Ping"),
    ('topology = "three_vnf"\ntraffic = [Ping(size=10)]\n', "traffic[0].size", "28-65535"),
    ('topology = "three_vnf"\ntraffic = [Ping(size=2000)]\n', "traffic[0].size", "size='mtu'"),
    ('topology = "three_vnf"\ntraffic = [Udp(70000)]\n', "traffic[0].dport", "1-65535"),
    ('topology = "three_vnf"\ntraffic = [Tcp(80, "SX")]\n', "traffic[0].flags", "FSRPAUEC"),
    ('topology = "three_vnf"\ntraffic = [Udp(53, expect="dropped at vnf9")]\n', "traffic[0].expect", "one of"),
    ('topology = "three_vnf"\ntraffic = [Udp(53, expect="dropped at sender")]\n', "traffic[0].expect",
     "node of that chain"),
    ('topology = "three_vnf"\ntraffic = [Udp(53, ignore=["IP.nonsense"])]\n', "traffic[0].ignore", "IP.tos"),
    ('topology = "three_vnf"\ntraffic = [Ping(dst="nobody")]\n', "traffic[0].dst", "overlay address"),
    ('topology = "three_vnf"\ntraffic = [Ping(dst="192.168.7.7")]\n', "traffic[0].dst", "one path"),
    ('topology = "three_vnf"\ntraffic = [Ping()]\nexpected = "reply"\n', "expected", "did you mean 'expect'"),
    ('topology = "three_vnf"\ntraffic = [Ping()]\ntimeout = -1\n', "timeout", "between 0 and 600"),
    ('topology = "three_vnf"\ntraffic = [Ping()]\nsrc = "nobody"\n', "src", "use one of"),
    ('topology = "three_vnf"\ntraffic = [Ping(]\n', "", "line 3"),
    ('topology = "three_vnf"\ntraffic = [Ping()]\n1 / 0\n', "", "line 4: ZeroDivisionError"),
])
def test_bad_scenarios_name_file_field_and_fix(tmp_path: Path, body: str, field: str, fix: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(DescriptionError) as info:
        load_scenario(path)
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text, text
    assert field in text and fix in text, text


def test_missing_file() -> None:
    with pytest.raises(DescriptionError, match="no such scenario file"):
        load_scenario("/nonexistent/scenario.py")
