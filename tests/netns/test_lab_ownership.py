"""Issue 13 (1): a lab owns every process in its namespaces, however it was started; `down` and `clean`
stop them all before removing the namespaces, and a lab's teardown does the same."""

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

from tunlab.lab.ledger import tagged_pids
from tunlab.system.procs import netns_id, pids_in_netns, proc_start_time, process_alive

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def tunlab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    if check and res.returncode != 0:
        raise AssertionError(f"tunlab {' '.join(args)} -> {res.returncode}: {res.stderr}")
    return res


def poll(cond: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sleepers_in(nsfile: str, marker: str) -> list[int]:
    out = []
    for pid in pids_in_netns({netns_id(nsfile)}):  # type: ignore[arg-type]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmd:
            out.append(pid)
    return out


def test_down_stops_exec_hand_started_and_daemonised_processes() -> None:
    up = tunlab("up", "linear", "-p", "n_vnfs=1")
    run_id = re.search(r"lab (\w{4}) ", up.stdout).group(1)  # type: ignore[union-attr]
    vnf1 = f"/run/netns/tl-{run_id}-vnf1"
    sender = f"/run/netns/tl-{run_id}-sender"
    started: list[subprocess.Popen[bytes]] = []
    try:
        # the README's flow: `tunlab exec RUN NODE -- server` left running in another terminal
        started.append(subprocess.Popen([sys.executable, "-m", "tunlab", "exec", "--run", run_id, "vnf1", "--",
                                         "sleep", "301"], cwd=ROOT, start_new_session=True))
        # a relay (or anything) restarted by hand with iproute2: no tag, no ledger entry
        started.append(subprocess.Popen(["ip", "netns", "exec", f"tl-{run_id}-vnf1", "sleep", "302"],
                                        start_new_session=True))
        # a daemon a command leaves behind (its parent exits at once)
        tunlab("exec", "--run", run_id, "sender", "--", "sh", "-c", "setsid sleep 303 >/dev/null 2>&1 &")
        pids = [poll(lambda: sleepers_in(vnf1, "301"), "exec'd sleep"),
                poll(lambda: sleepers_in(vnf1, "302"), "hand-started sleep"),
                poll(lambda: sleepers_in(sender, "303"), "daemonised sleep")]
        procs = [(p, proc_start_time(p)) for group in pids for p in group]  # type: ignore[union-attr]
    finally:
        down = tunlab("down", run_id, check=False)
        for p in started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # the test failed: do not leak it
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    alive = [pid for pid, st in procs if process_alive(pid, st)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"`tunlab down` left {alive} running: {down.stdout} {down.stderr}"
    assert down.returncode == 0 and f"run {run_id}: removed" in down.stdout, down.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"tl-{run_id}-")]
    assert tagged_pids(run_id) == []


def test_lab_teardown_stops_what_its_commands_left_behind() -> None:
    from tunlab import Lab, linear_chain

    with Lab(linear_chain(1)) as lab:
        node = lab.node("vnf1")
        node.cmd_raises("setsid sleep 304 >/dev/null 2>&1 &")
        pids = poll(lambda: sleepers_in(node.netns_file, "304"), "the left-behind sleep")
        procs = [(p, proc_start_time(p)) for p in pids]  # type: ignore[union-attr]
    alive = [pid for pid, st in procs if process_alive(pid, st)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], "the lab's teardown left a process its node ran"
    assert lab.teardown_errors == []
