"""Link impairments of a lab changed at run time (issue 17): lab.impair() in Python, `tunlab impair` and
`tunlab link` against a running lab (through its ledger), on a real chain of relays."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab.lab.lab import Lab
from tunlab.model.topology import linear_chain

pytestmark = pytest.mark.netns


def tunlab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def rtts(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def test_runtime_change_and_link_flap(tmp_path: Path) -> None:
    with Lab(linear_chain(1), results_dir=tmp_path) as lab:
        sender, receiver = lab.node("sender"), lab.node("receiver")
        ping = ["ping", "-c", "3", "-i", "0.1", "-W", "2", receiver.overlay_ip]
        assert min(rtts(sender.cmd_raises(ping))) < 20
        # Python: 20 ms in one direction of the first link
        (reply,) = lab.impair("sender-vnf1", "delay=20ms", direction="sender>vnf1")
        assert reply["dir"] == "sender>vnf1" and "delay=0.02" in reply["spec"]
        times = rtts(sender.cmd_raises(ping))
        assert len(times) == 3 and min(times) >= 20.0, times
        c = lab.relay_counters()["sender"]
        assert c["datapath"]["peers"]["vnf1"]["datapath"] == "plain"
        assert c["peers"]["vnf1"]["stages"]["impair"]["delay"] >= 3
        # the command: both directions of the second link, 15 ms more each way
        out = tunlab("impair", lab.run_id, "vnf1-receiver", "delay=15ms").stdout
        assert "vnf1>receiver: delay=0.015" in out and "receiver>vnf1: delay=0.015" in out
        assert min(rtts(sender.cmd_raises(ping))) >= 50.0
        # link down: nothing crosses, and each drop is counted as an impairment of that link
        tunlab("link", lab.run_id, "vnf1-receiver", "down")
        res = sender.cmd_status(["ping", "-c", "2", "-i", "0.1", "-W", "1", receiver.overlay_ip])
        assert res.returncode != 0
        assert lab.relay_counters()["vnf1"]["drops"]["impair_link_down"] >= 2
        tunlab("link", lab.run_id, "vnf1-receiver", "up")
        assert min(rtts(sender.cmd_raises(ping))) >= 50.0
        # --clear: the link's relays drop their stages and the fast datapath comes back
        tunlab("impair", lab.run_id, "vnf1-receiver", "--clear")
        lab.impair("sender-vnf1", clear=True)
        assert max(rtts(sender.cmd_raises(ping))) < 20.0
        c = lab.relay_counters()["vnf1"]
        assert "stages" not in c["peers"]["receiver"] and "why" not in c["datapath"]["peers"]["receiver"]
        # bad input: one line, nothing changed
        bad = tunlab("impair", lab.run_id, "vnf1-receiver", "delay=soon", check=False)
        assert bad.returncode == 2 and "delay='soon' is not a time" in bad.stderr and len(bad.stderr.splitlines()) == 1
        bad = tunlab("impair", lab.run_id, "vnf1-nowhere", "delay=1ms", check=False)
        assert bad.returncode == 2 and "no link named" in bad.stderr
        as_json = json.loads(tunlab("impair", lab.run_id, "sender-vnf1", "vnf1>sender", "loss=0%", "--json").stdout)
        assert [r["dir"] for r in as_json] == ["vnf1>sender"]


def test_flapping_link_drops_while_down_and_counts_each_drop(tmp_path: Path) -> None:
    """flap=UP/DOWN: the direction goes down and up again in turn (from its first packet); every request that
    met it down is lost and counted as that link's drop, the others cross; --clear ends it."""
    with Lab(linear_chain(1), results_dir=tmp_path) as lab:
        sender, receiver = lab.node("sender"), lab.node("receiver")
        (reply,) = lab.impair("sender-vnf1", "flap=1s/1s", direction="sender>vnf1")
        assert "flap=(1.0, 1.0)" in reply["spec"], reply
        out = sender.cmd_status(["ping", "-n", "-c", "40", "-i", "0.1", "-W", "1", receiver.overlay_ip]).stdout
        got = len(rtts(out))
        assert 0 < got < 40, out  # some requests met the link up, some down
        drops = lab.relay_counters()["sender"]["drops"].get("impair_link_down", 0)
        assert drops == 40 - got, (drops, got)
        lab.impair("sender-vnf1", clear=True)
        assert len(rtts(sender.cmd_raises(["ping", "-n", "-c", "10", "-i", "0.1", "-W", "1",
                                           receiver.overlay_ip]))) == 10


def test_declared_impairment_and_seed(tmp_path: Path) -> None:
    topo = linear_chain(1, impair={"sender-vnf1": "delay=10ms"}, seed=9)
    with Lab(topo, results_dir=tmp_path) as lab:
        assert lab.seed == 9 and lab.ledger.meta()["seed"] == 9
        sender, receiver = lab.node("sender"), lab.node("receiver")
        times = rtts(sender.cmd_raises(["ping", "-c", "3", "-i", "0.1", "-W", "2", receiver.overlay_ip]))
        assert len(times) == 3 and min(times) >= 20.0, times  # 10 ms each way
        c = lab.relay_counters()
        assert c["sender"]["impair"]["seed"] == 9 and c["vnf1"]["peers"]["sender"]["stages"]["impair"]["delay"] >= 3
        assert "stages" not in c["vnf1"]["peers"]["receiver"]
        run_dir = lab.run_dir
    # the decision logs are kept with the lab's other results
    kept = tmp_path / lab.run_id
    log = [json.loads(x) for x in (kept / "sender.impair.jsonl").read_text().splitlines()]
    assert log and {(d["link"], d["dir"], d["kind"]) for d in log} == {("sender-vnf1", "sender>vnf1", "delay")}
    assert (kept / "vnf1.impair.jsonl").exists() and not (kept / "receiver.impair.jsonl").exists()
    assert not run_dir.exists()


def test_keyed_link_is_impaired_before_it_is_sealed(tmp_path: Path) -> None:
    """A keyed lab (every datagram sealed) with a lossy, delayed link: impairments act on the inner packets
    and what leaves is still sealed (the seal stays after the impairments)."""
    from dataclasses import replace

    topo = replace(linear_chain(1, impair={"sender-vnf1": "delay=10ms"}, seed=3), keyed=True)
    with Lab(topo, results_dir=tmp_path) as lab:
        sender, receiver = lab.node("sender"), lab.node("receiver")
        times = rtts(sender.cmd_raises(["ping", "-c", "3", "-i", "0.1", "-W", "2", receiver.overlay_ip]))
        assert len(times) == 3 and min(times) >= 20.0, times
        c = lab.relay_counters()["sender"]
        assert c["peers"]["vnf1"]["stages"]["impair"]["delay"] >= 3 and c["peers"]["vnf1"]["tx_packets"] >= 3
        assert not any(k.startswith("seal_") for k in c["drops"]), c["drops"]
