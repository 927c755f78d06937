"""The Lab API on the Mininet backend: nodes are Mininet hosts entered by pid; ownership; shaping (root)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tunlab.errors import TunlabError
from tunlab.lab.lab import Lab
from tunlab.lab.ledger import Ledger, list_runs, run_root, tagged_pids
from tunlab.model.topology import linear_chain

pytestmark = [pytest.mark.netns, pytest.mark.mininet]

ROOT = Path(__file__).resolve().parents[2]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _alive(pid: int) -> bool:
    return _state(pid) not in ("gone", "Z")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def recorded_pids(run_dir: Path) -> list[int]:
    return [e["pid"] for e in Ledger(run_dir).entries() if isinstance(e.get("pid"), int)]


def root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def tunlab(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "tunlab", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"tunlab {' '.join(args)} -> {res.returncode}: {res.stdout} {res.stderr}")
    return res


def test_nodes_are_mininet_hosts_and_the_lab_api_works_the_same() -> None:
    before = root_links()
    with Lab(linear_chain(2), backend="mininet") as lab:
        run_id, run_dir = lab.run_id, lab.run_dir
        vnf = lab.node("vnf1")
        # a Mininet host: an unnamed namespace held by Mininet's shell, entered by pid
        m = re.fullmatch(r"/proc/(\d+)/ns/net", vnf.netns_file)
        assert m, vnf.netns_file
        shell = int(m.group(1))
        assert _cmdline(shell).endswith("mininet:vnf1") and shell in tagged_pids(run_id)
        net = lab.backend.net
        assert {h.name for h in net.hosts} == {"sender", "vnf1", "vnf2", "receiver"}
        assert net.switches == [] and net.controllers == []
        host = net["vnf1"]
        assert host.IP(f"ve-{run_id}-0b") == "10.0.0.2"  # Mininet knows the addresses tunlab gave
        assert "10.0.0.2/30" in host.cmd(f"ip -o addr show ve-{run_id}-0b")  # and its own shell sees them
        # same configuration as the netns backend
        assert "inet6" not in vnf.cmd_raises(["ip", "-o", "addr"])
        # a UDP hop of the fast datapath (auto) keeps tx checksum offload: its relays send with UDP GSO
        assert "tx-checksumming: on" in vnf.cmd_raises(["ethtool", "-k", f"ve-{run_id}-0b"])
        assert vnf.cmd_raises(["sysctl", "-n", "net.ipv4.ip_forward"]).strip() == "1"
        assert lab.node("sender").cmd_raises(["sysctl", "-n", "net.ipv4.ip_forward"]).strip() == "0"
        # the node API
        assert vnf.cmd_status(["false"]).returncode == 1
        with pytest.raises(TunlabError, match="node vnf1: `false` exited with 1"):
            vnf.cmd_raises(["false"])
        out = lab.node("sender").cmd_raises(["ping", "-c", "2", "-i", "0.2", "-W", "3",
                                             lab.node("receiver").overlay_ip])
        assert "2 received" in out and "ttl=62" in out
        with vnf.entered():  # this thread only
            assert f"tun-{run_id}" in [name for _, name in socket.if_nameindex()]
        assert f"tun-{run_id}" not in [name for _, name in socket.if_nameindex()]
        sleeper = vnf.popen(["sleep", "300"])
        assert sleeper.pid in recorded_pids(run_dir)
        counters = lab.relay_counters()
        assert counters["vnf1"]["peers"]["sender"]["rx_packets"] == 2
        assert counters["vnf2"]["peers"]["receiver"]["tx_packets"] == 2
        assert [lk.name for lk in lab.underlay_links] == ["sender-vnf1", "vnf1-vnf2", "vnf2-receiver"]
        lab.kill_relay("vnf2")
        assert set(lab.relay_counters()) == {"sender", "vnf1", "receiver"}
        assert root_links() == before  # nothing in the root namespace
        pids = recorded_pids(run_dir)
        shells = [e["pid"] for e in Ledger(run_dir).entries() if e.get("role") == "mn-host"]
        assert len(shells) == 4 and all(_alive(p) for p in shells)
    assert sleeper.wait(timeout=5) is not None
    assert not [p for p in pids if _alive(p)]
    assert tagged_pids(run_id) == []
    assert not (run_root() / run_id).exists()
    assert lab.final_counters["vnf1"]["peers"]["sender"]["rx_packets"] == 2


RUNNER = """
import sys
from tunlab.lab.lab import Lab
from tunlab.model.topology import linear_chain
lab = Lab(linear_chain(1, "tcp"), backend="mininet").__enter__()
print(lab.run_id, flush=True)
sys.stdin.read()
"""


def test_sigkill_of_the_owner_then_clean_removes_exactly_the_run() -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    pids: list[int] = []
    try:
        assert runner.stdout is not None
        run_id = runner.stdout.readline().strip()
        led = Ledger.open(run_id)
        pids = recorded_pids(led.dir)
        shells = [e["pid"] for e in led.entries() if e.get("role") == "mn-host"]
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        assert led.state() == "dead"
        # the hosts outlive their builder (their terminals are held), like named namespaces do
        assert len(shells) == 3 and all(_alive(p) for p in shells)
        res = tunlab("clean", run_id)
        assert f"run {run_id}: removed" in res.stdout
        assert not [p for p in pids if _alive(p)]
        assert tagged_pids(run_id) == []
        assert not led.dir.exists()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in pids:  # whatever happened above, nothing of this test survives it
            if _alive(pid) and (_cmdline(pid).startswith("bash") or "TUNLAB_RUN" in Path(
                    f"/proc/{pid}/environ").read_bytes().decode(errors="replace")):
                os.kill(pid, signal.SIGKILL)


def test_up_exec_down_on_mininet(tmp_path: Path) -> None:
    up = tunlab("up", "--backend", "mininet", "linear", "-p", "n_vnfs=1", "--results", str(tmp_path))
    m = re.search(r"lab (\w{4}) \(linear1, 3 nodes\) is up", up.stdout)
    assert m, up.stdout
    run_id = m.group(1)
    try:
        assert Ledger.open(run_id).state() == "up"
        ping = tunlab("exec", "--run", run_id, "sender", "--", "ping", "-c", "1", "-W", "3", "172.16.0.2")
        assert "1 received" in ping.stdout
    finally:
        down = tunlab("down", run_id)
    assert f"run {run_id}: removed" in down.stdout
    assert tagged_pids(run_id) == []
    assert (tmp_path / run_id / "vnf1.stats.json").exists()


def test_rate_limit_is_applied_by_mininet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNLAB_MININET_LINKS", json.dumps({"vnf1-receiver": {"bw": 20}}))
    with Lab(linear_chain(1), backend="mininet") as lab:
        run_id = lab.run_id
        qdisc = lab.node("vnf1").cmd_raises(["tc", "class", "show", "dev", f"ve-{run_id}-1a"])
        assert "htb" in qdisc and "rate 20Mbit" in qdisc
        plain = lab.node("vnf1").cmd_raises(["tc", "qdisc", "show", "dev", f"ve-{run_id}-0b"])
        assert "htb" not in plain  # only the shaped link
        out = lab.node("sender").cmd_raises(["ping", "-c", "1", "-W", "3", lab.node("receiver").overlay_ip])
        assert "1 received" in out


def test_netem_options_are_refused_before_anything_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab.lab.backends.netem import netem_available

    if netem_available():
        pytest.skip("this kernel has netem: delay works here")
    runs_before = {r.run_id for r in list_runs()}
    monkeypatch.setenv("TUNLAB_MININET_LINKS", json.dumps({"sender-vnf1": {"bw": 5, "delay": "10ms"}}))
    with pytest.raises(TunlabError) as err:
        Lab(linear_chain(1), backend="mininet").__enter__()
    text = str(err.value)
    assert "link 'sender-vnf1': delay need(s) netem" in text and "silently" in text and "\n" not in text
    assert {r.run_id for r in list_runs()} == runs_before
    # the same through the command line, as one line
    res = tunlab("run", "--backend", "mininet", "scenarios/three_vnf.py", check=False,
                 env={"TUNLAB_MININET_LINKS": json.dumps({"vnf1-vnf2": {"loss": 1}})})
    assert res.returncode != 0 and "link 'vnf1-vnf2': loss need(s) netem" in res.stdout + res.stderr


def test_netem_probe_agrees_with_the_kernel_config() -> None:
    from tunlab.lab.backends.netem import _probe_kernel_config, _probe_with_tc

    config = _probe_kernel_config()
    if config is None:
        pytest.skip("no /proc/config.gz to compare with")
    assert _probe_with_tc() is config


def test_without_mininet_the_backend_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['mininet'] = None\n"
            "from tunlab.cli import main\n"
            "main(['up', '--backend', 'mininet', 'linear'])\n")
    runs_before = {r.run_id for r in list_runs()}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunlab: --backend mininet: Mininet is not installed"), lines
    assert "sudo apt-get install mininet" in lines[0] and "scripts/setup.sh" in lines[0]
    assert {r.run_id for r in list_runs()} == runs_before  # refused before a run was reserved




def test_tclink_delay_without_netem_is_done_by_the_relays(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same topology as on the netns backend: TCLink's delay becomes the relays' impairment (issue 17)."""
    import re

    from tunlab.lab.backends.netem import netem_available

    if netem_available():
        pytest.skip("this kernel has netem: TCLink does the delay")
    with Lab(linear_chain(1, shaping={"vnf1-receiver": {"delay": "5ms"}}), backend="mininet",
             results_dir=tmp_path) as lab:
        out = lab.node("sender").cmd_raises(["ping", "-c", "3", "-i", "0.1", "-W", "2", lab.node("receiver").overlay_ip])
        times = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        assert len(times) == 3 and min(times) >= 10.0, out
        assert lab.relay_counters()["receiver"]["peers"]["vnf1"]["stages"]["impair"]["delay"] >= 3
