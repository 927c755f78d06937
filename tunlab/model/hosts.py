"""Hosts a lab may span (issue 19): the inventory file, and where each node goes (placement).

An inventory is an Ansible-style INI file (docs/multihost.md)::

    [all:vars]
    ssh_config=/path/ssh_config      # optional: ssh -F FILE (its Host entries, ProxyCommand, ControlMaster...)
    tunlab=tunlab                    # optional: the tunlab command on the hosts (default: tunlab)

    [hosts]                          # any group name; every group's hosts are the lab's hosts
    h1 ansible_host=10.0.0.11 underlay=10.0.0.11
    h2 ansible_host=h2.example ansible_user=lab become=true underlay=10.0.0.12

Per host: ``ansible_host`` (the SSH target; default the name), ``ansible_user``, ``ansible_port``,
``underlay`` (required: the address the other hosts reach this one at; links between hosts are relay hops
over it), ``tunlab`` (the command), ``become`` (``true``: run tunlab through ``sudo -n``), ``ssh_config``.
Values in ``[all:vars]`` (or ``[GROUP:vars]``) apply to every host (of that group) that does not set them.
Pure: no SSH here (that is :mod:`tunlab.lab.remote`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tunlab.errors import DescriptionError
from tunlab.model.plan import UDP6_ENCAP, UDP_ENCAP, UNDERLAY_MTU, LabPlan, LinkEnd, UnderlayLink, build_plan
from tunlab.model.topology import DEFAULT_MTU, SEAL_OVERHEAD, Topology

KNOWN = ("ansible_host", "ansible_user", "ansible_port", "underlay", "tunlab", "become", "ssh_config")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def _err(message: str, hint: str | None = None) -> DescriptionError:
    return DescriptionError(message, hint=hint)


@dataclass(frozen=True)
class Host:
    name: str
    target: str             # ssh destination
    underlay: str           # the address other hosts reach this one at
    user: str | None = None
    port: int | None = None
    tunlab: str = "tunlab"  # the command (may be several words: "python3 -m tunlab")
    become: bool = False
    ssh_config: str | None = None

    def tunlab_argv(self) -> list[str]:
        return (["sudo", "-n"] if self.become else []) + shlex.split(self.tunlab)


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise _err(f"{self.path}: there is no host '{name}'",
                               f"hosts: {', '.join(h.name for h in self.hosts)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)


def parse_inventory(text: str, path: str = "<inventory>") -> Inventory:
    """Parse an inventory; every error names the file, line, host and field."""
    group_vars: dict[str, dict[str, str]] = {}
    rows: list[tuple[int, str, str, dict[str, str]]] = []  # line, group, host, vars
    section = "ungrouped"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip() if not raw.lstrip().startswith(("#", ";")) else ""
        if not line:
            continue
        where = f"{path} line {lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise _err(f"{where}: a section header needs a closing ']'", "e.g. [hosts]")
            section = line[1:-1].strip()
            if section.endswith(":children"):
                raise _err(f"{where}: [{section}] (groups of groups) is not supported",
                                       "list the hosts in a plain [GROUP] section")
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise _err(f"{where}: {exc}", "quote values with spaces") from None
        if section.endswith(":vars"):
            key, eq, value = line.partition("=")
            if not eq:
                raise _err(f"{where}: [{section}] holds KEY=VALUE lines", f"got {line!r}")
            group_vars.setdefault(section[:-5], {})[key.strip()] = value.strip()
            continue
        name, items = words[0], words[1:]
        if not _NAME_RE.match(name):
            raise _err(f"{where}: host name {name!r} is not usable",
                                   "a letter, then letters, digits, '_', '.', '-' (31 at most)")
        hv: dict[str, str] = {}
        for item in items:
            key, eq, value = item.partition("=")
            if not eq:
                raise _err(f"{where}: host {name}: {item!r} is not KEY=VALUE")
            hv[key] = value
        rows.append((lineno, section, name, hv))
    if not rows:
        raise _err(f"{path}: no hosts", "list hosts under a [hosts] section: NAME underlay=ADDR ...")
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for lineno, group, name, hv in rows:
        where = f"{path} line {lineno}: host {name}"
        if name in seen:
            raise _err(f"{where}: listed twice (first on line {seen[name]})")
        seen[name] = lineno
        v = {**group_vars.get("all", {}), **group_vars.get(group, {}), **hv}
        for key in v:
            if key not in KNOWN and not key.startswith("ansible_"):
                raise _err(f"{where}: unknown field '{key}'", f"known: {', '.join(KNOWN)}")
        underlay = v.get("underlay", "")
        if not underlay:
            raise _err(f"{where}: no 'underlay' field",
                                   "add underlay=ADDR: the address the other hosts reach this one at")
        try:
            ipaddress.ip_address(underlay)
        except ValueError:
            raise _err(f"{where}: field 'underlay': {underlay!r} is not an IP address") from None
        port = v.get("ansible_port")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise _err(f"{where}: field 'ansible_port': {port!r} is not a port number")
        become = v.get("become", "false").lower()
        if become not in TRUE + FALSE:
            raise _err(f"{where}: field 'become': {become!r}", "true or false")
        cfg = v.get("ssh_config")
        if cfg:
            cfg = str((Path(path).parent / cfg) if not os.path.isabs(cfg) else Path(cfg))
        hosts.append(Host(name=name, target=v.get("ansible_host") or name, underlay=underlay,
                          user=v.get("ansible_user") or None, port=int(port) if port else None,
                          tunlab=v.get("tunlab") or "tunlab", become=become in TRUE, ssh_config=cfg or None))
    unders = [h.underlay for h in hosts]
    dup = {u for u in unders if unders.count(u) > 1}
    if dup:
        raise _err(f"{path}: field 'underlay': {', '.join(sorted(dup))} given to more than one host",
                               "each host needs its own underlay address")
    return Inventory(path, tuple(hosts))


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise _err(f"{p}: cannot read the inventory: {exc.strerror or exc}",
                               "give --hosts an inventory file (docs/multihost.md)") from None
    return parse_inventory(text, str(p))


# ------------------------------------------------------------------------------------------- placement


def chain_order(topo: Topology) -> list[str]:
    """The nodes in chain order: the first path's hops, then each other path's new ones, then the rest."""
    order: list[str] = []
    for path in topo.paths:
        order += [n for n in path.nodes if n not in order]
    return order + [n.name for n in topo.nodes if n.name not in order]


def place(topo: Topology, hosts: Sequence[str], where: str = "--hosts") -> dict[str, str]:
    """Node -> host. A node's own ``host`` is kept; the others follow the chain: consecutive hops stay on
    one host until it holds its share (ceil(nodes / hosts)), then the chain moves to the least loaded host,
    so a chain crosses between hosts as few times as balance allows."""
    if not hosts:
        raise _err(f"{where}: no hosts to place the lab on")
    placed: dict[str, str] = {}
    load = {h: 0 for h in hosts}
    for n in topo.nodes:
        if n.host is not None:
            if n.host not in load:
                raise _err(f"node '{n.name}' field 'host': there is no host '{n.host}' in {where}",
                           f"hosts: {', '.join(hosts)}")
            placed[n.name] = n.host
            load[n.host] += 1
    share = -(-len(topo.nodes) // len(hosts))
    current: str | None = None
    for name in chain_order(topo):
        if name in placed:
            current = placed[name]
            continue
        if current is None or load[current] >= share:
            current = min(hosts, key=lambda h: (load[h], hosts.index(h)))
        placed[name] = current
        load[current] += 1
    return {n.name: placed[n.name] for n in topo.nodes}


# ------------------------------------------------------------------------------------ links between hosts


@dataclass(frozen=True)
class Uplink:
    """One end of a link between hosts, on this host: the node's veth (``ifname``, the link's address)
    pairs with ``host_ifname`` in the host's own namespace (the /30's other address); the host forwards
    ``underlay:hport`` to ``node_addr:node_port`` and sends the relay's datagrams to the far host from
    ``underlay:hport`` (nftables DNAT and SNAT in a table of the run's)."""

    link: str
    node: str
    ifname: str
    host_ifname: str
    node_addr: str      # with prefix length
    host_addr: str      # with prefix length
    node_port: int
    hport: int
    underlay: str       # this host's
    peer_host: str
    peer_underlay: str
    peer_hport: int
    transport: str


@dataclass(frozen=True)
class HostPlan:
    host: str
    plan: LabPlan           # this host's nodes; a link between hosts has the far end at its host's underlay
    uplinks: tuple[Uplink, ...]


def hport_base(run_id: str) -> int:
    """Where a run's ports on the hosts' underlay addresses start (runs differ, so two labs can share hosts)."""
    return 30000 + (int(run_id, 36) % 100) * 200


def cross_links(topo: Topology, placement: dict[str, str]) -> list[int]:
    """Indexes of the links whose ends are on different hosts."""
    return [i for i, lk in enumerate(topo.links) if placement[lk.a] != placement[lk.b]]


def host_plan(topo: Topology, run_id: str, run_dir: str, placement: dict[str, str],
              inv: Inventory, host: str) -> HostPlan:
    """What ``host`` builds of the lab (pure): its nodes, the veths between them, an uplink per end of a
    link that leaves it, and relay command lines whose far ends are the far hosts' underlay addresses."""
    crossing = cross_links(topo, placement)
    if len(crossing) > 100:
        raise _err(f"{len(crossing)} links between hosts; at most 100", "place more of the chain together")
    base = hport_base(run_id)
    hport = {(i, side): base + 2 * k + (side == "b") for k, i in enumerate(crossing) for side in "ab"}
    under = {h.name: h.underlay for h in inv.hosts}
    uplinks: list[Uplink] = []

    def rewrite(lk: UnderlayLink) -> UnderlayLink:
        if lk.index not in crossing:
            return lk
        a_host, b_host = placement[lk.a.node], placement[lk.b.node]
        ends = {"a": lk.a, "b": lk.b}
        hosts = {"a": a_host, "b": b_host}
        new = dict(ends)
        for side, far in (("a", "b"), ("b", "a")):
            if hosts[side] != host:
                new[side] = LinkEnd(ends[side].node, ends[side].ifname, under[hosts[side]], hport[(lk.index, side)])
            else:
                me, other = ends[side], ends[far]
                uplinks.append(Uplink(
                    link=lk.name, node=me.node, ifname=me.ifname,
                    host_ifname=f"vh{me.ifname[2:]}", node_addr=f"{me.ip}/{lk.prefixlen}",
                    host_addr=f"{other.ip}/{lk.prefixlen}", node_port=me.port, hport=hport[(lk.index, side)],
                    underlay=under[host], peer_host=hosts[far], peer_underlay=under[hosts[far]],
                    peer_hport=hport[(lk.index, far)], transport=lk.transport))
        return replace(lk, a=new["a"], b=new["b"])

    mine = {n for n, h in placement.items() if h == host}
    plan = build_plan(topo, run_id, run_dir, rewrite=rewrite, only=mine)
    seen: dict[tuple[str, str], str] = {}
    for u in uplinks:
        if (u.node, u.peer_host) in seen:
            raise _err(f"node '{u.node}' has two links to host {u.peer_host} ({seen[(u.node, u.peer_host)]}, "
                       f"{u.link}): one route per far host", "place one of its neighbours elsewhere (field 'host')")
        seen[(u.node, u.peer_host)] = u.link
    return HostPlan(host, plan, tuple(uplinks))


def multihost_mtu(topo: Topology, underlay_mtus: dict[str, int], placement: dict[str, str], keyed: bool) -> int:
    """The overlay MTU a lab across hosts can use: its own, or less when a link between hosts needs room
    for the outer headers (and the seal) within the smaller underlay MTU of its two hosts."""
    mtu = topo.mtu
    for i in cross_links(topo, placement):
        lk = topo.links[i]
        a, b = placement[lk.a], placement[lk.b]
        v6 = ":" in lk.a_addr
        encap = (UDP6_ENCAP if v6 else UDP_ENCAP) if lk.transport == "udp" else (60 if v6 else 40) + 2
        room = min(underlay_mtus.get(a, UNDERLAY_MTU), underlay_mtus.get(b, UNDERLAY_MTU)) - encap
        mtu = min(mtu, room - (SEAL_OVERHEAD if keyed else 0))
    return mtu


def lab_topology(topo: Topology, placement: dict[str, str], underlay_mtus: dict[str, int] | None = None, *,
                 keyed: bool = True) -> Topology:
    """The topology a lab across hosts runs: links that leave a host are keyed unless ``keyed=False``
    (the whole lab then is: one key per run), and the overlay MTU fits the hosts' underlay."""
    if not cross_links(topo, placement):
        return topo
    t = topo
    if keyed and not topo.keyed:
        t = replace(topo, keyed=True, mtu=min(topo.mtu, DEFAULT_MTU - SEAL_OVERHEAD))
    mtu = multihost_mtu(t, underlay_mtus or {}, placement, t.keyed)
    if mtu < 576:
        raise _err(f"the hosts' underlay MTU leaves {mtu} bytes for the overlay", "use an underlay MTU of 1280 or more")
    return replace(t, mtu=mtu) if mtu != t.mtu else t
