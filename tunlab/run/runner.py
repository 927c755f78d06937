"""Run one scenario: bring its lab up, capture on every link, send the probes, check, keep the evidence.

The order matters and nothing sleeps: the lab returns when every relay is ready; TCP relays are polled
until their peers are connected; captures return when every socket is bound; probes are sent; the run
waits until every probe that must arrive has arrived (or the scenario's timeout), then until every link
has been silent for the scenario's ``settle`` time (so late duplicates and leaks are seen too).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunlab.errors import TunlabError
from tunlab.system.privileges import chown_to_invoking_user, make_user_dir, require_root, write_user_file
from tunlab.model.scenario import PlannedProbe, Scenario, build_probes
from tunlab.traffic.capture import Capture, CapturePoint, write_pcaps
from tunlab.verdict.checks import (Arrivals, Captures, Chain, CheckResult, LinkInfo, ScenarioResult, check_flow,
                                   check_links)
from tunlab.traffic.decap import Frame, RelayEnd
from tunlab.traffic.inject import Injector
from tunlab.verdict.report import junit_xml, write_text

DEFAULT_RESULTS = "tunlab-results"
GIVE_UP_QUIET = 1.5  # s of silence on every capture point after which a missing packet counts as lost
BeforeSend = Callable[[Any], None]


# ------------------------------------------------------------------------------------- lab -> chain


def _link_info(lk: Any) -> LinkInfo:
    tcp = lk.transport == "tcp"
    # TCP: b listens on its port, a connects from a port of its kernel's choosing
    a = RelayEnd(lk.a.node, lk.a.ip, None if tcp else lk.a.port)
    b = RelayEnd(lk.b.node, lk.b.ip, lk.b.port)
    return LinkInfo(lk.name, a, b, lk.transport)


def lab_links(lab: Any) -> dict[str, LinkInfo]:
    """Every underlay link of a running lab, as the checks know links (every one is a witness)."""
    return {lk.name: _link_info(lk) for lk in lab.underlay_links}


def chain_for(lab: Any, nodes: tuple[str, ...], kernel_vnfs: Any = None, reply_kernel_vnfs: Any = None) -> Chain:
    """The :class:`Chain` of ``nodes`` in a running lab: links with their relay addresses and ports
    (``kernel_vnfs``: the VNFs whose kernel forwards, when not every kernel VNF of ``nodes`` does: NSH)."""
    topo = lab.topology
    by_pair = {frozenset((lk.a.node, lk.b.node)): lk for lk in lab.underlay_links}
    links = []
    for x, y in zip(nodes, nodes[1:]):
        lk = by_pair.get(frozenset((x, y)))
        if lk is None:
            raise TunlabError(f"the lab has no underlay link between {x} and {y}")
        links.append(_link_info(lk))
    kernel = kernel_all = frozenset(n for n in nodes[1:-1] if getattr(topo.node(n), "kind", None) == "kernel")
    if kernel_vnfs is not None:
        kernel = frozenset(kernel_vnfs) & kernel
    overlay = (*topo.overlay_nets(), *(p for path in topo.paths for p in path.prefixes))
    reply = None if reply_kernel_vnfs is None else frozenset(reply_kernel_vnfs) & kernel_all
    return Chain(tuple(nodes), tuple(links), kernel, overlay, reply)


# ------------------------------------------------------------------------------ NSH mode (issue 18)

NshWalk = tuple  # (forward hops, outcome, kernel SF nodes, reply hops, reply outcome, reply's kernel SF nodes)


def _nsh_walks(lab: Any, planned: list[PlannedProbe]) -> list[NshWalk]:
    """Per probe: the NSH headers it and its reply must carry, from the chain definition (the tables the plan
    wrote, with the changes made through ``lab.nsh_set`` since: re-classification at run time). A relay
    whose tables were changed behind the lab's back forwards differently, and the checks say where."""
    from tunlab.model import nsh as nsh_model

    tables = lab.nsh_tables()
    topo = lab.topology
    aware = nsh_model.aware_sfs(topo)
    kernel = {v.name for v in topo.vnfs if v.kind == "kernel" and v.nsh_hook is None}
    out = []
    for p in planned:
        sfs: list[str] = []
        back_sfs: list[str] = []
        hops, outcome = nsh_model.walk(tables, p.src, p.probe.packet, aware, sfs=sfs)
        back, back_outcome = nsh_model.walk(tables, p.dst, nsh_model.swapped(p.probe.packet), aware, sfs=back_sfs)
        out.append((hops, outcome, frozenset(sfs) & kernel, back, back_outcome, frozenset(back_sfs) & kernel))
    return out


def _chains(lab: Any, planned: list[PlannedProbe], walks: list[NshWalk] | None) -> dict[Any, Chain]:
    """The probes' chains; in NSH mode one per service path taken (its kernel VNFs: the SFs it visits)."""
    if walks is None:
        return {p.nodes: chain_for(lab, p.nodes) for p in planned}
    return {_chain_key(p, walks, i): chain_for(lab, p.nodes, walks[i][2], walks[i][5]) for i, p in enumerate(planned)}


def _chain_key(p: PlannedProbe, walks: list[NshWalk] | None, i: int | None = None) -> Any:
    if walks is None:
        return p.nodes
    if i is None:
        raise ValueError("an NSH chain key needs the probe's index")
    return (p.nodes, walks[i][2], walks[i][5])


def _nsh_checks(result: ScenarioResult, planned: list[PlannedProbe], walks: list[NshWalk],
                chains: dict[Any, Chain], caps: Captures) -> None:
    from tunlab.verdict.nsh import check_nsh

    for i, (p, flow) in enumerate(zip(planned, result.flows)):
        hops, outcome, _, back, back_outcome, _ = walks[i]
        chain = chains[_chain_key(p, walks, i)]
        exp = p.probe.expect
        if exp.dropped_at is not None:  # checked up to the node that drops it
            cut = next((k for k, h in enumerate(hops) if h.src == exp.dropped_at), len(hops))
            hops = hops[:cut]
        flow.checks += check_nsh(chain, caps, p.probe.packet, hops, outcome)
        if exp.reply:
            flow.checks += check_nsh(chain, caps, p.probe.packet, back, back_outcome, reply=True, name="nsh reply")


def describe_chain(chain: Chain) -> str:
    transports = sorted({lk.transport for lk in chain.links})
    kinds = "" if not chain.kernel_vnfs else f"; kernel VNFs: {', '.join(sorted(chain.kernel_vnfs))}"
    return f"{' > '.join(chain.nodes)} ({'/'.join(transports)}{kinds})"


def capture_sites(lab: Any) -> list[tuple[CapturePoint, str]]:
    """Every capture point of the lab with the node it is in: the TUN of every node and every underlay
    link (at its b end; a link between hosts: on the b node's uplink, from the a node's host).

    Every one is a witness: a probe must be seen where its path goes and nowhere else, so the TUNs and links
    off its chain are watched too. Everything IP is kept (encapsulation, bare inner packets, ICMP errors,
    a rewritten probe whose addresses are no longer the ones it was sent with)."""
    sites: list[tuple[CapturePoint, str]] = []
    for node in lab.topology.nodes:
        n = lab.node(node.name)
        sites.append((CapturePoint(f"tun@{node.name}", n.netns_file, n.overlay_dev, "ip or ip6"), node.name))
    for lk in lab.underlay_links:
        sites.append((CapturePoint(f"link:{lk.name}", lab.node(lk.b.node).netns_file, lk.b.ifname, "ip or ip6"),
                      lk.b.node))
    return sites


def capture_points(lab: Any) -> list[CapturePoint]:
    """The points of :func:`capture_sites`."""
    return [p for p, _ in capture_sites(lab)]


# ------------------------------------------------------------------------------------------- running


def run_scenario(sc: Scenario, *, results_root: str | Path = DEFAULT_RESULTS, keep: bool = False,
                 backend: str = "netns", before_send: BeforeSend | None = None,
                 seed: int | None = None, hosts: Any = None) -> ScenarioResult:
    """Run ``sc`` end to end on a lab of its own and return what it found; never raises for a failing check.
    ``hosts``: an inventory (:func:`tunlab.model.hosts.load_inventory`): the lab is placed across its hosts.

    The evidence of a failed run (or of every run with ``keep``) goes to ``results_root/<run id>/`` in the
    layout of :func:`write_evidence`, with the lab's relay logs, final counters and ledger beside it."""
    require_root("tunlab run")
    from tunlab.lab.lab import Lab

    started = time.monotonic()
    root = Path(results_root)
    result = ScenarioResult(sc.name, sc.source, sc.description, sc.topology.name)
    try:
        if hosts is not None:
            from tunlab.lab.multihost import MultiHostLab

            made: Any = MultiHostLab(sc.topology, hosts, seed=seed)
        else:
            made = Lab(sc.topology, backend=backend, seed=seed)
        with made as lab:
            check_scenario(sc, lab, result=result, seed=seed, before_send=before_send,
                           evidence=lambda: root / lab.run_id, keep=keep, started=started)
            if keep:
                _leave_up(lab, result)
                if result.results_dir:  # the lab stays up: its logs so far
                    from tunlab.lab.lab import keep_results

                    keep_results(lab.run_dir, Path(result.results_dir))
            elif result.results_dir:  # at teardown the lab adds relay logs, final counters and its ledger
                lab.results_dir = root
    except TunlabError as exc:  # the lab did not come up (or not down): the error is the result
        result.error = str(exc)
    result.duration_s = time.monotonic() - started
    if result.results_dir:
        write_text(result, Path(result.results_dir) / "report.txt")  # with the final duration and notes
        chown_to_invoking_user(result.results_dir)
    return result


def check_scenario(sc: Scenario, lab: Any, *, result: ScenarioResult | None = None, seed: int | None = None,
                   before_send: BeforeSend | None = None, evidence: Callable[[], Path] | None = None,
                   keep: bool = False, started: float | None = None) -> ScenarioResult:
    """Check ``sc`` on a running ``lab`` (``tunlab run`` and the plugin's ``tunlab_checks`` both come here).

    Never raises for a failing check or a broken lab: the result says what happened. When the scenario
    failed (or ``keep``), its evidence is written by :func:`write_evidence` into the folder ``evidence()``
    names (created only then), and ``result.results_dir`` points at it."""
    t0 = time.monotonic() if started is None else started
    if result is None:
        result = ScenarioResult(sc.name, sc.source, sc.description, sc.topology.name)
    result.seed = random.randrange(2**31) if seed is None else seed
    on_hosts = hasattr(lab, "collect")  # a lab across hosts (tunlab.lab.multihost): captures on every host
    if on_hosts and sc.topology != lab.topology:  # its links keyed, its MTU fitted to the hosts' underlay
        sc = dataclasses.replace(sc, topology=lab.topology)
    planned = build_probes(sc, seed=result.seed)
    listening: list[Capture] = []  # the capture, once it listens (kept as evidence if a later step fails)
    cap: Any = None
    counters: dict[str, Any] = {}
    try:
        if on_hosts:
            cap, counters = check_on_hosts(sc, lab, planned, result, before_send=before_send)
        else:
            cap, counters = check_on_lab(sc, lab, planned, result, before_send=before_send, started=listening)
        if not result.passed:
            result.notes += _relay_notes(counters)
    except TunlabError as exc:
        result.error = str(exc)
        cap = listening[0] if listening else None
    dead = {n: how for n, how in _dead_relays(lab).items() if how not in (result.error or "")}
    if dead:  # the cause, before any "lost at" of the checks (unless the error already says it)
        result.error = "; ".join(dead.values()) + (f" ({result.error})" if result.error else "")
    result.duration_s = time.monotonic() - t0
    if evidence is not None and (keep or not result.passed):
        write_evidence(result, cap, counters, evidence())
    return result


def check_on_lab(sc: Scenario, lab: Any, planned: list[PlannedProbe], result: ScenarioResult, *,
                 before_send: BeforeSend | None = None,
                 started: list[Capture] | None = None) -> tuple[Capture, dict[str, Any]]:
    """Capture on every point of the probes' chains in a running ``lab``, send, wait, check into ``result``.

    Returns the (stopped) capture and the relays' counters; keeping evidence is the caller's business
    (``run_scenario`` here, the pytest plugin's ``tunlab_checks`` fixture on a lab of its own); ``started``
    receives the capture as soon as it listens, for evidence when a later step raises."""
    result.run_id = lab.run_id
    nsh_mode = bool(getattr(lab.topology, "nsh", False))
    nsh_walks = _nsh_walks(lab, planned) if nsh_mode else None
    chains = _chains(lab, planned, nsh_walks)
    result.chains = [describe_chain(c) for c in chains.values()]
    # the relays of these chains are connected and their datapaths settled, so probes cross as they will stay
    lab.wait_connected(sc.timeout, links=[lk for ch in chains.values() for lk in ch.links])
    with Capture(capture_points(lab)) as cap:
        if started is not None:
            started.append(cap)
        if before_send is not None:
            before_send(lab)
            if nsh_mode:  # it may have re-classified (lab.nsh_set): expect what the tables say now
                nsh_walks = _nsh_walks(lab, planned)
                chains = _chains(lab, planned, nsh_walks)
        cap.touch()
        _send(lab, planned)
        arrivals = Arrivals([(chains[_chain_key(p, nsh_walks, i)], p.probe) for i, p in enumerate(planned)])
        if not cap.wait_for(arrivals, sc.timeout, quiet=max(GIVE_UP_QUIET, sc.settle)):
            result.notes.append("not every expected packet arrived (waited until the links were silent for "
                                f"{max(GIVE_UP_QUIET, sc.settle):g} s, at most {sc.timeout:g} s)")
        cap.wait_quiet(sc.settle, sc.timeout)
    _judge(sc, lab, chains, planned, cap.frames(), result, nsh_walks)
    result.notes += _capture_notes(cap)
    return cap, _counters(lab)


def _judge(sc: Scenario, lab: Any, chains: dict[Any, Chain], planned: list[PlannedProbe],
           frames: dict[str, list[Frame]], result: ScenarioResult, nsh_walks: list[NshWalk] | None = None) -> None:
    """The per-hop checks of every probe, and every link's, from what the capture points saw."""
    keyed = bool(getattr(lab.topology, "keyed", False))
    links = lab_links(lab)
    caps = Captures(frames, keys=lab.seal_keys() if keyed else None, links=links)
    caps.impairs = _impair_log(lab)
    result.flows = [check_flow(chains[_chain_key(p, nsh_walks, i)], caps, p.probe) for i, p in enumerate(planned)]
    if nsh_walks is not None:
        _nsh_checks(result, planned, nsh_walks, chains, caps)
    result.links += loss_checks(sc, planned, result.flows)
    # every link of the lab: a bare packet or a broken stream off the probes' chains is a failure too
    any_chain = next(iter(chains.values()))
    result.links += check_links(any_chain, caps, list(links.values()))


# ------------------------------------------------------------------------------ a lab across hosts


class GatheredCapture:
    """The frames every host of a lab across hosts sent back, shaped like a stopped :class:`Capture`."""

    def __init__(self, frames: dict[str, list[Frame]], stats: dict[str, tuple[int, int]]) -> None:
        self._frames = frames
        self.stats = stats

    def frames(self) -> dict[str, list[Frame]]:
        return {k: list(v) for k, v in self._frames.items()}

    def write_pcaps(self, folder: str | Path) -> list[Path]:
        return write_pcaps(folder, self._frames)


def _on_host(name: str, placement: dict[str, str]) -> str:
    return f"{name}@{placement[name]}" if name in placement else name


def check_on_hosts(sc: Scenario, lab: Any, planned: list[PlannedProbe], result: ScenarioResult, *,
                   before_send: BeforeSend | None = None) -> tuple[GatheredCapture, dict[str, Any]]:
    """:func:`check_on_lab` for a lab across hosts (:class:`tunlab.lab.multihost.MultiHostLab`, issue 19).

    Each host captures its own points (its nodes' TUNs; the links whose b end it holds: a link between
    hosts on the b node's uplink, arriving from the a node's host's underlay address), the senders' hosts
    send, each host waits until its points are quiet and sends its frames back (one round trip per host
    per phase: capture, send, collect); the checks are :func:`check_on_lab`'s. Results name each hop's host."""
    result.run_id = lab.run_id
    placement: dict[str, str] = lab.placement
    chains = {p.nodes: chain_for(lab, p.nodes) for p in planned}
    result.chains = [describe_chain(c).replace(" > ".join(c.nodes), " > ".join(_on_host(n, placement) for n in c.nodes))
                     for c in chains.values()]
    lab.wait_connected(sc.timeout)
    points: dict[str, list[tuple[str, str, str, str]]] = {}
    for point, node in capture_sites(lab):
        points.setdefault(placement[node], []).append((point.name, node, point.ifname, point.bpf))
    lab.capture_start(points)
    if before_send is not None:
        before_send(lab)
    probes: dict[str, list[tuple[str, bytes]]] = {}
    for p in planned:
        probes.setdefault(placement[p.src], []).append((p.src, p.probe.packet))
    lab.send(probes)
    frames, stats = lab.collect(list(points), max(GIVE_UP_QUIET, sc.settle), sc.timeout)
    cap = GatheredCapture(frames, stats)
    _judge(sc, lab, chains, planned, cap.frames(), result)
    for check in [*result.links, *(c for f in result.flows for c in f.checks)]:
        if check.hop:  # "vnf3 TUN in" -> "vnf3@h2 TUN in": the host of the hop a failure is about
            first, _, rest = check.hop.partition(" ")
            check.hop = f"{_on_host(first, placement)} {rest}".strip()
    result.notes.append("hosts: " + "; ".join(
        f"{h}: {' '.join(n for n in placement if placement[n] == h)}" for h in dict.fromkeys(placement.values())))
    result.notes += _capture_notes(cap)  # type: ignore[arg-type]
    return cap, _counters(lab)


def _impair_log(lab: Any) -> Any:
    """The relays' impairment decisions so far (asking for counters makes each relay write its log out)."""
    run_dir = getattr(lab, "run_dir", None)
    if run_dir is None or not any(Path(run_dir).glob("*.impair.jsonl")):
        return None
    from tunlab.verdict.impairments import ImpairLog

    _counters(lab)
    return ImpairLog.load(run_dir)


def loss_checks(sc: Scenario, planned: list[PlannedProbe], flows: list[Any]) -> list[CheckResult]:
    """A flow's statistical expectation ``loss=``: the share of its probes (and replies) that impairments
    dropped is one an exact two-sided binomial test at 1 % accepts for that rate over its probes."""
    from tunlab.model.scenario import loss_rate
    from tunlab.relay.impair import binomial_range

    out = []
    for i, flow in enumerate(sc.traffic):
        if flow.loss is None:
            continue
        rate = loss_rate(flow.loss, sc.source, f"traffic[{i}].loss")
        mine = [f for p, f in zip(planned, flows) if p.flow_index == i]
        dropped = sum(1 for f in mine if any("dropped by impairment" in c.message for c in f.checks))
        n = len(mine)
        k_lo, k_hi = binomial_range(n, rate) if n else (0, 0)
        lo, hi = (k_lo / n, k_hi / n) if n else (0.0, 0.0)
        share = dropped / n if n else 0.0
        ok = k_lo <= dropped <= k_hi
        out.append(CheckResult(f"loss of {flow.label()}", ok,
                               f"{dropped} of {n} dropped by impairment ({share:.1%}); expected {rate:.1%}, "
                               f"99% interval {lo:.1%}..{hi:.1%}"))
    return out


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


def _dead_relays(lab: Any) -> dict[str, str]:
    """Node -> how its relay died, for a lab that supervises its relays (else nothing)."""
    dead = getattr(lab, "dead_relays", None)
    try:
        return dict(dead()) if callable(dead) else {}
    except TunlabError:
        return {}


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


def write_evidence(result: ScenarioResult, cap: Any, counters: dict[str, Any], folder: Path) -> Path:
    """The one evidence layout of a checked scenario, from ``tunlab run`` or from the pytest plugin::

        FOLDER/pcaps/link_<link>.pcap   every underlay link (raw IP; decode with tunlab/wireshark/tunlab.lua)
        FOLDER/pcaps/tun_<node>.pcapng  every TUN captured, each packet with its direction
        FOLDER/counters-at-check.json   the relays' counters when the checks ran
        FOLDER/report.txt               the per-hop report (plain text)
        FOLDER/junit.xml                one testsuite, a testcase per check

    owned by the sudo user. ``tunlab run`` adds the lab's relay logs, final counters and ledger beside them
    when the lab comes down."""
    folder = make_user_dir(folder)
    result.results_dir = str(folder)
    if cap is not None:
        cap.write_pcaps(make_user_dir(folder / "pcaps"))
    if counters:
        write_user_file(folder / "counters-at-check.json", json.dumps(counters, indent=2, sort_keys=True, default=str))
    write_text(result, folder / "report.txt")
    write_user_file(folder / "junit.xml", junit_xml([result]))
    chown_to_invoking_user(folder)
    return folder


def _leave_up(lab: Any, result: ScenarioResult) -> None:
    detach = getattr(lab, "detach", None)
    if callable(detach):
        detach()
        result.notes.append(f"the lab stays up: tunlab exec --run {lab.run_id} NODE -- CMD; "
                            f"then tunlab down {lab.run_id}")
    else:
        result.notes.append("--keep: this lab cannot be left up; it was taken down")
