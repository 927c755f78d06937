"""Chain role: A -> V -> B where V's relay takes packets from its upstream peer, lets a VNF act (the
namespace's kernel, or a Python hook) and sends the result to the peer chosen by destination prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from relay_helpers import NetLab, netlab, nsexec, ping, sh  # noqa: F401

pytestmark = pytest.mark.netns

HOOK = '''
def vnf(pkt: bytes):
    """Drop ICMP echo requests longer than 1000 bytes; pass everything else unchanged."""
    if pkt[0] >> 4 == 4 and pkt[9] == 1 and pkt[20] == 8 and int.from_bytes(pkt[2:4], "big") > 1000:
        return None
    return pkt
'''


def chain(lab: NetLab, transport: str, *v_extra: str):
    a, v, b = lab.ns("a"), lab.ns("v"), lab.ns("b")
    lab.veth(a, v, ["10.1.0.1/24"], ["10.1.0.2/24"], tag="x")
    lab.veth(v, b, ["10.2.0.1/24"], ["10.2.0.2/24"], tag="y")
    dev = lab.ifname("t")
    t = ["--transport", transport]
    if transport == "udp":
        ra = lab.relay(a, "a", *t, "--dev", dev, "--addr", "10.70.0.1/24", "--listen", "10.1.0.1:5000",
                       "--peer", "v=10.1.0.2:5000")
        rb = lab.relay(b, "b", *t, "--dev", dev, "--addr", "10.70.0.2/24", "--listen", "10.2.0.2:5000",
                       "--peer", "v=10.2.0.1:5000")
        rv = lab.relay(v, "v", *t, "--dev", dev, "--addr", "10.70.0.254/24", "--listen", "0.0.0.0:5000",
                       "--peer", "up=10.1.0.1:5000", "--peer", "down=10.2.0.2:5000",
                       "--route", "10.70.0.1/32=up", "--route", "default=down", *v_extra)
    else:  # V accepts its upstream and connects to its downstream
        rb = lab.relay(b, "b", *t, "--dev", dev, "--addr", "10.70.0.2/24", "--listen", "10.2.0.2:5000",
                       "--accept", "v=10.2.0.1")
        rv = lab.relay(v, "v", *t, "--dev", dev, "--addr", "10.70.0.254/24", "--listen", "10.1.0.2:5000",
                       "--accept", "up=10.1.0.1", "--peer", "down=10.2.0.2:5000",
                       "--route", "10.70.0.1/32=up", "--route", "default=down", *v_extra)
        ra = lab.relay(a, "a", *t, "--dev", dev, "--addr", "10.70.0.1/24", "--peer", "v=10.1.0.2:5000")
        ra.wait_connected("v")
        rv.wait_connected("up")
        rv.wait_connected("down")
    return (a, v, b), (ra, rv, rb)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_chain_with_kernel_vnf(netlab: NetLab, transport: str) -> None:
    (a, v, b), (ra, rv, rb) = chain(netlab, transport)
    # the VNF is V's kernel: it forwards (TTL - 1) and its nftables rules act on what passes
    rules = netlab.tmp / "vnf.nft"
    rules.write_text("table inet t2rvnf {\n chain pass {\n  type filter hook forward priority 0;\n"
                     "  icmp type echo-request ip length > 1000 counter drop\n }\n}\n")
    nsexec(v, "nft", "-f", str(rules))
    out = ping(a, "10.70.0.2").stdout
    assert re.search(r"ttl=63", out), out  # B's reply was routed by V's kernel
    ping(b, "10.70.0.1")
    assert ping(a, "10.70.0.2", size=1200, count=1, deadline=1, check=False).returncode != 0
    listing = nsexec(v, "nft", "list table inet t2rvnf").stdout
    assert re.search(r"counter packets [1-9]", listing), listing
    c = rv.counters()
    assert c["peers"]["up"]["rx_packets"] >= 8 and c["peers"]["down"]["rx_packets"] >= 3
    assert c["dev"]["tx_packets"] >= 11 and c["dev"]["rx_packets"] >= 6  # through V's device both ways
    assert c["peers"]["down"]["tx_packets"] >= 6 and c["peers"]["up"]["tx_packets"] >= 3


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_chain_with_hook_vnf(netlab: NetLab, transport: str) -> None:
    hook = netlab.tmp / "vnfhook.py"
    hook.write_text(HOOK)
    (a, v, b), (ra, rv, rb) = chain(netlab, transport, "--vnf", "hook", "--hook", f"{hook}:vnf")
    out = ping(a, "10.70.0.2").stdout
    assert re.search(r"ttl=64", out), out  # the hook forwards without the kernel: no TTL change
    ping(b, "10.70.0.1")
    ping(a, "10.70.0.254")  # addressed to V's own device: delivered there, V's kernel answers
    assert ping(a, "10.70.0.2", size=1200, count=1, deadline=1, check=False).returncode != 0
    c = rv.counters()
    assert c["drops"].get("hook_drop", 0) >= 2
    assert c["peers"]["down"]["tx_packets"] >= 6 and c["peers"]["up"]["tx_packets"] >= 6
    assert c["dev"]["tx_packets"] >= 3  # only the pings to V itself went into its device
    assert rb.counters()["dev"]["tx_packets"] >= 6


def test_hook_spec_as_module(netlab: NetLab, tmp_path: Path) -> None:
    a, b = netlab.ns("a"), netlab.ns("b")
    netlab.veth(a, b, ["10.1.0.1/24"], ["10.1.0.2/24"])
    bad = netlab.relay(a, "bad", "--dev", netlab.ifname("t"), "--peer", "x=10.1.0.2:5000", "--vnf", "hook",
                       "--hook", "no_such_module_t2r:fn", wait=False)
    assert bad.ready.get("ready") is False and "cannot import no_such_module_t2r" in bad.ready["error"]
    ok = netlab.relay(a, "ok", "--dev", netlab.ifname("t"), "--peer", "x=10.1.0.2:5000", "--vnf", "hook",
                      "--hook", "tunlab.relay.framing:frame")
    assert ok.ready["ready"] is True
    assert not sh("ip", "-n", a, "link", "show", "dev", netlab.ifname("t"), check=False).returncode
