"""The typed description of a lab: endpoints, VNFs in chain order, underlay links, paths.

Everything here is pure (no root, no system calls besides reading hook files) and immutable. Every object
checks itself when it is built and :class:`Topology` checks how the parts fit together, so a mistake is
reported -- naming the source file, the node or link, the field and the fix -- before anything exists.

How a lab built from a description carries packets: every node has one TUN device with its overlay address
(all overlay addresses share ``Topology.overlay_net``, so the TUN's connected route covers the whole
overlay). Every link is an underlay veth between two nodes and one relay-to-relay hop (UDP or TCP). A kernel
VNF's relay writes what it receives into its TUN; the namespace forwards it back out of the same TUN and the
relay sends it on by destination prefix, upstream or downstream along the paths.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import importlib.util
import inspect
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from tunlab.errors import DescriptionError, TunlabError
from tunlab.model.nsh import ServicePath

Transport = Literal["udp", "tcp"]
VnfKind = Literal["kernel", "hook"]
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]

DEFAULT_OVERLAY = "172.16.0.0/16"
DEFAULT_UNDERLAY = "10.0.0.0/16"
DEFAULT_PORT = 55555
DEFAULT_MTU = 1472  # 1500 underlay minus IPv4 (20) + UDP (8)
SEAL_OVERHEAD = 29  # a keyed link's header and tag per datagram (tunlab.relay.seal.OVERHEAD)
TRANSPORTS = ("udp", "tcp")
DATAPATHS = ("auto", "plain", "gso", "simple")  # the relays' --datapath on UDP hops (TCP hops: simple)
ROUTE_TYPES = ("unicast", "blackhole", "unreachable", "prohibit")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_HOST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")  # an inventory's host name (tunlab.model.hosts)

# The file being loaded (tunlab.model.topofile): objects built while it runs name it in their errors.
_loading: contextvars.ContextVar[str | None] = contextvars.ContextVar("tunlab_loading", default=None)


@contextlib.contextmanager
def loading(source: str) -> Iterator[None]:
    """While the body runs, descriptions built (and their errors) name ``source`` as their file."""
    token = _loading.set(source)
    try:
        yield
    finally:
        _loading.reset(token)


class TopologyError(DescriptionError):
    """A mistake in a description; ``at(source)`` re-states it for the file it came from."""

    def __init__(self, message: str, *, field: str, hint: str | None = None,
                 source: str | None = None) -> None:
        super().__init__(message, source=source or _loading.get(), field=field, hint=hint)
        self.raw = message

    def at(self, source: str) -> TopologyError:
        return TopologyError(self.raw, field=self.field or "", hint=self.hint, source=source)


def _fail(where: str, fld: str, message: str, hint: str | None = None) -> TopologyError:
    return TopologyError(message, field=f"{where} field '{fld}'", hint=hint)


def _impair_text(where: str, fld: str, value: Any, base: str | None = None) -> str:
    """A link's impairments as the relay's --impair text, validated on top of ``base`` (a direction's own
    impairments add to the link's) with one-line errors naming the field."""
    from tunlab.relay.impair import ImpairError, parse_spec

    if isinstance(value, dict):
        text = " ".join(str(k) if v in ("", None, True) else f"{k}={v}" for k, v in value.items())
    elif isinstance(value, str):
        text = " ".join(value.split())
    else:
        raise _fail(where, fld, f"{value!r} is not a string or dict of impairments",
                    "write it like impair='delay=20ms loss=1%' or impair={'delay': '20ms'}")
    try:
        parse_spec(f"{base or ''} {text}")
    except ImpairError as exc:
        raise _fail(where, fld, exc.message, exc.hint) from None
    return text


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(f"node {name!r}", "name", f"{name!r} is not a valid node name",
                    "use 1-16 characters: a lowercase letter, then lowercase letters, digits or '_'")


def _check_host(where: str, host: object) -> None:
    if host is not None and (not isinstance(host, str) or not _HOST_RE.match(host)):
        raise _fail(where, "host", f"{host!r} is not a host name",
                    "name a host of the inventory (docs/multihost.md), or leave host unset")


def _tuple(obj: Any, attr: str) -> None:
    """Let users pass lists: store them as tuples (the dataclasses are frozen)."""
    value = getattr(obj, attr)
    if isinstance(value, list):
        object.__setattr__(obj, attr, tuple(value))


def _ipv4(where: str, fld: str, text: object) -> ipaddress.IPv4Address:
    try:
        if not isinstance(text, str):
            raise ValueError
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _fail(where, fld, f"{text!r} is not an IPv4 address", "write it like 172.16.0.1") from None


def _ipv4_iface(where: str, fld: str, text: object) -> ipaddress.IPv4Interface:
    try:
        if not isinstance(text, str) or "/" not in text:
            raise ValueError
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise _fail(where, fld, f"{text!r} is not an IPv4 address with a prefix length",
                    "write it like 10.0.0.1/30") from None
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise _fail(where, fld, f"{text} is the network or broadcast address of {net}",
                    "pick a host address inside the subnet")
    return iface


def _ip_iface(where: str, fld: str, text: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An underlay address with its prefix length: IPv4 (10.0.0.1/30) or IPv6 (fd01::1/64)."""
    if isinstance(text, str) and ":" in text:
        try:
            if "/" not in text:
                raise ValueError
            iface6 = ipaddress.IPv6Interface(text)
        except ValueError:
            raise _fail(where, fld, f"{text!r} is not an IPv6 address with a prefix length",
                        "write it like fd01::1/64") from None
        if iface6.ip == iface6.network.network_address and iface6.network.prefixlen < 127:
            raise _fail(where, fld, f"{text} is the subnet-router anycast address of {iface6.network}",
                        "pick a host address inside the subnet")
        return iface6
    return _ipv4_iface(where, fld, text)


def _ipv4_net(where: str, fld: str, text: object) -> ipaddress.IPv4Network:
    try:
        if not isinstance(text, str):
            raise ValueError
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise _fail(where, fld, f"{text!r} is not an IPv4 prefix", "write it like 172.16.1.0/24") from None


def _ip(where: str, fld: str, text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An overlay address: IPv4 or IPv6."""
    try:
        if not isinstance(text, str):
            raise ValueError
        return ipaddress.ip_address(text)
    except ValueError:
        raise _fail(where, fld, f"{text!r} is not an IPv4 or IPv6 address",
                    "write it like 172.16.0.1 or fd00:16::1") from None


def _ip_net(where: str, fld: str, text: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An overlay prefix: IPv4 or IPv6."""
    try:
        if not isinstance(text, str):
            raise ValueError
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _fail(where, fld, f"{text!r} is not an IPv4 or IPv6 prefix",
                    "write it like 172.16.1.0/24 or fd00:16:1::/64") from None


def _check_lab_range(where: str, fld: str, net: Any) -> None:
    n = net.network if isinstance(net, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)) else net
    if n.is_loopback or n.is_multicast or n.is_link_local or n.is_unspecified or n.is_reserved:
        raise _fail(where, fld, f"{n} is not usable inside a lab (loopback, multicast, link-local or reserved)",
                    "use private ranges such as 10.0.0.0/8 or 172.16.0.0/12")


# ---------------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Endpoint:
    """A host at the end of the chain (sender, receiver, or both): its TUN carries the overlay address."""

    name: str
    overlay: str  # IPv4 or IPv6 address inside Topology.overlay_net, without prefix length
    overlay6: str | None = None  # dual stack: the IPv6 address inside Topology.overlay_net6
    host: str | None = None  # labs across hosts: the inventory host it must run on (else the placer picks)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_host(self.where, self.host)
        _ip(self.where, "overlay", self.overlay)
        if self.overlay6 is not None and _ip(self.where, "overlay6", self.overlay6).version != 6:
            raise _fail(self.where, "overlay6", f"{self.overlay6} is not an IPv6 address", "write it like fd00:16::1")

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.overlay,) + ((self.overlay6,) if self.overlay6 else ())

    @property
    def where(self) -> str:
        return f"node '{self.name}'"


@dataclass(frozen=True)
class Route:
    """An extra route in a kernel VNF: ``unicast`` goes out of the node's TUN; the others drop."""

    dst: str
    type: RouteType = "unicast"


@dataclass(frozen=True)
class Vnf:
    """A VNF in the chain. ``kernel``: packets go through the namespace's kernel (nftables ``nft`` ruleset
    text and extra ``routes`` apply); ``hook``: the relay calls ``hook(packet: bytes) -> bytes | None``.
    ``hook`` is a top-level function or ``"path/file.py:func"`` (relative to the topology file) or
    ``"package.module:func"``."""

    name: str
    overlay: str
    kind: VnfKind = "kernel"
    nft: str | None = None
    routes: tuple[Route, ...] = ()
    hook: Callable[[bytes], bytes | None] | str | None = None
    overlay6: str | None = None  # dual stack: the IPv6 address inside Topology.overlay_net6
    #: NSH service paths (issue 18): this VNF's SF is NSH-aware, ``func(nsh_header + inner: bytes) -> bytes |
    #: None`` (it decrements the SI and may change the metadata); without it the relay's NSH proxy hands
    #: the inner packet to the kernel (or the NSH-unaware ``hook``)
    nsh_hook: Callable[[bytes], bytes | None] | str | None = None
    #: the MD type 1 context (32 hex digits) this NSH-aware SF is declared to write: later hops must carry it
    nsh_context: str | None = None
    host: str | None = None  # labs across hosts: the inventory host it must run on (else the placer picks)

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.overlay,) + ((self.overlay6,) if self.overlay6 else ())

    def __post_init__(self) -> None:
        _check_name(self.name)
        _tuple(self, "routes")
        w = self.where
        _check_host(w, self.host)
        _ip(w, "overlay", self.overlay)
        if self.overlay6 is not None and _ip(w, "overlay6", self.overlay6).version != 6:
            raise _fail(w, "overlay6", f"{self.overlay6} is not an IPv6 address", "write it like fd00:16::1")
        if self.kind not in ("kernel", "hook"):
            raise _fail(w, "kind", f"{self.kind!r} is not a VNF kind", "use 'kernel' or 'hook'")
        if self.kind == "hook":
            if self.hook is None:
                raise _fail(w, "hook", "a hook VNF needs a hook",
                            "give a function or 'file.py:func', or use kind='kernel'")
            if self.nft is not None or self.routes:
                fld = "nft" if self.nft is not None else "routes"
                raise _fail(w, fld, "a hook VNF does not pass packets through its kernel",
                            "remove it, or use kind='kernel'")
        elif self.hook is not None:
            raise _fail(w, "hook", "a kernel VNF takes no hook", "set kind='hook' to use a hook")
        if self.nft is not None and (not isinstance(self.nft, str) or not self.nft.strip()):
            raise _fail(w, "nft", "the nftables ruleset is empty or not text",
                        "give the ruleset as text (what `nft -f` reads) or leave nft unset")
        for i, r in enumerate(self.routes):
            if not isinstance(r, Route):
                raise _fail(w, f"routes[{i}]", f"{r!r} is not a Route", "write Route('172.16.9.0/24')")
            net = _ip_net(w, f"routes[{i}].dst", r.dst)
            _check_lab_range(w, f"routes[{i}].dst", net)
            if r.type not in ROUTE_TYPES:
                raise _fail(w, f"routes[{i}].type", f"{r.type!r} is not a route type",
                            f"use one of {', '.join(ROUTE_TYPES)}")
        if isinstance(self.hook, str) and not re.match(r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$", self.hook):
            raise _fail(w, "hook", f"{self.hook!r} is not a hook spec",
                        "write 'path/file.py:func' or 'package.module:func'")
        if self.hook is not None and not isinstance(self.hook, str) and not callable(self.hook):
            raise _fail(w, "hook", f"{self.hook!r} is neither a function nor a 'file.py:func' spec",
                        "give a top-level function or 'path/file.py:func'")
        if self.nsh_hook is not None and not callable(self.nsh_hook) and not (
                isinstance(self.nsh_hook, str) and re.match(r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$", self.nsh_hook)):
            raise _fail(w, "nsh_hook", f"{self.nsh_hook!r} is not a hook spec",
                        "write 'path/file.py:func' or 'package.module:func'")
        if self.nsh_context is not None:
            if self.nsh_hook is None:
                raise _fail(w, "nsh_context", "only an NSH-aware SF writes metadata", "add nsh_hook, or drop it")
            if not isinstance(self.nsh_context, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", self.nsh_context):
                raise _fail(w, "nsh_context", f"{self.nsh_context!r} is not 16 bytes of hex",
                            "write the MD type 1 context as 32 hex digits")

    @property
    def where(self) -> str:
        return f"node '{self.name}'"


Node = Endpoint | Vnf


# ---------------------------------------------------------------------------------------------- links


@dataclass(frozen=True)
class Link:
    """An underlay veth between nodes ``a`` and ``b`` and the relay hop over it.

    UDP: both relays bind their address and port and send to each other. TCP: ``b`` listens on
    ``b_addr:b_port`` and ``a`` connects to it (put ``a`` on the sender's side)."""

    a: str
    b: str
    a_addr: str  # "10.0.0.1/30"
    b_addr: str
    transport: Transport = "udp"
    a_port: int = DEFAULT_PORT
    b_port: int = DEFAULT_PORT
    #: traffic shaping of the underlay veth, both directions: {"bw": Mbit/s}; netem options (delay, loss,
    #: jitter) are refused on kernels without netem instead of being silently ignored
    shaping: Any = None  # dict given, stored as tuple of (name, value) pairs
    #: impairments done by the relays (issue 17), both directions: "delay=20ms jitter=5ms loss=1%" or the
    #: same as a dict ({"delay": "20ms", "loss": "1%"}); any kernel, seeded and replayable
    impair: Any = None
    #: impairments of one direction only (a -> b, b -> a), on top of ``impair``
    impair_ab: Any = None
    impair_ba: Any = None

    def __post_init__(self) -> None:
        w = self.where
        for fld in ("impair", "impair_ab", "impair_ba"):
            value = getattr(self, fld)
            if value is not None:
                object.__setattr__(self, fld, _impair_text(w, fld, value, None if fld == "impair" else self.impair))
        if self.shaping is not None:
            from tunlab.model.shaping import LinkOptionError, parse_link_options

            if not isinstance(self.shaping, dict):
                raise _fail(w, "shaping", f"{self.shaping!r} is not a dict of link options",
                            "write it like shaping={'bw': 10} (Mbit/s)")
            try:
                parse_link_options(self.shaping, where="shaping")
            except LinkOptionError as exc:
                raise _fail(w, "shaping", exc.message.removeprefix("shaping: "), exc.hint) from None
            # frozen and hashable: keep the options as sorted (name, value) pairs; dict(link.shaping) reads them
            object.__setattr__(self, "shaping", tuple(sorted(self.shaping.items())))
        for side in ("a", "b"):
            if not isinstance(getattr(self, side), str) or not getattr(self, side):
                raise _fail(w, side, f"{getattr(self, side)!r} is not a node name", "give the node's name")
        if self.a == self.b:
            raise _fail(w, "b", "a link joins two different nodes", "link the node to its neighbour")
        ia = _ip_iface(w, "a_addr", self.a_addr)
        ib = _ip_iface(w, "b_addr", self.b_addr)
        _check_lab_range(w, "a_addr", ia)
        if ia.network != ib.network:
            raise _fail(w, "b_addr", f"{self.b_addr} is not in the same subnet as a_addr {self.a_addr}",
                        f"pick an address in {ia.network}")
        if ia.ip == ib.ip:
            raise _fail(w, "b_addr", f"both ends have the address {ia.ip}", "give each end its own address")
        if self.transport not in TRANSPORTS:
            raise _fail(w, "transport", f"{self.transport!r} is not a relay transport", "use 'udp' or 'tcp'")
        for p in ("a_port", "b_port"):
            v = getattr(self, p)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
                raise _fail(w, p, f"{v!r} is not a port number", "use 1-65535")

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    @property
    def where(self) -> str:
        return f"link '{self.name}'"

    def impairs(self) -> dict[str, str]:
        """Direction ("a>b" with node names) -> the relay's --impair text, for impaired directions."""
        out = {}
        for (x, y), own in (((self.a, self.b), self.impair_ab), ((self.b, self.a), self.impair_ba)):
            text = " ".join(t for t in (self.impair, own) if t)
            if text:
                out[f"{x}>{y}"] = text
        return out

    def joins(self, x: str, y: str) -> bool:
        return {self.a, self.b} == {x, y}


@dataclass(frozen=True)
class Path:
    """One way through the chain: endpoint, VNFs..., endpoint. Traffic flows both ways along it.

    Each relay on the path sends a packet toward the neighbour on the side of the node that owns its
    destination; ``prefixes`` adds destination prefixes that the last node stands for."""

    nodes: tuple[str, ...]
    prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "nodes")
        _tuple(self, "prefixes")


# ------------------------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    name: str
    endpoints: tuple[Endpoint, ...]
    vnfs: tuple[Vnf, ...]
    links: tuple[Link, ...]
    paths: tuple[Path, ...]
    overlay_net: str = DEFAULT_OVERLAY
    mtu: int = DEFAULT_MTU
    description: str = ""
    datapath: str = "auto"
    #: every link sealed with a key the lab makes (relay --psk-file; UDP links; the MTU loses 29 bytes)
    keyed: bool = False
    source: str | None = field(default=None, compare=False)
    #: dual stack: an IPv6 overlay beside an IPv4 ``overlay_net`` (every node then has ``overlay6``)
    overlay_net6: str | None = None
    #: run seed of the links' impairments (None: a fresh one per run, printed; `--seed` overrides)
    seed: int | None = None
    #: NSH mode (issue 18, docs/nsh.md): service paths with SPI, nodes, classifier fields and metadata;
    #: every link then carries VXLAN-GPE + NSH and every relay forwards by (SPI, SI)
    service_paths: tuple[ServicePath, ...] = ()
    _link_index: dict[frozenset[str], Link] = field(default_factory=dict, init=False, repr=False, compare=False)
    _route_table: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr in ("endpoints", "vnfs", "links", "paths", "service_paths"):
            _tuple(self, attr)
        if self.source is None and _loading.get() is not None:
            object.__setattr__(self, "source", _loading.get())
        try:
            _validate(self)
        except TopologyError as exc:
            if self.source and exc.source != self.source:
                raise exc.at(self.source) from None
            raise

    # -- lookups
    @property
    def nodes(self) -> tuple[Node, ...]:
        return (*self.endpoints, *self.vnfs)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def overlay_prefixlen(self) -> int:
        return ipaddress.ip_network(self.overlay_net).prefixlen

    def overlay_nets(self) -> tuple[str, ...]:
        """The overlay networks: ``overlay_net`` (IPv4 or IPv6), then ``overlay_net6`` in dual stack."""
        return (self.overlay_net,) + ((self.overlay_net6,) if self.overlay_net6 else ())

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions of the overlay, primary first: (4,), (6,) or (4, 6)."""
        return tuple(ipaddress.ip_network(n).version for n in self.overlay_nets())

    def links_of(self, name: str) -> list[Link]:
        return [lk for pair, lk in self._link_index.items() if name in pair]

    def link_between(self, x: str, y: str) -> Link | None:
        return self._link_index.get(frozenset((x, y)))

    def routes_for(self, name: str) -> dict[str, str]:
        """Destination prefix -> neighbour node, for the relay of node ``name`` (derived from the paths)."""
        return self._route_table[name]

    @property
    def nsh(self) -> bool:
        """NSH mode: the topology has service paths."""
        return bool(self.service_paths)

    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.source)) if self.source else os.getcwd()


def _routes(topo: Topology) -> dict[str, dict[str, str]]:
    """Per node: prefix -> neighbour, and which path asked for it (for conflict messages)."""
    table: dict[str, dict[str, tuple[str, int]]] = {n.name: {} for n in topo.nodes}
    for pi, path in enumerate(topo.paths):
        owners: list[tuple[int, str]] = [
            (j, str(ipaddress.ip_network(a))) for j, nm in enumerate(path.nodes) for a in topo.node(nm).addresses]
        owners += [(len(path.nodes) - 1, str(ipaddress.ip_network(p, strict=False))) for p in path.prefixes]
        for i, nm in enumerate(path.nodes):
            for j, prefix in owners:
                if j == i:
                    continue
                peer = path.nodes[i + 1] if j > i else path.nodes[i - 1]
                old = table[nm].get(prefix)
                if old is not None and old[0] != peer:
                    raise _fail(f"paths[{pi}]", "nodes",
                                f"node '{nm}' would send {prefix} to '{old[0]}' (paths[{old[1]}]) and to "
                                f"'{peer}' (paths[{pi}])",
                                "a relay sends one destination one way: give the paths different "
                                "destination prefixes")
                table[nm][prefix] = (peer, pi)
    return {n: {p: v[0] for p, v in t.items()} for n, t in table.items()}


def _validate(topo: Topology) -> None:
    if not isinstance(topo.name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", topo.name):
        raise _fail("topology", "name", f"{topo.name!r} is not a topology name",
                    "use letters, digits, '.', '_' or '-' (up to 64)")
    for attr, cls in (("endpoints", Endpoint), ("vnfs", Vnf), ("links", Link), ("paths", Path)):
        for i, item in enumerate(getattr(topo, attr)):
            if not isinstance(item, cls):
                raise _fail("topology", f"{attr}[{i}]", f"{item!r} is not a {cls.__name__}",
                            f"build it with tunlab.model.topology.{cls.__name__}(...)")
    if len(topo.endpoints) < 2:
        raise _fail("topology", "endpoints", f"{len(topo.endpoints)} endpoint(s); a lab needs at least two",
                    "add a sender and a receiver")
    if not isinstance(topo.mtu, int) or isinstance(topo.mtu, bool) or not 576 <= topo.mtu <= 65000:
        raise _fail("topology", "mtu", f"{topo.mtu!r} is not a usable overlay MTU", "use 576-65000 (1472 fits UDP over 1500)")
    if not isinstance(topo.keyed, bool):
        raise _fail("topology", "keyed", f"{topo.keyed!r} is not true or false", "write keyed=True")
    if topo.keyed:
        if topo.mtu == DEFAULT_MTU:  # the default leaves room for the seal (relay/seal.py: 29 bytes)
            object.__setattr__(topo, "mtu", DEFAULT_MTU - SEAL_OVERHEAD)
        elif topo.mtu > DEFAULT_MTU - SEAL_OVERHEAD:
            raise _fail("topology", "mtu", f"{topo.mtu} leaves no room for the seal of keyed links",
                        f"use at most {DEFAULT_MTU - SEAL_OVERHEAD}")
    if topo.seed is not None and (not isinstance(topo.seed, int) or isinstance(topo.seed, bool)
                                  or not 0 <= topo.seed < 2 ** 63):
        raise _fail("topology", "seed", f"{topo.seed!r} is not a seed", "use a whole number 0 .. 2**63-1")
    if topo.datapath not in DATAPATHS:
        raise _fail("topology", "datapath", f"{topo.datapath!r} is not a relay datapath",
                    f"use one of {', '.join(DATAPATHS)}; auto means gso between tunlab relays")
    overlay = _ip_net("topology", "overlay_net", topo.overlay_net)
    _check_lab_range("topology", "overlay_net", overlay)
    nets = [("overlay_net", overlay)]
    if topo.overlay_net6 is not None:
        net6 = _ip_net("topology", "overlay_net6", topo.overlay_net6)
        _check_lab_range("topology", "overlay_net6", net6)
        if overlay.version != 4 or net6.version != 6:
            raise _fail("topology", "overlay_net6", "dual stack is an IPv4 overlay_net and an IPv6 overlay_net6",
                        "e.g. overlay_net='172.16.0.0/16', overlay_net6='fd00:16::/64'")
        nets.append(("overlay_net6", net6))
    if any(net.version == 6 for _, net in nets) and topo.mtu < 1280:
        raise _fail("topology", "mtu", f"{topo.mtu} is below the IPv6 minimum MTU", "use 1280 or more")

    names: dict[str, Node] = {}
    addrs: dict[Any, str] = {}
    for n in topo.nodes:
        if n.name in names:
            raise _fail(n.where, "name", "two nodes have this name", "give every node its own name")
        names[n.name] = n
        if len(n.addresses) != len(nets):
            fld = "overlay6"
            raise _fail(n.where, fld, "needs an IPv6 address too (the overlay is dual stack)" if len(nets) == 2
                        else "is set but the topology has no overlay_net6",
                        "give every node overlay6 inside overlay_net6" if len(nets) == 2
                        else "set overlay_net6 on the topology, or drop overlay6")
        for (net_field, net), text, fld in zip(nets, n.addresses, ("overlay", "overlay6")):
            ip = ipaddress.ip_address(text)
            if ip.version != net.version or ip not in net or ip == net.network_address or \
                    (net.version == 4 and ip == net.broadcast_address):
                raise _fail(n.where, fld, f"{ip} is not a host address of {net_field} {net}",
                            f"pick an address inside {net}, or change {net_field}")
            if ip in addrs:
                raise _fail(n.where, fld, f"{ip} is also the overlay address of '{addrs[ip]}'",
                            "give every node its own overlay address")
            addrs[ip] = n.name

    subnets: list[tuple[int, int, Link]] = []
    pairs: set[frozenset[str]] = set()
    for lk in topo.links:
        w = lk.where
        for side in ("a", "b"):
            if getattr(lk, side) not in names:
                raise _fail(w, side, f"there is no node '{getattr(lk, side)}'",
                            f"use one of: {', '.join(names)}")
        pair = frozenset((lk.a, lk.b))
        if pair in pairs:
            raise _fail(w, "b", f"'{lk.a}' and '{lk.b}' are already linked", "one link per pair of nodes")
        pairs.add(pair)
        topo._link_index[pair] = lk
        net = ipaddress.ip_interface(lk.a_addr).network
        if any(net.version == o.version and net.overlaps(o) for _, o in nets):  # type: ignore[arg-type]
            raise _fail(w, "a_addr", f"{net} overlaps the overlay {overlay}",
                        "keep underlay and overlay addresses apart (e.g. underlay in 10.0.0.0/8)")
        subnets.append((net.version, int(net.network_address), int(net.broadcast_address), lk))
    subnets.sort(key=lambda s: (s[0], s[1], s[2]))
    for (v0, _, end, prev), (v1, start, _, lk) in zip(subnets, subnets[1:]):
        if v0 == v1 and start <= end:
            first, second = sorted((prev, lk), key=topo.links.index)
            raise _fail(second.where, "a_addr", f"{ipaddress.ip_interface(second.a_addr).network} overlaps "
                        f"the subnet of link '{first.name}'", "give every link its own subnet")
    for n in topo.nodes:
        lks = topo.links_of(n.name)
        if len({ipaddress.ip_interface(lk.a_addr).version for lk in lks}) > 1:
            raise _fail(n.where, "a_addr", "its links mix IPv4 and IPv6 underlay addresses",
                        "one relay has one socket: give all links of this node the same IP version")
        if len({lk.transport for lk in lks}) > 1:
            desc = ", ".join(f"{lk.transport} on '{lk.name}'" for lk in lks)
            raise _fail(n.where, "transport", f"its links use different transports ({desc})",
                        "one relay speaks one transport: use the same transport on all links of this node")
        ports = {lk.a_port if lk.a == n.name else lk.b_port for lk in lks
                 if lk.transport == "udp" or lk.b == n.name}  # the ends where this node's relay listens
        if len(ports) > 1:
            raise _fail(n.where, "port", f"its links listen on different ports ({', '.join(map(str, sorted(ports)))})",
                        "one relay listens on one port: give this node's link ends the same a_port/b_port")

    if not topo.paths:
        raise _fail("topology", "paths", "there is no path", "add Path(('sender', 'vnf1', ..., 'receiver'))")
    on_path: set[str] = set()
    used: set[frozenset[str]] = set()
    for pi, path in enumerate(topo.paths):
        w = f"paths[{pi}]"
        if len(path.nodes) < 2:
            raise _fail(w, "nodes", "a path has at least two nodes", "list endpoint, VNFs..., endpoint")
        for k, nm in enumerate(path.nodes):
            if nm not in names:
                raise _fail(w, "nodes", f"there is no node '{nm}'", f"use one of: {', '.join(names)}")
            is_end = k in (0, len(path.nodes) - 1)
            if is_end and not isinstance(names[nm], Endpoint):
                raise _fail(w, "nodes", f"'{nm}' is a VNF; a path starts and ends at an endpoint",
                            "list endpoint, VNFs..., endpoint")
            if not is_end and not isinstance(names[nm], Vnf):
                raise _fail(w, "nodes", f"'{nm}' is an endpoint; only VNFs sit inside a path",
                            "list endpoint, VNFs..., endpoint")
        if len(set(path.nodes)) != len(path.nodes):
            raise _fail(w, "nodes", "a node appears twice", "a path visits each node once")
        for x, y in zip(path.nodes, path.nodes[1:]):
            if topo.link_between(x, y) is None:
                raise _fail(w, "nodes", f"no link joins '{x}' and '{y}'", f"add Link('{x}', '{y}', ...)")
            used.add(frozenset((x, y)))
        for i, p in enumerate(path.prefixes):
            net = _ip_net(w, f"prefixes[{i}]", p)
            _check_lab_range(w, f"prefixes[{i}]", net)
        on_path.update(path.nodes)
    for n in topo.nodes:
        if n.name not in on_path:
            raise _fail(n.where, "name", "this node is on no path", "add it to a path or remove it")
    for lk in topo.links:
        if frozenset((lk.a, lk.b)) not in used:
            raise _fail(lk.where, "a", "no path uses this link", "add a path through it or remove it")
    object.__setattr__(topo, "_route_table", _routes(topo))
    for v in topo.vnfs:
        if v.hook is not None:
            hook_spec(v, topo.base_dir())
    _validate_service_paths(topo)


def _validate_service_paths(topo: Topology) -> None:
    """How the NSH service paths (model/nsh.py) fit the topology."""
    from tunlab.model import nsh
    from tunlab.relay import nsh as codec

    if not topo.service_paths:
        for v in topo.vnfs:
            if v.nsh_hook is not None:
                raise _fail(v.where, "nsh_hook", "an NSH-aware hook needs service paths",
                            "add service_paths to the topology, or drop nsh_hook")
        return
    if topo.keyed or any(lk.transport != "udp" for lk in topo.links):
        raise _fail("topology", "service_paths", "NSH service paths run over unkeyed UDP links (VXLAN-GPE)",
                    "use transport udp on every link and keyed=False")
    impaired = [lk for lk in topo.links if lk.impairs()]
    if impaired:  # the relays impair NSH datagrams, but the verdicts' decision logs follow inner packets only
        raise _fail(impaired[0].where, "impair", "link impairments are not checked together with NSH service "
                    "paths yet", "drop the impairments, or the service_paths")
    if topo.overlay_net6 is not None:
        raise _fail("topology", "service_paths", "NSH service paths are IPv4-overlay only here",
                    "drop overlay_net6")
    names = {n.name: n for n in topo.nodes}
    spis: dict[int, str] = {}
    for i, sp in enumerate(topo.service_paths):
        w = f"service_paths[{i}]"
        if not isinstance(sp, ServicePath):
            raise _fail("topology", w, f"{sp!r} is not a ServicePath", "build it with ServicePath(spi, nodes)")
        for fld, v, lo, hi in (("spi", sp.spi, 0, codec.MAX_SPI), ("si", sp.si, 2, 255), ("ttl", sp.ttl, 2, 63)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise _fail(w, fld, f"{v!r} is out of range", f"use {lo}..{hi}")
        for spi in (sp.spi, sp.rev_spi) if sp.rev_spi else (sp.spi,):
            if spi in spis:
                raise _fail(w, "spi", f"SPI {spi} is also used by {spis[spi]}", "give every path its own SPI")
            spis[spi] = w
        if len(sp.nodes) < 2 or len(set(sp.nodes)) != len(sp.nodes):
            raise _fail(w, "nodes", "a service path lists two or more nodes, each once", "endpoint, VNFs..., endpoint")
        for k, nm in enumerate(sp.nodes):
            if nm not in names:
                raise _fail(w, "nodes", f"there is no node '{nm}'", f"use one of: {', '.join(names)}")
            end = k in (0, len(sp.nodes) - 1)
            if end != isinstance(names[nm], Endpoint):
                raise _fail(w, "nodes", f"'{nm}' is {'a VNF' if end else 'an endpoint'}",
                            "a service path is endpoint, VNFs..., endpoint")
        for x, y in zip(sp.nodes, sp.nodes[1:]):
            if topo.link_between(x, y) is None:
                raise _fail(w, "nodes", f"no link joins '{x}' and '{y}'", "a service path follows the links")
        for nm in sp.skip:
            if nm not in sp.nodes[1:-1]:
                raise _fail(w, "skip", f"'{nm}' is not a VNF of this path", "list VNFs the path passes through")
        if sp.si - len(nsh.sf_nodes(sp)) < 1:
            raise _fail(w, "si", f"SI {sp.si} runs out before the path's {len(nsh.sf_nodes(sp))} SFs",
                        f"start at {len(nsh.sf_nodes(sp)) + 1} or more")
        if sp.ttl < len(sp.nodes):
            raise _fail(w, "ttl", f"TTL {sp.ttl} expires before the path's end", f"use {len(sp.nodes)} or more")
        try:
            codec.Rule.from_json(sp.rule(names[sp.nodes[0]].overlay, names[sp.nodes[-1]].overlay), w)
        except TunlabError as exc:  # noqa: PERF203
            raise _fail(w, "classifier", exc.message.removeprefix(f"{w}: "), exc.hint) from None
    try:
        nsh.relay_tables(topo, hook_spec)
    except TunlabError as exc:  # noqa: PERF203
        raise _fail("topology", "service_paths", exc.message, exc.hint) from None
    for v in topo.vnfs:
        if v.nsh_hook is not None and v.kind != "kernel":
            raise _fail(v.where, "nsh_hook", "an NSH-aware VNF is its hook: not also an NSH-unaware hook",
                        "drop hook/kind='hook', or nsh_hook")


# --------------------------------------------------------------------------------------- hooks


def hook_spec(vnf: Vnf, base_dir: str) -> str:
    """The ``--hook`` argument for a hook VNF: ``/abs/file.py:func`` or ``package.module:func``."""
    w, hook = vnf.where, vnf.hook
    if hook is None:
        raise _fail(w, "hook", "no hook", "give a function")
    if not isinstance(hook, str):
        name = getattr(hook, "__name__", "")
        qual = getattr(hook, "__qualname__", "")
        if not inspect.isfunction(hook) or qual != name or name == "<lambda>":
            raise _fail(w, "hook", f"{hook!r} is not a top-level function",
                        "the relay imports the hook in its own process: define it with def at the top of a file")
        src = inspect.getsourcefile(hook)
        if not src:
            raise _fail(w, "hook", f"cannot find the file that defines {name}", "give 'file.py:func' instead")
        return f"{os.path.abspath(src)}:{name}"
    target, func = hook.rsplit(":", 1)
    if target.endswith(".py") or "/" in target:
        path = target if os.path.isabs(target) else os.path.join(base_dir, target)
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except OSError as exc:
            raise _fail(w, "hook", f"cannot read {path}: {exc.strerror}",
                        "a relative path is relative to the topology file") from None
        except SyntaxError as exc:
            raise _fail(w, "hook", f"{path}:{exc.lineno}: {exc.msg}", "fix the hook file") from None
        if not any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body):
            raise _fail(w, "hook", f"{path} defines no top-level function '{func}'",
                        "name a function defined with def at the top of that file")
        return f"{os.path.abspath(path)}:{func}"
    try:
        found = importlib.util.find_spec(target) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _fail(w, "hook", f"cannot import module '{target}'",
                    "give 'path/file.py:func' or an importable 'package.module:func'")
    return hook


# --------------------------------------------------------------------------------------- builders


def linear_chain(n_vnfs: int, transport: Transport = "udp", *, name: str | None = None,
                 port: int = DEFAULT_PORT, overlay_net: str = DEFAULT_OVERLAY,
                 underlay_net: str = DEFAULT_UNDERLAY, mtu: int = DEFAULT_MTU,
                 vnf: Callable[[int, str, str], Vnf] | None = None,
                 shaping: dict[str, dict[str, Any]] | None = None, datapath: str = "auto",
                 prefixes: tuple[str, ...] | list[str] = (), overlay_net6: str | None = None,
                 impair: dict[str, Any] | None = None, seed: int | None = None,
                 service_paths: tuple[ServicePath, ...] | list[ServicePath] = ()) -> Topology:
    """sender - vnf1 - ... - vnfN - receiver, one /30 per link carved from ``underlay_net``.

    ``prefixes``: destination prefixes the receiver stands for (the path's ``prefixes``): the relays carry
    them toward the receiver, so a VNF's route or ruleset for them can be checked from a scenario.

    ``shaping`` maps link names ("vnf1-vnf2") to link options such as ``{"bw": 10}`` (Mbit/s); ``impair``
    maps link names to the relays' impairments of both directions ("delay=20ms loss=1%", issue 17).

    ``service_paths``: NSH mode (docs/nsh.md), e.g. ``[ServicePath(10, ("sender", "vnf1", "receiver"))]``.

    Overlay: sender = first host of ``overlay_net``, receiver = second, vnfI = 256 + I. ``vnf(i, name,
    overlay)`` builds VNF i (1-based) when given, e.g. to give one VNF an nftables ruleset."""
    if not isinstance(n_vnfs, int) or isinstance(n_vnfs, bool) or not 0 <= n_vnfs <= 4000:
        raise TopologyError(f"{n_vnfs!r} is not a number of VNFs", field="linear_chain field 'n_vnfs'",
                            hint="use 0-4000")
    ov = _ip_net("linear_chain", "overlay_net", overlay_net)
    ov6 = _ip_net("linear_chain", "overlay_net6", overlay_net6) if overlay_net6 else None
    un = _ip_net("linear_chain", "underlay_net", underlay_net)
    if ov.num_addresses < 260 + n_vnfs or un.num_addresses < 4 * (n_vnfs + 1):
        raise TopologyError(f"{n_vnfs} VNFs do not fit in {ov} / {un}", field="linear_chain field 'n_vnfs'",
                            hint="use bigger overlay_net / underlay_net")
    base = ov.network_address
    b6 = ov6.network_address if ov6 is not None else None

    def six(k: int) -> str | None:
        return str(b6 + k) if b6 is not None else None
    eps = (Endpoint("sender", str(base + 1), six(1)), Endpoint("receiver", str(base + 2), six(2)))
    vnfs = []
    for i in range(1, n_vnfs + 1):
        nm, addr = f"vnf{i}", str(base + 256 + i)
        made = vnf(i, nm, addr) if vnf else Vnf(nm, addr)
        if b6 is not None and made.overlay6 is None:
            from dataclasses import replace as _replace

            made = _replace(made, overlay6=six(256 + i))
        vnfs.append(made)
    order = ["sender", *(v.name for v in vnfs), "receiver"]
    links = []
    for k, (x, y) in enumerate(zip(order, order[1:])):
        sub = un.network_address + 4 * k
        plen = 30 if un.version == 4 else 126
        links.append(Link(x, y, f"{sub + 1}/{plen}", f"{sub + 2}/{plen}", transport, port, port,
                          shaping=(shaping or {}).get(f"{x}-{y}"), impair=(impair or {}).get(f"{x}-{y}")))
    for fld, given in (("shaping", shaping), ("impair", impair)):
        unknown = sorted(set(given or {}) - {lk.name for lk in links})
        if unknown:
            raise TopologyError(f"no link named {', '.join(unknown)}", field=f"linear_chain field '{fld}'",
                                hint=f"links are {', '.join(lk.name for lk in links)}")
    return Topology(name or f"linear{n_vnfs}", eps, tuple(vnfs), tuple(links), (Path(tuple(order), tuple(prefixes)),),
                    overlay_net=overlay_net, overlay_net6=overlay_net6, mtu=mtu, datapath=datapath, seed=seed,
                    description=f"sender, {n_vnfs} kernel VNF(s) in a line, receiver ({transport})",
                    service_paths=tuple(service_paths))
