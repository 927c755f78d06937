"""From a validated description and a run id to concrete names, addresses and relay command lines.

Pure (no root): what a backend creates and what each relay is started with is decided here, so it can be
printed (`tunlab show`) and unit-tested.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tunlab.model import names
from tunlab.model import nsh as nsh_model
from tunlab.model.topology import Endpoint, Route, Topology, Transport, Vnf, hook_spec


# Paths with this many VNFs or more get ip_default_ttl 255 in every node: replies start at 64 otherwise
# and expire on the way back.
LONG_CHAIN = 48
#: a keyed lab's key, in its run directory (Topology.keyed)
PSK_FILE = "psk"
#: NSH mode: a relay's tables in its run directory (NODE + this); VXLAN-GPE + NSH bytes the veths leave room for
NSH_FILE_SUFFIX = ".nsh.json"
NSH_OVERHEAD = 64  # tunlab.relay.sff.OVERHEAD: GPE 8 + NSH 24 (MD type 1) or up to 48 bytes of MD type 2 context

UNDERLAY_MTU = 1500
UDP_ENCAP = 28  # outer IPv4 (20) + UDP (8): what a UDP hop adds to every overlay packet
UDP6_ENCAP = 48  # outer IPv6 (40) + UDP (8)


def underlay_mtu(overlay_mtu: int, transport: str, version: int = 4) -> int:
    """The veth MTU a hop needs so that an overlay packet of ``overlay_mtu`` bytes crosses it whole: a UDP
    hop carries one packet per datagram (so the veth grows past 1500 when the overlay needs it); a TCP hop's
    stream is cut into segments by TCP itself, so 1500 always does."""
    if transport == "udp":
        return max(UNDERLAY_MTU, overlay_mtu + (UDP6_ENCAP if version == 6 else UDP_ENCAP))
    return UNDERLAY_MTU


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
    mtu: int = UNDERLAY_MTU   # the veth's MTU (both ends): room for the overlay MTU plus the encapsulation
    impair: tuple[tuple[str, str], ...] = ()  # ("x>y", the relay's --impair text) per impaired direction


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
    extra_addrs: tuple[str, ...] = ()  # "addr/plen" on the TUN besides overlay_ip (dual stack: the IPv6 one)
    ipv6: bool = False                 # the overlay carries IPv6: the node's IPv6 stack is on (quietly)
    nsh_file: str | None = None        # NSH mode: the relay's --nsh file, written by the lab from nsh_json
    nsh_json: str | None = None


@dataclass(frozen=True)
class LabPlan:
    run_id: str
    run_dir: str
    topology: Topology
    nodes: tuple[NodePlan, ...]
    links: tuple[UnderlayLink, ...]
    seed: int = 0  # the run seed of the relays' impairments (issue 17)

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def collapse_routes(routes: dict[str, str]) -> list[tuple[str, str]]:
    """prefix -> peer, merged per peer into the fewest prefixes covering exactly the same addresses."""
    spans: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for prefix, peer in routes.items():
        net = ipaddress.ip_network(prefix)
        spans.setdefault((net.version, peer), []).append((int(net.network_address), int(net.broadcast_address)))
    out: list[tuple[int, int, int, str]] = []
    for (version, peer), ranges in spans.items():
        ranges.sort()
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        bits = 32 if version == 4 else 128
        for lo, hi in merged:
            out += [(version, start, plen, peer) for start, plen in _cidrs(lo, hi, bits)]
    out.sort()
    return [(f"{ipaddress.ip_address(start) if v == 6 else ipaddress.IPv4Address(start)}/{plen}", peer)
            for v, start, plen, peer in out]


def _cidrs(lo: int, hi: int, bits: int = 32) -> list[tuple[int, int]]:
    """The aligned blocks that cover [lo, hi] exactly, as (start, prefix length)."""
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, bits + 1 - size.bit_length()))
        lo += size
    return blocks


def run_seed(topo: Topology, run_id: str, seed: int | None = None) -> int:
    """The impairments' run seed: ``seed`` (--seed), else the topology's, else one derived from the run id
    (so the plan stays a pure function of its inputs, and every run differs)."""
    if seed is not None:
        return seed
    if topo.seed is not None:
        return topo.seed
    import hashlib

    return int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=4).digest(), "big")


def build_plan(topo: Topology, run_id: str, run_dir: str | Path, seed: int | None = None, *,
               rewrite: Callable[[UnderlayLink], UnderlayLink] | None = None,
               only: Collection[str] | None = None) -> LabPlan:
    """The lab's plan. Labs across hosts (tunlab.model.hosts.host_plan): ``only`` keeps the nodes of one
    host (and the links that touch them), ``rewrite`` changes links before the relays' command lines are
    made from them (a link between hosts: the far end's address is its host's underlay address)."""
    run_dir = str(run_dir)
    seed = run_seed(topo, run_id, seed)
    links = []
    for i, lk in enumerate(topo.links):
        a = ipaddress.ip_interface(lk.a_addr)
        b = ipaddress.ip_interface(lk.b_addr)
        links.append(UnderlayLink(
            name=lk.name,
            a=LinkEnd(lk.a, names.veth_name(run_id, i, "a"), str(a.ip), lk.a_port),
            b=LinkEnd(lk.b, names.veth_name(run_id, i, "b"), str(b.ip), lk.b_port),
            transport=lk.transport, prefixlen=a.network.prefixlen, index=i,
            datapath=topo.datapath if lk.transport == "udp" else "simple",
            mtu=underlay_mtu(topo.mtu + (NSH_OVERHEAD if topo.nsh else 0), lk.transport, a.version),
            impair=tuple(lk.impairs().items())))
    if rewrite is not None:
        links = [rewrite(lk) for lk in links]
    if only is not None:
        links = [lk for lk in links if lk.a.node in only or lk.b.node in only]
    plen = topo.overlay_prefixlen()
    v6 = 6 in topo.families or any(":" in lk.a_addr for lk in topo.links)
    longest = max(len(p.nodes) for p in topo.paths) - 2  # VNFs: each kernel VNF takes one from the TTL
    ttl = 255 if longest >= LONG_CHAIN else None
    tun = names.tun_name(run_id)
    tables = nsh_model.relay_tables(topo, hook_spec) if topo.nsh else {}
    nodes = []
    for n in topo.nodes:
        if only is not None and n.name not in only:
            continue
        mine = [lk for lk in links if n.name in (lk.a.node, lk.b.node)]
        ifaces = tuple(
            Iface(end.ifname, f"{end.ip}/{lk.prefixlen}", lk)
            for lk in mine for end in (lk.a, lk.b) if end.node == n.name)
        base = f"{run_dir}/{n.name}"
        args = relay_args(topo, n, mine, tun, control=f"{base}.ctl", stats_file=f"{base}.stats.json",
                          log_file=f"{base}.log", seed=seed)
        is_vnf = isinstance(n, Vnf)
        nsh_json = json.dumps(tables[n.name], indent=1) if n.name in tables else None
        nodes.append(NodePlan(
            name=n.name, role="vnf" if is_vnf else "endpoint", netns=names.netns_name(run_id, n.name),
            overlay_dev=tun, overlay_ip=n.overlay, overlay_prefixlen=plen, mtu=topo.mtu,
            forward=is_vnf and n.kind == "kernel", default_ttl=ttl,
            nft=n.nft if is_vnf else None, routes=n.routes if is_vnf else (),
            ifaces=ifaces, relay_args=args,
            control=f"{base}.ctl", stats_file=f"{base}.stats.json", log_file=f"{base}.log",
            extra_addrs=tuple(f"{a}/{ipaddress.ip_network(topo.overlay_net6).prefixlen}"
                              for a in n.addresses[1:]) if topo.overlay_net6 else (),
            ipv6=v6, nsh_file=f"{base}{NSH_FILE_SUFFIX}" if nsh_json else None, nsh_json=nsh_json))
    return LabPlan(run_id, run_dir, topo, tuple(nodes), tuple(links), seed)


@dataclass(frozen=True)
class RelayHop:
    """One neighbour of a relay, as its command line needs it.

    UDP: both ends bind their address and port and send to each other. TCP: the ``listens`` end (a link's
    ``b``) listens and accepts the peer by address; the other end connects to it."""

    peer: str
    my_ip: str
    my_port: int
    peer_ip: str
    peer_port: int
    transport: str
    listens: bool = True


def relay_argv(*, device: Sequence[str], transport: str, hops: Sequence[RelayHop], routes: dict[str, str],
               hook: str | None, control: str, stats_file: str, log_file: str, datapath: str | None = None,
               extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The one relay command line builder (docs/ARCHITECTURE.md, relay contract), ``--ready-fd`` excepted:
    the lab's plan and relay chains in a Mininet network of your own both build theirs here.

    ``device``: ``--dev NAME --attach`` or ``--dev NAME --addr A/P [--mtu N]``; ``routes``: overlay prefix
    -> peer name (merged per peer); ``hook``: ``--vnf hook --hook SPEC``, else ``--vnf kernel``. One socket
    per relay: it binds the address of the hops it listens on when they share one, else 0.0.0.0."""
    args = [*device, "--transport", transport]
    if datapath is not None:
        args += ["--datapath", datapath]
    listens: list[RelayHop] = []

    def hp(ip: str, port: int) -> str:  # IPv6 in brackets
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    for hop in hops:
        if transport == "udp":
            listens.append(hop)
            args += ["--peer", f"{hop.peer}={hp(hop.peer_ip, hop.peer_port)}"]
        elif hop.listens:
            listens.append(hop)
            args += ["--accept", f"{hop.peer}={hop.peer_ip}"]
        else:
            args += ["--peer", f"{hop.peer}={hp(hop.peer_ip, hop.peer_port)}"]
    if listens:
        ips = {h.my_ip for h in listens}
        wildcard = "::" if any(":" in h.my_ip for h in listens) else "0.0.0.0"
        args += ["--listen", hp(ips.pop() if len(ips) == 1 else wildcard, listens[0].my_port)]
    for prefix, peer in collapse_routes(routes):
        args += ["--route", f"{prefix}={peer}"]
    args += ["--vnf", "hook", "--hook", hook] if hook is not None else ["--vnf", "kernel"]
    # info: the lifecycle of each relay (ready, datapath chosen per peer, connects, retries), a few lines each,
    # so a results folder's NODE.log says what the relay did, not nothing
    args += ["--control", control, "--stats-file", stats_file, "--log-file", log_file, "--log-level", "info", *extra]
    return tuple(args)


def impair_args(node: str, links: Sequence[UnderlayLink], seed: int, log_path: str) -> tuple[str, ...]:
    """A lab relay's impairment options (issue 17): every hop's link and direction names (the decision
    log and the random streams use them; run-time changes too), the run seed, the decision log, and
    ``--impair PEER=SPEC`` for each direction of its links the topology impairs."""
    args = ["--seed", str(seed), "--impair-log", log_path]
    for lk in links:
        other = lk.b.node if lk.a.node == node else lk.a.node
        args += ["--link-label", f"{other}={lk.name},{node}>{other}"]
        for direction, spec in lk.impair:
            if direction == f"{node}>{other}":
                args += ["--impair", f"{other}={spec}"]
    return tuple(args)


def relay_args(topo: Topology, node: Endpoint | Vnf, links: list[UnderlayLink], dev: str, *,
               control: str, stats_file: str, log_file: str, seed: int = 0) -> tuple[str, ...]:
    """The relay command line of one node of a lab (an attached persistent TUN; the lab's datapath)."""
    transport = links[0].transport if links else "udp"
    hops = []
    for lk in links:
        me, other = (lk.a, lk.b) if lk.a.node == node.name else (lk.b, lk.a)
        hops.append(RelayHop(other.node, me.ip, me.port, other.ip, other.port, lk.transport, listens=me is lk.b))
    hook = hook_spec(node, topo.base_dir()) if isinstance(node, Vnf) and node.kind == "hook" else None
    # TCP hops run the simple datapath: the relay's auto means simple there, so only "simple" is passed
    datapath = topo.datapath if transport == "udp" or topo.datapath == "simple" else None
    extra: tuple[str, ...] = ()
    if topo.keyed:  # the lab writes the key (0600) before the relays start; their keylogs open the captures
        run_dir = control.rsplit("/", 1)[0]
        extra = ("--psk-file", f"{run_dir}/{PSK_FILE}", "--seal-keylog", f"{run_dir}/{node.name}.keys")
    if topo.nsh:  # NSH mode (issue 18): the lab writes the node's tables before its relay starts
        extra = ("--nsh", f"{control.rsplit('/', 1)[0]}/{node.name}{NSH_FILE_SUFFIX}")
        datapath = None  # NSH mode runs its own per-packet datapath
    extra += impair_args(node.name, links, seed, log_file.removesuffix(".log") + ".impair.jsonl")
    return relay_argv(device=("--dev", dev, "--attach"), transport=transport, hops=hops,
                      routes=topo.routes_for(node.name), hook=hook, control=control, stats_file=stats_file,
                      log_file=log_file, datapath=datapath, extra=extra)
