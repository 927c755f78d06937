"""The relay datapath in a lab description: which --datapath each relay gets, which veths keep tx
checksum offload (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunlab.lab.backends.nsutil import gso_links
from tunlab.model import TopologyError, load_topology
from tunlab.model.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]


def datapath_arg(args: tuple[str, ...]) -> str | None:
    return args[args.index("--datapath") + 1] if "--datapath" in args else None


@pytest.mark.parametrize("datapath", ["auto", "plain", "gso", "simple"])
def test_udp_relays_get_the_topology_datapath(datapath: str) -> None:
    plan = build_plan(load_topology("three_vnf", {"datapath": datapath}), "t1dp", "/run/tunlab/t1dp")
    assert {datapath_arg(n.relay_args) for n in plan.nodes} == {datapath}
    assert {lk.datapath for lk in plan.links} == {datapath}
    fast = datapath != "simple"
    assert gso_links(plan) == (frozenset(lk.name for lk in plan.links) if fast else frozenset())


def test_default_is_auto_and_tcp_hops_stay_simple() -> None:
    plan = build_plan(load_topology("three_vnf"), "t1dp", "/run/tunlab/t1dp")
    assert {datapath_arg(n.relay_args) for n in plan.nodes} == {"auto"}
    tcp = build_plan(load_topology("three_vnf", {"transport": "tcp", "datapath": "gso"}), "t1dp", "/x")
    assert {datapath_arg(n.relay_args) for n in tcp.nodes} == {None}  # the relay's auto: simple over TCP
    assert {lk.datapath for lk in tcp.links} == {"simple"} and gso_links(tcp) == frozenset()
    mixed = build_plan(load_topology(str(ROOT / "scenarios" / "tunconnector_pair.py")), "t1dp", "/x")
    assert gso_links(mixed) == frozenset({"client-server"})


def test_unknown_datapath_names_the_field() -> None:
    with pytest.raises(TopologyError, match="field 'datapath': 'fast' is not a relay datapath"):
        load_topology("linear", {"datapath": "fast"})
