"""Link shaping on the netns backend: rate limits are installed on both ends; netem options are refused."""

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


@pytest.mark.skipif(netem_available(), reason="this kernel has netem: delay would be honoured")
def test_delay_is_refused_before_anything_exists() -> None:
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(TunlabError, match="netem"):
        with Lab(linear_chain(1, shaping={"sender-vnf1": {"delay": "5ms"}})):
            pass
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
