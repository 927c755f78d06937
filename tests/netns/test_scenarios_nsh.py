"""NSH service chains from the topology (issue 18): the shipped NSH scenarios pass with SPI, SI, TTL and
metadata checked on every hop both ways; a wrong path, a wrong SI decrement and lost metadata fail naming
the hop; re-classification through the lab (control socket) moves the next probes and the checks follow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tunlab.model.scenario import load_scenario
from tunlab.relay.control import request
from tunlab.run.runner import run_scenario
from tunlab.verdict.checks import ScenarioResult
from tunlab.verdict.report import render_text

pytestmark = pytest.mark.netns

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def report(result: ScenarioResult) -> str:
    return render_text(result, 160)


def nsh_checks(result: ScenarioResult) -> list[str]:
    return [f"{c.name}: {c.message}" for f in result.flows for c in f.checks if c.name.startswith("nsh")]


@pytest.mark.parametrize("name", ["nsh_firewall", "nsh_metadata", "nsh_proxy"])
def test_shipped_nsh_scenario_passes(name: str, tmp_path: Path) -> None:
    result = run_scenario(load_scenario(SCENARIOS / f"{name}.py"), results_root=tmp_path)
    assert result.passed, report(result)
    checks = nsh_checks(result)
    delivered = [f for f in result.flows if f.probe.expect.delivered]
    # every delivered probe had its NSH header checked on each of its links, forward (and back when answered)
    for f in delivered:
        links = sum(1 for h in f.hops if h.step.direction == "link")
        assert sum(1 for c in f.checks if c.name.startswith("nsh ") and ">" in c.name) >= links, report(result)
    assert any("SPI" in c and "context" in c or "tlvs" in c for c in checks), checks


def _ctl(lab, node: str, **tables) -> None:  # type: ignore[no-untyped-def]
    """Change a relay's tables behind the lab's back (the chain definition still says otherwise)."""
    reply = request(lab.node(node).plan.control, {"cmd": "nsh", "set": tables})
    assert reply["ok"], reply


def _failing(sc, tmp_path: Path, before) -> ScenarioResult:  # type: ignore[no-untyped-def]
    result = run_scenario(sc, results_root=tmp_path, before_send=before)
    assert not result.passed, report(result)
    return result


def test_wrong_path_and_wrong_si_decrement_named(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "nsh_firewall.py")

    def wrong_path(lab) -> None:  # type: ignore[no-untyped-def]
        _ctl(lab, "sender", classifier=[{"spi": 20, "si": 100, "src": "172.16.0.1/32", "dst": "172.16.0.2/32"}])

    checks = nsh_checks(_failing(sc, tmp_path / "a", wrong_path))
    assert "nsh sender>vnf1: NSH probe at hop sender>vnf1: SPI 20, expected 10 (wrong path)" in checks, checks

    def skip_sf(lab) -> None:  # type: ignore[no-untyped-def]  # vnf1's SF is passed by: SI not taken down
        _ctl(lab, "vnf1", forward=[{"spi": 10, "si": 255, "to": "vnf2"}])
        _ctl(lab, "vnf2", forward=[{"spi": 10, "si": 255, "to": "sf"}, {"spi": 10, "si": 254, "to": "receiver"}])
        _ctl(lab, "receiver", forward=[{"spi": 10, "si": 254, "to": "end"}])

    checks = nsh_checks(_failing(sc, tmp_path / "b", skip_sf))
    assert any(c.startswith("nsh vnf1>vnf2: NSH probe at hop vnf1>vnf2: SI 255, expected 254 (wrong SI decrement")
               for c in checks), checks


def test_lost_metadata_named(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "nsh_metadata.py")
    topo = sc.topology
    vnfs = tuple(replace(v, nsh_hook="tunlab.traffic.nsh_sf:wipe_metadata") if v.name == "vnf3" else v
                 for v in topo.vnfs)
    result = _failing(sc.with_topology(replace(topo, vnfs=vnfs)), tmp_path, None)
    checks = nsh_checks(result)
    assert any(c.startswith("nsh vnf3>receiver: NSH probe at hop vnf3>receiver: metadata lost: context "
                            "00000000000000000000000000000000, expected context 534631004f4b3100") for c in checks), checks


def test_reclassification_through_the_lab_moves_the_next_probes(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "nsh_firewall.py")

    def move(lab) -> None:  # type: ignore[no-untyped-def]
        rule = {"spi": 20, "si": 100, "src": "172.16.0.1/32", "dst": "172.16.0.2/32"}
        lab.nsh_set("sender", classifier=[rule])
        # the relay's file follows (a relay restarted by the supervisor starts with the tables in force)
        assert json.loads(Path(lab.node("sender").plan.nsh_file).read_text())["classifier"] == [rule]

    result = run_scenario(sc, results_root=tmp_path, before_send=move)
    assert result.passed, report(result)
    checks = nsh_checks(result)
    ping = [c for c in checks if "probe at hop vnf2>receiver" in c]
    assert ping and all("SPI 20 SI 99" in c for c in ping), checks  # every probe now on path 20
    assert not any("SPI 10" in c for c in checks), checks
