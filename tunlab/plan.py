"""From a validated description and a run id to concrete names, addresses and relay command lines.

Pure (no root): what a backend creates and what each relay is started with is decided here, so it can be
printed (`tunlab show`) and unit-tested.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tunlab import names
from tunlab.model import Endpoint, Route, Topology, Transport, Vnf, hook_spec


# Paths with this many VNFs or more get ip_default_ttl 255 in every node: replies start at 64 otherwise
# and expire on the way back.
LONG_CHAIN = 48


class LinkEnd(NamedTuple):
    node: str
    ifname: str
    ip: str
    port: int


@dataclass(frozen=True)
class UnderlayLink:
    name: str
    a: LinkEnd
    b: LinkEnd
    transport: Transport
    prefixlen: int
    index: int
    datapath: str = "simple"  # the relays' --datapath on this hop (TCP hops: simple)


@dataclass(frozen=True)
class Iface:
    ifname: str
    addr: str  # with prefix length
    link: UnderlayLink


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: str  # "endpoint" | "vnf"
    netns: str
    overlay_dev: str
    overlay_ip: str
    overlay_prefixlen: int
    mtu: int
    forward: bool
    default_ttl: int | None  # net.ipv4.ip_default_ttl when a path is too long for Linux's 64
    nft: str | None
    routes: tuple[Route, ...]
    ifaces: tuple[Iface, ...]
    relay_args: tuple[str, ...]  # after `tunlab relay`, without --ready-fd
    control: str
    stats_file: str
    log_file: str


@dataclass(frozen=True)
class LabPlan:
    run_id: str
    run_dir: str
    topology: Topology
    nodes: tuple[NodePlan, ...]
    links: tuple[UnderlayLink, ...]

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def collapse_routes(routes: dict[str, str]) -> list[tuple[str, str]]:
    """prefix -> peer, merged per peer into the fewest prefixes covering exactly the same addresses."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for prefix, peer in routes.items():
        net = ipaddress.IPv4Network(prefix)
        spans.setdefault(peer, []).append((int(net.network_address), int(net.broadcast_address)))
    out: list[tuple[int, int, str]] = []
    for peer, ranges in spans.items():
        ranges.sort()
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            out += [(start, plen, peer) for start, plen in _cidrs(lo, hi)]
    out.sort()
    return [(f"{ipaddress.IPv4Address(start)}/{plen}", peer) for start, plen, peer in out]


def _cidrs(lo: int, hi: int) -> list[tuple[int, int]]:
    """The aligned blocks that cover [lo, hi] exactly, as (start, prefix length)."""
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 32
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, 33 - size.bit_length()))
        lo += size
    return blocks


def build_plan(topo: Topology, run_id: str, run_dir: str | Path) -> LabPlan:
    run_dir = str(run_dir)
    links = []
    for i, lk in enumerate(topo.links):
        a = ipaddress.IPv4Interface(lk.a_addr)
        b = ipaddress.IPv4Interface(lk.b_addr)
        links.append(UnderlayLink(
            name=lk.name,
            a=LinkEnd(lk.a, names.veth_name(run_id, i, "a"), str(a.ip), lk.a_port),
            b=LinkEnd(lk.b, names.veth_name(run_id, i, "b"), str(b.ip), lk.b_port),
            transport=lk.transport, prefixlen=a.network.prefixlen, index=i,
            datapath=topo.datapath if lk.transport == "udp" else "simple"))
    plen = topo.overlay_prefixlen()
    longest = max(len(p.nodes) for p in topo.paths) - 2  # VNFs: each kernel VNF takes one from the TTL
    ttl = 255 if longest >= LONG_CHAIN else None
    tun = names.tun_name(run_id)
    nodes = []
    for n in topo.nodes:
        mine = [lk for lk in links if n.name in (lk.a.node, lk.b.node)]
        ifaces = tuple(
            Iface(end.ifname, f"{end.ip}/{lk.prefixlen}", lk)
            for lk in mine for end in (lk.a, lk.b) if end.node == n.name)
        base = f"{run_dir}/{n.name}"
        args = relay_args(topo, n, mine, tun, control=f"{base}.ctl", stats_file=f"{base}.stats.json",
                          log_file=f"{base}.log")
        is_vnf = isinstance(n, Vnf)
        nodes.append(NodePlan(
            name=n.name, role="vnf" if is_vnf else "endpoint", netns=names.netns_name(run_id, n.name),
            overlay_dev=tun, overlay_ip=n.overlay, overlay_prefixlen=plen, mtu=topo.mtu,
            forward=is_vnf and n.kind == "kernel", default_ttl=ttl,
            nft=n.nft if is_vnf else None, routes=n.routes if is_vnf else (),
            ifaces=ifaces, relay_args=args,
            control=f"{base}.ctl", stats_file=f"{base}.stats.json", log_file=f"{base}.log"))
    return LabPlan(run_id, run_dir, topo, tuple(nodes), tuple(links))


def relay_args(topo: Topology, node: Endpoint | Vnf, links: list[UnderlayLink], dev: str, *,
               control: str, stats_file: str, log_file: str) -> tuple[str, ...]:
    """The relay command line of one node (docs/ARCHITECTURE.md, relay contract), --ready-fd excepted."""
    transport = links[0].transport if links else "udp"
    args = ["--dev", dev, "--attach", "--transport", transport]
    if transport == "udp" or topo.datapath == "simple":  # TCP hops: the simple datapath (auto = simple)
        args += ["--datapath", topo.datapath]
    listens: list[LinkEnd] = []
    for lk in links:
        me, other = (lk.a, lk.b) if lk.a.node == node.name else (lk.b, lk.a)
        if transport == "udp":
            listens.append(me)
            args += ["--peer", f"{other.node}={other.ip}:{other.port}"]
        elif me is lk.b:  # TCP: b listens and accepts a; a connects to b
            listens.append(me)
            args += ["--accept", f"{other.node}={other.ip}"]
        else:
            args += ["--peer", f"{other.node}={other.ip}:{other.port}"]
    if listens:  # one socket per relay: bind the link's address, or all addresses of the node
        ip = listens[0].ip if len(listens) == 1 else "0.0.0.0"
        args += ["--listen", f"{ip}:{listens[0].port}"]
    for prefix, peer in collapse_routes(topo.routes_for(node.name)):
        args += ["--route", f"{prefix}={peer}"]
    if isinstance(node, Vnf) and node.kind == "hook":
        args += ["--vnf", "hook", "--hook", hook_spec(node, topo.base_dir())]
    else:
        args += ["--vnf", "kernel"]
    args += ["--control", control, "--stats-file", stats_file, "--log-file", log_file]
    return tuple(args)
