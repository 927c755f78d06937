"""Checks: did each probe packet cross the chain as the scenario expects, encapsulated at every hop?

Pure (no root): the inputs are the chain (:class:`Chain`), the probes that were sent (:class:`Probe`) and
what every capture point saw (:class:`Captures`); the output is one :class:`FlowResult` per probe (a hop
table plus separate checks) and link-level checks (no bare inner packet, no outer fragment, clean TCP streams).

A probe's *path* is the ordered list of :class:`Step` objects it must cross: out of the sender's TUN, each
underlay link in the chain's direction, in and out of the TUN of every VNF whose kernel forwards, and into
the receiver's TUN. Replies walk the same path backwards. At each step the probe must be seen exactly once,
equal to what was sent with the TTL lowered once per kernel-forwarding VNF already crossed (checksums must
follow), unless the scenario says it is dropped at a node: then it must reach that node and nothing after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Packet, Raw

from tunlab.model.flows import Probe
from tunlab.traffic.decap import Frame, RelayEnd, Sighting, decode_link
from tunlab.verdict.masks import FieldDiff, Mask, decode

MAX_NEAREST = 3


# ---------------------------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class LinkInfo:
    """An underlay link of the chain, joining ``a`` (nearer the sender) and ``b``."""

    name: str
    a: RelayEnd
    b: RelayEnd
    transport: str = "udp"


@dataclass(frozen=True)
class Chain:
    """The nodes from sender to receiver, the links between them and which VNFs forward in their kernel."""

    nodes: tuple[str, ...]
    links: tuple[LinkInfo, ...]       # links[i] joins nodes[i] and nodes[i + 1]
    kernel_vnfs: frozenset[str] = frozenset()
    overlay: tuple[str, ...] = ()     # overlay addresses or networks (a packet to/from one is bare on a link)
    #: the kernel VNFs on the way back when they differ from ``kernel_vnfs`` (NSH: the reverse service path)
    reply_kernel_vnfs: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if len(self.links) != len(self.nodes) - 1:
            raise ValueError(f"a chain of {len(self.nodes)} nodes needs {len(self.nodes) - 1} links")
        for i, link in enumerate(self.links):
            ends = {link.a.node, link.b.node}
            if ends != {self.nodes[i], self.nodes[i + 1]}:
                raise ValueError(f"link {link.name} joins {sorted(ends)}, not "
                                 f"{self.nodes[i]} and {self.nodes[i + 1]}")

    @property
    def sender(self) -> str:
        return self.nodes[0]

    @property
    def receiver(self) -> str:
        return self.nodes[-1]

    def tun_point(self, node: str) -> str:
        return f"tun@{node}"

    def link_point(self, link: LinkInfo) -> str:
        return f"link:{link.name}"

    def steps(self, *, reverse: bool = False, include_vnf_tuns: bool = True) -> list[Step]:
        """The ordered steps of a packet from sender to receiver (or back, with ``reverse``)."""
        nodes = list(reversed(self.nodes)) if reverse else list(self.nodes)
        links = list(reversed(self.links)) if reverse else list(self.links)
        out = [Step(self.tun_point(nodes[0]), nodes[0], "out", 0, f"{nodes[0]} TUN (sent)")]
        dec = 0
        kernel = self.reply_kernel_vnfs if reverse and self.reply_kernel_vnfs is not None else self.kernel_vnfs
        for i, link in enumerate(links):
            src, dst = nodes[i], nodes[i + 1]
            before = tuple(nodes[1:i + 1])
            plain = link.name in (f"{src}-{dst}", f"{dst}-{src}")  # the model's default link name
            label = f"link {src}>{dst}" if plain else f"link {link.name} {src}>{dst}"
            out.append(Step(self.link_point(link), dst, "link", dec, label, src_node=src, dst_node=dst,
                            after=before))
            if i + 1 == len(links):
                out.append(Step(self.tun_point(dst), dst, "in", dec, f"{dst} TUN (delivered)", after=before))
            elif dst in kernel:
                if include_vnf_tuns:
                    out.append(Step(self.tun_point(dst), dst, "in", dec, f"{dst} TUN in", after=before))
                dec += 1
                if include_vnf_tuns:
                    out.append(Step(self.tun_point(dst), dst, "out", dec, f"{dst} TUN out", after=(*before, dst)))
        return out


@dataclass(frozen=True)
class Step:
    """One place on a packet's path: a TUN in one direction, or a link in one direction."""

    point: str        # capture point name (tun@NODE or link:NAME)
    node: str         # the node the packet is at after this step (for a link: the far end)
    direction: str    # "out" of / "in" to a TUN, or "link"
    ttl_dec: int      # kernel forwarding hops crossed before this step
    label: str        # for people: "l2 vnf1>vnf2", "vnf1 TUN in"
    src_node: str | None = None
    dst_node: str | None = None
    after: tuple[str, ...] = ()   # the VNFs whose work is done before this step (their rewrites show here)


# ------------------------------------------------------------------------------------------ identities
#
# A probe is followed by its *identity*: header fields a path legitimately leaves alone (not the TTL, not
# checksums), read straight from the bytes (no scapy: a check run looks at every captured packet once).
# ``head(data)`` gives those fields by name; ``key(head, masked)`` the identity with some fields left out --
# the ones a VNF on the way is declared to rewrite (a NAT: src and sport) -- so the probe is still followed
# after the rewrite. When the IP id (IPv6: the flow label) itself may change, the L4 payload joins the key.

ID_FIELDS = ("v", "src", "dst", "proto", "id", "sport", "dport", "seq", "ack", "itype", "iid", "iseq", "quote")
ALL_FIELDS = frozenset(ID_FIELDS) - {"v", "proto", "itype"}
# what a header rewrite nobody declared cannot change: the L4 payload, TCP sequence numbers, the echo seq
_FALLBACK = ALL_FIELDS - {"seq", "ack", "iseq"}
_SWAP = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}
_ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP6_ERRORS = frozenset({1, 2, 3, 4})
_ECHO = {(4, 8): "request", (4, 0): "reply", (6, 128): "request", (6, 129): "reply"}

Head = dict  # field name -> value (bytes addresses, ints, a tuple for a quoted packet)


def _quoted(data: bytes) -> tuple[object, ...] | None:
    """The identity of the packet an ICMP error quotes (truncated quotes are fine: headers come first)."""
    h = head(data, quote=False)
    if h is None:
        return None
    return (h["src"], h["dst"], h["proto"], h["id"], h["sport"], h["dport"], h["seq"], h["iid"], h["iseq"])


def head(data: bytes, *, quote: bool = True) -> Head | None:
    """The identity fields of an IPv4 or IPv6 packet (None when it is neither)."""
    n = len(data)
    if n < 20:
        return None
    v = data[0] >> 4
    if v == 4:
        ihl = (data[0] & 0x0F) * 4
        proto, ident, src, dst, ttl = data[9], int.from_bytes(data[4:6], "big"), data[12:16], data[16:20], data[8]
        total = int.from_bytes(data[2:4], "big")
        end = total if ihl <= total <= n else n
        l4 = ihl if not int.from_bytes(data[6:8], "big") & 0x1FFF else None  # a later fragment: no L4 header
    elif v == 6 and n >= 40:
        proto, ident, src, dst, ttl = data[6], int.from_bytes(data[1:4], "big") & 0xFFFFF, data[8:24], data[24:40], data[7]
        end = min(n, 40 + int.from_bytes(data[4:6], "big")) if int.from_bytes(data[4:6], "big") else n
        l4 = 40
    else:
        return None
    h: Head = {"v": v, "src": src, "dst": dst, "proto": proto, "id": ident, "ttl": ttl, "sport": None,
               "dport": None, "seq": None, "ack": None, "itype": None, "iid": None, "iseq": None, "quote": None,
               "flags": 0, "payload": b"", "plen": 0}
    if l4 is None:
        h["payload"] = data[ihl:end]
        return h
    if proto == 6 and end - l4 >= 20:
        h["sport"], h["dport"] = int.from_bytes(data[l4:l4 + 2], "big"), int.from_bytes(data[l4 + 2:l4 + 4], "big")
        h["seq"], h["ack"] = int.from_bytes(data[l4 + 4:l4 + 8], "big"), int.from_bytes(data[l4 + 8:l4 + 12], "big")
        h["flags"] = data[l4 + 13]
        start = l4 + (data[l4 + 12] >> 4) * 4
        h["payload"] = data[start:end]
        h["plen"] = max(0, end - start)
    elif proto == 17 and end - l4 >= 8:
        h["sport"], h["dport"] = int.from_bytes(data[l4:l4 + 2], "big"), int.from_bytes(data[l4 + 2:l4 + 4], "big")
        h["payload"] = data[l4 + 8:end]
    elif proto in (1, 58) and end - l4 >= 8:
        itype = data[l4]
        h["itype"] = itype
        body = data[l4 + 8:end]
        if (v, itype) in _ECHO:
            h["iid"], h["iseq"] = int.from_bytes(data[l4 + 4:l4 + 6], "big"), int.from_bytes(data[l4 + 6:l4 + 8], "big")
            h["payload"] = body
        elif quote and itype in (_ICMP4_ERRORS if v == 4 else _ICMP6_ERRORS):
            h["quote"] = _quoted(body)
            h["payload"] = body
        else:
            h["payload"] = body
    else:
        h["payload"] = data[l4:end]
    return h


def key(h: Head, masked: frozenset[str] = frozenset()) -> tuple[object, ...]:
    """The identity of a packet with the ``masked`` fields left out (the payload joins when the id is out)."""
    out = tuple(None if f in masked else h[f] for f in ID_FIELDS)
    return out + ((h["payload"],) if "id" in masked else (None,))


def identity(data: bytes) -> tuple[object, ...]:
    """What identifies a probe along its path whatever the path legitimately changes (TTL, checksums)."""
    h = head(data)
    return ("other", bytes(data)) if h is None else key(h)


def request_keys(h: Head) -> list[tuple[object, ...]]:
    """The keys under which the answers to the packet ``h`` are indexed (see :func:`answer_keys`)."""
    out: list[tuple[object, ...]] = []
    base = (h["src"], h["dst"])
    if _ECHO.get((h["v"], h["itype"])) == "request":
        out.append(("echo", *base, h["iid"], h["iseq"]))
    if h["proto"] == 6 and h["seq"] is not None:
        span = h["plen"] + (1 if h["flags"] & 0x02 else 0) + (1 if h["flags"] & 0x01 else 0)
        out.append(("ack", *base, h["sport"], h["dport"], (h["seq"] + span) & 0xFFFFFFFF))
        if h["flags"] & 0x10:  # a segment carrying ACK is reset with seq = its ack number (RFC 9293 3.10.7.1)
            out.append(("rst", *base, h["sport"], h["dport"], h["ack"]))
    out.append(("quote", *base, h["proto"], h["id"], h["sport"], h["dport"], h["seq"], h["iid"], h["iseq"]))
    return out


def answer_keys(h: Head) -> list[tuple[object, ...]]:
    """The requests the packet ``h`` answers, as :func:`request_keys` names them: an echo reply, a TCP
    segment acknowledging (SYN-ACK, RST-ACK, ACK) or resetting (RST with the request's ack number), or an
    ICMP error quoting the request."""
    back = (h["dst"], h["src"])
    if _ECHO.get((h["v"], h["itype"])) == "reply":
        return [("echo", *back, h["iid"], h["iseq"])]
    if h["proto"] == 6 and h["seq"] is not None:
        if h["flags"] & 0x10:
            return [("ack", *back, h["dport"], h["sport"], h["ack"])]
        if h["flags"] & 0x04:
            return [("rst", *back, h["dport"], h["sport"], h["seq"])]
        return []
    if h["quote"] is not None:
        return [("quote", *h["quote"][:2], *h["quote"][2:])]
    return []


def reply_matcher(sent: bytes) -> Callable[[bytes], bool]:
    """A predicate recognising the reply the receiver's kernel sends to ``sent``.

    ICMP echo -> echo reply with the same id and seq; TCP -> a segment back between the same ports that
    acknowledges it (SYN-ACK, RST-ACK) or resets it (RST with its ack number); anything -> an ICMP error
    quoting it (UDP: port unreachable)."""
    h = head(sent)
    wanted = set(request_keys(h)) if h is not None else set()

    def match(d: bytes) -> bool:
        r = head(d)
        return r is not None and any(k in wanted for k in answer_keys(r))
    return match


def lower_ttl(data: bytes, n: int) -> bytes:
    """``data`` with its TTL (hop limit) lowered by ``n`` and the IPv4 header checksum fixed."""
    if n <= 0 or len(data) < 20:
        return data
    b = bytearray(data)
    if b[0] >> 4 == 6:
        b[7] = max(0, b[7] - n)
        return bytes(b)
    b[8] = max(0, b[8] - n)
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\0\0"
    total = int.from_bytes(b[:ihl], "big") % 0xFFFF if ihl else 0
    total = 0xFFFF if total == 0 and any(b[:ihl]) else total
    b[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


# ------------------------------------------------------------------------------------- declared rewrites

# "Layer.field" a scenario may declare rewritten -> the identity fields that then cannot follow the packet
_IDENTITY_OF = {"src": "src", "dst": "dst", "id": "id", "fl": "id", "sport": "sport", "dport": "dport",
                "seq": "seq", "ack": "ack"}
L3_FIELDS = (("IP", ("tos", "id", "flags", "frag", "ttl", "src", "dst")),
             ("IPv6", ("tc", "fl", "hlim", "src", "dst")))
L4_FIELDS = (("UDP", ("sport", "dport")), ("TCP", ("sport", "dport", "seq", "ack", "window", "urgptr")),
             ("ICMP", ("id",)), ("ICMPv6EchoRequest", ("id",)), ("ICMPv6EchoReply", ("id",)))
REWRITE_GROUPS = ("L3", "L4", "any")


def _layer_class(name: str) -> type[Packet]:
    from scapy.layers import inet6

    return {"IP": IP, "ICMP": ICMP, "UDP": UDP, "TCP": TCP, "IPv6": inet6.IPv6,
            "ICMPv6EchoRequest": inet6.ICMPv6EchoRequest, "ICMPv6EchoReply": inet6.ICMPv6EchoReply}[name]


def rewrite_fields(specs: Sequence[str], *, reply: bool = False) -> tuple[frozenset[str], list[tuple[type[Packet], str]]]:
    """(identity fields left out, (layer, field) pairs not compared) for declared rewrites such as
    ``["IP.src", "UDP.sport"]``, ``["IP.tos"]`` or ``["L3"]``/``["L4"]``/``["any"]``. ``reply``: as the answer
    sees them (source and destination swapped)."""
    named: list[tuple[str, str]] = []
    for spec in specs:
        if spec in ("L3", "any"):
            named += [(layer, f) for layer, fs in L3_FIELDS for f in fs]
        if spec in ("L4", "any"):
            named += [(layer, f) for layer, fs in L4_FIELDS for f in fs]
        if spec not in REWRITE_GROUPS:
            layer, _, f = spec.partition(".")
            named.append((layer, f))
            if layer in ("UDP", "TCP") and f in ("sport", "dport"):  # a port is a port, whatever the protocol
                named.append(("TCP" if layer == "UDP" else "UDP", f))
            if layer == "IP" and f in ("src", "dst"):
                named.append(("IPv6", f))
    if reply:
        named += [(layer, _SWAP[f]) for layer, f in named if f in _SWAP]
    ident = frozenset(_IDENTITY_OF[f] for _, f in named if f in _IDENTITY_OF)
    if any(layer == "ICMP" for layer, _ in named) and "id" in {f for _, f in named}:
        ident |= {"iid"}
    fields = []
    for layer, f in dict.fromkeys(named):
        try:
            fields.append((_layer_class(layer), f))
        except KeyError:
            continue
    if ident:  # the packet an ICMP error quotes is rewritten with it (conntrack fixes the quote)
        ident |= {"quote"}
    return ident, fields


# ---------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class _Obs:
    ts: float
    packet: bytes
    outer: str
    pos: tuple[str, ...]   # (tun@NODE, in|out) or (link:NAME, from node, to node)
    head: Head | None


def _pos_label(pos: tuple[str, ...]) -> str:
    if pos[0].startswith("tun@"):
        return f"{pos[0][4:]} TUN {'out' if pos[1] == 'out' else 'in'}"
    return f"link {pos[0][5:]} {pos[1]}>{pos[2]}"


def _step_pos(step: Step) -> tuple[str, ...]:
    if step.direction == "link":
        return (step.point, str(step.src_node), str(step.dst_node))
    return (step.point, step.direction)


# --------------------------------------------------------------------------------------------- the probes


@dataclass
class Captures:
    """What each capture point saw: raw frames per point name (tun@NODE or link:NAME).

    ``links``: every underlay link of the lab (name -> :class:`LinkInfo`), so that links off a probe's
    chain are witnesses too (a packet leaking onto them is named). Every packet is decoded and indexed once
    (by identity, by the requests it answers); checks then look packets up instead of scanning."""

    frames: dict[str, list[Frame]] = field(default_factory=dict)
    sighting_cache: dict[str, list[Sighting]] = field(default_factory=dict)
    keys: dict[int, bytes] | None = None  # session keys of keyed links, to open their datagrams
    links: dict[str, LinkInfo] = field(default_factory=dict)
    #: the relays' impairment decisions (verdict/impairments.py ImpairLog), when the lab has any
    impairs: Any = None
    _obs: list[_Obs] | None = field(default=None, repr=False)
    _by_pos: dict[tuple[str, ...], list[_Obs]] = field(default_factory=dict, repr=False)
    _index: dict[frozenset[str], dict[tuple[object, ...], list[_Obs]]] = field(default_factory=dict, repr=False)
    _answers: dict[tuple[object, ...], list[_Obs]] | None = field(default=None, repr=False)

    def link_info(self, chain: Chain, name: str) -> LinkInfo | None:
        for lk in chain.links:
            if lk.name == name:
                return lk
        return self.links.get(name)

    def sightings(self, chain: Chain, link: LinkInfo) -> list[Sighting]:
        point = chain.link_point(link)
        if point not in self.sighting_cache:
            self.sighting_cache[point] = decode_link(self.frames.get(point, []), link.a, link.b,
                                                     link.transport, chain.overlay, keys=self.keys)
        return self.sighting_cache[point]

    def observations(self, chain: Chain) -> list[_Obs]:
        """Every inner packet seen anywhere: out of and into every TUN, each way on every link."""
        if self._obs is None:
            obs: list[_Obs] = []
            for point, frames in self.frames.items():
                if point.startswith("tun@"):
                    obs += [_Obs(f.ts, f.data, "", (point, "out" if f.outgoing else "in"), head(f.data))
                            for f in frames]
                elif point.startswith("link:"):
                    link = self.link_info(chain, point[5:])
                    if link is None:
                        continue
                    obs += [_Obs(s.ts, s.inner, s.outer, (point, str(s.src_node), str(s.dst_node)), head(s.inner))
                            for s in self.sightings(chain, link) if s.kind == "encap" and s.inner is not None]
            obs.sort(key=lambda o: o.ts)
            self._obs = obs
            for o in obs:
                self._by_pos.setdefault(o.pos, []).append(o)
        return self._obs

    def at(self, chain: Chain, pos: tuple[str, ...]) -> list[_Obs]:
        self.observations(chain)
        return self._by_pos.get(pos, [])

    def lookup(self, chain: Chain, masked: frozenset[str], k: tuple[object, ...]) -> list[_Obs]:
        """Every packet whose identity (with ``masked`` fields left out) is ``k``, in time order."""
        index = self._index.get(masked)
        if index is None:
            index = self._index[masked] = {}
            for o in self.observations(chain):
                if o.head is not None:
                    index.setdefault(key(o.head, masked), []).append(o)
        return index.get(k, [])

    def answers(self, chain: Chain, request: Head) -> list[_Obs]:
        """Every packet that answers ``request`` (echo reply, TCP ACK/RST, ICMP error quoting it)."""
        if self._answers is None:
            self._answers = {}
            for o in self.observations(chain):
                if o.head is not None:
                    for k in answer_keys(o.head):
                        self._answers.setdefault(k, []).append(o)
        found = [o for k in request_keys(request) for o in self._answers.get(k, [])]
        return sorted(found, key=lambda o: o.ts)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class HopResult:
    """What one step of a probe's path showed."""

    step: Step
    status: str                      # seen | missing | altered | duplicate | not expected | (n/a)
    outer: str = ""
    latency_ms: float | None = None
    diffs: list[FieldDiff] = field(default_factory=list)
    received: bytes | None = None
    expected_missing: bool = False   # after the node where the scenario drops the probe


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    hop: str | None = None            # the hop the failure is about
    last_seen: str | None = None      # where the packet was last seen
    expected: bytes | None = None
    nearest: list[bytes] = field(default_factory=list)

    def expected_lines(self) -> list[str]:
        return decode(self.expected) if self.expected else []

    def nearest_lines(self) -> list[list[str]]:
        return [decode(r) for r in self.nearest[:MAX_NEAREST]]


@dataclass
class FlowResult:
    probe: Probe
    hops: list[HopResult]
    reply_hops: list[HopResult]
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class ScenarioResult:
    """Everything a run of one scenario found (what the report and the JUnit XML are made of)."""

    name: str
    source: str = ""
    description: str = ""
    topology: str = ""
    chains: list[str] = field(default_factory=list)   # "sender > vnf1 > ... (udp)"
    run_id: str | None = None
    flows: list[FlowResult] = field(default_factory=list)
    links: list[CheckResult] = field(default_factory=list)
    error: str | None = None         # the run itself failed (lab did not come up, ...)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    results_dir: str | None = None
    seed: int | None = None          # the probes' seed: `tunlab run --seed N` replays the same packets

    @property
    def checks(self) -> list[CheckResult]:
        return [c for f in self.flows for c in f.checks] + self.links

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.flows) and not self.failed


def _masks(steps: Sequence[Step], probe: Probe, *, reply: bool = False, quote: bool = False
           ) -> list[tuple[frozenset[str], list[tuple[type[Packet], str]]]]:
    """Per step: (identity fields left out, fields not compared): the probe's ``ignore`` plus what the VNFs
    crossed before that step are declared to rewrite (``quote``: the packet is an ICMP error, whose quote
    the rewriting VNF rewrites too, so its body is not compared after it)."""
    declared = dict(probe.rewrites)
    out = []
    memo: dict[tuple[str, ...], tuple[frozenset[str], list[tuple[type[Packet], str]]]] = {}
    for step in steps:
        specs = tuple(s for node in step.after for s in declared.get(node, ()))
        if specs not in memo:
            ident, fields = rewrite_fields(specs, reply=reply)
            if quote and ident:
                fields.append((Raw, "load"))
            memo[specs] = (ident, list(probe.ignore) + fields)
        out.append(memo[specs])
    return out


def _mask(reference: bytes, step: Step, fields: Sequence[tuple[type[Packet], str]]) -> Mask:
    mask = Mask(lower_ttl(reference, step.ttl_dec))
    for layer, name in fields:
        try:
            mask.set_do_not_care_packet(layer, name)
        except ValueError:
            continue
    return mask


def _same_role(h: Head, ref: Head) -> bool:
    return h["src"] == ref["src"] or h["dst"] == ref["dst"]


def _walk(chain: Chain, caps: Captures, steps: list[Step], reference: bytes,
          masks: list[tuple[frozenset[str], list[tuple[type[Packet], str]]]], t0: float | None) -> list[HopResult]:
    ref = head(reference)
    rows = []
    for step, (ident, fields) in zip(steps, masks):
        pos = _step_pos(step)
        hits = [o for o in caps.lookup(chain, ident, key(ref, ident)) if o.pos == pos] if ref else []
        if not hits and ref is not None and (ref["payload"] or ref["seq"] is not None) and ident != _FALLBACK:
            # changed in a field nobody declared (a NAT without its rewrite): the same payload and sequence
            # numbers at this place, in the same role, is this probe altered -- EXPECTED/RECEIVED, not "lost"
            hits = [o for o in caps.lookup(chain, _FALLBACK, key(ref, _FALLBACK))
                    if o.pos == pos and o.head is not None and _same_role(o.head, ref)][:1]
        if not hits:
            rows.append(HopResult(step, "missing"))
            continue
        first = hits[0]
        expected = lower_ttl(reference, step.ttl_dec)
        diffs = [] if first.packet == expected else _mask(reference, step, fields).diff(first.packet)
        status = "duplicate" if len(hits) > 1 else ("altered" if diffs else "seen")
        latency = (first.ts - t0) * 1000 if t0 is not None else None
        rows.append(HopResult(step, status, first.outer, latency, diffs, first.packet))
    return rows


def _candidates(chain: Chain, caps: Captures, step: Step) -> list[bytes]:
    """Every inner packet at ``step`` (its direction), plus bare packets on a link: 'nearest' comes from these."""
    out = [o.packet for o in caps.at(chain, _step_pos(step))]
    if step.direction == "link":
        link = caps.link_info(chain, step.point[5:])
        if link is not None:
            out += [s.inner for s in caps.sightings(chain, link) if s.kind == "bare" and s.inner]
    return out


def _nearest(mask: Mask, candidates: Sequence[bytes], reference: bytes | None = None) -> list[bytes]:
    """The received packets that differ least from what was expected (a capped list)."""
    if reference is not None and len(candidates) > 3 * MAX_NEAREST:
        ref = head(reference)
        if ref is not None:  # a cheap first cut (identity fields in common), then scapy on a few
            def common(d: bytes) -> int:
                h = head(d)
                return -1 if h is None else sum(h[f] == ref[f] for f in ID_FIELDS) + (h["payload"] == ref["payload"])
            candidates = sorted(candidates, key=common, reverse=True)[:3 * MAX_NEAREST]

    def score(d: bytes) -> int:
        try:
            return len(mask.diff(d))
        except Exception:  # noqa: BLE001 - undecodable bytes are as far as can be
            return 1000
    return sorted(candidates, key=score)[:MAX_NEAREST]


# ---------------------------------------------------------------------------------------------- checks


def check_flow(chain: Chain, caps: Captures, probe: Probe) -> FlowResult:
    """All checks for one probe: every hop, delivery or drop point, the reply when one is expected, and
    every other capture point (it must be seen nowhere else)."""
    steps = chain.steps()
    masks = _masks(steps, probe)
    ref = head(probe.packet)
    sent = [o for o in caps.lookup(chain, frozenset(), key(ref)) if o.pos == _step_pos(steps[0])] if ref else []
    t0 = sent[0].ts if sent else None
    rows = _walk(chain, caps, steps, probe.packet, masks, t0)
    checks: list[CheckResult] = []
    if rows[0].status == "missing":
        checks.append(CheckResult("sent", False, f"never left {chain.sender} through its TUN: the sender's "
                                  "kernel did not route it there (check the overlay route)",
                                  hop=steps[0].label, expected=probe.packet))
        return FlowResult(probe, rows, [], checks)

    last = max(i for i, r in enumerate(rows) if r.status != "missing")
    upto = len(steps)
    why = _impaired(caps, steps, rows) if rows[-1].status == "missing" else None
    if probe.expect.delivered and why is not None and probe.expect.or_impaired:
        seen = steps[last].label
        checks.append(CheckResult("every hop", True, f"seen intact up to {seen}, then {why}"))
        checks.append(CheckResult("delivered", True, f"not delivered, as allowed: {why}"))
        checks.append(_witness_check(chain, caps, probe, steps, masks, None))
        return FlowResult(probe, rows, [], checks)
    if probe.expect.delivered:
        checks.append(_hops_check(chain, caps, steps, masks, rows, probe, "every hop", len(steps), why))
        checks.append(_delivery_check(chain, caps, steps, masks, rows, probe, last, why))
    else:
        where = probe.expect.dropped_at
        # every hop up to the drop point must still be right (into the VNF's TUN when its kernel drops)
        upto = max([i + 1 for i, s in enumerate(steps) if s.node == where and s.direction in ("link", "in")]
                   or [len(steps)])
        for row in rows[upto:]:
            row.expected_missing = True
        checks.append(_drop_check(chain, steps, rows, probe, last))
        checks.append(_hops_check(chain, caps, steps, masks, rows, probe, f"every hop up to {where}", upto))
    reply_rows: list[HopResult] = []
    reply_ref: bytes | None = None
    if probe.expect.reply:
        delivered = rows[-1].received if rows[-1].status != "missing" else None
        reply_rows, reply_check, reply_ref = _reply_check(chain, caps, probe, delivered, t0)
        rwhy = _impaired(caps, chain.steps(reverse=True), reply_rows) if not reply_check.passed else None
        if rwhy is not None:
            reply_check = CheckResult("reply", True, f"the reply was {rwhy}, as allowed") \
                if probe.expect.or_impaired else CheckResult(
                    "reply", False, f"the reply was {rwhy}", hop=reply_check.hop, last_seen=reply_check.last_seen,
                    expected=reply_check.expected, nearest=reply_check.nearest)
        checks.append(reply_check)
    checks.append(_witness_check(chain, caps, probe, steps, masks, reply_ref))
    return FlowResult(probe, rows, reply_rows, checks)


def _impaired(caps: Captures, steps: list[Step], rows: list[HopResult]) -> str | None:
    """"dropped by impairment on link X>Y (kind, decision #N)" when the first link where the packet went
    missing is one whose relay's decision log dropped it (found by the packet seen at the TUN before)."""
    log = caps.impairs
    if log is None:
        return None
    for i, (step, row) in enumerate(zip(steps, rows)):
        if row.status != "missing":
            continue
        prev = rows[i - 1] if i else None
        if step.direction != "link" or prev is None or prev.received is None or steps[i - 1].direction != "out":
            return None
        d = log.drop_of(prev.received, f"{step.src_node}>{step.dst_node}")
        if d is None:
            return None
        from tunlab.verdict.impairments import describe

        return describe(d)
    return None


def _failure(name: str, message: str, step: Step, row: HopResult, rows: list[HopResult], steps: list[Step],
             mask_bytes: bytes, candidates: list[bytes], mask: Mask, reference: bytes | None = None) -> CheckResult:
    seen = [s.label for s, r in zip(steps, rows) if r.status != "missing"]
    return CheckResult(name, False, message, hop=step.label, last_seen=seen[-1] if seen else None,
                       expected=mask_bytes, nearest=_nearest(mask, candidates, reference))


def _hops_check(chain: Chain, caps: Captures, steps: list[Step], masks: list[Any], rows: list[HopResult],
                probe: Probe, name: str, upto: int, why: str | None = None) -> CheckResult:
    for i, (step, row) in enumerate(zip(steps[:upto], rows[:upto])):
        if row.status == "seen":
            continue
        mask = _mask(probe.packet, step, masks[i][1])
        exp = bytes(mask.expected)
        where = f"on {step.label}" if step.direction == "link" else f"at {step.label}"
        if row.status == "missing":
            prev = [r for r in rows[:i] if r.status != "missing"]
            later = next((s for s, r in zip(steps[i + 1:upto], rows[i + 1:upto]) if r.status != "missing"), None)
            if later is not None:  # not lost: it went past this hop unseen (e.g. in outer fragments)
                msg = f"missing {where}, yet seen after it at {later.label}"
            elif why is not None:
                msg = f"missing {where}: {why}"
            else:
                msg = f"missing {where}: lost at {steps[i - 1].node if prev else chain.sender}"
            if step.direction == "link":
                msg += _link_hint(chain, caps, step)
            return _failure(name, msg, step, row, rows, steps, exp, _candidates(chain, caps, step), mask,
                            probe.packet)
        if row.status == "duplicate":
            return _failure(name, f"seen more than once {where}", step, row, rows, steps, exp,
                            [r for r in [row.received] if r], mask)
        detail = "; ".join(str(d) for d in row.diffs[:3])
        return _failure(name, f"altered {where}: {detail}" + _rewrite_hint(step, row, probe), step, row, rows,
                        steps, exp, [row.received] if row.received else [], mask)
    return CheckResult(name, True, f"seen once and intact on all {upto} hops" + _declared(probe, steps[:upto]))


def _rewrite_hint(step: Step, row: HopResult, probe: Probe) -> str:
    changed = {d.field for d in row.diffs}
    if changed & {"src", "dst", "sport", "dport", "id", "seq", "ack"}:
        vnfs = [n for n in step.after if n not in dict(probe.rewrites)]
        if vnfs:
            return (f" (if {vnfs[-1]} rewrites this on purpose, declare it: "
                    f"rewrites={{'{vnfs[-1]}': [...]}})")
    return ""


def _declared(probe: Probe, steps: Sequence[Step]) -> str:
    crossed = {n for s in steps for n in s.after}
    said = [f"{node}: {', '.join(specs)}" for node, specs in probe.rewrites if node in crossed]
    return f" (declared rewrites: {'; '.join(said)})" if said else ""


def _link_hint(chain: Chain, caps: Captures, step: Step) -> str:
    link = caps.link_info(chain, step.point[5:])
    kinds = {s.kind for s in caps.sightings(chain, link)} if link is not None else set()
    if "bare" in kinds:
        return " (a bare inner packet is on this link: the relay did not encapsulate)"
    if "fragment" in kinds:
        return " (outer IP fragments on this link: the TUN MTU leaves no room for the encapsulation)"
    if "stream-error" in kinds:
        return " (the relay's TCP stream on this link does not de-frame)"
    if "chunk-error" in kinds:
        return " (the relay's gso chunks on this link do not reassemble)"
    return ""


def _delivery_check(chain: Chain, caps: Captures, steps: list[Step], masks: list[Any], rows: list[HopResult],
                    probe: Probe, last: int, why: str | None = None) -> CheckResult:
    step, row = steps[-1], rows[-1]
    if row.status == "seen":
        return CheckResult("delivered", True, f"{chain.receiver} received it, equal to what was sent "
                           f"(TTL -{step.ttl_dec}, checksums valid)" + _declared(probe, steps))
    mask = _mask(probe.packet, step, masks[-1][1])
    exp = bytes(mask.expected)
    if row.status == "missing":
        lost = steps[last]
        how = why if why is not None else f"lost at {lost.node}"
        return _failure("delivered", f"never reached {chain.receiver}: last seen on {lost.label}, {how}", step, row, rows, steps, exp, _candidates(chain, caps, step), mask,
                        probe.packet)
    if row.status == "duplicate":
        return _failure("delivered", f"{chain.receiver} received it more than once", step, row, rows, steps,
                        exp, [row.received] if row.received else [], mask)
    first_bad = next((s for s, r in zip(steps, rows) if r.status == "altered"), step)
    return _failure("delivered", f"{chain.receiver} received it altered (first altered at {first_bad.label}): "
                    + "; ".join(str(d) for d in row.diffs[:3]), step, row, rows, steps, exp,
                    [row.received] if row.received else [], mask)


def _drop_check(chain: Chain, steps: list[Step], rows: list[HopResult], probe: Probe, last: int) -> CheckResult:
    where = probe.expect.dropped_at
    lost = steps[last]
    after = [(s, r) for s, r in zip(steps[last + 1:], rows[last + 1:])]
    name = f"dropped at {where}"
    if last == len(steps) - 1:
        return CheckResult(name, False, f"not dropped: {chain.receiver} received it", hop=steps[-1].label,
                           last_seen=lost.label, expected=probe.packet)
    gaps = [s for s, r in zip(steps[:last], rows[:last]) if r.status == "missing"]
    if lost.node != where:
        return CheckResult(name, False, f"dropped at {lost.node}, not at {where}: last seen on {lost.label}",
                           hop=lost.label, last_seen=lost.label, expected=probe.packet)
    if gaps or any(r.status != "missing" for _, r in after):
        odd = gaps[0].label if gaps else after[0][0].label
        return CheckResult(name, False, f"seen past a gap: missing on {odd} but seen later", hop=odd,
                           last_seen=lost.label, expected=probe.packet)
    return CheckResult(name, True, f"reached {where} ({lost.label}) and went no further")


def _reply_check(chain: Chain, caps: Captures, probe: Probe, delivered: bytes | None, t0: float | None
                 ) -> tuple[list[HopResult], CheckResult, bytes | None]:
    steps = chain.steps(reverse=True)
    start = _step_pos(steps[0])
    # the receiver answers what it received (after any declared rewrite), not what was sent
    request = head(delivered if delivered is not None else probe.packet)
    first = [o for o in caps.answers(chain, request) if o.pos == start] if request is not None else []
    if not first:
        return [HopResult(s, "missing") for s in steps], CheckResult(
            "reply", False, f"{chain.receiver} sent no reply into its TUN", hop=steps[0].label,
            expected=None, nearest=[o.packet for o in caps.at(chain, start)][:MAX_NEAREST]), None
    reference = first[0].packet
    ref_head = head(reference)
    masks = _masks(steps, probe, reply=True, quote=ref_head is not None and ref_head["quote"] is not None)
    rows = _walk(chain, caps, steps, reference, masks, t0)
    for i, (step, row) in enumerate(zip(steps, rows)):
        if row.status != "seen":
            mask = _mask(reference, step, masks[i][1])
            where = f"on {step.label}" if step.direction == "link" else f"at {step.label}"
            detail = (": " + "; ".join(str(d) for d in row.diffs[:3])) if row.status == "altered" else ""
            return rows, _failure("reply", f"reply {row.status} {where}{detail}", step, row, rows, steps,
                                  bytes(mask.expected),
                                  _candidates(chain, caps, step) if row.status == "missing"
                                  else [row.received] if row.received else [], mask, reference), reference
    sent_head = head(probe.packet)
    back = head(rows[-1].received or b"")
    if probe.rewrites and sent_head is not None and back is not None and \
            not any(k in set(request_keys(sent_head)) for k in answer_keys(back)):
        return rows, CheckResult("reply", False, f"the reply reached {chain.sender} but does not answer what it "
                                 "sent (a rewrite was not undone on the way back)", hop=steps[-1].label,
                                 expected=reference, nearest=[rows[-1].received or b""]), reference
    rtt = rows[-1].latency_ms
    return rows, CheckResult("reply", True, "came back through every hop"
                             + (f" (round trip {rtt:.2f} ms)" if rtt is not None else "")), reference


def _witness_check(chain: Chain, caps: Captures, probe: Probe, steps: list[Step], masks: list[Any],
                   reply_ref: bytes | None) -> CheckResult:
    """Every capture point is a witness: the probe (and its reply) must be seen nowhere off its path --
    not on another branch, not at a node it should never reach."""
    leaks: list[_Obs] = []
    paths = [(probe.packet, steps, masks)]
    if reply_ref is not None:
        back = chain.steps(reverse=True)
        paths.append((reply_ref, back, _masks(back, probe, reply=True, quote=True)))
    for reference, path, path_masks in paths:
        ref = head(reference)
        if ref is None:
            continue
        widest = frozenset().union(*(m[0] for m in path_masks))
        on_path = {_step_pos(s) for s in path}
        leaks += [o for o in caps.lookup(chain, widest, key(ref, widest)) if o.pos not in on_path]
    witnesses = len(caps.frames)
    if not leaks:
        return CheckResult("nowhere else", True, f"not seen off its path ({witnesses} capture points watched)")
    places = list(dict.fromkeys(_pos_label(o.pos) for o in leaks))
    return CheckResult("nowhere else", False, f"seen where it should never be: {', '.join(places[:6])}"
                       + (f" and {len(places) - 6} more places" if len(places) > 6 else ""),
                       hop=places[0], expected=probe.packet, nearest=[leaks[0].packet])


def check_links(chain: Chain, caps: Captures, links: Sequence[LinkInfo] | None = None) -> list[CheckResult]:
    """One check per underlay link (all of the chain's, or ``links``): no bare inner packet, no outer
    fragment, a TCP stream that de-frames, gso chunks that reassemble."""
    out = []
    for link in chain.links if links is None else links:
        sightings = caps.sightings(chain, link)
        bad = [s for s in sightings if s.kind in ("bare", "fragment", "stream-error", "chunk-error")]
        encap = sum(1 for s in sightings if s.kind == "encap")
        name = f"link {link.name}"
        if not bad:
            out.append(CheckResult(name, True, f"{encap} encapsulated packets, none bare"))
            continue
        first = bad[0]
        what = {"bare": "an inner packet travels bare (not encapsulated)",
                "fragment": "outer packets are fragmented",
                "stream-error": "the relay TCP stream does not de-frame",
                "chunk-error": "the relay's gso chunks do not reassemble"}[first.kind]
        out.append(CheckResult(name, False, f"{what} on {link.name} ({link.a.node}-{link.b.node}): "
                               f"{first.outer}; {len(bad)} such packet(s)", hop=link.name,
                               nearest=[s.inner for s in bad if s.inner][:MAX_NEAREST]))
    return out


class Arrivals:
    """A predicate over live captures, for waiting: has every probe that must arrive arrived (and its
    reply)? Incremental: each call looks only at the frames captured since the previous one."""

    def __init__(self, wanted: Sequence[tuple[Chain, Probe]]) -> None:
        self._delivered: dict[str, set[tuple[object, ...]]] = {}
        self._replies: dict[str, set[tuple[object, ...]]] = {}
        self._masked: dict[str, set[frozenset[str]]] = {}
        self._done: dict[str, int] = {}
        self._reply_keys: dict[tuple[object, ...], set[tuple[object, ...]]] = {}
        for chain, probe in wanted:
            h = head(probe.packet)
            if h is None or not probe.expect.delivered:
                continue
            steps = chain.steps()
            ident = _masks(steps[-1:], probe)[0][0]
            point = chain.tun_point(chain.receiver)
            self._delivered.setdefault(point, set()).add(key(h, ident))
            self._masked.setdefault(point, set()).add(ident)
            if probe.expect.reply:  # the answer to what was sent, once back at the sender
                self._replies.setdefault(chain.tun_point(chain.sender), set()).add(request_keys(h)[-1])
                self._reply_keys[request_keys(h)[-1]] = set(request_keys(h))
        self._left = sum(len(v) for v in self._delivered.values())
        self._answered: set[tuple[object, ...]] = set()

    def __call__(self, frames: dict[str, list[Frame]]) -> bool:
        for point in set(self._delivered) | set(self._replies):
            got = frames.get(point, [])
            start = self._done.get(point, 0)
            self._done[point] = len(got)
            for f in got[start:]:
                if f.outgoing:
                    continue
                h = head(f.data)
                if h is None:
                    continue
                for ident in self._masked.get(point, ()):
                    k = key(h, ident)
                    if k in self._delivered[point]:
                        self._delivered[point].discard(k)
                        self._left -= 1
                if point in self._replies:
                    for k in answer_keys(h):
                        self._answered.add(k)
        for point, pending in self._replies.items():
            for k in [k for k in pending if self._reply_keys[k] & self._answered]:
                pending.discard(k)
        return self._left <= 0 and not any(self._replies.values())
