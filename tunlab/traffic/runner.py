"""Run one scenario: bring its lab up, capture on every link, send the probes, check, keep the evidence.

The order matters and nothing sleeps: the lab returns when every relay is ready; TCP relays are polled
until their peers are connected; captures return when every socket is bound; probes are sent; the run
waits until every probe that must arrive has arrived (or the scenario's timeout), then until every link
has been silent for the scenario's ``settle`` time (so late duplicates and leaks are seen too).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.privileges import chown_to_invoking_user, make_user_dir, require_root
from tunlab.scenario import PlannedProbe, Scenario, build_probes
from tunlab.traffic.capture import Capture, CapturePoint
from tunlab.traffic.checks import (Captures, Chain, LinkInfo, ScenarioResult, check_flow, check_links, identity,
                                   reply_matcher)
from tunlab.traffic.decap import Frame, RelayEnd
from tunlab.traffic.inject import Injector
from tunlab.traffic.report import junit_xml, write_text

DEFAULT_RESULTS = "tunlab-results"
GIVE_UP_QUIET = 1.5  # s of silence on every capture point after which a missing packet counts as lost
BeforeSend = Callable[[Any], None]


# ------------------------------------------------------------------------------------- lab -> chain


def chain_for(lab: Any, nodes: tuple[str, ...]) -> Chain:
    """The :class:`Chain` of ``nodes`` in a running lab: links with their relay addresses and ports."""
    topo = lab.topology
    by_pair = {frozenset((lk.a.node, lk.b.node)): lk for lk in lab.underlay_links}
    links = []
    for x, y in zip(nodes, nodes[1:]):
        lk = by_pair.get(frozenset((x, y)))
        if lk is None:
            raise TunlabError(f"the lab has no underlay link between {x} and {y}")
        tcp = lk.transport == "tcp"
        # TCP: b listens on its port, a connects from a port of its kernel's choosing
        a = RelayEnd(lk.a.node, lk.a.ip, None if tcp else lk.a.port)
        b = RelayEnd(lk.b.node, lk.b.ip, lk.b.port)
        links.append(LinkInfo(lk.name, a, b, lk.transport))
    kernel = frozenset(n for n in nodes[1:-1] if getattr(topo.node(n), "kind", None) == "kernel")
    overlay = (topo.overlay_net, *(p for path in topo.paths for p in path.prefixes))
    return Chain(tuple(nodes), tuple(links), kernel, overlay)


def describe_chain(chain: Chain) -> str:
    transports = sorted({lk.transport for lk in chain.links})
    kinds = "" if not chain.kernel_vnfs else f"; kernel VNFs: {', '.join(sorted(chain.kernel_vnfs))}"
    return f"{' > '.join(chain.nodes)} ({'/'.join(transports)}{kinds})"


def capture_points(lab: Any, chains: list[Chain], probes: list[PlannedProbe]) -> list[CapturePoint]:
    """Every underlay link of the chains (at its b end) and the TUNs of their endpoints and kernel VNFs."""
    pairs = sorted({(p.probe.packet[12:16], p.probe.packet[16:20]) for p in probes})
    import socket

    terms = [f"(src host {socket.inet_ntoa(s)} and dst host {socket.inet_ntoa(d)}) or "
             f"(src host {socket.inet_ntoa(d)} and dst host {socket.inet_ntoa(s)})" for s, d in pairs]
    tun_bpf = "ip and (" + " or ".join(terms) + ")"
    points: dict[str, CapturePoint] = {}
    underlay = {lk.name: lk for lk in lab.underlay_links}
    for chain in chains:
        for name in chain.nodes:
            if name in (chain.sender, chain.receiver) or name in chain.kernel_vnfs:
                node = lab.node(name)
                point = chain.tun_point(name)
                points.setdefault(point, CapturePoint(point, node.netns_file, node.overlay_dev, tun_bpf))
        for link in chain.links:
            lk = underlay[link.name]
            point = chain.link_point(link)
            # everything IPv4 on an underlay matters: encapsulation, bare inner packets, ICMP errors
            points.setdefault(point, CapturePoint(point, lab.node(lk.b.node).netns_file, lk.b.ifname, "ip"))
    return list(points.values())


# ------------------------------------------------------------------------------------------ waiting


def wait_connected(lab: Any, chains: list[Chain], timeout: float) -> None:
    """Poll the relays until every TCP link of the chains is connected and every UDP link has settled its
    datapath (``--datapath auto``: the hello answered, or given up on), so probes cross as they will stay."""
    links = {lk.name: lk for ch in chains for lk in ch.links}.values()
    if not links or not hasattr(lab, "relay_counters"):
        return
    deadline = time.monotonic() + timeout
    while True:
        counters = lab.relay_counters()
        down = []
        for lk in links:
            ok = _connected if lk.transport == "tcp" else _settled
            if not (ok(counters, lk.a.node, lk.b.node) and ok(counters, lk.b.node, lk.a.node)):
                down.append(lk)
        if not down:
            return
        if time.monotonic() > deadline:
            what = "TCP connection not up" if down[0].transport == "tcp" else "datapath not negotiated"
            raise TunlabError(f"relay {what} after {timeout:.0f} s on link(s) {', '.join(lk.name for lk in down)}")
        time.sleep(0.02)  # polling interval of a readiness check with a deadline


def _connected(counters: dict[str, Any], node: str, peer: str) -> bool:
    peers = (counters.get(node) or {}).get("peers") or {}
    return bool((peers.get(peer) or {}).get("connected"))


def _settled(counters: dict[str, Any], node: str, peer: str) -> bool:
    """The relay of ``node`` knows which datapath ``peer`` gets (no hello still waiting for its answer)."""
    datapath = (counters.get(node) or {}).get("datapath") or {}
    state = ((datapath.get("peers") or {}).get(peer) or {}).get("negotiation")
    return state != "probing"


def _arrived(planned: list[PlannedProbe], chains: dict[tuple[str, ...], Chain]) -> Callable[
        [dict[str, list[Frame]]], bool]:
    """A predicate over live captures: has every probe that must arrive arrived (and its reply)?"""
    wanted: list[tuple[str, bool, Callable[[bytes], bool]]] = []
    for p in planned:
        chain = chains[p.nodes]
        if p.probe.expect.delivered:
            ident = identity(p.probe.packet)
            wanted.append((chain.tun_point(chain.receiver), False,
                           lambda d, ident=ident: identity(d) == ident))  # type: ignore[misc]
            if p.probe.expect.reply:
                wanted.append((chain.tun_point(chain.sender), False, reply_matcher(p.probe.packet)))

    def done(frames: dict[str, list[Frame]]) -> bool:
        return all(any(f.outgoing == out and match(f.data) for f in frames.get(point, ()))
                   for point, out, match in wanted)
    return done


# ------------------------------------------------------------------------------------------- running


def run_scenario(sc: Scenario, *, results_root: str | Path = DEFAULT_RESULTS, keep: bool = False,
                 backend: str = "netns", before_send: BeforeSend | None = None,
                 seed: int | None = None) -> ScenarioResult:
    """Run ``sc`` end to end and return what it found; never raises for a failing check."""
    require_root("tunlab run")
    from tunlab.lab import Lab

    started = time.monotonic()
    result = ScenarioResult(sc.name, sc.source, sc.description, sc.topology.name)
    planned = build_probes(sc, seed=random.randrange(2**31) if seed is None else seed)
    cap: Capture | None = None
    listening: list[Capture] = []  # the capture, once it listens (kept as evidence if a later step fails)
    root = Path(results_root)
    try:
        with Lab(sc.topology, backend=backend) as lab:
            cap, counters = check_on_lab(sc, lab, planned, result, before_send=before_send, started=listening)
            if not result.passed:
                result.notes += _relay_notes(counters)
            if keep:
                _leave_up(lab, result)
            result.duration_s = time.monotonic() - started
            if keep or not result.passed:
                _keep_evidence(result, cap, counters, root)
                if keep:  # the lab stays up: its logs so far
                    from tunlab.lab import keep_results

                    keep_results(lab.run_dir, Path(str(result.results_dir)))
                else:  # at teardown the lab adds relay logs, final counters and its ledger
                    lab.results_dir = root
    except TunlabError as exc:
        result.error = str(exc)
        cap = cap or (listening[0] if listening else None)
        if cap is not None and result.run_id:
            _keep_evidence(result, cap, {}, root)
    result.duration_s = time.monotonic() - started
    if result.results_dir:
        write_text(result, Path(result.results_dir) / "report.txt")  # with the final duration and notes
        chown_to_invoking_user(result.results_dir)
    return result


def check_on_lab(sc: Scenario, lab: Any, planned: list[PlannedProbe], result: ScenarioResult, *,
                 before_send: BeforeSend | None = None,
                 started: list[Capture] | None = None) -> tuple[Capture, dict[str, Any]]:
    """Capture on every point of the probes' chains in a running ``lab``, send, wait, check into ``result``.

    Returns the (stopped) capture and the relays' counters; keeping evidence is the caller's business
    (``run_scenario`` here, the pytest plugin's ``tunlab_checks`` fixture on a lab of its own); ``started``
    receives the capture as soon as it listens, for evidence when a later step raises."""
    result.run_id = lab.run_id
    chains = {p.nodes: chain_for(lab, p.nodes) for p in planned}
    result.chains = [describe_chain(c) for c in chains.values()]
    wait_connected(lab, list(chains.values()), sc.timeout)
    with Capture(capture_points(lab, list(chains.values()), planned)) as cap:
        if started is not None:
            started.append(cap)
        if before_send is not None:
            before_send(lab)
        cap.touch()
        _send(lab, planned)
        if not cap.wait_for(_arrived(planned, chains), sc.timeout, quiet=max(GIVE_UP_QUIET, sc.settle)):
            result.notes.append("not every expected packet arrived (waited until the links were silent for "
                                f"{max(GIVE_UP_QUIET, sc.settle):g} s, at most {sc.timeout:g} s)")
        cap.wait_quiet(sc.settle, sc.timeout)
    caps = Captures(cap.frames())
    result.flows = [check_flow(chains[p.nodes], caps, p.probe) for p in planned]
    seen_links: set[str] = set()
    for chain in chains.values():
        fresh = [lk for lk in chain.links if lk.name not in seen_links]
        seen_links.update(lk.name for lk in fresh)
        result.links += check_links(chain, caps, fresh)
    result.notes += _capture_notes(cap)
    return cap, _counters(lab)


def _send(lab: Any, planned: list[PlannedProbe]) -> None:
    injectors: dict[str, Injector] = {}
    try:
        for p in planned:
            if p.src not in injectors:
                injectors[p.src] = Injector(lab.node(p.src).netns_file, p.src)
            injectors[p.src].send(p.probe.packet)
    finally:
        for inj in injectors.values():
            inj.close()


def _counters(lab: Any) -> dict[str, Any]:
    try:
        return dict(lab.relay_counters())
    except Exception as exc:  # noqa: BLE001 - a dead relay must not hide the report
        return {"error": str(exc)}


def _capture_notes(cap: Capture) -> list[str]:
    return [f"capture on {name} dropped {drops} packets: treat 'missing' there with care"
            for name, (_, drops) in sorted(cap.stats.items()) if drops]


def _relay_notes(counters: dict[str, Any]) -> list[str]:
    notes = []
    for node, c in sorted(counters.items()):
        drops = (c or {}).get("drops") if isinstance(c, dict) else None
        if drops:
            notes.append(f"relay {node} dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())))
    return notes


def _keep_evidence(result: ScenarioResult, cap: Capture, counters: dict[str, Any], root: Path) -> None:
    """pcaps of every capture point, the relays' counters, report.txt and junit.xml, owned by the sudo user.

    The lab copies the relay logs and final counters into the same folder when it comes down."""
    folder = make_user_dir(root / str(result.run_id))
    result.results_dir = str(folder)
    cap.write_pcaps(make_user_dir(folder / "pcaps"))
    if counters:
        (folder / "counters-at-check.json").write_text(json.dumps(counters, indent=2, sort_keys=True))
    write_text(result, folder / "report.txt")
    (folder / "junit.xml").write_bytes(junit_xml([result]))
    chown_to_invoking_user(folder)


def _leave_up(lab: Any, result: ScenarioResult) -> None:
    detach = getattr(lab, "detach", None)
    if callable(detach):
        detach()
        result.notes.append(f"the lab stays up: tunlab exec --run {lab.run_id} NODE -- CMD; "
                            f"then tunlab down {lab.run_id}")
    else:
        result.notes.append("--keep: this lab cannot be left up; it was taken down")
