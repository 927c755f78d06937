"""Scenario files: which lab, what traffic, what to expect. ``sudo tunlab run scenarios/three_vnf.py``.

A scenario file is a Python module (``scenarios/*.py``) that sets these names:

``topology`` (required)
    The lab: a :class:`tunlab.model.Topology`, a function returning one, or the name of a topology file
    (``"three_vnf"`` = ``topologies/three_vnf.py``) or a path (relative to the scenario file).
``params`` (optional)
    Keyword arguments for the topology file's ``topology()`` function, e.g. ``{"transport": "tcp"}``.
``traffic`` (required)
    A list of flows, each sent from the sender's overlay address by a raw socket in the sender's namespace,
    so it leaves the sender's kernel through its TUN into its relay:

    - ``Ping(size=84)``: ICMP echo request; ``size`` is the IP packet length; ``size="mtu"`` fills the overlay MTU;
    - ``Udp(dport, size=..., payload=b"")``: a UDP datagram;
    - ``Tcp(dport, flags="S", payload=b"")``: a TCP segment (a SYN by default, or data with ``flags="PA"``).

    Every flow takes ``count`` (packets, 1), ``expect`` (below), ``src``/``dst`` (node names or, for ``dst``,
    an overlay address, IPv4 or IPv6), ``family`` (4 or 6: which overlay a node name means; default the
    topology's first), ``ttl`` (64; the hop limit in IPv6), ``ignore`` (fields the path may change, e.g.
    ``["IP.tos"]``), ``rewrites`` (below, for this flow) and ``name``.
``expect`` (optional)
    What flows without their own ``expect`` should do: ``"delivered"``, ``"reply"`` (delivered, and the
    receiver's kernel answer comes back through the chain: echo reply, SYN-ACK/RST, ICMP port unreachable),
    or ``"dropped at NODE"`` (reaches NODE and goes no further). Default: Ping and Tcp ``"reply"``, Udp
    ``"delivered"``.
``src``, ``dst`` (optional)
    Default sender and receiver nodes: the first and last node of the topology's first path.
``rewrites`` (optional)
    What VNFs change on purpose, for every flow that crosses them (a flow takes ``rewrites=`` too):
    ``{"vnf2": ["IP.src", "UDP.sport", "TCP.sport"]}`` (a NAT), ``{"vnf1": ["IP.tos"]}`` (DSCP marking), or
    the groups ``"L3"``, ``"L4"``, ``"any"``. The probe is still followed hop by hop through the rewrite (by
    the fields left alone; by its payload when the IP id may change), the declared fields are not compared
    after that VNF, and any other change still fails with EXPECTED/RECEIVED.
``description`` (optional)
    One line for the report.
``timeout`` (5 s), ``settle`` (0.3 s) (optional)
    How long to wait for expected packets; how long every link must stay silent before the checks run.

Example::

    from tunlab import Ping, Tcp, Udp

    topology = "three_vnf"
    params = {"transport": "udp"}
    traffic = [Ping(), Ping(size="mtu"), Udp(5000, size=200), Tcp(80), Tcp(80, flags="PA", payload=b"hi")]

Mistakes are reported as a :class:`tunlab.errors.DescriptionError` naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunlab.errors import DescriptionError, TunlabError
from tunlab.model.flows import (Expect, Flow, Ping, Probe, Tcp, Udp, check_rewrites, ignore_field, parse_expect,
                                rewrites_tuple)
from tunlab.model.topofile import import_hint, resolve_topology
from tunlab.model.topology import Topology, TopologyError, loading

__all__ = ["Ping", "Udp", "Tcp", "Flow", "Expect", "Probe", "Scenario", "PlannedProbe", "load_scenario", "parse_expect",
           "build_probes", "require_scenarios"]

_KNOWN = {"topology", "params", "traffic", "expect", "src", "dst", "description", "timeout", "settle", "rewrites"}


@dataclass(frozen=True)
class Scenario:
    """A loaded, checked scenario file."""

    name: str
    source: str
    topology: Topology
    traffic: tuple[Flow, ...]
    expect: str | None = None
    src: str | None = None
    dst: str | None = None
    description: str = ""
    timeout: float = 5.0
    settle: float = 0.3
    #: what VNFs change on purpose, for every flow crossing them (a flow's own ``rewrites`` adds to it)
    rewrites: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def with_topology(self, topology: Topology) -> Scenario:
        """The same scenario on another lab (tests use it to swap in a faulty VNF)."""
        return replace(self, topology=topology)


# ------------------------------------------------------------------------------------------- loading


def _fail(source: str, fld: str, message: str, hint: str | None = None) -> DescriptionError:
    return DescriptionError(message, source=source, field=fld, hint=hint)


def _load_module(path: Path) -> Any:
    src = str(path)
    mod_name = f"tunlab_scenario_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise DescriptionError("cannot load this file as Python", source=src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        with loading(src):  # a Topology built in the scenario file belongs to it (relative hook paths)
            spec.loader.exec_module(module)
    except DescriptionError:
        raise
    except SyntaxError as exc:
        raise DescriptionError(f"line {exc.lineno}: {exc.msg}", source=src) from None
    except Exception as exc:  # the user's code failed: one line, where it failed
        import traceback

        lines = [fr.lineno for fr in traceback.extract_tb(exc.__traceback__)
                 if os.path.abspath(fr.filename) == os.path.abspath(src)]
        where = f"line {lines[-1]}: " if lines else ""
        raise DescriptionError(f"{where}{type(exc).__name__}: {exc}", source=src, hint=import_hint(exc)) from None
    return module


def _topology(module: Any, src: str, path: Path) -> Topology:
    obj = getattr(module, "topology", None)
    params = getattr(module, "params", None) or {}
    if obj is None:
        raise _fail(src, "topology", "is missing",
                    "set topology = 'three_vnf' (a file in topologies/), a path, or a Topology")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise _fail(src, "params", f"{params!r} is not a dict of keyword arguments",
                    "write params = {'transport': 'tcp'}")
    try:
        try:
            with loading(src):  # likewise for a topology function defined in the scenario file
                return resolve_topology(obj, params, relative_to=path.parent, source=src)
        except DescriptionError as exc:
            if isinstance(obj, (str, os.PathLike)):  # the topology file's error, told from the scenario's side
                raise _restate(exc, src) from None
            raise
    except TopologyError as exc:
        raise exc.at(src) if exc.source is None else exc from None
    except DescriptionError:
        raise
    except TypeError as exc:
        raise _fail(src, "params", str(exc), "give only the parameters topology() takes") from None


def _restate(exc: DescriptionError, src: str) -> DescriptionError:
    """A topology file's error, re-stated for the scenario file that named the topology."""
    prefix = ", ".join(p for p in (exc.source, exc.field) if p)
    raw = exc.message[len(prefix) + 2:] if prefix and exc.message.startswith(prefix + ": ") else exc.message
    if exc.field == "--param":
        return _fail(src, "params", f"{raw} (topology file {exc.source})", exc.hint)
    where = f" (in topology file {exc.source}{', ' + exc.field if exc.field else ''})" if exc.source else ""
    return _fail(src, "topology", raw + where, exc.hint)


def _check_flow(i: int, flow: Any, src: str) -> None:
    where = f"traffic[{i}]"
    if not isinstance(flow, Flow) or type(flow) is Flow:
        raise _fail(src, where, f"{flow!r} is not a flow", "use Ping(...), Udp(...) or Tcp(...) "
                    "from tunlab.model.scenario")
    if not isinstance(flow.count, int) or isinstance(flow.count, bool) or not 1 <= flow.count <= 1000:
        raise _fail(src, f"{where}.count", f"{flow.count!r} is not a packet count", "use 1-1000")
    if not isinstance(flow.ttl, int) or not 1 <= flow.ttl <= 255:
        raise _fail(src, f"{where}.ttl", f"{flow.ttl!r} is not a TTL", "use 1-255")
    if flow.size is not None and flow.size != "mtu":
        if not isinstance(flow.size, int) or isinstance(flow.size, bool) or not \
                flow.header_len <= flow.size <= 65535:
            raise _fail(src, f"{where}.size", f"{flow.size!r} is not a packet size",
                        f"give the IP packet length ({flow.header_len}-65535) or 'mtu'")
    if not isinstance(flow.payload, bytes):
        raise _fail(src, f"{where}.payload", "the payload must be bytes", "write b'...'")
    if flow.payload and flow.size is not None and flow.kind != "icmp":
        raise _fail(src, f"{where}.size", "give either size or payload, not both")
    for port_name in ("dport", "sport"):
        port = getattr(flow, port_name, None)
        if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
            raise _fail(src, f"{where}.{port_name}", f"{port!r} is not a port", "use 1-65535")
    if isinstance(flow, Tcp) and (not flow.flags or set(flow.flags) - set("FSRPAUEC")):
        raise _fail(src, f"{where}.flags", f"{flow.flags!r} are not TCP flags", "use letters of FSRPAUEC, e.g. 'S'")
    if isinstance(flow.ignore, str) or not all(isinstance(x, str) for x in flow.ignore):
        raise _fail(src, f"{where}.ignore", f"{flow.ignore!r} is not a list of 'Layer.field' names",
                    "write ignore=['IP.tos']")
    for item in flow.ignore:
        ignore_field(item, src, f"{where}.ignore")


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load and check a scenario file (see the module docstring)."""
    p = Path(path)
    src = str(path)
    if not p.is_file():
        raise DescriptionError("no such scenario file", source=src, hint="give a path to a .py file in scenarios/")
    module = _load_module(p)
    topology = _topology(module, src, p)
    traffic = getattr(module, "traffic", None)
    if not isinstance(traffic, (list, tuple)) or not traffic:
        raise _fail(src, "traffic", "is missing or empty", "set traffic = [Ping(), Udp(5000)]")
    for i, flow in enumerate(traffic):
        _check_flow(i, flow, src)
    expect = getattr(module, "expect", None)
    if expect is not None:
        parse_expect(expect, default="delivered", source=src, where="expect")
    nodes = {n.name for n in topology.nodes}
    first = topology.paths[0].nodes
    sc_src = getattr(module, "src", None) or first[0]
    sc_dst = getattr(module, "dst", None) or first[-1]
    for fld, value in (("src", sc_src), ("dst", sc_dst)):
        if value not in nodes:
            raise _fail(src, fld, f"there is no node {value!r} in topology '{topology.name}'",
                        f"use one of: {', '.join(sorted(nodes))}")
    for i, flow in enumerate(traffic):
        exp = parse_expect(flow.expect if flow.expect is not None else expect,
                           default=flow.default_expect, source=src, where=f"traffic[{i}].expect")
        if exp.dropped_at is not None and exp.dropped_at not in nodes:
            raise _fail(src, f"traffic[{i}].expect", f"there is no node {exp.dropped_at!r}",
                        f"use one of: {', '.join(sorted(nodes))}")
        if flow.src is not None and flow.src not in nodes:
            raise _fail(src, f"traffic[{i}].src", f"there is no node {flow.src!r}",
                        f"use one of: {', '.join(sorted(nodes))}")
        if flow.dst is not None and flow.dst not in nodes:
            try:
                ipaddress.ip_address(flow.dst)
            except ValueError:
                raise _fail(src, f"traffic[{i}].dst", f"{flow.dst!r} is neither a node nor an IP address",
                            f"use one of: {', '.join(sorted(nodes))}, or an overlay address") from None
        if flow.family is not None and flow.family not in topology.families:
            raise _fail(src, f"traffic[{i}].family", f"the overlay of '{topology.name}' carries no IPv{flow.family}",
                        f"use family={' or '.join(map(str, topology.families))}, or give the topology "
                        "overlay_net6 (dual stack)" if flow.family in (4, 6) else "use 4 or 6")
    numbers: dict[str, float] = {}
    for fld, default in (("timeout", 5.0), ("settle", 0.3)):
        value = getattr(module, fld, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 600:
            raise _fail(src, fld, f"{value!r} is not a number of seconds", "use a number between 0 and 600")
        numbers[fld] = float(value)
    description = getattr(module, "description", None) or (module.__doc__ or "").strip().split("\n")[0]
    for name, value in vars(module).items():
        if name in _KNOWN or not name.islower() or name.startswith("_") or callable(value) \
                or isinstance(value, type(sys)):
            continue
        close = difflib.get_close_matches(name, sorted(_KNOWN), n=1, cutoff=0.75)
        if close:
            raise _fail(src, name, "is not a scenario field", f"did you mean '{close[0]}'?")
    kinds = {n.name: "endpoint" if n in topology.endpoints else "vnf" for n in topology.nodes}
    rewrites = check_rewrites(getattr(module, "rewrites", None), kinds, src, "rewrites")
    for i, flow in enumerate(traffic):
        check_rewrites(flow.rewrites, kinds, src, f"traffic[{i}].rewrites")
    sc = Scenario(name=p.stem, source=src, topology=topology, traffic=tuple(traffic), expect=expect,
                  src=sc_src, dst=sc_dst, description=description, timeout=numbers["timeout"],
                  settle=numbers["settle"], rewrites=rewrites)
    build_probes(sc)  # every flow can be built and routed: fail now, not after the lab is up
    return sc


@dataclass(frozen=True)
class PlannedProbe:
    """One packet to send: which flow it belongs to, the nodes it runs between, the packet and expectation."""

    flow_index: int
    src: str
    dst: str                    # the node whose TUN should receive it
    nodes: tuple[str, ...]      # the chain from src to dst
    probe: Probe


def chain_nodes(topology: Topology, src: str, dst: str) -> tuple[str, ...] | None:
    """The nodes from ``src`` to ``dst`` along one of the topology's paths (either way), or None."""
    for path in topology.paths:
        nodes = list(path.nodes)
        if src in nodes and dst in nodes:
            i, j = nodes.index(src), nodes.index(dst)
            if i != j:
                return tuple(nodes[i:j + 1]) if i < j else tuple(reversed(nodes[j:i + 1]))
    return None


def _address(node: Any, family: int) -> str | None:
    """The overlay address of ``node`` in IP version ``family`` (None when it has none)."""
    return next((a for a in node.addresses if ipaddress.ip_address(a).version == family), None)


def _destination(topology: Topology, src: str, dst: str, family: int | None = None) -> tuple[str, str]:
    """(receiving node, address) for a flow's ``dst``: a node name (its address in ``family``, default the
    topology's first) or an overlay address."""
    names = {n.name: n for n in topology.nodes}
    if dst in names:
        addr_s = _address(names[dst], family or topology.families[0])
        if addr_s is None:
            raise LookupError(f"'{dst}' has no IPv{family} overlay address")
        return dst, addr_s
    addr = ipaddress.ip_address(dst)
    for n in topology.nodes:
        if any(ipaddress.ip_address(a) == addr for a in n.addresses):
            return n.name, dst
    for path in topology.paths:
        if src in path.nodes and any(addr in ipaddress.ip_network(p, strict=False) for p in path.prefixes):
            return path.nodes[-1], dst
    raise LookupError(f"no path from '{src}' carries {dst}")


def build_probes(sc: Scenario, *, seed: int = 0) -> list[PlannedProbe]:
    """The packets of every flow, each with a unique IP id (and ICMP id/seq or ports) so it can be followed.

    ``seed`` varies ids, ports and sequence numbers between runs; the payload names the scenario and packet.
    """
    import random

    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    rnd = random.Random(seed)
    ip_id = rnd.randrange(0x1000, 0xE000)
    out: list[PlannedProbe] = []
    topo = sc.topology
    for i, flow in enumerate(sc.traffic):
        where = f"traffic[{i}]"
        src = flow.src or sc.src or topo.paths[0].nodes[0]
        try:
            dst_node, dst_ip = _destination(topo, src, flow.dst or sc.dst or topo.paths[0].nodes[-1], flow.family)
        except LookupError as exc:
            raise _fail(sc.source, f"{where}.dst", str(exc), "send between nodes on one path") from None
        nodes = chain_nodes(topo, src, dst_node)
        if nodes is None:
            raise _fail(sc.source, f"{where}.dst", f"no path joins '{src}' and '{dst_node}'",
                        "send between nodes on one path of the topology")
        expect = parse_expect(flow.expect if flow.expect is not None else sc.expect,
                              default=flow.default_expect, source=sc.source, where=f"{where}.expect")
        if flow.loss is not None:
            loss_rate(flow.loss, sc.source, f"{where}.loss")
            if not expect.delivered:
                raise _fail(sc.source, f"{where}.loss", "a loss expectation needs a flow that is delivered",
                            "drop loss= or expect delivery")
            expect = replace(expect, or_impaired=True)
        if expect.dropped_at is not None and expect.dropped_at not in nodes[1:]:
            raise _fail(sc.source, f"{where}.expect", f"'{expect.dropped_at}' is not on the way from "
                        f"'{src}' to '{dst_node}' ({' > '.join(nodes)})", "name a node of that chain")
        ignore = tuple(ignore_field(x, sc.source, f"{where}.ignore") for x in flow.ignore)
        declared: dict[str, tuple[str, ...]] = {}
        for node, specs in (*rewrites_tuple(sc.rewrites or ()), *rewrites_tuple(flow.rewrites or ())):
            declared[node] = declared.get(node, ()) + tuple(specs)
        rewrites = tuple((n, declared[n]) for n in nodes if n in declared)
        v6 = ipaddress.ip_address(dst_ip).version == 6
        src_ip = _address(topo.node(src), 6 if v6 else 4)
        if src_ip is None:
            raise _fail(sc.source, f"{where}.src", f"'{src}' has no IPv{6 if v6 else 4} overlay address",
                        "send from a node of that overlay")
        header_len = flow.header_len + (20 if v6 else 0)  # an IPv6 header is 40 bytes, not 20
        size = topo.mtu if flow.size == "mtu" else flow.size
        if size is not None and size > topo.mtu:
            raise _fail(sc.source, f"{where}.size", f"{size} bytes is more than the overlay MTU ({topo.mtu})",
                        "use size='mtu' for the largest packet the overlay carries")
        sport = getattr(flow, "sport", None) or rnd.randrange(20000, 60000)
        icmp_id = rnd.randrange(1, 0xFFFF)
        tcp_seq = rnd.randrange(0, 2**32)
        tcp_ack = rnd.randrange(0, 2**32)
        for k in range(flow.count):
            tag = f"tunlab {sc.name} {i}.{k} ".encode()
            if flow.payload:
                payload = flow.payload
            elif size is not None:
                n = size - header_len
                if n < 0:
                    raise _fail(sc.source, f"{where}.size", f"{size} bytes is less than the headers ({header_len})",
                                f"use at least {header_len}")
                payload = (tag * (n // len(tag) + 1))[:n]
            else:
                payload = b"" if flow.kind == "tcp" else tag
            # IPv4: a unique IP id per probe; IPv6 (no id): a unique flow label, which routers leave alone
            ip = IPv6(src=src_ip, dst=dst_ip, hlim=flow.ttl, fl=ip_id) if v6 else \
                IP(src=src_ip, dst=dst_ip, ttl=flow.ttl, id=ip_id)
            ip_id = (ip_id + 1) & 0xFFFF or 1
            if isinstance(flow, Ping):
                pkt = ip / (ICMPv6EchoRequest(id=icmp_id, seq=k + 1, data=payload) if v6
                            else ICMP(id=icmp_id, seq=k + 1) / payload)
            elif isinstance(flow, Udp):
                pkt = ip / UDP(sport=sport, dport=flow.dport) / payload
            else:
                assert isinstance(flow, Tcp)
                seq = (tcp_seq + k * max(len(payload), 1)) & 0xFFFFFFFF
                # a segment carrying ACK is reset with seq = its ack number (and IP id 0): each its own
                ack = (tcp_ack + k) & 0xFFFFFFFF if "A" in flow.flags else 0
                pkt = ip / TCP(sport=sport, dport=flow.dport, flags=flow.flags, seq=seq, ack=ack,
                               window=64240) / payload
            name = flow.label() + (f" #{k + 1}" if flow.count > 1 else "")
            out.append(PlannedProbe(i, src, dst_node, nodes, Probe(name, bytes(pkt), expect, ignore, rewrites)))
    return out


def loss_rate(value: Any, source: str, where: str) -> float:
    """A flow's ``loss`` ("5%", "0.05" or 0.05) as a probability, or a one-line error naming the field."""
    text = str(value).strip()
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise _fail(source, where, f"{value!r} is not a loss rate", "write e.g. loss='5%' or loss=0.05")
    return rate


def require_scenarios(paths: list[str]) -> list[Scenario]:
    """Load every file before anything runs, so a typo in the fifth file fails before the first lab."""
    if not paths:
        raise TunlabError("no scenario given", "e.g. tunlab run scenarios/three_vnf.py")
    return [load_scenario(p) for p in paths]
