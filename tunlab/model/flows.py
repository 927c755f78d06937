"""Flows and expectations: what a scenario sends (``Ping``, ``Udp``, ``Tcp``) and what it expects of each
packet (``Expect``); a planned packet with its expectation is a ``Probe``.

Pure data: no root, and scapy only when a field name in ``ignore=`` is checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tunlab.errors import DescriptionError

if TYPE_CHECKING:
    from scapy.packet import Packet

__all__ = ["Flow", "Ping", "Udp", "Tcp", "Expect", "Probe", "parse_expect", "ignore_field"]

Size = int | Literal["mtu"] | None


@dataclass(frozen=True)
class Expect:
    """What a probe should do: be delivered (optionally with a reply) or be dropped at a node."""

    delivered: bool = True
    dropped_at: str | None = None
    reply: bool = False
    #: "... or dropped by impairment": a probe (or its reply) that a link's impairment dropped passes, when
    #: the relay's decision log names it (issue 17)
    or_impaired: bool = False

    def describe(self) -> str:
        if not self.delivered:
            return f"dropped at {self.dropped_at}"
        text = "delivered, reply" if self.reply else "delivered"
        return text + " or dropped by impairment" if self.or_impaired else text


@dataclass(frozen=True)
class Probe:
    """A packet sent from the chain's sender, and what the scenario expects of it."""

    name: str
    packet: bytes
    expect: Expect = Expect()
    ignore: tuple[tuple[type[Packet], str], ...] = ()  # do-not-care fields for every comparison
    #: what VNFs on the way rewrite on purpose: ((node, ("IP.src", "UDP.sport")), ...); "L3", "L4", "any"
    rewrites: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Flow:
    """Fields every kind of flow has. Use Ping, Udp or Tcp."""

    count: int = 1
    expect: str | Expect | None = None  # None: the scenario's default
    src: str | None = None
    dst: str | None = None      # node name or overlay address
    ttl: int = 64
    ignore: tuple[str, ...] = ()
    name: str | None = None
    size: Size = None
    payload: bytes = b""
    #: what VNFs on the way change on purpose, by node: {"vnf2": ["IP.src", "UDP.sport"]}, {"vnf1": ["IP.tos"]},
    #: or a group: "L3" (any IP header field), "L4" (ports, TCP seq/ack, ICMP id), "any" (both)
    rewrites: Any = None
    #: 4 or 6: which overlay the probe uses when ``dst`` is a node name (default: the topology's first;
    #: an address as ``dst`` says it itself)
    family: int | None = None
    #: a statistical expectation (issue 17): the share of this flow's probes that links' impairments drop,
    #: e.g. "5%": passes when the count dropped is one an exact two-sided binomial test at 1% accepts for
    #: that rate over ``count`` probes. Each probe then expects "... or dropped by impairment".
    loss: str | float | None = None

    kind = "flow"

    def __post_init__(self) -> None:
        if isinstance(self.ignore, list):
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.rewrites, dict):  # frozen and hashable: ((node, (spec, ...)), ...)
            object.__setattr__(self, "rewrites", rewrites_tuple(self.rewrites))
    default_expect = "delivered"
    header_len = 20

    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class Ping(Flow):
    size: Size = 84
    kind = "icmp"
    default_expect = "reply"
    header_len = 28

    def label(self) -> str:
        if self.name:
            return self.name
        v6 = self.family == 6 or (self.dst is not None and ":" in self.dst)
        size = f"{self.header_len + (20 if v6 else 0) + len(self.payload)}" if self.payload else f"{self.size}"
        return f"ping{'6' if v6 else ''} {size}"


@dataclass(frozen=True)
class Udp(Flow):
    dport: int = 5001
    sport: int | None = None
    kind = "udp"
    header_len = 28

    def label(self) -> str:
        return self.name or f"udp {self.dport}" + (f" {self.size}" if self.size else "")


@dataclass(frozen=True)
class Tcp(Flow):
    dport: int = 80
    flags: str = "S"
    sport: int | None = None
    kind = "tcp"
    default_expect = "reply"
    header_len = 40

    def label(self) -> str:
        return self.name or f"tcp {self.dport} [{self.flags}]" + (f" {self.size}" if self.size else "")


REWRITE_GROUPS = ("L3", "L4", "any")


def rewrites_tuple(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """{"vnf2": ["IP.src"]} -> (("vnf2", ("IP.src",)),); a tuple of pairs is returned as it is (unchecked:
    :func:`check_rewrites` says what is wrong)."""
    if isinstance(value, dict):
        return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in value.items())
    return value  # type: ignore[no-any-return]


def check_rewrites(value: Any, nodes: dict[str, str], src: str, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Validate declared rewrites: ``nodes`` maps node names to their kind ("vnf" or "endpoint")."""
    if value is None:
        return ()
    pairs = rewrites_tuple(value)
    if not isinstance(pairs, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise DescriptionError(f"{value!r} is not a dict of rewrites", source=src, field=where,
                               hint="write {'vnf2': ['IP.src', 'UDP.sport']}")
    for node, specs in pairs:
        if node not in nodes:
            raise DescriptionError(f"there is no node {node!r}", source=src, field=where,
                                   hint=f"use one of: {', '.join(sorted(n for n, k in nodes.items() if k == 'vnf'))}")
        if nodes[node] != "vnf":
            raise DescriptionError(f"{node!r} is an endpoint; only a VNF rewrites what passes", source=src,
                                   field=where, hint="name the VNF that rewrites")
        if not specs or not all(isinstance(x, str) for x in specs):
            raise DescriptionError(f"{specs!r} is not a list of fields", source=src, field=f"{where}[{node!r}]",
                                   hint="write ['IP.src', 'UDP.sport'], ['IP.tos'] or ['L3'], ['L4'], ['any']")
        for spec in specs:
            if spec not in REWRITE_GROUPS:
                ignore_field(spec, src, f"{where}[{node!r}]")
    return pairs


_DROP_RE = re.compile(r"^dropped\s+at\s+([a-z][a-z0-9_]*)$")


def parse_expect(value: Any, *, default: str, source: str, where: str) -> Expect:
    """``"delivered"``, ``"reply"`` or ``"dropped at NODE"`` (or an Expect) -> Expect."""
    if value is None:
        value = default
    if isinstance(value, Expect):
        return value
    if isinstance(value, str):
        text = " ".join(value.strip().lower().split())
        if text.endswith(" or dropped by impairment"):
            base = parse_expect(text.removesuffix(" or dropped by impairment"), default=default, source=source,
                                where=where)
            if not base.delivered:
                raise DescriptionError(f"{value!r}: only a delivery can be excused by an impairment", source=source,
                                       field=where, hint="use 'delivered or dropped by impairment' or 'reply or ...'")
            return Expect(reply=base.reply, or_impaired=True)
        if text == "delivered":
            return Expect()
        if text in ("reply", "replies", "delivered+reply", "delivered, reply"):
            return Expect(reply=True)
        m = _DROP_RE.match(text)
        if m:
            return Expect(delivered=False, dropped_at=m.group(1))
    raise DescriptionError(f"{value!r} is not an expectation", source=source, field=where,
                           hint="use 'delivered', 'reply' or 'dropped at NODE' (the first two may add "
                                "'or dropped by impairment')")


def ignore_field(item: str, src: str, where: str) -> tuple[Any, str]:
    """``"IP.ttl"`` -> (scapy layer class, field name), checked."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    layers = {"IP": IP, "ICMP": ICMP, "UDP": UDP, "TCP": TCP}
    layer, _, name = item.partition(".")
    cls = layers.get(layer)
    if cls is None or name not in {f.name for f in cls.fields_desc}:
        raise DescriptionError(f"{item!r} is not a field", source=src, field=where,
                               hint=f"write Layer.field with Layer one of {', '.join(layers)}, e.g. 'IP.tos'")
    return cls, name
