"""Link impairments decided in the relay: seeded, reproducible delay, loss, duplication, reordering,
corruption, rate and link flapping, on kernels without netem (issue 17; the per-link stage of
docs/ARCHITECTURE.md, "Relay internals").

This module is the decision engine only: pure, no sockets, no clock of its own (the caller passes ``now``),
so every model is unit-tested for its statistics and a run can be replayed exactly. :class:`Impairer`
takes one packet and returns what leaves and when::

    imp = Impairer(parse_spec("delay=20ms jitter=5ms loss=1% rate=10mbit"), seed=7, link="vnf1-vnf2", direction="a>b")
    for data, send_at in imp.process(packet, now): ...       # [] = dropped; 2 items = duplicated

Reproducible: every impairment of every link and direction draws from its own random stream, derived from
(run seed, link, direction, impairment) by BLAKE2b, so adding an impairment on one link never changes
another's decisions, and the same seed with the same packets gives the same decision log, byte for byte.

Semantics follow netem's where it has them (a packet reordered is sent at once while the others wait their
delay; ``gap`` reorders every N-th packet; correlation mixes each draw with the previous one; the
Gilbert-Elliott and 4-state loss models take netem's parameters) so that a topology written for Mininet's
TCLink means the same here.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tunlab.errors import TunlabError

DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")
LOG_MAX = 100_000  # decisions kept in memory per direction (the relay writes the log out as it goes)


class ImpairError(TunlabError):
    """An impairment specification that cannot be honoured; the message names the option and the fix."""


# ------------------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class ImpairSpec:
    """What to do to the packets of one link direction. Times in seconds, probabilities in 0..1."""

    delay: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    delay_correlation: float = 0.0
    loss: float = 0.0                       # Bernoulli, unless a model below is given
    loss_correlation: float = 0.0
    gemodel: tuple[float, ...] = ()         # Gilbert-Elliott: p [r [1-h [1-k]]] (netem's order)
    loss_state: tuple[float, ...] = ()      # 4-state Markov: p13 [p31 [p32 [p23 [p14]]]] (netem's order)
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_gap: int = 0
    corrupt: float = 0.0
    corrupt_checksum: str = "valid"         # valid: checksums fixed after the flip; broken: left wrong
    rate: float = 0.0                       # bit/s; 0: unlimited
    limit: int = 1000                       # packets queued behind the rate before drops ("rate_queue")
    slot: tuple[float, float] = (0.0, 0.0)  # (min, max) seconds between transmission slots; (0, 0): off
    slot_packets: int = 0                   # packets per slot (0: any)
    flap: tuple[float, float] = (0.0, 0.0)  # (up seconds, down seconds) repeated from the start; (0, 0): off
    down: bool = False                      # the link is down (set at run time: `link down`)
    trace: str = ""                         # Mahimahi delivery trace (a file: one ms timestamp per line)

    @property
    def empty(self) -> bool:
        return self == ImpairSpec()

    def describe(self) -> str:
        base = ImpairSpec()
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) != getattr(base, f.name)) or "none"


_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)?$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?$", re.I)
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def _time(name: str, text: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise ImpairError(f"{name}={text!r} is not a time", "write e.g. 20ms, 250us or 1.5s")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}[m.group(2)]


def _prob(name: str, text: str) -> float:
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ImpairError(f"{name}={text!r} is not a probability", "write e.g. 1% or 0.01") from None
    if not 0.0 <= value <= 1.0:
        raise ImpairError(f"{name}={text!r} is out of range", "use 0%..100% (0..1)")
    return value


def _rate(name: str, text: str) -> float:
    m = _RATE.match(text.strip())
    if not m:
        raise ImpairError(f"{name}={text!r} is not a rate", "write e.g. 10mbit, 512kbit or 1gbit")
    return float(m.group(1)) * _RATE_UNITS[(m.group(2) or "bit").lower()]


def _int(name: str, text: str, lo: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ImpairError(f"{name}={text!r} is not a whole number") from None
    if value < lo:
        raise ImpairError(f"{name}={text!r} must be at least {lo}")
    return value


def parse_spec(text: str | dict[str, Any], base: ImpairSpec | None = None) -> ImpairSpec:
    """``"delay=20ms jitter=5ms/normal loss=1% duplicate=0.1% reorder=25%/gap=5 corrupt=0.1% rate=10mbit
    limit=100 slot=1ms-5ms/10 flap=10s/1s"`` (or the same as a dict) -> ImpairSpec, on top of ``base``.

    Correlations are written after a comma: ``delay=10ms,25%`` (delay correlation), ``loss=1%,50%``.
    Loss models: ``loss=gemodel:1%/20%/100%/0%`` (p/r/1-h/1-k) or ``loss=state:1%/20%``. Every error names
    the option and says how to write it."""
    items = list(text.items()) if isinstance(text, dict) else \
        [tuple(w.split("=", 1)) if "=" in w else (w, "") for w in text.split()]
    spec = base or ImpairSpec()
    changes: dict[str, Any] = {}
    for key, raw in items:
        key, value = str(key).strip().lower(), str(raw).strip()
        if not value and key not in ("down", "up"):
            raise ImpairError(f"impairment {key!r} needs a value", "write NAME=VALUE, e.g. delay=20ms")
        if key == "delay":
            main, _, corr = value.partition(",")
            changes["delay"] = _time(key, main)
            if corr:
                changes["delay_correlation"] = _prob("delay correlation", corr)
        elif key == "jitter":
            main, _, dist = value.partition("/")
            changes["jitter"] = _time(key, main)
            if dist:
                if dist not in DISTRIBUTIONS:
                    raise ImpairError(f"jitter distribution {dist!r} is unknown", f"use {', '.join(DISTRIBUTIONS)}")
                changes["distribution"] = dist
        elif key == "loss":
            if value.startswith(("gemodel:", "state:")):
                model, _, params = value.partition(":")
                probs = tuple(_prob(f"loss {model}", p) for p in params.split("/") if p)
                limit = 4 if model == "gemodel" else 5
                if not 1 <= len(probs) <= limit:
                    raise ImpairError(f"loss {model} takes 1 to {limit} probabilities separated by '/'")
                changes["gemodel" if model == "gemodel" else "loss_state"] = probs
            else:
                main, _, corr = value.partition(",")
                changes["loss"] = _prob(key, main)
                if corr:
                    changes["loss_correlation"] = _prob("loss correlation", corr)
        elif key in ("duplicate", "corrupt"):
            changes[key] = _prob(key, value.partition(",")[0])
        elif key == "checksum":
            if value not in ("valid", "broken"):
                raise ImpairError(f"checksum={value!r}", "use checksum=valid (fixed after a flip) or broken")
            changes["corrupt_checksum"] = value
        elif key == "reorder":
            main, _, gap = value.partition("/")
            changes["reorder"] = _prob(key, main)
            if gap:
                changes["reorder_gap"] = _int("reorder gap", gap.removeprefix("gap="), 1)
        elif key == "rate":
            changes["rate"] = _rate(key, value)
        elif key == "limit":
            changes["limit"] = _int(key, value, 1)
        elif key == "slot":
            span, _, pkts = value.partition("/")
            lo, _, hi = span.partition("-")
            changes["slot"] = (_time("slot", lo), _time("slot", hi or lo))
            if pkts:
                changes["slot_packets"] = _int("slot packets", pkts, 1)
        elif key == "flap":
            up, _, down = value.partition("/")
            changes["flap"] = (_time("flap up", up), _time("flap down", down or up))
        elif key in ("down", "up"):
            changes["down"] = key == "down"
        elif key == "trace":
            changes["trace"] = value
        else:
            raise ImpairError(f"{key!r} is not an impairment", "known: delay, jitter, loss, duplicate, reorder, "
                              "corrupt, checksum, rate, limit, slot, flap, trace, down, up")
    spec = replace(spec, **changes)
    if spec.jitter and not spec.delay:
        raise ImpairError("jitter needs a delay", "add delay=... (jitter varies it)")
    if spec.reorder and not spec.delay:
        raise ImpairError("reorder needs a delay", "add delay=...: reordered packets skip it, others wait")
    if spec.slot[1] < spec.slot[0]:
        raise ImpairError("slot=MIN-MAX needs MIN <= MAX")
    if spec.trace and spec.rate:
        raise ImpairError("trace= and rate= both pace the link", "keep one of them")
    return spec


def read_trace(path: str) -> list[float]:
    """A Mahimahi delivery trace: one timestamp in milliseconds per line, each an opportunity to deliver
    one packet (up to 1500 bytes); the trace repeats with the period of its last timestamp. -> seconds."""
    try:
        with open(path) as f:
            lines = [x.strip() for x in f]
    except OSError as exc:
        raise ImpairError(f"trace={path}: cannot read it ({exc.strerror})", "give a Mahimahi trace file") from None
    out: list[float] = []
    for i, line in enumerate(lines, 1):
        if not line:
            continue
        if not line.isdigit() or (out and int(line) < out[-1] * 1000):
            raise ImpairError(f"trace={path} line {i}: {line[:20]!r} is not a non-decreasing whole number of ms")
        out.append(int(line) / 1000)
    if not out or out[-1] <= 0:
        raise ImpairError(f"trace={path}: no delivery opportunity after 0 ms", "a trace needs a positive last time")
    return out


# ------------------------------------------------------------------------------------------ the decisions


def stream(seed: int, link: str, direction: str, what: str) -> random.Random:
    """The random stream of one impairment of one link direction (independent of every other one)."""
    digest = hashlib.blake2b(f"{seed}/{link}/{direction}/{what}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class _Correlated:
    """netem's correlated uniform draws: next = (1 - c) * fresh + c * previous."""

    def __init__(self, rng: random.Random, correlation: float) -> None:
        self.rng = rng
        self.c = correlation
        self.last = rng.random()

    def __call__(self) -> float:
        fresh = self.rng.random()
        self.last = fresh if not self.c else (1 - self.c) * fresh + self.c * self.last
        return self.last


class LossModel:
    """Bernoulli (optionally correlated), Gilbert-Elliott or netem's 4-state Markov model."""

    def __init__(self, spec: ImpairSpec, rng: random.Random) -> None:
        self.rng = rng
        self.spec = spec
        self.draw = _Correlated(rng, spec.loss_correlation)
        self.state = 1  # gemodel: 1 good, 2 bad; 4-state: 1 tx in gap, 2 tx in burst, 3 lost in burst, 4 lost in gap
        if spec.gemodel:
            p, r, h1, k1 = (*spec.gemodel, *(None,) * (4 - len(spec.gemodel)))
            self.ge = (p, 1 - p if r is None else r, 1.0 if h1 is None else h1, 0.0 if k1 is None else k1)
        if spec.loss_state:
            p13, p31, p32, p23, p14 = (*spec.loss_state, *(None,) * (5 - len(spec.loss_state)))
            self.st = (p13, 1 - p13 if p31 is None else p31, p32 or 0.0, 1.0 if p23 is None else p23, p14 or 0.0)

    def lost(self) -> bool:
        s = self.spec
        if s.gemodel:
            p, r, h1, k1 = self.ge
            u = self.rng.random()
            if self.state == 1:
                if u < p:
                    self.state = 2
            elif u < r:
                self.state = 1
            return self.rng.random() < (h1 if self.state == 2 else k1)
        if s.loss_state:  # netem's loss_4state (sch_netem.c), states and transitions as there
            p13, p31, p32, p23, p14 = self.st
            u = self.rng.random()
            st = self.state
            if st == 1:    # transmitting in a gap
                if u < p14:
                    self.state = 4
                    return True
                if u < p13 + p14:
                    self.state = 3
                    return True
            elif st == 2:  # transmitting in a burst
                if u < p23:
                    self.state = 3
                    return True
            elif st == 3:  # lost in a burst
                if u < p32:
                    self.state = 2
                elif u < p31 + p32:
                    self.state = 1
                else:
                    return True
            else:          # lost in a gap: one loss, back to the gap
                self.state = 1
            return False
        return s.loss > 0 and self.draw() < s.loss


@dataclass
class Decision:
    """One decision that changed a packet (kept in the log and counted)."""

    n: int              # the packet's number on this link direction (1, 2, ...)
    t: float            # when it was decided
    kind: str           # loss | link_down | rate_queue | delay | reorder | duplicate | corrupt | slot
    value: Any = None   # seconds of delay, the flipped bit, ...

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "t": round(self.t, 9), "kind": self.kind}
        if self.value is not None:
            out["value"] = round(self.value, 9) if isinstance(self.value, float) else self.value
        return out


@dataclass
class Impairer:
    """The impairments of one link direction. ``process(packet, now)`` -> [(bytes, send_at), ...]."""

    spec: ImpairSpec
    seed: int
    link: str = "link"
    direction: str = "a>b"
    start: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    log: deque[Decision] = field(default_factory=lambda: deque(maxlen=LOG_MAX))

    def __post_init__(self) -> None:
        self.n = 0
        self.rngs = {k: stream(self.seed, self.link, self.direction, k)
                     for k in ("loss", "delay", "duplicate", "reorder", "corrupt", "slot")}
        self.loss = LossModel(self.spec, self.rngs["loss"])
        self.delay_draw = _Correlated(self.rngs["delay"], self.spec.delay_correlation)
        self.busy_until = 0.0        # rate: when the link is free again
        self.queued: deque[float] = deque()  # rate: when each queued packet leaves
        self.next_slot = 0.0
        self.slot_left = 0
        self.trace_times = read_trace(self.spec.trace) if self.spec.trace else []
        self.trace_k = 0          # the next delivery opportunity not used yet
        self.delayed_run = 0  # packets delayed since the last reordered one

    def reconfigure(self, spec: ImpairSpec) -> None:
        """A run-time change: the new spec from now on; the random streams go on (no replay shift)."""
        if spec.trace != self.spec.trace:
            self.trace_times = read_trace(spec.trace) if spec.trace else []
            self.trace_k = 0
        self.spec = spec
        self.loss.spec = spec
        self.delay_draw.c = spec.delay_correlation
        self.loss.draw.c = spec.loss_correlation

    # -- helpers
    def _note(self, kind: str, now: float, value: Any = None) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        self.log.append(Decision(self.n, now, kind, value))

    def _jitter(self) -> float:
        s = self.spec
        if not s.jitter:
            return 0.0
        u = self.delay_draw()
        if s.distribution == "uniform":
            return (2 * u - 1) * s.jitter
        rng = self.rngs["delay"]
        if s.distribution == "normal":
            return rng.gauss(0.0, s.jitter)
        if s.distribution == "pareto":  # heavy upper tail, mean ~0: Pareto(alpha=3) has mean 1.5, sd ~0.87
            return (rng.paretovariate(3.0) - 1.5) / 0.866 * s.jitter
        return 0.75 * rng.gauss(0.0, s.jitter) + 0.25 * (rng.paretovariate(3.0) - 1.5) / 0.866 * s.jitter

    def _down(self, now: float) -> bool:
        s = self.spec
        if s.down:
            return True
        up, down = s.flap
        if not (up or down):
            return False
        start = now if self.start is None else self.start
        self.start = start
        return ((now - start) % (up + down)) >= up

    # -- the decision
    def process(self, packet: bytes, now: float) -> list[tuple[bytes, float]]:
        """What leaves for ``packet`` arriving at ``now``: (bytes, when), in the order decided."""
        self.n += 1
        s = self.spec
        if self.start is None:
            self.start = now
        if self._down(now):
            self._note("link_down", now)
            return []
        if self.loss.lost():
            self._note("loss", now)
            return []
        out = packet
        if s.corrupt and self.rngs["corrupt"].random() < s.corrupt:
            out, bit = corrupt(packet, self.rngs["corrupt"], fix_checksums=s.corrupt_checksum == "valid")
            self._note("corrupt", now, bit)
        at = now
        paced = "rate" if s.rate else "trace" if self.trace_times else None
        if paced is not None:  # a paced link: at most `limit` packets wait their turn, more are dropped
            while self.queued and self.queued[0] <= now:
                self.queued.popleft()
            if len(self.queued) >= s.limit:
                self._note(f"{paced}_queue", now)
                return []
        # rate: serialise behind what is queued
        if s.rate:
            at = max(now, self.busy_until) + len(packet) * 8 / s.rate
            self.busy_until = at
            self.queued.append(at)
        elif self.trace_times:
            # Mahimahi: the packet leaves at the next delivery opportunity not used yet; opportunities that
            # pass with nothing to send are lost
            times, n = self.trace_times, len(self.trace_times)
            period, start = times[-1], self.start if self.start is not None else now
            while True:
                k = self.trace_k
                t = start + (k // n) * period + times[k % n]
                if t >= now:
                    break
                behind = int((now - t) // period)  # whole periods passed unused: skipped at once
                self.trace_k += n * behind if behind else 1
            self.trace_k += 1
            if t > now:
                self._note("trace", now, t - now)
            at = t
            self.queued.append(at)
        # delay, unless this packet is reordered (sent at once, past the delayed ones)
        if s.delay:
            # netem: after gap-1 delayed packets, the next one jumps the queue with probability `reorder`
            gap = s.reorder_gap or 1
            if s.reorder and self.delayed_run >= gap - 1 and self.rngs["reorder"].random() < s.reorder:
                self.delayed_run = 0
                self._note("reorder", now)
            else:
                self.delayed_run += 1
                d = max(0.0, s.delay + self._jitter())
                at += d
                self._note("delay", now, d)
        # slots: held until the next transmission opportunity
        if s.slot[1]:
            if at >= self.next_slot or self.slot_left == 0:
                lo, hi = s.slot
                gap = lo if hi == lo else self.rngs["slot"].uniform(lo, hi)
                self.next_slot = max(at, self.next_slot) + gap
                self.slot_left = s.slot_packets or 1 << 30
            self.slot_left -= 1
            if self.next_slot > at:
                self._note("slot", now, self.next_slot - at)
                at = self.next_slot
        result = [(out, at)]
        if s.duplicate and self.rngs["duplicate"].random() < s.duplicate:
            self._note("duplicate", now)
            result.append((out, at))
        return result

    def decisions(self) -> list[dict[str, Any]]:
        return [d.as_dict() for d in self.log]


# ------------------------------------------------------------------------------------------- corruption


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def corrupt(packet: bytes, rng: random.Random, *, fix_checksums: bool) -> tuple[bytes, int]:
    """Flip one bit of the packet's payload (after the IP and TCP/UDP headers when there is one, so the
    packet still reaches its receiver); with ``fix_checksums`` the TCP/UDP checksum is made valid again, so
    only a payload comparison can tell. Returns the packet and the bit number flipped."""
    data = bytearray(packet)
    start = 0
    l4 = None
    if len(data) >= 20 and data[0] >> 4 == 4:
        ihl = (data[0] & 0x0F) * 4
        proto = data[9]
        if proto in (6, 17) and len(data) > ihl + 8:
            l4 = (ihl, proto)
            start = ihl + (((data[ihl + 12] >> 4) * 4) if proto == 6 and len(data) > ihl + 12 else 8)
        else:
            start = ihl
    if start >= len(data):
        start = 0
    bit = rng.randrange(start * 8, len(data) * 8) if len(data) else 0
    if data:
        data[bit // 8] ^= 0x80 >> (bit % 8)
    if fix_checksums and l4 is not None:
        ihl, proto = l4
        off = ihl + (16 if proto == 6 else 6)
        if proto == 17 and data[off:off + 2] == b"\0\0":
            return bytes(data), bit  # UDP without checksum stays so
        data[off:off + 2] = b"\0\0"
        pseudo = bytes(data[12:20]) + struct.pack("!BBH", 0, proto, len(data) - ihl)
        c = _csum(pseudo + bytes(data[ihl:]))
        data[off:off + 2] = struct.pack("!H", c if c or proto == 6 else 0xFFFF)
    return bytes(data), bit


def binomial_range(n: int, p: float, alpha: float = 0.01) -> tuple[int, int]:
    """The counts out of ``n`` trials of probability ``p`` that a two-sided exact binomial test at level
    ``alpha`` accepts: each tail beyond the range holds at most ``alpha / 2``. (The normal approximation is
    too narrow when n*p is small: at 40 probes and 10 %, its "99 %" upper bound of 22 % fails 1.5 % of honest
    runs on that side alone; this range fails at most 1 % in all.)"""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, below = 0, 0.0
    while lo < n and below + pmf[lo] < alpha / 2:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while hi > 0 and above + pmf[hi] < alpha / 2:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def confidence_interval(n: int, p: float, z: float = 2.576) -> tuple[float, float]:
    """Normal-approximation interval of a binomial proportion (99 % by default), for the tests and bench."""
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half
