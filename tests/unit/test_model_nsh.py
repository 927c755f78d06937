"""NSH service paths in the model (issue 18): validation, the relays' tables, the expected header per hop."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tunlab import ServicePath, TopologyError, linear_chain
from tunlab.model import nsh
from tunlab.model.plan import build_plan
from tunlab.relay.sff import NshTables

P = ("sender", "vnf1", "vnf2", "receiver")


def topo(*paths: ServicePath, **kw):  # type: ignore[no-untyped-def]
    return replace(linear_chain(2, "udp", **kw), service_paths=paths)


def _ping(src: str = "172.16.0.1", dst: str = "172.16.0.2") -> bytes:
    from scapy.layers.inet import ICMP, IP

    return bytes(IP(src=src, dst=dst) / ICMP())


def test_tables_forward_and_reverse_with_shared_sf() -> None:
    # rules are tried in service_paths order: the narrower path first
    t = topo(ServicePath(20, P, si=100, skip=("vnf2",), proto="udp"), ServicePath(10, P, context="00" * 15 + "0a"))
    tables = nsh.relay_tables(t)
    assert tables["vnf1"]["forward"] == [
        {"spi": 20, "si": 100, "to": "sf"}, {"spi": 20, "si": 99, "to": "vnf2"},
        {"spi": 21, "si": 100, "to": "sf"}, {"spi": 21, "si": 99, "to": "sender"},
        {"spi": 10, "si": 255, "to": "sf"}, {"spi": 10, "si": 254, "to": "vnf2"},
        {"spi": 11, "si": 254, "to": "sf"}, {"spi": 11, "si": 253, "to": "sender"}]
    assert tables["vnf2"]["forward"][:2] == [{"spi": 20, "si": 99, "to": "receiver"},
                                            {"spi": 21, "si": 100, "to": "vnf1"}]
    assert tables["receiver"]["classifier"][1] == {"spi": 11, "si": 255, "src": "172.16.0.2/32",
                                                   "dst": "172.16.0.1/32", "context": "00" * 15 + "0a"}
    for node, data in tables.items():  # what the relay itself accepts
        NshTables(data, node, {"sender", "vnf1", "vnf2", "receiver"} - {node})
    hops, end = nsh.walk(tables, "sender", _ping())
    assert [(h.src, h.dst, h.spi, h.si, h.ttl) for h in hops] == [
        ("sender", "vnf1", 10, 255, 63), ("vnf1", "vnf2", 10, 254, 62), ("vnf2", "receiver", 10, 253, 61)]
    assert end == "delivered at receiver" and hops[-1].md == {"context": "00" * 15 + "0a"}
    back, end = nsh.walk(tables, "receiver", nsh.swapped(_ping()))
    assert [(h.spi, h.si) for h in back] == [(11, 255), (11, 254), (11, 253)] and end == "delivered at sender"
    sfs: list[str] = []
    from scapy.layers.inet import IP, UDP

    udp = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=1, dport=2))
    hops, _ = nsh.walk(tables, "sender", udp, aware=frozenset({"vnf1"}), sfs=sfs)
    assert [(h.spi, h.si, h.md) for h in hops] == [(20, 100, {"context": "00" * 16}), (20, 99, None), (20, 99, None)]
    assert sfs == ["vnf1"]
    assert nsh.walk(tables, "sender", _ping(dst="172.16.0.9"))[1] == "unclassified"


def test_plan_writes_nsh_files_and_room_for_the_header(tmp_path: Path) -> None:
    t = topo(ServicePath(10, P))
    plan = build_plan(t, "abcd", tmp_path)
    n = plan.node("vnf1")
    assert "--nsh" in n.relay_args and n.relay_args[n.relay_args.index("--nsh") + 1] == n.nsh_file
    assert json.loads(n.nsh_json)["forward"][0] == {"spi": 10, "si": 255, "to": "sf"}
    assert all(lk.mtu >= t.mtu + 64 + 28 for lk in plan.links)
    assert build_plan(linear_chain(2), "abcd", tmp_path).node("vnf1").nsh_file is None


@pytest.mark.parametrize("paths,kw,msg", [
    ((ServicePath(10, P), ServicePath(11, P)), {}, "SPI 11 is also used"),
    ((ServicePath(10, ("sender", "vnf2", "receiver")),), {}, "no link joins 'sender' and 'vnf2'"),
    ((ServicePath(10, ("vnf1", "vnf2", "receiver")),), {}, "'vnf1' is a VNF"),
    ((ServicePath(10, P, si=2),), {}, "SI 2 runs out"),
    ((ServicePath(10, P, skip=("sender",)),), {}, "'sender' is not a VNF of this path"),
    ((ServicePath(10, P, dport="x"),), {}, "not a port"),
    ((ServicePath(10, P, ttl=3),), {}, "TTL 3 expires"),
    ((ServicePath(10, P),), {"transport": "tcp"}, "unkeyed UDP links"),
    ((ServicePath(10, P),), {"impair": "delay=5ms"}, "link impairments are not checked together with NSH"),
])
def test_bad_service_paths_one_line(paths, kw, msg) -> None:  # type: ignore[no-untyped-def]
    transport = kw.pop("transport", "udp")
    base = linear_chain(2, transport)
    if "impair" in kw:
        base = replace(base, links=(replace(base.links[0], impair=kw["impair"]), *base.links[1:]))
    with pytest.raises(TopologyError) as e:
        replace(base, service_paths=paths)
    assert msg in str(e.value) + " " + (e.value.hint or "") and "\n" not in str(e.value)


def test_yaml_service_paths(tmp_path: Path) -> None:
    from tunlab.model.topofile import load_topology

    src = Path(__file__).resolve().parents[2] / "tunlab" / "topologies" / "linear.yaml"
    text = src.read_text() + ("\nservice_paths:\n  - {spi: 7, nodes: [sender, vnf1, vnf2, vnf3, receiver], proto: udp,"
                              " dport: '53', tlvs: ['0xfff0:1:cafe']}\n")
    f = tmp_path / "nsh.yaml"
    f.write_text(text)
    t = load_topology(str(f))
    sp = t.service_paths[0]
    assert sp.spi == 7 and sp.metadata() == {"md_type": 2, "tlvs": [{"class": 0xFFF0, "type": 1, "value": "cafe"}]}
