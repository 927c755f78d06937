"""Every shipped scenario passes on a real lab; broken chains fail and name the right hop (root)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tunlab.model.topology import Vnf, linear_chain
from tunlab.model.scenario import load_scenario
from tunlab.verdict.checks import ScenarioResult
from tunlab.verdict.report import render_text
from tunlab.run.runner import run_scenario

pytestmark = pytest.mark.netns

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def report(result: ScenarioResult) -> str:
    return render_text(result, 160)


@pytest.mark.parametrize("name", ["three_vnf", "tunconnector_pair", "firewall", "tcp_chain", "nat", "dual_stack"])
def test_shipped_scenario_passes(name: str, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.py")
    result = run_scenario(sc, results_root=tmp_path)
    assert result.passed, report(result)
    assert result.results_dir is None and not list(tmp_path.iterdir())  # nothing kept on success
    assert not list(Path("/run/netns").glob(f"tl-{result.run_id}-*"))  # the lab is gone
    # every probe was checked on every hop of its chain, not just end to end
    for flow in result.flows:
        assert all(r.status == "seen" for r in flow.hops if not r.expected_missing), report(result)
        assert any(r.step.direction == "link" and r.outer for r in flow.hops)


def hook_chain(hook: str) -> object:
    """sender - vnf1 - vnf2 - vnf3 - receiver where vnf2 is a hook VNF running ``hook``."""
    def vnf(i: int, name: str, overlay: str) -> Vnf:
        if i == 2:
            return Vnf(name, overlay, kind="hook", hook=f"tunlab.traffic.faults:{hook}")
        return Vnf(name, overlay)
    return linear_chain(3, "udp", name=f"fault_{hook}", vnf=vnf)


def failing_run(tmp_path: Path, *, hook: str | None = None, kill: str | None = None) -> ScenarioResult:
    sc = load_scenario(SCENARIOS / "three_vnf.py")
    if hook:
        sc = sc.with_topology(hook_chain(hook))
    before = (lambda lab: lab.kill_relay(kill)) if kill else None
    result = run_scenario(sc, results_root=tmp_path, before_send=before)
    assert not result.passed, report(result)
    if kill:  # the cause comes first: the relay's death, with its exit status (issue 13)
        assert result.error and f"the relay of node {kill} (pid " in result.error, result.error
        assert "killed by signal 9 (SIGKILL)" in result.error, result.error
    else:
        assert result.error is None, result.error
    assert not list(Path("/run/netns").glob(f"tl-{result.run_id}-*"))  # gone, failure or not
    return result


def checks_named(result: ScenarioResult, name: str) -> list:  # type: ignore[type-arg]
    return [c for f in result.flows for c in f.checks if c.name == name]


def assert_evidence(result: ScenarioResult, tmp_path: Path) -> None:
    folder = Path(str(result.results_dir))
    assert folder.parent == tmp_path and folder.name == result.run_id
    pcaps = {p.name for p in (folder / "pcaps").iterdir()}
    assert {"link_sender-vnf1.pcap", "link_vnf2-vnf3.pcap", "tun_sender.pcapng", "tun_receiver.pcapng"} <= pcaps
    assert (folder / "counters-at-check.json").is_file()
    assert {"sender.log", "vnf2.log", "vnf1.stats.json"} <= {p.name for p in folder.iterdir()}  # from the lab
    assert "FAIL" in (folder / "report.txt").read_text()
    suite = ET.parse(folder / "junit.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures") or 0) > 0


def test_relay_killed_mid_run_is_named(tmp_path: Path) -> None:
    result = failing_run(tmp_path, kill="vnf2")
    for check in checks_named(result, "every hop"):
        assert not check.passed and "lost at vnf2" in check.message, report(result)
        assert check.last_seen == "link vnf1>vnf2"
    assert_evidence(result, tmp_path)


def test_vnf_that_silently_drops_is_named(tmp_path: Path) -> None:
    result = failing_run(tmp_path, hook="drop_all")
    for check in checks_named(result, "delivered"):
        assert not check.passed and check.last_seen == "link vnf1>vnf2", report(result)
        assert "lost at vnf2" in check.message
    assert any("hook_drop" in n for n in result.notes), result.notes  # the relay's own counter agrees
    assert_evidence(result, tmp_path)


def test_vnf_that_rewrites_a_payload_byte_is_named(tmp_path: Path) -> None:
    result = failing_run(tmp_path, hook="flip_payload_byte")
    hops = checks_named(result, "every hop")
    assert all(not c.passed for c in hops)
    for check in hops:
        assert check.hop == "link vnf2>vnf3" and "altered" in check.message, report(result)
        assert "Raw.load" in check.message or "TCP" in check.message or "(layers)" in check.message
        assert check.expected and check.nearest  # EXPECTED and RECEIVED for the report
    text = report(result)
    assert "EXPECTED" in text and "RECEIVED" in text and "differing bytes (offset: expected/received)" in text


def test_relay_that_sends_the_inner_packet_bare_is_named(tmp_path: Path) -> None:
    result = failing_run(tmp_path, hook="bare_instead")
    bad_links = [c for c in result.links if not c.passed]
    assert [c.hop for c in bad_links] == ["vnf2-vnf3"], report(result)
    assert "travels bare" in bad_links[0].message and bad_links[0].nearest
    for check in checks_named(result, "every hop"):
        assert check.hop == "link vnf2>vnf3" and "bare" in check.message, report(result)


def test_keep_leaves_the_lab_up_and_the_results_until_tunlab_down(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIOS / "tunconnector_pair.py")
    result = run_scenario(sc, results_root=tmp_path, keep=True)
    run_id = str(result.run_id)
    try:
        assert result.passed, report(result)
        folder = tmp_path / run_id
        assert Path(str(result.results_dir)) == folder and (folder / "junit.xml").is_file()
        assert (folder / "pcaps" / "link_client-server.pcap").is_file()
        assert any("tunlab down " + run_id in n for n in result.notes)
        assert Path(f"/run/netns/tl-{run_id}-client").exists()  # still up
    finally:
        down = subprocess.run([sys.executable, "-m", "tunlab", "down", run_id], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert not Path(f"/run/netns/tl-{run_id}-client").exists()


def test_cli_runs_several_scenarios_one_line_each_and_fails_on_one(tmp_path: Path) -> None:
    bad = tmp_path / "dropper.py"
    bad.write_text("from tunlab.model.topology import Vnf, linear_chain\nfrom tunlab.model.scenario import Ping\n"
                   "def _v(i, n, o):\n"
                   "    return Vnf(n, o, kind='hook', hook='tunlab.traffic.faults:drop_all')\n"
                   "topology = linear_chain(1, 'udp', name='dropper', vnf=_v)\ntraffic = [Ping()]\n")
    junit = tmp_path / "all.xml"
    proc = subprocess.run([sys.executable, "-m", "tunlab", "run", "--results", str(tmp_path / "res"),
                           "--junit", str(junit), str(SCENARIOS / "tunconnector_pair.py"), str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PASS tunconnector_pair: 6 probes")
    assert any(line.startswith("FAIL dropper: ") and "lost at vnf1" in line for line in lines), proc.stdout
    assert lines[-2] == "1 of 2 scenarios passed" and lines[-1].startswith("seed ")
    assert "running tunconnector_pair" in proc.stderr  # progress, on stderr
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["tunconnector_pair", "dropper"]
    kept = list((tmp_path / "res").iterdir())
    assert len(kept) == 1 and (kept[0] / "report.txt").is_file()  # only the failing run keeps its folder
