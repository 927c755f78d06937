"""add_relay_chain on real Mininet networks: traffic crosses the chain, VNF kernels act, nothing is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tunlab.errors import TunlabError

pytestmark = [pytest.mark.netns, pytest.mark.mininet]


@contextmanager
def mininet_net(shape: str, n: int) -> Iterator[Any]:
    """A started Mininet network of this test: hosts m6<tag>h1..hn, on one bridge or in a line."""
    from tunlab.lab.backends.mininet.support import import_mininet

    import_mininet()
    from mininet.link import TCLink

    from tunlab.lab.backends.mininet.nodes import LabHost, NsBridge, QuietMininet

    tag = uuid.uuid4().hex[:4]
    net = QuietMininet(topo=None, controller=None, host=LabHost, switch=NsBridge, link=TCLink, build=False,
                       ipBase="10.66.0.0/16")
    hosts = [net.addHost(f"m6{tag}h{i}", ip=None if shape == "line" else f"10.66.0.{i}/16")
             for i in range(1, n + 1)]
    if shape == "switch":
        sw = net.addSwitch(f"m6{tag}s1")
        for h in hosts:
            net.addLink(h, sw, txo=False, rxo=False)
    else:
        for k, (x, y) in enumerate(zip(hosts, hosts[1:])):
            net.addLink(x, y, params1={"ip": f"10.67.{k}.1/30"}, params2={"ip": f"10.67.{k}.2/30"},
                        txo=False, rxo=False)
    pids = []
    root_before = set(os.listdir("/sys/class/net"))
    try:
        net.build()
        net.start()
        pids = [node.pid for node in net.hosts + net.switches]
        assert set(os.listdir("/sys/class/net")) == root_before  # nothing of ours in the root namespace
        yield net
    finally:
        net.stop()
        for pid in pids:  # the shells of our hosts and bridge: gone (their namespaces with them)
            assert not _alive(pid), f"Mininet node process {pid} survived net.stop()"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ping(host: Any, dst: str, count: int = 2, wait: int = 2) -> tuple[int, list[int]]:
    """(packets received, reply TTLs) of a ping from ``host``."""
    out = host.cmd(f"ping -n -c {count} -i 0.2 -W {wait} {dst}")
    got = re.search(r"(\d+) received", out)
    return (int(got.group(1)) if got else 0), [int(t) for t in re.findall(r"ttl=(\d+)", out)]


def test_udp_chain_on_a_bridge_carries_pings_through_a_kernel_vnf() -> None:
    from tunlab.lab.backends.mininet.api import add_relay_chain

    with mininet_net("switch", 3) as net:
        h1, h2, h3 = net.hosts
        before = h2.cmd("sysctl -n net.ipv4.ip_forward").strip()
        chain = add_relay_chain(net, [h1.name, h2.name, h3.name], transport="udp")
        try:
            relay_pids = [r.pid for r in chain]
            run_dir = chain.run_dir
            assert h2.cmd("sysctl -n net.ipv4.ip_forward").strip() == "1"
            received, ttls = _ping(h1, chain[h3.name].overlay_ip, count=3)
            assert received == 3
            assert set(ttls) == {63}  # the reply crossed one kernel VNF (h2) on its way back
            mid = chain.counters()[h2.name]
            assert mid["peers"][h1.name]["rx_packets"] == 3 and mid["peers"][h3.name]["tx_packets"] == 3
            assert mid["peers"][h3.name]["rx_packets"] == 3 and mid["peers"][h1.name]["tx_packets"] == 3
            assert mid["dev"]["tx_packets"] == 6 and mid["dev"]["rx_packets"] == 6  # in and out of h2's kernel
        finally:
            final = chain.stop()
        assert final[h1.name]["peers"][h2.name]["tx_packets"] == 3
        assert not any(_alive(p) for p in relay_pids if p)
        assert not run_dir.exists()
        assert h2.cmd("sysctl -n net.ipv4.ip_forward").strip() == before  # put back


def test_tcp_chain_over_direct_links_obeys_a_vnf_firewall() -> None:
    from tunlab.lab.backends.mininet.api import add_relay_chain

    with mininet_net("line", 4) as net:
        h1, h2, h3, h4 = net.hosts
        with add_relay_chain(net, net.hosts, transport="tcp", port=40123) as chain:
            dst = chain[h4.name].overlay_ip
            received, ttls = _ping(h1, dst)
            assert received == 2 and set(ttls) == {62}  # two kernel VNFs on the way back
            # the VNF's own kernel acts on the chain's traffic: a firewall in h3 stops it there
            out = h3.cmd("nft add table inet m6t && nft add chain inet m6t fw "
                         "'{ type filter hook forward priority 0; }' && "
                         "nft add rule inet m6t fw icmp type echo-request drop && echo nft-ok")
            assert "nft-ok" in out, out
            before = chain.counters()[h3.name]
            assert _ping(h1, dst, wait=1)[0] == 0
            after = chain.counters()[h3.name]
            assert after["peers"][h2.name]["rx_packets"] - before["peers"][h2.name]["rx_packets"] == 2
            assert after["peers"][h4.name]["tx_packets"] == before["peers"][h4.name]["tx_packets"]
            h3.cmd("nft delete table inet m6t")
            assert _ping(h1, dst)[0] == 2


def test_a_host_without_an_address_is_refused_before_anything_starts() -> None:
    from tunlab.lab.ledger import list_runs
    from tunlab.lab.backends.mininet.api import add_relay_chain

    with mininet_net("switch", 2) as net:
        h1, h2 = net.hosts
        h2.intf().ip = None
        runs_before = {r.run_id for r in list_runs()}
        with pytest.raises(TunlabError, match=f"host {h2.name} has no IPv4 address"):
            add_relay_chain(net, [h1, h2])
        assert {r.run_id for r in list_runs()} == runs_before  # the failed chain's run is gone
        assert not any("TUNLAB_RUN" in _environ(p) for p in _children(h1.pid) + _children(h2.pid))


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    out.append(int(d))
            except OSError:
                pass
    return out


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


CRASHING_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from tunlab.lab.backends.mininet.support import import_mininet
    import_mininet()
    from tunlab.lab.backends.mininet.nodes import LabHost, QuietMininet
    from tunlab.lab.backends.mininet.api import add_relay_chain
    net = QuietMininet(topo=None, controller=None, host=LabHost, build=False)
    a = net.addHost(sys.argv[1] + "a", ip="10.68.0.1/24")
    b = net.addHost(sys.argv[1] + "b", ip="10.68.0.2/24")
    net.addLink(a, b)
    net.build(); net.start()
    chain = add_relay_chain(net, [a, b])
    print(json.dumps({"run_id": chain.run_id, "relays": [r.pid for r in chain], "hosts": [a.pid, b.pid]}),
          flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # the script dies without stopping anything
""")


def test_relays_of_a_crashed_script_are_removed_by_their_ledger(tmp_path: Path) -> None:
    from tunlab.lab import ledger

    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT)
    tag = f"m6{uuid.uuid4().hex[:4]}"
    proc = subprocess.run([sys.executable, str(script), tag], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        run = ledger.Ledger.open(info["run_id"])
        assert run.state() == "dead"
        assert all(_alive(p) for p in info["relays"])  # orphans, still holding their hosts' namespaces
        clean = subprocess.run([sys.executable, "-m", "tunlab", "clean", run.run_id], capture_output=True,
                               text=True, timeout=60)
        assert clean.returncode == 0 and f"run {run.run_id}: removed" in clean.stdout, clean.stdout + clean.stderr
        assert not any(_alive(p) for p in info["relays"])
        assert not run.dir.exists()
    finally:
        for pid in info["relays"] + info["hosts"]:  # ours, whatever happened above
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mininet_relay_chain.py"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_example_runs(transport: str) -> None:
    prefix = f"m6{uuid.uuid4().hex[:3]}"
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--prefix", prefix, "--transport", transport,
                           "--hosts", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ping {prefix}h1 -> 172.31.0.4: 3/3 replies, ttl 62" in proc.stdout
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                .splitlines() if f"mininet:{prefix}" in line]
