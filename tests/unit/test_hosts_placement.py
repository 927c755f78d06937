"""Issue 19 (3): where nodes go (pinned host, placer), each host's share of the plan, the MTU across hosts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunlab.cli import cli
from tunlab.errors import DescriptionError
from tunlab.model.hosts import (cross_links, host_plan, hport_base, lab_topology, parse_inventory, place)
from tunlab.model.plan import build_plan
from tunlab.model.topofile import load_topology
from tunlab.model.topology import TopologyError, Vnf, linear_chain

INV3 = parse_inventory("[hosts]\nh1 underlay=10.77.0.1\nh2 underlay=10.77.0.2\nh3 underlay=10.77.0.3\n", "inv")


def test_placer_keeps_chain_hops_together_and_balances() -> None:
    t = linear_chain(10)
    p = place(t, ["h1", "h2", "h3"])
    assert [p[n] for n in ["sender", *[f"vnf{i}" for i in range(1, 11)], "receiver"]] == \
        ["h1"] * 4 + ["h2"] * 4 + ["h3"] * 4
    assert len(cross_links(t, p)) == 2  # as few crossings as three hosts need
    assert set(place(t, ["only"]).values()) == {"only"}
    p2 = place(linear_chain(3), ["h1", "h2"])
    assert [p2[n] for n in ("sender", "vnf1", "vnf2", "vnf3", "receiver")] == ["h1", "h1", "h1", "h2", "h2"]


def test_a_pinned_node_stays_and_its_neighbours_follow() -> None:
    t = linear_chain(4, vnf=lambda i, name, ov: Vnf(name, ov, host="h2" if i == 1 else None))
    p = place(t, ["h1", "h2"])
    assert p["vnf1"] == "h2" and p["vnf2"] == "h2"  # the chain goes on where the pinned hop is
    assert p["sender"] == "h1"
    assert sorted(p.values()).count("h1") == 3 and sorted(p.values()).count("h2") == 3
    with pytest.raises(DescriptionError, match=r"node 'vnf1' field 'host': there is no host 'h2' in inv.ini"):
        place(t, ["h1"], "inv.ini")
    with pytest.raises(TopologyError, match="field 'host'"):
        Vnf("vnf1", "172.16.1.1", host="not a host")


def test_host_field_in_yaml(tmp_path: Path) -> None:
    text = Path("topologies/three_vnf.yaml").read_text().replace(
        "  - {name: vnf1, overlay: 172.16.1.1}", "  - {name: vnf1, overlay: 172.16.1.1, host: h3}")
    f = tmp_path / "t.yaml"
    f.write_text(text)
    t = load_topology(str(f), {})
    assert t.node("vnf1").host == "h3" and t.node("vnf2").host is None


def test_each_host_gets_its_nodes_and_far_ends_at_the_far_host() -> None:
    t = load_topology("three_vnf", {})
    p = place(t, ["h1", "h2"])
    inv = parse_inventory("[hosts]\nh1 underlay=10.77.0.1\nh2 underlay=10.77.0.2\n")
    full = build_plan(t, "abcd", "/run/tunlab/abcd")
    base = hport_base("abcd")
    h1 = host_plan(t, "abcd", "/run/tunlab/abcd", p, inv, "h1")
    h2 = host_plan(t, "abcd", "/run/tunlab/abcd", p, inv, "h2")
    assert [n.name for n in h1.plan.nodes] == ["sender", "vnf1", "vnf2"]
    assert [n.name for n in h2.plan.nodes] == ["receiver", "vnf3"]
    # links within a host: as on one host
    assert h1.plan.node("vnf1").relay_args == full.node("vnf1").relay_args
    (u1,), (u2,) = h1.uplinks, h2.uplinks
    assert (u1.node, u1.ifname, u1.node_addr, u1.host_addr, u1.hport, u1.peer_underlay, u1.peer_hport) == \
        ("vnf2", "ve-abcd-2a", "10.0.0.9/30", "10.0.0.10/30", base, "10.77.0.2", base + 1)
    assert (u2.node, u2.ifname, u2.hport, u2.peer_underlay, u2.peer_hport) == ("vnf3", "ve-abcd-2b", base + 1, "10.77.0.1", base)
    # the relay of vnf2 sends to vnf3's host at its port there; vnf3's accepts from vnf2's host
    assert "vnf3=10.77.0.2:%d" % (base + 1) in h1.plan.node("vnf2").relay_args
    assert "vnf2=10.77.0.1:%d" % base in h2.plan.node("vnf3").relay_args
    # the link as vnf3 sees it (its captures): from vnf2's host to vnf3's own address
    lk = [x for x in h2.plan.links if x.name == "vnf2-vnf3"][0]
    assert (lk.a.ip, lk.a.port, lk.b.ip, lk.b.port) == ("10.77.0.1", base, "10.0.0.10", 55555)


def test_links_between_hosts_are_keyed_and_fit_the_underlay_mtu() -> None:
    t = linear_chain(3)
    p = place(t, ["h1", "h2"])
    lt = lab_topology(t, p)
    assert lt.keyed and lt.mtu == 1500 - 28 - 29
    assert lab_topology(t, p, keyed=False).mtu == 1472 and not lab_topology(t, p, keyed=False).keyed
    assert lab_topology(t, p, {"h1": 1450, "h2": 1500}).mtu == 1450 - 28 - 29  # the smaller end counts
    assert lab_topology(t, {n.name: "h1" for n in t.nodes}) is t  # one host: nothing changes
    tcp = lab_topology(linear_chain(3, "tcp"), p, {"h1": 1400}, keyed=False)
    assert tcp.mtu == 1400 - 42


def test_two_links_from_one_node_to_one_far_host_are_refused() -> None:
    t = linear_chain(1)
    p = {"sender": "h2", "vnf1": "h1", "receiver": "h2"}
    inv = parse_inventory("[hosts]\nh1 underlay=10.77.0.1\nh2 underlay=10.77.0.2\n")
    with pytest.raises(DescriptionError, match="node 'vnf1' has two links to host h2"):
        host_plan(t, "abcd", "/r", p, inv, "h1")


def test_show_hosts_prints_the_placement(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("[hosts]\nh1 underlay=10.77.0.1\nh2 underlay=10.77.0.2\nh3 underlay=10.77.0.3\n")
    res = CliRunner().invoke(cli, ["show", "linear", "-p", "n_vnfs=10", "--hosts", str(inv)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "TUN MTU 1443 (links between hosts keyed)" in res.output
    assert "sender vnf1 vnf2 vnf3" in res.output and "vnf8 vnf9 vnf10 receiver" in res.output
    assert "vnf3@h1 10.77.0.1" in res.output and "vnf7@h2 10.77.0.2" in res.output


def test_plan_unchanged_without_hosts() -> None:
    t = load_topology("three_vnf", {})
    a = build_plan(t, "abcd", "/r")
    b = build_plan(t, "abcd", "/r", only={n.name for n in t.nodes}, rewrite=lambda lk: dataclasses.replace(lk))
    assert a == b
