"""The per-peer send path (docs/ARCHITECTURE.md, "Relay internals", seam 2): an ordered list of stages
between the device and a peer, the same for every datapath.

A :class:`Stage` sees inner packets: ``tx(pkt, now)`` returns what leaves toward the peer and when
(``[]`` = dropped, counted by the stage), ``rx(data, now)`` what comes back from it (``None`` = dropped).
A stage's ``counters()`` keys that start with ``drop_`` are drops: the relay shows them in its ``drops`` as
``<stage>_<reason>`` (``impair_loss``). ``control(request)`` is the run-time change the control socket
forwards (``{"cmd": "stage", "peer": NAME, "stage": "impair", "set": {...}}``).

Stages are built by kind from :data:`STAGES` (``register_stage``), in the order of their ``order`` value:
NSH (18) before impairments (17); sealing is the keyed datapath's, after all of them. A peer whose stages
are not all ``gso_ok`` gets the per-packet datapath. Packets due later wait in the relay's
:class:`Scheduler` (one timerfd for the relay, a bounded queue per peer), never in a sleep.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable, Iterable, Protocol

from tunlab.errors import TunlabError

from .impair import LOG_MAX, ImpairError, Impairer, ImpairSpec, parse_spec

log = logging.getLogger("tunlab.relay")

#: packets one peer may have waiting for their send time; more are dropped as ``impair_queue_overflow``
QUEUE_MAX = 20_000
#: packets due within this much of now leave at once (the timer would fire late by more than that anyway)
EARLY = 20e-6
#: a decision log past this size keeps only the decisions checks need (drops, duplicates, reorders,
#: corruptions), not every delay; past twice this size, nothing more (/run is memory): counted as log_lost
LOG_BYTES = 64 << 20
#: delayed sends whose lateness is kept for the counters' accuracy figures
LATE_KEPT = 50_000


class Stage(Protocol):
    name: str
    gso_ok: bool

    def tx(self, pkt: bytes, now: float) -> Iterable[tuple[bytes, float]]: ...

    def rx(self, data: bytes, now: float) -> bytes | None: ...

    def counters(self) -> dict[str, int]: ...

    def control(self, request: dict[str, Any]) -> dict[str, Any]: ...


class StageError(TunlabError):
    """A stage request that cannot be honoured (one line, sent back on the control socket)."""


# ------------------------------------------------------------------------------------------- the log


class DecisionLog:
    """The relay's decision log: one JSON object per line, every decision that changed a packet, with the
    link, direction, the packet's number on that direction and a digest of the inner packet (so a check
    can say which probe it was). No wall-clock time in it: the same seed and packets give the same file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.pending: deque[str] = deque(maxlen=LOG_MAX)
        self.lost = 0
        self.size = 0
        self.fd = -1
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise TunlabError(f"--impair-log {path}: cannot open it: {exc.strerror}", "pick another path") from None

    def add(self, line: str, essential: bool = True) -> None:
        if self.fd < 0:
            return
        if self.size > LOG_BYTES and (not essential or self.size > 2 * LOG_BYTES):
            self.lost += 1
            return
        if len(self.pending) == self.pending.maxlen:
            self.lost += 1
        self.pending.append(line)
        self.size += len(line) + 1

    def flush(self) -> None:
        if self.fd < 0 or not self.pending:
            return
        data = ("\n".join(self.pending) + "\n").encode()
        self.pending.clear()
        try:
            os.write(self.fd, data)
        except OSError as exc:
            log.warning("decision log %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: bytes of an inner packet the digest covers: its headers and the start of its payload (what tells probes
#: apart: IP id, ports, sequence numbers, the probe's tag), not a whole 64 KiB packet per decision
DIGEST_SPAN = 128


def digest(pkt: bytes) -> str:
    """The short digest that names an inner packet in the decision log (checks compute the same)."""
    return hashlib.blake2b(pkt[:DIGEST_SPAN], digest_size=6).hexdigest()


# --------------------------------------------------------------------------------------- the impair stage

DROP_KINDS = ("loss", "link_down", "rate_queue", "trace_queue")


class ImpairStage:
    """:class:`~tunlab.relay.impair.Impairer` as a stage: impairs what is sent to the peer (one link
    direction); what comes back passes (the other end impairs its own direction). Not ``gso_ok``: each
    inner packet gets its own decision, so the peer gets the per-packet datapath while impaired."""

    name = "impair"
    gso_ok = False
    order = 20

    def __init__(self, spec: ImpairSpec, *, seed: int, link: str, direction: str, peer: str,
                 decisions: DecisionLog) -> None:
        self.imp = Impairer(spec, seed=seed, link=link, direction=direction)
        self.peer = peer
        self.decisions = decisions
        self._head = json.dumps({"link": link, "dir": direction, "peer": peer})[:-1]

    @property
    def spec(self) -> ImpairSpec:
        return self.imp.spec

    def tx(self, pkt: bytes, now: float) -> list[tuple[bytes, float]]:
        imp = self.imp
        out = imp.process(pkt, now)
        log = imp.log
        if log:
            if self.decisions.fd >= 0:  # no log file, no formatting
                pk, head = digest(pkt), self._head
                for dec in log:
                    v = dec.value
                    value = "" if v is None else \
                        f', "value": {round(v, 9) if isinstance(v, float) else json.dumps(v)}'
                    self.decisions.add(f'{head}, "n": {dec.n}, "kind": "{dec.kind}"{value}, "pkt": "{pk}"}}',
                                       dec.kind not in ("delay", "slot", "trace"))
            log.clear()
        return out

    def rx(self, data: bytes, now: float) -> bytes | None:
        return data

    def counters(self) -> dict[str, int]:
        c = self.imp.counters
        return {("drop_" + k if k in DROP_KINDS else k): v for k, v in sorted(c.items())} | {"packets": self.imp.n}

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"set": "delay=20ms loss=1%" | {...}}`` on top of the current spec; ``{"clear": true}`` first
        resets it; ``{"state": "down"|"up"}`` takes the link down or up."""
        spec = self.imp.spec
        if request.get("clear"):
            spec = ImpairSpec(down=spec.down)
        changes = request.get("set")
        if changes is not None:
            if not isinstance(changes, (str, dict)):
                raise StageError("impair: 'set' takes a string (delay=20ms loss=1%) or an object")
            spec = parse_spec(changes, base=spec)
        state = request.get("state")
        if state is not None:
            if state not in ("down", "up"):
                raise StageError(f"state {state!r} is not down or up")
            spec = ImpairSpec(**{**spec.__dict__, "down": state == "down"})
        self.imp.reconfigure(spec)
        return {"spec": spec.describe()}


# --------------------------------------------------------------------------------------- registry, path

StageFactory = Callable[["PathContext", str, dict[str, Any]], Any]


class PathContext:
    """What a stage factory may use: the run seed, the decision log, the link labels of each peer."""

    def __init__(self, seed: int, decisions: DecisionLog, labels: dict[str, tuple[str, str]]) -> None:
        self.seed = seed
        self.decisions = decisions
        self.labels = labels

    def label(self, peer: str) -> tuple[str, str]:
        return self.labels.get(peer, (peer, f">{peer}"))


def _impair_factory(ctx: PathContext, peer: str, conf: dict[str, Any]) -> ImpairStage:
    link, direction = ctx.label(peer)
    return ImpairStage(parse_spec(conf.get("spec", "")), seed=ctx.seed, link=link, direction=direction,
                       peer=peer, decisions=ctx.decisions)


#: stage kind -> (order on the way out, factory(ctx, peer, conf)); issue 18 registers "nsh"
STAGES: dict[str, tuple[int, StageFactory]] = {"impair": (20, _impair_factory)}


def register_stage(kind: str, order: int, factory: StageFactory) -> None:
    STAGES[kind] = (order, factory)


class LinkPath:
    """The stages of one peer, in order, and the packets it has waiting."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.stages: list[Any] = []
        self.waiting = 0
        self.overflow = 0

    @property
    def gso_ok(self) -> bool:
        return all(s.gso_ok for s in self.stages)

    def stage(self, kind: str) -> Any:
        return next((s for s in self.stages if s.name == kind), None)

    def add(self, stage: Any) -> None:
        self.stages.append(stage)
        self.stages.sort(key=lambda s: STAGES.get(s.name, (50, None))[0])

    def tx(self, pkt: bytes, now: float) -> list[tuple[bytes, float]]:
        if len(self.stages) == 1:  # the common case: one stage, its answer as it is
            return self.stages[0].tx(pkt, now)  # type: ignore[no-any-return]
        items = [(pkt, now)]
        for s in self.stages:
            nxt: list[tuple[bytes, float]] = []
            for data, at in items:
                for d2, at2 in s.tx(data, at):
                    nxt.append((d2, max(at, at2)))
            items = nxt
            if not items:
                break
        return items

    def rx(self, data: bytes | None, now: float) -> bytes | None:
        for s in reversed(self.stages):
            if data is None:
                return None
            data = s.rx(data, now)
        return data

    def counters(self) -> dict[str, dict[str, int]]:
        return {s.name: s.counters() for s in self.stages}

    def drops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stages:
            for k, v in s.counters().items():
                if k.startswith("drop_") and v:
                    key = f"{s.name}_{k[5:]}"
                    out[key] = out.get(key, 0) + v
        if self.overflow:
            out["impair_queue_overflow"] = out.get("impair_queue_overflow", 0) + self.overflow
        return out


class Scheduler:
    """Packets that leave later: one heap and one precise timer (timerfd) for the relay; each peer's
    queue is bounded (QUEUE_MAX, overflow counted). ``send(peer, data)`` is the datapath's own send."""

    def __init__(self, loop: Any, send: Callable[[Any, bytes], None],
                 send_many: Callable[[Any, list[bytes]], None] | None = None) -> None:
        self.heap: list[tuple[float, int, Any, LinkPath, bytes]] = []
        self.seq = 0
        self.send = send
        # what is due together for one peer leaves in one call (the fast datapath: one UDP GSO send)
        self.send_many = send_many or (lambda peer, datas: [send(peer, d) for d in datas])
        self.loop = loop
        self.timer = loop.precise_timer(self._due)
        # packets due now: sent once the handler that read them is done, a peer's run in one call
        self.ready: list[tuple[Any, bytes]] = []
        self.late: deque[float] = deque(maxlen=LATE_KEPT)  # seconds late of the last delayed sends

    def put(self, peer: Any, path: LinkPath, items: list[tuple[bytes, float]], now: float) -> None:
        for data, at in items:
            if at - now <= EARLY:
                if not self.ready:
                    self.loop.call_soon(self._send_ready)
                self.ready.append((peer, data))
                continue
            if path.waiting >= QUEUE_MAX:
                path.overflow += 1
                continue
            path.waiting += 1
            self.seq += 1
            heapq.heappush(self.heap, (at, self.seq, peer, path, data))
            if self.timer.armed == 0.0 or at < self.timer.armed:
                self.timer.arm(at)

    def _send_ready(self) -> None:
        ready, self.ready = self.ready, []
        i, n = 0, len(ready)
        while i < n:
            peer = ready[i][0]
            j = i + 1
            while j < n and ready[j][0] is peer:
                j += 1
            if j - i == 1:
                self.send(peer, ready[i][1])
            else:
                self.send_many(peer, [d for _, d in ready[i:j]])
            i = j

    def _due(self) -> None:
        heap = self.heap
        now = time.monotonic()
        late = self.late
        while heap and heap[0][0] - now <= EARLY:
            batch: list[bytes] = []
            peer = heap[0][2]
            while heap and heap[0][0] - now <= EARLY and heap[0][2] is peer:
                at, _, peer, path, data = heapq.heappop(heap)
                path.waiting -= 1
                late.append(now - at)
                batch.append(data)
            if len(batch) == 1:
                self.send(peer, batch[0])
            else:
                self.send_many(peer, batch)
            if heap and heap[0][0] - now > EARLY:
                now = time.monotonic()
        if heap:
            self.timer.arm(heap[0][0])

    def accuracy(self) -> dict[str, float]:
        """How late the last delayed packets left against their targets, in microseconds (negative: early
        by up to EARLY): median, 99th percentile, max, over n."""
        xs = sorted(self.late)
        if not xs:
            return {"n": 0}
        n = len(xs)
        p99 = xs[min(n - 1, int(n * 0.99))]
        return {"n": n, "median_us": round(xs[n // 2] * 1e6, 1), "p99_us": round(p99 * 1e6, 1),
                "max_us": round(xs[-1] * 1e6, 1)}

    def close(self) -> None:
        self.timer.close()
        self.heap.clear()
        self.ready.clear()


def build_paths(peers: Iterable[str], conf: dict[str, dict[str, dict[str, Any]]], ctx: PathContext,
                ) -> dict[str, LinkPath]:
    """``conf``: peer -> stage kind -> its configuration (``{"impair": {"spec": "delay=20ms"}}``)."""
    names = set(peers)
    paths: dict[str, LinkPath] = {}
    for peer, stages in conf.items():
        if peer not in names:
            raise StageError(f"--impair {peer}=...: no peer is named {peer!r}", f"peers: {', '.join(sorted(names))}")
        path = LinkPath(peer)
        for kind, sconf in stages.items():
            entry = STAGES.get(kind)
            if entry is None:
                raise StageError(f"stage {kind!r} is unknown", f"known: {', '.join(sorted(STAGES))}")
            try:
                path.add(entry[1](ctx, peer, sconf))
            except ImpairError as exc:
                raise StageError(f"--impair {peer}: {exc.message}", exc.hint) from None
        paths[peer] = path
    return paths
