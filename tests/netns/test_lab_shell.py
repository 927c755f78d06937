"""The lab from another shell: `tunlab cli RUN` (scripted through stdin), `tunlab capture`, `tunlab relay-stats
RUN NODE`, on a real lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tunlab import Lab, load_topology

pytestmark = pytest.mark.netns


def wait_listening(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Until `tunlab capture`'s tcpdump says it listens (its readiness line on stderr)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    line: str | bytes = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        text = line.decode() if isinstance(line, bytes) else line
        if "listening on" in text or (not line and proc.poll() is not None):
            break
    assert "listening on" in (line.decode() if isinstance(line, bytes) else line), line


def _tunlab(*args: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunlab", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=check)


def test_scripted_shell_lists_pings_and_takes_a_link_down_and_up() -> None:
    with Lab(load_topology("three_vnf")) as lab:
        res = _tunlab("cli", lab.run_id, stdin="nodes\nlinks\nnet\npingall\nsender ip -br addr show dev "
                      f"{lab.node('sender').overlay_dev}\nstats vnf2\n")
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        assert "vnf2         vnf" in out and "relay up" in out
        assert f"sender-vnf1          sender:ve-{lab.run_id}-0a <-> vnf1:ve-{lab.run_id}-0b  udp  up" in out
        assert "*** Results: 0% dropped (20/20 received)" in out
        assert "172.16.0.1" in out                                   # sender's TUN address, from `sender ip`
        assert out.count("vnf2: dev rx") == 1
        # a link taken down cuts the chain; pingall says so and the script fails; back up, all is well
        down = _tunlab("cli", lab.run_id, stdin="link vnf1 vnf2 down\nlinks\npingall\n")
        assert down.returncode == 1
        assert "link vnf1-vnf2 down" in down.stdout and "vnf1-vnf2" in down.stdout and "DOWN" in down.stdout
        assert "*** Results: 60% dropped (8/20 received)" in down.stdout  # 2 x 3 nodes cut apart, both ways
        up = _tunlab("cli", lab.run_id, stdin="link vnf1 vnf2 up\npingall 2\n")
        assert "*** Results: 0% dropped" in up.stdout, up.stdout


def test_shell_errors_are_one_line_and_fail_the_script() -> None:
    with Lab(load_topology("three_vnf")) as lab:
        res = _tunlab("cli", lab.run_id, stdin="nosuch thing\nlink vnf1 receiver down\nsender false\n")
        assert res.returncode == 1
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("***")]
        assert len(lines) == 3, res.stdout
        assert "no link between vnf1 and receiver" in lines[1]


def test_capture_streams_a_link_and_relay_stats_names_a_node(tmp_path: Path) -> None:
    with Lab(load_topology("three_vnf")) as lab:
        pcap = tmp_path / "l.pcap"
        proc = subprocess.Popen([sys.executable, "-m", "tunlab", "capture", lab.run_id, "vnf1-vnf2", "-w", str(pcap),
                                 "-c", "4"], stderr=subprocess.PIPE, text=True)
        wait_listening(proc)
        lab.node("sender").cmd_raises(["ping", "-c2", "-i", "0.2", lab.node("receiver").overlay_ip])
        assert proc.wait(timeout=30) == 0
        packets = rdpcap(str(pcap))
        assert len(packets) == 4 and all(p.haslayer(Ether) and p.haslayer(UDP) for p in packets)
        stats = json.loads(_tunlab("relay-stats", lab.run_id, "vnf2", "--compact", check=True).stdout)
        assert set(stats["peers"]) == {"vnf1", "vnf3"} and stats["dev"]["tx_packets"] >= 4


def test_an_exec_shell_names_its_node_and_run_in_the_prompt() -> None:
    import os

    lab = Lab(load_topology("three_vnf")).__enter__()
    lab.detach()  # as `tunlab up` leaves it
    try:
        res = subprocess.run([sys.executable, "-m", "tunlab", "exec", "--run", lab.run_id, "vnf2"],
                             input="echo node=$TUNLAB_NODE\nexit\n", capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SHELL": "/bin/bash"})
        assert "node=vnf2" in res.stdout
        assert f"[vnf2@tunlab-{lab.run_id}] " in res.stderr  # bash writes its prompt to stderr
    finally:
        _tunlab("down", lab.run_id, check=True)


@pytest.mark.parametrize("params", [{}, {"datapath": "plain"}, {"transport": "tcp"}])
def test_capture_inner_writes_the_inner_packets_of_a_link(tmp_path: Path, params: dict[str, str]) -> None:
    from scapy.layers.inet import ICMP, IP

    with Lab(load_topology("three_vnf", params)) as lab:
        pcap = tmp_path / "inner.pcap"
        proc = subprocess.Popen([sys.executable, "-m", "tunlab", "capture", lab.run_id, "vnf1-vnf2", "--inner",
                                 "-w", str(pcap), "--filter", "tcp or udp"], stderr=subprocess.PIPE, text=True,
                                # Ctrl-C as in a terminal, even under a runner started in the background (whose
                                # children inherit SIGINT ignored, as POSIX shells do for `cmd &`)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_listening(proc)
        lab.node("sender").cmd_raises(["ping", "-c3", "-i", "0.2", "-s", "1000", lab.node("receiver").overlay_ip])

        def icmp() -> list:  # type: ignore[type-arg]
            try:
                return [p for p in rdpcap(str(pcap)) if p.haslayer(ICMP)]
            except Exception:  # noqa: BLE001 - a record still being written
                return []

        # the last reply may still be on its way through tcpdump and the decoder when ping returns: wait for
        # the six (a loaded machine lost the last one to an early Ctrl-C), then stop, then count again
        deadline = time.monotonic() + 15
        while len(icmp()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        inner = icmp()
        # 3 requests and 3 replies crossed vnf1-vnf2, each written once, as the overlay packets they are
        assert len(inner) == 6, [p.summary() for p in inner]
        assert {p[IP].src for p in inner} == {"172.16.0.1", "172.16.0.2"}
        assert all(len(p[IP]) == 1028 for p in inner)


@pytest.mark.skipif(__import__("shutil").which("tshark") is None, reason="tshark is not installed (setup installs it)")
def test_capture_streams_to_tshark_while_a_scenario_runs(tmp_path: Path) -> None:
    from tunlab.model.scenario import load_scenario
    from tunlab.run.runner import check_scenario

    with Lab(load_topology("three_vnf")) as lab:
        cap = subprocess.Popen([sys.executable, "-m", "tunlab", "capture", lab.run_id, "vnf1-vnf2", "-c", "6"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tshark = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-e", "ip.src", "-e", "udp.dstport"],
                                  stdin=cap.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert cap.stdout is not None and cap.stderr is not None
        cap.stdout.close()  # tshark owns the pipe now
        wait_listening(cap)
        sc = tmp_path / "sc.py"
        sc.write_text("from tunlab import Ping\ntopology = 'three_vnf'\ntraffic = [Ping(count=3)]\n")
        result = check_scenario(load_scenario(sc), lab)
        assert result.passed
        out, _ = tshark.communicate(timeout=60)
        assert cap.wait(timeout=30) == 0
        rows = [r.split("\t") for r in out.strip().splitlines()]
        assert len(rows) == 6 and all(r[0] in ("10.0.0.5", "10.0.0.6") and r[1] == "55555" for r in rows), rows
