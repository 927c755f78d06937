"""scripts/leakcheck.py: what test.sh reports as left behind (no root needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_leakcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tunlab_ci_leakcheck", ROOT / "scripts/leakcheck.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


lc = load_leakcheck()

NETNS_OUT = "tl1a2b-vnf1 (id: 3)\ntl1a2b-snd (id: 2)\nbystander\n"
LINK_OUT = (
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default "
    "qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
    "7: tl1a2b-s1@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT "
    "group default qlen 1000\\    link/ether 4e:1f:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns x\n"
)


def test_parse_ip_outputs() -> None:
    assert lc.parse_netns_list(NETNS_OUT) == {"tl1a2b-vnf1", "tl1a2b-snd", "bystander"}
    assert lc.parse_netns_list("") == set()
    assert lc.parse_link_list(LINK_OUT) == {"lo", "tl1a2b-s1"}


def test_leaks_name_only_what_is_new() -> None:
    before = lc.Snapshot(frozenset({"old"}), frozenset({"lo", "eth0"}), frozenset())
    proc = lc.Proc(4242, 99, "r1", "s1", "python -m tunlab relay")
    after = lc.Snapshot(frozenset({"old", "tl-new"}), frozenset({"lo", "tl-veth"}), frozenset({proc}))
    lines = lc.leaks(before, after, suite="s1")
    assert [ln.split()[:2] for ln in lines] == [["netns", "tl-new"], ["link", "tl-veth"], ["process", "4242"]]
    assert "TUNLAB_RUN=r1" in lines[2] and "[this suite]" in lines[2]
    assert lc.leaks(after, after) == []
    # a process with the same pid but another start time is another process
    reused = lc.Proc(4242, 100, "r1", None, "x")
    assert len(lc.leaks(after, lc.Snapshot(after.netns, after.links, frozenset({reused})))) == 1


def test_snapshot_sees_a_tunlab_process_and_its_end() -> None:
    run = f"leakcheck-{uuid.uuid4().hex[:8]}"
    before = lc.snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             env=dict(os.environ, TUNLAB_RUN=run, TUNLAB_SUITE="suite-x"))
    try:
        found = [p for p in lc.tunlab_processes() if p.pid == child.pid]
        assert len(found) == 1 and found[0].run == run and found[0].suite == "suite-x"
        left = lc.leaks(before, lc.snapshot(), suite="suite-x")
        assert any(f"process {child.pid} " in ln and f"TUNLAB_RUN={run}" in ln for ln in left)
    finally:
        assert child.stdin is not None
        child.stdin.close()  # the child exits when its stdin closes
        child.wait(timeout=10)
    assert not any(f"process {child.pid} " in ln for ln in lc.settled_leaks(before, "suite-x", deadline_s=5))


def test_settled_leaks_waits_for_teardown_to_finish() -> None:
    before = lc.Snapshot()
    states = iter([lc.Snapshot(frozenset({"tl-x"})), lc.Snapshot(frozenset({"tl-x"})), lc.Snapshot()])
    assert lc.settled_leaks(before, take=lambda: next(states), deadline_s=10) == []
    stuck = lc.Snapshot(frozenset({"tl-stuck"}))
    assert lc.settled_leaks(before, take=lambda: stuck, deadline_s=0.3)[0].startswith("netns   tl-stuck")


def test_only_this_suites_runs_are_judged() -> None:
    """On a shared machine: another user's lab that comes up during the run is not this suite's leak."""
    before = lc.Snapshot(frozenset(), frozenset({"lo"}), frozenset())
    mine = lc.Proc(10, 1, "ab12", "s1", "tunlab relay")
    theirs = lc.Proc(11, 1, "zz99", "s2", "tunlab relay")
    untagged_suite = lc.Proc(12, 1, "t2r0a0b0c", None, "relay of a test NetLab")
    after = lc.Snapshot(frozenset({"tl-ab12-vnf1", "tl-zz99-vnf1", "t2r0a0b0ca", "tl-ab123-x"}),
                        frozenset({"lo", "ve-ab12-l1a", "ve-zz99-l1a"}), frozenset({mine, theirs, untagged_suite}))
    everything = lc.leaks(before, after, suite="s1")
    assert len(everything) == 9  # without the run log: all of it (the old behaviour)
    own = lc.leaks(before, after, suite="s1", runs={"ab12", "t2r0a0b0c"})
    assert [ln.split()[1] for ln in own] == ["t2r0a0b0ca", "tl-ab12-vnf1", "ve-ab12-l1a", "10", "12"]


def test_runs_log_their_ids_for_the_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab.lab.ledger import Ledger

    log = tmp_path / "tier.runs"
    monkeypatch.setenv("TUNLAB_RUN_LOG", str(log))
    a = Ledger.create({"topology": "x"}, root=tmp_path / "runs")
    b = Ledger.create({"topology": "y"}, root=tmp_path / "runs")
    assert lc.read_run_log(log) == {a.run_id, b.run_id}
    assert lc.read_run_log(tmp_path / "missing") == set()
