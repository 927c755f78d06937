"""scripts/leakcheck.py: what test.sh reports as left behind (no root needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

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
