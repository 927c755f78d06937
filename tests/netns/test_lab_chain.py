"""A lab comes up, carries traffic through every VNF, and leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tunlab.lab.lab import Lab
from tunlab.lab.ledger import tagged_pids
from tunlab.model.topology import linear_chain
from tunlab.model.topofile import load_topology

pytestmark = pytest.mark.netns


def run_leftovers(run_id: str) -> list[str]:
    """Namespaces, root-namespace links and processes that carry ``run_id``."""
    out = [f"netns {n}" for n in os.listdir("/run/netns") if f"-{run_id}-" in f"-{n}-"]
    out += [f"link {n}" for n in os.listdir("/sys/class/net") if run_id in n]
    out += [f"pid {p}" for p in tagged_pids(run_id)]
    return out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_three_vnf_chain_ping_crosses_every_vnf(transport: str, tmp_path: Path) -> None:
    topo = load_topology("three_vnf", {"transport": transport})
    with Lab(topo, results_dir=tmp_path) as lab:
        run_id = lab.run_id
        sender, receiver = lab.node("sender"), lab.node("receiver")
        before = lab.relay_counters()
        out = sender.cmd_raises(["ping", "-c", "3", "-i", "0.2", "-W", "3", receiver.overlay_ip])
        assert "3 received" in out
        assert "ttl=61" in out  # three kernels forwarded it
        after = lab.relay_counters()
        order = ["sender", "vnf1", "vnf2", "vnf3", "receiver"]
        for up, down in zip(order, order[1:]):
            # requests went down and replies came back over every hop, counted by both relays
            sent = after[up]["peers"][down]["tx_packets"] - before[up]["peers"][down]["tx_packets"]
            got = after[down]["peers"][up]["rx_packets"] - before[down]["peers"][up]["rx_packets"]
            back = after[down]["peers"][up]["tx_packets"] - before[down]["peers"][up]["tx_packets"]
            assert sent >= 3 and got >= 3 and back >= 3, (up, down, after[up], after[down])
        for vnf in order[1:-1]:  # each VNF's kernel got the packets and routed them back out
            d = after[vnf]["dev"]
            assert d["tx_packets"] >= 6 and d["rx_packets"] >= 6, (vnf, d)
        assert "packets 6" in lab.node("vnf2").cmd_raises(["nft", "list", "ruleset"])
        # a named namespace: `ip netns exec` works from any shell
        shown = subprocess.run(["ip", "netns", "exec", f"tl-{run_id}-vnf3", "ip", "route"],
                               capture_output=True, text=True, check=True).stdout
        assert "blackhole 172.16.9.0/24" in shown
    assert run_leftovers(run_id) == []
    assert not Path(f"/run/tunlab/{run_id}").exists()
    kept = tmp_path / run_id
    assert {"sender.log", "vnf2.stats.json", "ledger.jsonl"} <= {p.name for p in kept.iterdir()}
    assert lab.final_counters["vnf2"]["dev"]["tx_packets"] >= 6


def test_quiet_profile_and_nothing_in_the_root_namespace() -> None:
    # the simple datapath: veths without tx checksum offload (fast-datapath hops keep it: test_scenarios_datapath)
    with Lab(linear_chain(1, datapath="simple")) as lab:
        vnf = lab.node("vnf1")
        addrs = vnf.cmd_raises(["ip", "-o", "addr"])
        assert "inet6" not in addrs  # no IPv6, so no DAD and no router solicitations
        links = [ln.split()[1].rstrip(":").split("@")[0] for ln in vnf.cmd_raises(["ip", "-o", "link"]).splitlines()]
        veths = [n for n in links if n.startswith(f"ve-{lab.run_id}-")]
        assert len(veths) == 2
        for v in veths:
            feats = vnf.cmd_raises(["ethtool", "-k", v])
            assert "tx-checksumming: off" in feats
        assert vnf.cmd_raises(["sysctl", "-n", "net.ipv4.ip_forward"]).strip() == "1"
        assert lab.node("sender").cmd_raises(["sysctl", "-n", "net.ipv4.ip_forward"]).strip() == "0"
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.send_redirects"):
            assert vnf.cmd_raises(["sysctl", "-n", key]).strip() == "0"
        assert not [n for n in os.listdir("/sys/class/net") if lab.run_id in n]
        with vnf.entered():  # this thread only: sockets opened here live in the node's namespace
            assert f"tun-{lab.run_id}" in [name for _, name in socket.if_nameindex()]
        assert f"tun-{lab.run_id}" not in [name for _, name in socket.if_nameindex()]


def test_fork_classifier_sends_each_prefix_its_own_way() -> None:
    with Lab(load_topology("fork")) as lab:
        sender = lab.node("sender")
        for rx in ("rx_a", "rx_b"):
            sender.cmd_raises(["ping", "-c", "2", "-i", "0.2", "-W", "3", lab.node(rx).overlay_ip])
        c = lab.relay_counters()["classifier"]["peers"]
        assert c["fw_a"]["tx_packets"] >= 2 and c["fw_b"]["tx_packets"] >= 2
        assert lab.relay_counters()["rx_a"]["peers"]["fw_a"]["rx_packets"] >= 2


def test_hook_vnf_in_a_chain(tmp_path: Path) -> None:
    from tunlab.model.topology import Vnf

    hooks = tmp_path / "hooks.py"
    hooks.write_text("SEEN = []\n\ndef passthrough(packet):\n    return packet\n")
    topo = linear_chain(2, vnf=lambda i, n, a: Vnf(n, a, kind="hook", hook=f"{hooks}:passthrough") if i == 2
                        else Vnf(n, a))
    with Lab(topo) as lab:
        out = lab.node("sender").cmd_raises(["ping", "-c", "2", "-i", "0.2", "-W", "3",
                                             lab.node("receiver").overlay_ip])
        assert "ttl=63" in out  # only vnf1's kernel decrements; the hook passes packets as they are
        assert lab.relay_counters()["vnf2"]["peers"]["receiver"]["tx_packets"] >= 2


def test_node_commands_and_popen_are_owned_by_the_run() -> None:
    with Lab(linear_chain(0)) as lab:
        node = lab.node("sender")
        assert node.cmd_status(["false"]).returncode == 1
        with pytest.raises(Exception, match="node sender: `false` exited with 1"):
            node.cmd_raises(["false"])
        assert "tun-" in node.cmd_nostatus("ip -o link")
        sleeper = node.popen(["sleep", "300"])
        run_id = lab.run_id
        assert any(e.get("pid") == sleeper.pid for e in lab.ledger.entries())
    assert sleeper.wait(timeout=5) is not None
    assert run_leftovers(run_id) == []


def test_killed_relay_is_absent_from_counters_and_teardown_still_clean() -> None:
    with Lab(linear_chain(1)) as lab:
        lab.kill_relay("vnf1")
        assert set(lab.relay_counters()) == {"sender", "receiver"}
        r = lab.node("sender").cmd_status(["ping", "-c", "1", "-W", "1", lab.node("receiver").overlay_ip])
        assert r.returncode != 0
        run_id = lab.run_id
    assert run_leftovers(run_id) == []


def test_hook_given_as_a_function_in_a_topology_file(tmp_path: Path) -> None:
    topo_file = tmp_path / "hooked.py"
    topo_file.write_text(
        "from tunlab.model.topology import Vnf, linear_chain\n\n"
        "def drop_big(packet):\n"
        "    return None if len(packet) > 500 else packet\n\n"
        "def topology():\n"
        "    return linear_chain(1, vnf=lambda i, n, a: Vnf(n, a, kind='hook', hook=drop_big))\n")
    with Lab(load_topology(str(topo_file))) as lab:
        sender, rx = lab.node("sender"), lab.node("receiver").overlay_ip
        assert "1 received" in sender.cmd_raises(["ping", "-c", "1", "-W", "3", rx])
        big = sender.cmd_status(["ping", "-c", "1", "-W", "1", "-s", "800", rx])
        assert big.returncode != 0  # the hook dropped it
        assert f"{topo_file}:drop_big" in " ".join(lab.plan.node("vnf1").relay_args)
