"""The ledger: durable entries, replay in reverse order whatever fails, owner liveness, process ownership."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tunlab.lab.ledger import (
    Entry, Ledger, list_runs, open_run, proc_start_time, process_alive, replay, stop_processes,
)


def test_entries_are_appended_in_order_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    led = Ledger.create({"topology": "t"}, root=tmp_path)
    led.append({"op": "netns", "name": "a"}, {"op": "netns", "name": "b"})
    led.append({"op": "proc", "pid": 1})
    with open(led.ledger_path, "a") as f:
        f.write('{"op": "link", "ifn')  # the process died while writing
    assert [e.get("name", e.get("pid")) for e in led.entries()] == ["a", "b", 1]
    assert Ledger.open(led.run_id, root=tmp_path).entries() == led.entries()
    m = led.meta()
    assert m["topology"] == "t" and m["owner"]["pid"] == os.getpid() and m["run_id"] == led.run_id


def test_replay_goes_in_reverse_groups_alike_entries_and_carries_on_after_errors(tmp_path: Path) -> None:
    led = Ledger.create({}, root=tmp_path)
    led.append({"op": "netns", "name": "n1"}, {"op": "netns", "name": "n2"},
               {"op": "link", "name": "l1"}, {"op": "tun", "name": "t1"},
               {"op": "proc", "name": "p1"}, {"op": "proc", "name": "p2"}, {"op": "mystery", "name": "m"})
    calls: list[tuple[str, list[str]]] = []

    def rec(op: str, fail: bool = False):  # type: ignore[no-untyped-def]
        def remover(entries: Sequence[Entry]) -> None:
            calls.append((op, [e["name"] for e in entries]))
            if fail:
                raise OSError("device busy")
        return remover

    errors = replay(led, {"netns": rec("netns"), "link": rec("link", fail=True), "tun": rec("tun"),
                          "proc": rec("proc")})
    assert calls == [("proc", ["p2", "p1"]), ("tun", ["t1"]), ("link", ["l1"]), ("netns", ["n2", "n1"])]
    assert len(errors) == 2
    assert "no remover for 'mystery'" in errors[0] and "device busy" in errors[1]


def test_a_run_is_dead_when_its_owner_is_gone_and_up_runs_are_not(tmp_path: Path) -> None:
    led = Ledger.create({}, root=tmp_path)
    assert led.state() == "running"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    led.update_meta(owner={"pid": child.pid, "start": 1})
    assert led.state() == "dead"
    led.update_meta(owner={"pid": os.getpid(), "start": (proc_start_time(os.getpid()) or 0) + 1})
    assert led.state() == "dead"  # same pid, other start time: a reused pid is not the owner
    led.update_meta(state="up")
    assert led.state() == "up"
    assert [r.run_id for r in list_runs(tmp_path)] == [led.run_id]


def test_stop_processes_stops_ours_and_never_a_pid_with_another_start_time() -> None:
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        st = proc_start_time(bystander.pid)
        assert st is not None
        killed = stop_processes([(ours.pid, proc_start_time(ours.pid)), (stubborn.pid, proc_start_time(stubborn.pid)),
                                 (bystander.pid, st + 1)], timeout=0.5)
        assert killed == [stubborn.pid]
        assert ours.poll() is not None and stubborn.poll() is not None
        assert process_alive(bystander.pid, st)
    finally:
        for p in (ours, stubborn, bystander):
            p.kill()
            p.wait()
    assert not process_alive(bystander.pid, None)


@pytest.mark.parametrize("bad", ["../etc", "ABCD", "abc"])
def test_open_refuses_what_is_not_a_run(tmp_path: Path, bad: str) -> None:
    from tunlab.errors import TunlabError

    with pytest.raises(TunlabError, match="there is no run"):
        Ledger.open(bad, root=tmp_path)


def test_a_run_is_opened_by_id_or_by_name_even_a_name_shaped_like_an_id(tmp_path: Path) -> None:
    from tunlab.errors import TunlabError

    mine = Ledger.create({"name": "mine"}, root=tmp_path)  # "mine" is also a well-formed run id (README's example)
    other = Ledger.create({"name": "lab2"}, root=tmp_path)
    assert open_run(mine.run_id, root=tmp_path).run_id == mine.run_id
    assert open_run("mine", root=tmp_path).run_id == mine.run_id
    assert open_run("lab2", root=tmp_path).run_id == other.run_id
    with pytest.raises(TunlabError, match="neither a run id nor a lab name"):
        open_run("zzzz", root=tmp_path)


def test_netns_removers_refuse_what_does_not_carry_the_run_id(tmp_path: Path) -> None:
    from tunlab.lab.backends.netns import NetnsBackend

    led = Ledger.create({}, root=tmp_path)
    led.append({"op": "netns", "name": "someone-elses-namespace"},
               {"op": "link", "netns": "not-recorded", "ifname": "eth9"})
    errors = replay(led, NetnsBackend.removers(led))
    assert len(errors) == 2
    assert "eth9 is in namespace not-recorded, which this run did not record; left alone" in errors[0]
    assert f"someone-elses-namespace do not carry run id {led.run_id}; left alone" in errors[1]
