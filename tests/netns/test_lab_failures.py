"""Labs that cannot come up are torn down completely; two labs side by side; SIGKILL + `tunlab clean`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab.errors import TunlabError
from tunlab.lab.lab import Lab
from tunlab.lab.ledger import Ledger, tagged_pids
from tunlab.model.topology import Vnf, linear_chain

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def leftovers(run_id: str) -> list[str]:
    out = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"tl-{run_id}-")]
    out += [f"link {n}" for n in os.listdir("/sys/class/net") if run_id in n]
    out += [f"pid {p}" for p in tagged_pids(run_id)]
    return out


def test_a_relay_that_fails_to_start_tears_the_lab_down_and_names_the_node(tmp_path: Path) -> None:
    bad = tmp_path / "bad_hook.py"
    bad.write_text("raise RuntimeError('this hook cannot be imported')\n\ndef f(packet):\n    return packet\n")
    topo = linear_chain(3, vnf=lambda i, n, a: Vnf(n, a, kind="hook", hook=f"{bad}:f") if i == 2 else Vnf(n, a))
    lab = Lab(topo, results_dir=tmp_path)
    with pytest.raises(TunlabError) as info:
        lab.__enter__()
    msg = str(info.value)
    assert msg.startswith(f"lab {lab.run_id}: the relay of node vnf2 ")
    assert "this hook cannot be imported" in msg and str(tmp_path / lab.run_id) in msg
    assert leftovers(lab.run_id) == []
    assert not lab.run_dir.exists()
    assert "this hook cannot be imported" in (tmp_path / lab.run_id / "vnf2.out").read_text()


def test_a_bad_nft_ruleset_is_reported_with_the_node_and_torn_down() -> None:
    topo = linear_chain(1, vnf=lambda i, n, a: Vnf(n, a, nft="table inet x { chain y { this is not nft } }"))
    lab = Lab(topo)
    with pytest.raises(TunlabError, match="node vnf1 field 'nft': nft rejected the ruleset"):
        lab.__enter__()
    assert leftovers(lab.run_id) == []
    assert not lab.run_dir.exists()


def test_two_labs_at_once_do_not_collide() -> None:
    with Lab(linear_chain(2)) as one, Lab(linear_chain(2)) as two:
        assert one.run_id != two.run_id
        for lab in (one, two):
            lab.node("sender").cmd_raises(["ping", "-c", "1", "-W", "3", lab.node("receiver").overlay_ip])
        names_one = {n.netns_file for n in one.nodes.values()}
        names_two = {n.netns_file for n in two.nodes.values()}
        assert not names_one & names_two
        rid_two = two.run_id
    assert leftovers(one.run_id) == [] and leftovers(rid_two) == []


RUNNER = """
import sys, time
from tunlab.lab.lab import Lab
from tunlab.model.topology import linear_chain
lab = Lab(linear_chain(3)).__enter__()
print(lab.run_id, flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_runner_then_clean_removes_the_run_and_only_it() -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    bystander = None
    try:
        assert runner.stdout is not None
        run_id = runner.stdout.readline().strip()
        assert len(run_id) == 4, run_id
        led = Ledger.open(run_id)
        relay_pids = [e["pid"] for e in led.entries() if e.get("role") == "relay"]
        assert len(relay_pids) == 5
        # a namespace that looks like the run's but that the run never recorded
        bystander = f"tl-{run_id}-bystander"
        subprocess.run(["ip", "netns", "add", bystander], check=True)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        assert led.state() == "dead"
        assert len([n for n in os.listdir("/run/netns") if n.startswith(f"tl-{run_id}-")]) == 6
        res = subprocess.run([sys.executable, "-m", "tunlab", "clean", run_id], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
        assert res.returncode == 0, res.stderr
        assert f"run {run_id}: removed" in res.stdout
        assert os.path.exists(f"/run/netns/{bystander}")
        left = [x for x in leftovers(run_id) if x != f"netns {bystander}"]
        assert left == []
        assert not any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in relay_pids)
        assert not os.path.exists(f"/run/tunlab/{run_id}")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if bystander:
            subprocess.run(["ip", "netns", "del", bystander], check=False)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_clean_leaves_running_and_up_runs_alone() -> None:
    with Lab(linear_chain(0)) as lab:
        res = subprocess.run([sys.executable, "-m", "tunlab", "clean", lab.run_id], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        assert res.returncode == 0 and "is running: left alone" in res.stdout
        assert os.path.exists(lab.node("sender").netns_file)
        assert json.loads((lab.run_dir / "meta.json").read_text())["state"] == "running"
