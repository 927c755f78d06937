"""Issue 19 (4): a lab across stand-in hosts: each host builds its part (its own ledger), links between hosts
are relay hops over the hosts' underlay addresses (keyed, MTU fitted), and everything goes away again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from multihost_helpers import host_leftovers, inventory_of, run_pids, standins
from tunlab.lab.multihost import MultiHostLab
from tunlab.model.hosts import load_inventory
from tunlab.model.topofile import load_topology
from tunlab.testing import standin

pytestmark = [pytest.mark.netns, pytest.mark.multihost]


@pytest.fixture(scope="module")
def sset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standin.StandinSet]:
    with standins(3, tmp_path_factory.mktemp("standin")) as s:
        yield s


def test_three_vnf_over_two_hosts_comes_up_and_goes_away(sset: standin.StandinSet, tmp_path: Path) -> None:
    inv = load_inventory(inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini"))
    topo = load_topology("three_vnf", {})
    with MultiHostLab(topo, inv) as lab:
        run_id = lab.run_id
        assert lab.placement == {"sender": "h1", "vnf1": "h1", "vnf2": "h1", "vnf3": "h2", "receiver": "h2"}
        # one ssh round trip per host per phase: session, hello, up, connect
        assert lab.trips.per_host == {"h1": 4, "h2": 4}
        # each host keeps its own ledger of its part, invisible to the other and to the root
        for h, nodes in (("h1", ["sender", "vnf1", "vnf2"]), ("h2", ["receiver", "vnf3"])):
            out = sset.ssh(h, f"ip netns list; cat /run/tunlab/{run_id}/meta.json").stdout
            assert sorted(n for n in (f"tl-{run_id}-{x}" for x in lab.placement) if n in out) == \
                sorted(f"tl-{run_id}-{x}" for x in nodes)
            assert f'"host": "{h}"' in out
        assert not Path(f"/run/netns/tl-{run_id}-sender").exists()
        # the link between hosts is keyed, and the overlay MTU fits the stand-ins' LAN (its veths' MTU)
        lan_mtu = int(sset.ssh("h1", "cat /sys/class/net/eth0/mtu").stdout)
        assert lab.topology.keyed and lab.topology.mtu == lan_mtu - 28 - 29
        mtu = lab.topology.mtu
        rx = lab.node("receiver").overlay_ip
        # a packet of exactly the MTU crosses whole (DF set); one byte more is refused at the sender
        full = lab.node("sender").cmd_status(["ping", "-c1", "-W3", "-M", "do", "-s", str(mtu - 28), rx])
        assert full.returncode == 0, full.stdout + full.stderr
        over = lab.node("sender").cmd_status(["ping", "-c1", "-W1", "-M", "do", "-s", str(mtu - 27), rx])
        assert over.returncode != 0
        c = lab.relay_counters()
        assert c["vnf2"]["peers"]["vnf3"]["datapath"] == "sealed" and c["vnf2"]["peers"]["vnf3"]["rx_packets"] >= 1
        # on the wire between the hosts: vnf2's host's underlay address and port, sealed datagrams
        assert "10.77.0.1" in " ".join(lab.host_plans["h2"].plan.node("vnf3").relay_args)
    assert host_leftovers(sset, run_id) == {}
    assert run_pids(run_id) == []
    assert not Path(f"/run/tunlab/{run_id}").exists()
