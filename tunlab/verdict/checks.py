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
from functools import lru_cache

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.packet import Packet

from tunlab.model.flows import Probe
from tunlab.traffic.decap import Frame, RelayEnd, Sighting, decode_link
from tunlab.verdict.masks import FieldDiff, Mask, decode, parse_ip

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
        for i, link in enumerate(links):
            src, dst = nodes[i], nodes[i + 1]
            plain = link.name in (f"{src}-{dst}", f"{dst}-{src}")  # the model's default link name
            label = f"link {src}>{dst}" if plain else f"link {link.name} {src}>{dst}"
            out.append(Step(self.link_point(link), dst, "link", dec, label, src_node=src, dst_node=dst))
            if i + 1 == len(links):
                out.append(Step(self.tun_point(dst), dst, "in", dec, f"{dst} TUN (delivered)"))
            elif dst in self.kernel_vnfs:
                if include_vnf_tuns:
                    out.append(Step(self.tun_point(dst), dst, "in", dec, f"{dst} TUN in"))
                dec += 1
                if include_vnf_tuns:
                    out.append(Step(self.tun_point(dst), dst, "out", dec, f"{dst} TUN out"))
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


# --------------------------------------------------------------------------------------------- the probes


@dataclass
class Captures:
    """What each capture point saw: raw frames per point name (tun@NODE or link:NAME)."""

    frames: dict[str, list[Frame]] = field(default_factory=dict)
    sighting_cache: dict[str, list[Sighting]] = field(default_factory=dict)
    keys: dict[int, bytes] | None = None  # session keys of keyed links, to open their datagrams

    def sightings(self, chain: Chain, link: LinkInfo) -> list[Sighting]:
        point = chain.link_point(link)
        if point not in self.sighting_cache:
            self.sighting_cache[point] = decode_link(self.frames.get(point, []), link.a, link.b,
                                                     link.transport, chain.overlay, keys=self.keys)
        return self.sighting_cache[point]


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


# ------------------------------------------------------------------------------------------ identities


@lru_cache(maxsize=4096)
def _parsed(data: bytes) -> Packet:
    return parse_ip(data)


def identity(data: bytes) -> tuple[object, ...]:
    """What identifies a probe along its path whatever the path legitimately changes (TTL, checksums)."""
    pkt = _parsed(data)
    if not isinstance(pkt, IP):
        return ("other", bytes(data))
    tag: tuple[object, ...] = ()
    if ICMP in pkt and not isinstance(pkt[ICMP].payload, IPerror):
        tag = ("icmp", pkt[ICMP].type, pkt[ICMP].id, pkt[ICMP].seq)
    elif TCP in pkt:
        tag = ("tcp", pkt[TCP].sport, pkt[TCP].dport, pkt[TCP].seq)
    elif UDP in pkt:
        tag = ("udp", pkt[UDP].sport, pkt[UDP].dport)
    return (pkt.src, pkt.dst, pkt.proto, pkt.id) + tag


def reply_matcher(sent: bytes) -> Callable[[bytes], bool]:
    """A predicate recognising the reply the receiver's kernel sends to ``sent``.

    ICMP echo -> echo reply with the same id, seq and data; TCP -> a segment back between the same ports that
    acknowledges it (SYN-ACK, RST-ACK) or resets it (RST with its ack number); UDP -> ICMP port
    unreachable quoting it.
    """
    req = _parsed(sent)

    def swapped(p: Packet) -> bool:
        return isinstance(p, IP) and p.src == req.dst and p.dst == req.src

    if ICMP in req:
        icmp = req[ICMP]
        # identity only: whether the reply carries the right data is for the hop checks to say
        return lambda d: (swapped(p := _parsed(d)) and ICMP in p and p[ICMP].type == 0
                          and p[ICMP].id == icmp.id and p[ICMP].seq == icmp.seq)
    if TCP in req:
        tcp = req[TCP]
        span = len(bytes(tcp.payload)) + (1 if "S" in tcp.flags else 0) + (1 if "F" in tcp.flags else 0)
        want_ack = (tcp.seq + span) & 0xFFFFFFFF
        req_ack = tcp.ack if "A" in tcp.flags else None

        def tcp_reply(d: bytes) -> bool:
            p = _parsed(d)
            if not (swapped(p) and TCP in p and p[TCP].sport == tcp.dport and p[TCP].dport == tcp.sport):
                return False
            flags = p[TCP].flags
            if "A" in flags:  # SYN-ACK, or RST-ACK to a segment without ACK (RFC 9293 3.10.7.1)
                return bool(p[TCP].ack == want_ack)
            # a segment carrying ACK is reset with seq = its ack number and no ACK of its own
            return "R" in flags and req_ack is not None and p[TCP].seq == req_ack
        return tcp_reply
    if UDP in req:
        udp = req[UDP]
        return lambda d: (swapped(p := _parsed(d)) and ICMP in p and p[ICMP].type == 3
                          and IPerror in p and p[IPerror].id == req.id
                          and UDP in p[IPerror] and p[IPerror][UDP].sport == udp.sport)
    return lambda d: False


# ---------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class _Obs:
    ts: float
    packet: bytes
    outer: str


def _view(chain: Chain, caps: Captures, step: Step) -> list[_Obs]:
    """The inner packets seen at ``step``, in its direction."""
    if step.direction in ("in", "out"):
        want_out = step.direction == "out"
        return [_Obs(f.ts, f.data, "") for f in caps.frames.get(step.point, []) if f.outgoing == want_out]
    link = next(lk for lk in chain.links if chain.link_point(lk) == step.point)
    return [_Obs(s.ts, s.inner, s.outer) for s in caps.sightings(chain, link)
            if s.kind == "encap" and s.inner is not None
            and s.src_node == step.src_node and s.dst_node == step.dst_node]


def _expected_at(sent: bytes, step: Step, ignore: Sequence[tuple[type[Packet], str]]) -> Mask:
    pkt = parse_ip(sent).copy()
    if isinstance(pkt, IP) and step.ttl_dec:
        pkt.ttl = max(0, pkt.ttl - step.ttl_dec)
        pkt.chksum = None
    mask = Mask(pkt)
    for layer, name in ignore:
        mask.set_do_not_care_packet(layer, name)
    return mask


def _nearest(mask: Mask, candidates: Sequence[bytes]) -> list[bytes]:
    """The received packets that differ least from what was expected (a capped list)."""
    def score(d: bytes) -> int:
        try:
            return len(mask.diff(d))
        except Exception:  # noqa: BLE001 - undecodable bytes are as far as can be
            return 1000
    return sorted(candidates, key=score)[:MAX_NEAREST]


def _walk(chain: Chain, caps: Captures, steps: list[Step], reference: bytes,
          match: Callable[[bytes], bool], ignore: Sequence[tuple[type[Packet], str]],
          t0: float | None) -> list[HopResult]:
    rows = []
    for step in steps:
        obs = _view(chain, caps, step)
        hits = [o for o in obs if match(o.packet)]
        mask = _expected_at(reference, step, ignore)
        if not hits:
            rows.append(HopResult(step, "missing"))
            continue
        first = hits[0]
        diffs = mask.diff(first.packet)
        status = "duplicate" if len(hits) > 1 else ("altered" if diffs else "seen")
        latency = (first.ts - t0) * 1000 if t0 is not None else None
        rows.append(HopResult(step, status, first.outer, latency, diffs, first.packet))
    return rows


def _candidates(chain: Chain, caps: Captures, step: Step) -> list[bytes]:
    """Every inner packet at ``step`` (its direction), plus bare packets on a link: 'nearest' comes from these."""
    out = [o.packet for o in _view(chain, caps, step)]
    if step.direction == "link":
        link = next(lk for lk in chain.links if chain.link_point(lk) == step.point)
        out += [s.inner for s in caps.sightings(chain, link) if s.kind == "bare" and s.inner]
    return out


# ---------------------------------------------------------------------------------------------- checks


def check_flow(chain: Chain, caps: Captures, probe: Probe) -> FlowResult:
    """All checks for one probe: every hop, delivery or drop point, and the reply when one is expected."""
    steps = chain.steps()
    ident = identity(probe.packet)
    sent_obs = [o for o in _view(chain, caps, steps[0]) if identity(o.packet) == ident]
    t0 = sent_obs[0].ts if sent_obs else None
    rows = _walk(chain, caps, steps, probe.packet, lambda d: identity(d) == ident, probe.ignore, t0)
    checks: list[CheckResult] = []
    if rows[0].status == "missing":
        checks.append(CheckResult("sent", False, f"never left {chain.sender} through its TUN: the sender's "
                                  "kernel did not route it there (check the overlay route)",
                                  hop=steps[0].label, expected=probe.packet))
        return FlowResult(probe, rows, [], checks)

    last = max(i for i, r in enumerate(rows) if r.status != "missing")
    if probe.expect.delivered:
        checks.append(_hops_check(chain, caps, steps, rows, probe, "every hop", len(steps)))
        checks.append(_delivery_check(chain, caps, steps, rows, probe, last))
    else:
        where = probe.expect.dropped_at
        # every hop up to the drop point must still be right (into the VNF's TUN when its kernel drops)
        upto = max([i + 1 for i, s in enumerate(steps) if s.node == where and s.direction in ("link", "in")]
                   or [len(steps)])
        for row in rows[upto:]:
            row.expected_missing = True
        checks.append(_drop_check(chain, steps, rows, probe, last))
        checks.append(_hops_check(chain, caps, steps, rows, probe, f"every hop up to {where}", upto))
    reply_rows: list[HopResult] = []
    if probe.expect.reply:
        reply_rows, reply_check = _reply_check(chain, caps, probe, t0)
        checks.append(reply_check)
    return FlowResult(probe, rows, reply_rows, checks)


def _failure(name: str, message: str, step: Step, row: HopResult, rows: list[HopResult], steps: list[Step],
             mask_bytes: bytes, candidates: list[bytes], mask: Mask) -> CheckResult:
    seen = [s.label for s, r in zip(steps, rows) if r.status != "missing"]
    return CheckResult(name, False, message, hop=step.label, last_seen=seen[-1] if seen else None,
                       expected=mask_bytes, nearest=_nearest(mask, candidates))


def _hops_check(chain: Chain, caps: Captures, steps: list[Step], rows: list[HopResult], probe: Probe,
                name: str, upto: int) -> CheckResult:
    for step, row in zip(steps[:upto], rows[:upto]):
        if row.status == "seen":
            continue
        mask = _expected_at(probe.packet, step, probe.ignore)
        exp = bytes(mask.expected)
        where = f"on {step.label}" if step.direction == "link" else f"at {step.label}"
        if row.status == "missing":
            prev = [r for r in rows[:steps.index(step)] if r.status != "missing"]
            lost_at = steps[steps.index(step) - 1].node if prev else chain.sender
            msg = f"missing {where}: lost at {lost_at}"
            if step.direction == "link":
                msg += _link_hint(chain, caps, step)
            return _failure(name, msg, step, row, rows, steps, exp, _candidates(chain, caps, step), mask)
        if row.status == "duplicate":
            return _failure(name, f"seen more than once {where}", step, row, rows, steps, exp,
                            [r for r in [row.received] if r], mask)
        detail = "; ".join(str(d) for d in row.diffs[:3])
        return _failure(name, f"altered {where}: {detail}", step, row, rows, steps, exp,
                        [row.received] if row.received else [], mask)
    return CheckResult(name, True, f"seen once and intact on all {upto} hops")


def _link_hint(chain: Chain, caps: Captures, step: Step) -> str:
    link = next(lk for lk in chain.links if chain.link_point(lk) == step.point)
    kinds = {s.kind for s in caps.sightings(chain, link)}
    if "bare" in kinds:
        return " (a bare inner packet is on this link: the relay did not encapsulate)"
    if "fragment" in kinds:
        return " (outer IP fragments on this link: the TUN MTU leaves no room for the encapsulation)"
    if "stream-error" in kinds:
        return " (the relay's TCP stream on this link does not de-frame)"
    if "chunk-error" in kinds:
        return " (the relay's gso chunks on this link do not reassemble)"
    return ""


def _delivery_check(chain: Chain, caps: Captures, steps: list[Step], rows: list[HopResult], probe: Probe,
                    last: int) -> CheckResult:
    step, row = steps[-1], rows[-1]
    mask = _expected_at(probe.packet, step, probe.ignore)
    exp = bytes(mask.expected)
    if row.status == "seen":
        return CheckResult("delivered", True, f"{chain.receiver} received it, equal to what was sent "
                           f"(TTL -{step.ttl_dec}, checksums valid)")
    if row.status == "missing":
        lost = steps[last]
        return _failure("delivered", f"never reached {chain.receiver}: last seen on {lost.label}, lost at "
                        f"{lost.node}", step, row, rows, steps, exp, _candidates(chain, caps, step), mask)
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


def _reply_check(chain: Chain, caps: Captures, probe: Probe, t0: float | None
                 ) -> tuple[list[HopResult], CheckResult]:
    steps = chain.steps(reverse=True)
    match = reply_matcher(probe.packet)
    first = [o for o in _view(chain, caps, steps[0]) if match(o.packet)]
    if not first:
        return [HopResult(s, "missing") for s in steps], CheckResult(
            "reply", False, f"{chain.receiver} sent no reply into its TUN", hop=steps[0].label,
            expected=None, nearest=[o.packet for o in _view(chain, caps, steps[0])][:MAX_NEAREST])
    reference = first[0].packet
    ref_ident = identity(reference)
    rows = _walk(chain, caps, steps, reference, lambda d: identity(d) == ref_ident, probe.ignore, t0)
    for step, row in zip(steps, rows):
        if row.status != "seen":
            mask = _expected_at(reference, step, probe.ignore)
            where = f"on {step.label}" if step.direction == "link" else f"at {step.label}"
            detail = (": " + "; ".join(str(d) for d in row.diffs[:3])) if row.status == "altered" else ""
            return rows, _failure("reply", f"reply {row.status} {where}{detail}", step, row, rows, steps,
                                  bytes(mask.expected),
                                  _candidates(chain, caps, step) if row.status == "missing"
                                  else [row.received] if row.received else [], mask)
    rtt = rows[-1].latency_ms
    return rows, CheckResult("reply", True, "came back through every hop"
                             + (f" (round trip {rtt:.2f} ms)" if rtt is not None else ""))


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
