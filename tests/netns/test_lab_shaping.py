"""Link shaping on the netns backend: rate limits are installed on both ends; netem options (delay, jitter,
loss) are done by the relays where the kernel has no netem, the others refused."""

from __future__ import annotations

import subprocess

import pytest

from tunlab.lab.backends.netem import netem_available
from tunlab.errors import TunlabError
from tunlab.lab.lab import Lab
from tunlab.model.topology import linear_chain

pytestmark = pytest.mark.netns


def test_rate_limit_is_a_tbf_on_both_ends_and_traffic_still_flows() -> None:
    topo = linear_chain(1, shaping={"sender-vnf1": {"bw": 20}})
    with Lab(topo) as lab:
        link = next(lk for lk in lab.underlay_links if lk.name == "sender-vnf1")
        for end in (link.a, link.b):
            out = lab.node(end.node).cmd_raises(["tc", "qdisc", "show", "dev", end.ifname])
            assert "tbf" in out and "rate 20Mbit" in out, out
        other = next(lk for lk in lab.underlay_links if lk.name == "vnf1-receiver")
        assert "tbf" not in lab.node(other.a.node).cmd_raises(["tc", "qdisc", "show", "dev", other.a.ifname])
        ping = lab.node("sender").cmd_status(["ping", "-c1", "-W2", lab.node("receiver").overlay_ip])
        assert ping.returncode == 0, ping.stdout


@pytest.mark.skipif(netem_available(), reason="this kernel has netem: tc does delay and loss itself")
def test_netem_options_fall_back_to_the_relays(tmp_path) -> None:
    """No netem here: TCLink's delay/jitter/loss become the relays' impairments of both directions (issue
    17), bw stays with tc; options only netem has (max_queue_size) are still refused before anything exists."""
    import re

    topo = linear_chain(1, shaping={"sender-vnf1": {"delay": "5ms", "bw": 50}})
    with Lab(topo, results_dir=tmp_path) as lab:
        assert lab.topology.links[0].impair == "delay=5ms" and dict(lab.topology.links[0].shaping) == {"bw": 50}
        ping = ["ping", "-c", "3", "-i", "0.1", "-W", "2", lab.node("receiver").overlay_ip]
        out = lab.node("sender").cmd_raises(ping)
        times = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        assert len(times) == 3 and min(times) >= 10.0, out  # 5 ms each way, as netem on both ends would
        assert lab.relay_counters()["vnf1"]["peers"]["sender"]["stages"]["impair"]["delay"] >= 3
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(TunlabError, match="max_queue_size need"):
        with Lab(linear_chain(1, shaping={"sender-vnf1": {"delay": "5ms", "max_queue_size": 10}})):
            pass
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
