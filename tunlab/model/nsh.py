"""NSH service paths in a topology (issue 18, docs/nsh.md): the description, each relay's tables derived from
it, and the expected NSH header on every hop.

A :class:`ServicePath` names an SPI and the nodes it visits (endpoint, VNFs..., endpoint, along links). Its
classifier rule sits at the first node (``src``/``dst`` default to the end nodes' overlay addresses; proto,
ports and DSCP narrow it); its SFs are the VNFs on it except ``skip``; each SF takes one from the SI. The
reverse path (``reverse_spi``, default SPI + 1, 0 for none) visits the same SFs backwards, classified at the
last node with source and destination (and ports) swapped.

:func:`relay_tables` gives each node's ``--nsh`` file content; :func:`walk` follows a packet through tables
(the planned ones, or those a running lab's relays report) and says which (SPI, SI, TTL, metadata) it must
carry on each hop -- the per-hop checks compare the captures with that.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from tunlab.errors import TunlabError


@dataclass(frozen=True)
class ServicePath:
    """One service path: ``spi``, the ``nodes`` it visits, its classifier fields and metadata."""

    spi: int
    nodes: tuple[str, ...]
    si: int = 255                          # the starting service index
    skip: tuple[str, ...] = ()             # VNFs on the path whose SF this path does not visit
    reverse_spi: int | None = None         # None: spi + 1; 0: no reverse path
    src: str | None = None                 # classifier: source prefix (default: the first node's address)
    dst: str | None = None                 # destination prefix (default: the last node's address)
    proto: str | None = None               # "udp", "tcp", "icmp" or a number
    sport: str | None = None               # a port or "low-high"
    dport: str | None = None
    dscp: int | None = None
    ttl: int = 63
    context: str | None = None             # MD type 1: 32 hex digits
    tlvs: tuple[str, ...] = ()             # MD type 2: "CLASS:TYPE:HEX" each (class and type in hex or decimal)

    def __post_init__(self) -> None:
        for attr in ("nodes", "skip", "tlvs"):
            v = getattr(self, attr)
            if isinstance(v, list):
                object.__setattr__(self, attr, tuple(v))

    @property
    def where(self) -> str:
        return f"service path {self.spi}"

    @property
    def rev_spi(self) -> int:
        return self.spi + 1 if self.reverse_spi is None else self.reverse_spi

    def metadata(self) -> dict[str, Any]:
        if self.tlvs:
            out = []
            for t in self.tlvs:
                cls, typ, value = (t.split(":") + ["", "", ""])[:3]
                out.append({"class": int(cls, 0), "type": int(typ, 0), "value": value})
            return {"md_type": 2, "tlvs": out}
        return {"context": self.context} if self.context else {}

    def rule(self, src: str, dst: str, *, reverse: bool = False) -> dict[str, Any]:
        """The classifier rule at the path's first node (``reverse``: the reverse path's, at its last);
        ``src``/``dst``: the overlay addresses of the path's first and last nodes."""
        s, d = (self.dst, self.src) if reverse else (self.src, self.dst)
        if reverse:
            src, dst = dst, src
        sp, dp = (self.dport, self.sport) if reverse else (self.sport, self.dport)
        r: dict[str, Any] = {"spi": self.rev_spi if reverse else self.spi, "si": self.si,
                             "src": s or _host(src), "dst": d or _host(dst)}
        for k, v in (("proto", self.proto), ("sport", sp), ("dport", dp), ("dscp", self.dscp)):
            if v is not None:
                r[k] = v
        if self.ttl != 63:
            r["ttl"] = self.ttl
        return {**r, **self.metadata()}


def _host(addr: str) -> str:
    return str(ipaddress.ip_network(addr))


def sf_nodes(sp: ServicePath) -> list[str]:
    return [n for n in sp.nodes[1:-1] if n not in sp.skip]


def relay_tables(topo: Any, hook_spec: Any = None) -> dict[str, dict[str, Any]]:
    """Node -> its ``--nsh`` file content: classifier rules (at paths' ends) and forwarding entries;
    ``hook_spec(vnf, base_dir)`` turns an NSH-aware VNF's ``nsh_hook`` into the relay's spec."""
    addr = {n.name: n.overlay for n in topo.nodes}
    tables: dict[str, dict[str, Any]] = {n.name: {"classifier": [], "forward": []} for n in topo.nodes}
    seen: dict[tuple[str, int, int], str] = {}

    def add(node: str, spi: int, si: int, to: str) -> None:
        old = seen.get((node, spi, si))
        if old is not None and old != to:
            raise TunlabError(f"node '{node}' would forward SPI {spi} SI {si} to '{old}' and to '{to}'")
        if old is None:
            seen[(node, spi, si)] = to
            tables[node]["forward"].append({"spi": spi, "si": si, "to": to})

    for sp in topo.service_paths:
        ways = [(sp.spi, list(sp.nodes), False)] + ([(sp.rev_spi, list(reversed(sp.nodes)), True)] if sp.rev_spi else [])
        for spi, nodes, rev in ways:
            tables[nodes[0]]["classifier"].append(sp.rule(addr[sp.nodes[0]], addr[sp.nodes[-1]], reverse=rev))
            si = sp.si
            sfs = set(sf_nodes(sp))
            add(nodes[0], spi, si, nodes[1])
            for k, node in enumerate(nodes[1:-1], start=1):
                if node in sfs:
                    add(node, spi, si, "sf")
                    si -= 1
                add(node, spi, si, nodes[k + 1])
            add(nodes[-1], spi, si, "end")
    for v in topo.vnfs:
        if v.nsh_hook is not None:
            spec = v.nsh_hook if hook_spec is None else hook_spec(_as_hook(v), topo.base_dir())
            tables[v.name]["aware_hook"] = spec
    return {n: t for n, t in tables.items() if t["classifier"] or t["forward"]}


def _as_hook(v: Any) -> Any:
    from dataclasses import replace

    return replace(v, kind="hook", hook=v.nsh_hook, nft=None, routes=())


@dataclass(frozen=True)
class HopHeader:
    """The NSH header a packet must carry on one hop (``md`` None: an NSH-aware SF before it may change it)."""

    src: str
    dst: str
    spi: int
    si: int
    ttl: int
    md: dict[str, Any] | None


def walk(tables: dict[str, dict[str, Any]], start: str, packet: bytes, aware: Any = frozenset(),
         limit: int = 64, sfs: list[str] | None = None) -> tuple[list[HopHeader], str]:
    """Follow ``packet`` from node ``start`` through the relays' ``tables``: the header expected on each
    hop, and how it ends (``"delivered at NODE"``, ``"unclassified"``, ``"no path at NODE"``, ...);
    ``sfs`` (a list) receives the nodes whose SF the packet visits, in order. ``aware``: the NSH-aware SFs,
    a set (the metadata after them is not checked) or a dict node -> the metadata each is declared to write
    (None: not checked)."""
    from tunlab.relay.nsh import Classifier, Rule

    t = tables.get(start) or {}
    rules = [Rule.from_json(r, f"{start} classifier[{i}]") for i, r in enumerate(t.get("classifier", []))]
    rule = Classifier(rules).classify(packet)
    if rule is None:
        return [], "unclassified"
    h = rule.header(1)
    md: dict[str, Any] | None = h.metadata() if h.md_type == 1 else {"tlvs": h.metadata()["tlvs"]}
    spi, si, ttl, node = rule.spi, rule.si, rule.ttl, start
    hops: list[HopHeader] = []
    sf_done = False
    for _ in range(limit):
        fwd = {(e["spi"], e["si"]): e["to"] for e in (tables.get(node) or {}).get("forward", [])}
        if hops:  # a receiving SFF takes one from the TTL
            ttl -= 1
            if ttl <= 0:
                return hops, f"TTL expired at {node}"
        to = fwd.get((spi, si))
        if to == "sf" and not sf_done:
            if sfs is not None:
                sfs.append(node)
            if node in aware:
                md = aware.get(node) if isinstance(aware, dict) else None
            si -= 1
            sf_done = True
            if si == 0:
                return hops, f"SI exhausted at {node}"
            to = fwd.get((spi, si))
        if to is None or to == "sf":
            return hops, f"no path at {node}"
        if to == "end":
            return hops, f"delivered at {node}"
        hops.append(HopHeader(node, to, spi, si, ttl, md))
        node, sf_done = to, False
    return hops, "loop"


def swapped(packet: bytes) -> bytes:
    """``packet`` with source and destination (addresses, TCP/UDP ports) swapped: what its reply looks like to
    a classifier (IPv4 and IPv6)."""
    b = bytearray(packet)
    if len(b) >= 20 and b[0] >> 4 == 4:
        b[12:16], b[16:20] = packet[16:20], packet[12:16]
        l4, proto = (b[0] & 0x0F) * 4, b[9]
    elif len(b) >= 40 and b[0] >> 4 == 6:
        b[8:24], b[24:40] = packet[24:40], packet[8:24]
        l4, proto = 40, b[6]
    else:
        return packet
    if proto in (6, 17) and len(b) >= l4 + 4:
        b[l4:l4 + 2], b[l4 + 2:l4 + 4] = packet[l4 + 2:l4 + 4], packet[l4:l4 + 2]
    return bytes(b)


def aware_sfs(topo: Any) -> dict[str, dict[str, Any] | None]:
    """The topology's NSH-aware SFs and the metadata each is declared to write (None: not declared)."""
    return {v.name: ({"context": v.nsh_context.lower()} if v.nsh_context else None)
            for v in topo.vnfs if v.nsh_hook is not None}
