"""Issue 13 (2): relays are supervised. A relay's death is noticed within a second, logged with its exit
status, shown by `tunlab ls` (the lab is "degraded", naming the node) and fails a scenario or a pytest test
with that cause; with the restart policy a relay is started again from its recorded command line and
carries traffic again; every relay's argv is in the ledger and in `ps`; relay logs carry start, peers,
datapath and stop at the default level."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tunlab import Lab, linear_chain
from tunlab.lab.ledger import Ledger
from tunlab.system.procs import process_alive

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def poll(cond: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.01) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def tunlab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "COLUMNS": "250"})
    if check and res.returncode != 0:
        raise AssertionError(f"tunlab {' '.join(args)} -> {res.returncode}: {res.stderr}")
    return res


def ping_ok(lab: Lab) -> bool:
    r = lab.node("sender").cmd_status(["ping", "-c", "1", "-W", "1", lab.node("receiver").overlay_ip])
    return r.returncode == 0


def relay_entries(led: Ledger) -> list[dict[str, object]]:
    return [e for e in led.entries() if e["op"] == "proc" and e.get("role") == "relay"]


def test_a_killed_relay_is_noticed_named_and_shown_degraded(tmp_path: Path) -> None:
    with Lab(linear_chain(2), results_dir=tmp_path) as lab:
        # every relay's command line is recorded and is what `ps` shows
        for e in relay_entries(lab.ledger):
            argv = e["argv"]
            assert isinstance(argv, list) and argv[1:4] == ["-m", "tunlab", "relay"] and "--dev" in argv
            cmdline = Path(f"/proc/{e['pid']}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            assert [c.decode() for c in cmdline] == argv
        pid = lab.relays.relays["vnf1"].pid
        os.kill(pid, signal.SIGKILL)  # from outside, as an operator or a crash would
        killed = time.monotonic()
        poll(lambda: "vnf1" in lab.relays.dead, "the monitor noticing the death")
        took = time.monotonic() - killed
        assert took < 1.0, f"a relay's death noticed after {took:.2f} s"
        assert lab.relays.dead["vnf1"] == "killed by signal 9 (SIGKILL)"
        assert lab.dead_relays() == {"vnf1": f"the relay of node vnf1 (pid {pid}) killed by signal 9 (SIGKILL)"}
        ls = tunlab("ls").stdout
        assert re.search(rf"{lab.run_id}\s.*degraded \(running\): relay of vnf1 killed by signal 9", ls), ls
        assert not ping_ok(lab)
        run_id = lab.run_id
    # relay logs at the default level: start, peers, datapath, stop
    log = (tmp_path / run_id / "vnf2.log").read_text()
    for what in ("ready: TUN device", "peers: vnf1 at", "datapath", "relay stopping"):
        assert what in log, f"{what!r} not in vnf2's log:\n{log}"


def test_a_restarted_relay_carries_traffic_again() -> None:
    with Lab(linear_chain(1), restart_relays=True) as lab:
        assert ping_ok(lab)
        old = lab.relays.relays["vnf1"]
        os.kill(old.pid, signal.SIGKILL)
        new = poll(lambda: [e for e in relay_entries(lab.ledger) if e.get("restart_of") == old.pid],
                   "the fork server restarting the relay")[0]  # type: ignore[index]
        assert new["argv"] == relay_entries(lab.ledger)[[e["node"] for e in relay_entries(lab.ledger)].index("vnf1")]["argv"]
        poll(lambda: ping_ok(lab), "traffic through the restarted relay", 30, 0.1)
        poll(lambda: lab.relays.relays["vnf1"].pid == new["pid"], "the supervisor following the new pid")
        assert lab.relays.restarted == {"vnf1": 1} and lab.dead_relays() == {}
        assert set(lab.relay_counters()) == {"sender", "vnf1", "receiver"}
        exits = (lab.run_dir / "vnf1.exits.jsonl").read_text()
        assert f'"pid":{old.pid},"status":"killed by signal 9 (SIGKILL)"' in exits
        new_pid = int(new["pid"])  # type: ignore[arg-type]
    assert not process_alive(new_pid, new.get("start"))  # type: ignore[arg-type]


def test_an_up_lab_restarts_its_relays_and_down_stops_the_new_one() -> None:
    up = tunlab("up", "linear", "-p", "n_vnfs=1")
    run_id = re.search(r"lab (\w{4}) ", up.stdout).group(1)  # type: ignore[union-attr]
    led = Ledger.open(run_id)
    try:
        (first,) = [e for e in relay_entries(led) if e["node"] == "vnf1"]
        os.kill(int(first["pid"]), signal.SIGKILL)  # type: ignore[arg-type]
        poll(lambda: [e for e in relay_entries(led) if e.get("restart_of") == first["pid"]], "the restart")
        ping = ["exec", "--run", run_id, "sender", "--", "ping", "-c", "1", "-W", "1", "172.16.0.2"]
        poll(lambda: tunlab(*ping, check=False).returncode == 0, "traffic through the restarted relay", 30, 0.1)
        assert "degraded" not in tunlab("ls").stdout.split(run_id, 1)[1].splitlines()[0]
        restarted = [e for e in relay_entries(led) if e.get("restart_of") == first["pid"]][0]
    finally:
        tunlab("down", run_id)
    assert not process_alive(int(restarted["pid"]), restarted.get("start"))  # type: ignore[arg-type]


def test_a_scenario_fails_naming_the_dead_relay() -> None:
    res = subprocess.run(
        [sys.executable, "-c", "from tunlab import load_scenario\n"
         "from tunlab.run.runner import run_scenario\n"
         "import os, signal, tempfile\n"
         "r = run_scenario(load_scenario('scenarios/three_vnf.py'), results_root=tempfile.mkdtemp(),\n"
         "    before_send=lambda lab: os.kill(lab.relays.relays['vnf2'].pid, signal.SIGKILL))\n"
         "print('ERROR', r.error)\n"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "ERROR the relay of node vnf2 (pid " in res.stdout and "killed by signal 9 (SIGKILL)" in res.stdout, \
        res.stdout + res.stderr


def test_a_pytest_test_fails_naming_the_dead_relay(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dead="""
import os, signal
import pytest
from tunlab.model.scenario import Ping

pytestmark = [pytest.mark.netns, pytest.mark.tunlab_topology("linear", params={"n_vnfs": 2})]

def test_ping_after_a_crash(tunlab_lab, tunlab_checks):
    os.kill(tunlab_lab.relays.relays["vnf2"].pid, signal.SIGKILL)
    tunlab_checks.flows([Ping()])
""")
    result = pytester.runpytest("-p", "no:hypothesispytest")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the relay of node vnf2 (pid *) killed by signal 9 (SIGKILL)*"])
