"""Every shipped scenario on the Mininet backend, and parity with the netns backend (root + mininet)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tunlab.model.topology import Vnf, linear_chain
from tunlab.model.scenario import load_scenario
from tunlab.verdict.checks import ScenarioResult
from tunlab.verdict.report import render
from tunlab.run.runner import run_scenario

pytestmark = [pytest.mark.netns, pytest.mark.mininet]

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = sorted(p.stem for p in SCENARIOS.glob("*.py") if not p.name.startswith("_"))


def report(result: ScenarioResult) -> str:
    buf = io.StringIO()
    render(result, Console(file=buf, width=200, no_color=True))
    return buf.getvalue()


def normalised(result: ScenarioResult) -> str:
    """The report without what differs between any two runs: run id, times."""
    text = report(result).replace(str(result.run_id), "RUN")
    text = re.sub(r"\d+\.\d+ ?(ms|s)\b", r"T\1", text)
    text = re.sub(r"[│┃] *\d+\.\d+ *[│┃]", "|T|", text)  # the latency column
    text = re.sub(r"[━─┏┳┓┡╇┩└┴┘│┃]+", "|", text)  # table widths follow the widest time
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def verdicts(result: ScenarioResult) -> list[Any]:
    """Per probe and per hop: what was seen where, and every check's verdict and the hop it blames."""
    def outer(text: str) -> str:  # a TCP relay connects from an ephemeral port
        return re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+", r"\1:*", text) if text.startswith("TCP") else text

    out: list[Any] = []
    for f in result.flows:
        out.append([(str(h.step), h.status, outer(h.outer)) for h in f.hops])
        out.append([(str(h.step), h.status, outer(h.outer)) for h in f.reply_hops])
        out.append([(c.name, c.passed, c.hop, c.last_seen) for c in f.checks])
    out.append([(c.name, c.passed, c.message) for c in result.links])
    return out


def assert_gone(result: ScenarioResult) -> None:
    """The run left no Mininet host shell, relay or run directory behind."""
    from tunlab.lab.ledger import run_root, tagged_pids

    assert result.run_id and not (run_root() / result.run_id).exists()
    assert tagged_pids(result.run_id) == []  # host shells carry the run's tag too


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_passes_on_mininet(name: str, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.py")
    # a fixed seed: lossy_chain's loss share is a statistical check (an honest run fails it 1 % of the time)
    result = run_scenario(sc, results_root=tmp_path, backend="mininet", seed=5)
    assert result.passed, report(result)
    for flow in result.flows:  # checked on every hop, not only end to end
        if any("dropped by impairment on link" in c.message for c in flow.checks):
            continue  # lossy_chain: a probe its relays dropped on purpose (decision logged) stops there
        assert all(r.status == "seen" for r in flow.hops if not r.expected_missing), report(result)
        assert any(r.step.direction == "link" and r.outer for r in flow.hops)
    assert not list(tmp_path.iterdir())  # nothing kept on success
    assert_gone(result)


@pytest.mark.parametrize("name", ["three_vnf", "firewall"])
def test_both_backends_give_the_same_verdicts_and_report(name: str, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.py")
    netns = run_scenario(sc, results_root=tmp_path / "netns", backend="netns", seed=1234)
    mininet = run_scenario(sc, results_root=tmp_path / "mininet", backend="mininet", seed=1234)
    assert netns.passed and mininet.passed, report(netns) + report(mininet)
    assert verdicts(mininet) == verdicts(netns)
    assert normalised(mininet) == normalised(netns)


def _dropping_vnf2(i: int, name: str, overlay: str) -> Vnf:
    return Vnf(name, overlay, kind="hook", hook="tunlab.traffic.faults:drop_all") if i == 2 else Vnf(name, overlay)


def test_a_broken_chain_fails_at_the_same_hop_on_both_backends(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "three_vnf.py").with_topology(
        linear_chain(3, "udp", name="fault_drop", vnf=_dropping_vnf2))
    netns = run_scenario(sc, results_root=tmp_path / "netns", backend="netns", seed=99)
    mininet = run_scenario(sc, results_root=tmp_path / "mininet", backend="mininet", seed=99)
    assert not netns.passed and not mininet.passed
    assert netns.error is None and mininet.error is None, (netns.error, mininet.error)
    blamed = {(c.name, c.hop, c.last_seen) for c in mininet.failed}
    assert blamed == {(c.name, c.hop, c.last_seen) for c in netns.failed}
    assert any("vnf2" in str(c.last_seen) for c in mininet.failed), report(mininet)
    assert verdicts(mininet) == verdicts(netns)
    # failure evidence is kept the same way: pcaps of every link and the relay logs of the Mininet hosts
    folder = Path(str(mininet.results_dir))
    assert {"link_sender-vnf1.pcap", "tun_receiver.pcapng"} <= {p.name for p in (folder / "pcaps").iterdir()}
    assert {"vnf2.log", "vnf1.stats.json", "report.txt"} <= {p.name for p in folder.iterdir()}
    assert_gone(mininet)


@pytest.mark.parametrize("fabric", ["bridge", "ovs"])
def test_links_through_switches_give_the_same_verdicts(fabric: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """TUNLAB_MININET_SWITCH: every link through a switch (a Linux bridge, or Open vSwitch's userspace
    datapath run privately in the switch's namespace): the chain and its report do not change."""
    if fabric == "ovs":
        from tunlab.lab.backends.mininet.nodes import ovs_unavailable_reason

        if ovs_unavailable_reason():
            pytest.skip(str(ovs_unavailable_reason()))
    sc = load_scenario(SCENARIOS / "tcp_chain.py")
    netns = run_scenario(sc, results_root=tmp_path / "netns", backend="netns", seed=7)
    monkeypatch.setenv("TUNLAB_MININET_SWITCH", fabric)
    switched = run_scenario(sc, results_root=tmp_path / fabric, backend="mininet", seed=7)
    assert switched.passed, report(switched)
    assert verdicts(switched) == verdicts(netns)
    assert_gone(switched)  # switch shells and OVS daemons carry the run's tag: none is left
