"""Relays on real TUN/TAP devices between namespaces: UDP and TCP tunnels, IPv6, TAP, TunConnector's
command line (its documented example, client/server/both), restarts, attach, clean shutdown."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from relay_helpers import NetLab, netlab, nsexec, ping, sh, two_nodes, wait_until  # noqa: F401

pytestmark = pytest.mark.netns


def native_pair(lab: NetLab, a: str, b: str, transport: str, dev: str, *extra: str,
                under: tuple[str, str] = ("10.1.0.1", "10.1.0.2"), over: tuple[str, str] = ("10.77.0.1/24", "10.77.0.2/24"),
                port: int = 5000):
    def hp(ip: str) -> str:
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    if transport == "udp":
        args_a = ["--listen", hp(under[0]), "--peer", f"b={hp(under[1])}"]
        args_b = ["--listen", hp(under[1]), "--peer", f"a={hp(under[0])}"]
    else:
        args_a = ["--listen", hp(under[0]), "--accept", f"b={under[1]}"]
        args_b = ["--peer", f"a={hp(under[0])}"]
    ra = lab.relay(a, "ra", "--transport", transport, "--dev", dev, "--addr", over[0], *args_a, *extra)
    rb = lab.relay(b, "rb", "--transport", transport, "--dev", dev, "--addr", over[1], *args_b, *extra)
    if transport == "tcp":
        rb.wait_connected("a")
        ra.wait_connected("b")
    return ra, rb


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tunnel_ping_both_ways_then_clean_exit(netlab: NetLab, transport: str) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    ra, rb = native_pair(netlab, a, b, transport, dev)
    assert ra.ready["dev"] == dev and ra.ready["listen"] == ["10.1.0.1:5000"] and ra.ready["pid"] == ra.pid
    ping(a, "10.77.0.2")
    ping(b, "10.77.0.1")
    ping(a, "10.77.0.2", size=1472 - 28)  # a full-MTU packet, unfragmented in one datagram/frame
    link = sh("ip", "-n", a, "link", "show", "dev", dev).stdout
    assert "mtu 1472" in link and "UP" in link
    c = ra.counters()
    assert c["peers"]["b"]["rx_packets"] >= 9 and c["peers"]["b"]["connected"] is True
    assert c["dev"]["tx_packets"] >= 9 and c["dev"]["rx_packets"] >= 9
    ra.proc.send_signal(signal.SIGUSR1)  # counters to --stats-file while running
    wait_until(lambda: os.path.exists(ra.stats_file), "the stats file written on SIGUSR1")
    assert json.loads(open(ra.stats_file).read())["peers"]["b"]["rx_packets"] >= 9
    os.unlink(ra.stats_file)
    assert ra.proc.poll() is None
    assert ra.stop() == 0
    assert not netlab.link_exists(a, dev), "the transient device must disappear with the relay"
    final = json.loads(open(ra.stats_file).read())
    assert final["peers"]["b"]["rx_packets"] >= c["peers"]["b"]["rx_packets"]
    assert re.search(r"tunlab relay \S+: dev rx \d+/\d+B", ra.output())
    assert rb.stop(signal.SIGINT) == 0
    assert not netlab.link_exists(b, dev)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ipv6_overlay_over_ipv6_underlay(netlab: NetLab, transport: str) -> None:
    a, b = two_nodes(netlab, v6=True)
    native_pair(netlab, a, b, transport, netlab.ifname("t"), under=("fd01::1", "fd01::2"),
                over=("fd77::1/64", "fd77::2/64"))
    ping(a, "fd77::2")
    ping(b, "fd77::1", size=1452 - 48)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tap_carries_ethernet(netlab: NetLab, transport: str) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("e")
    native_pair(netlab, a, b, transport, dev, "--tap")
    ping(a, "10.77.0.2")
    ping(b, "10.77.0.1", size=1458 - 28)
    mac_b = re.search(r"link/ether (\S+)", sh("ip", "-n", b, "link", "show", "dev", dev).stdout).group(1)  # type: ignore[union-attr]
    neigh = sh("ip", "-n", a, "neigh", "show", "dev", dev).stdout
    assert f"10.77.0.2 lladdr {mac_b}" in neigh, "ARP across the tunnel resolved b's own MAC"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tunconnector_documented_example_as_written(netlab: NetLab, transport: str) -> None:
    a, b = two_nodes(netlab)
    extra = ["--transport", transport] if transport == "tcp" else []
    server = netlab.relay(b, "srv", "-p", "tun0", "-s", "10.0.0.2", "-i", "55555", "-m", "server", *extra)
    assert server.ready["listen"] == ["0.0.0.0:55555"]
    assert "10.0.0.2/24" in sh("ip", "-n", b, "addr", "show", "dev", "tun0").stdout
    client = netlab.relay(a, "cli", "-n", "tun0", "-c", "10.0.0.1", "-r", "10.1.0.2", "-o", "55555", "-m", "client",
                          *extra)
    if transport == "tcp":
        client.wait_connected("server")
    ping(a, "10.0.0.2")
    ping(b, "10.0.0.1")
    assert server.peer("client")["rx_packets"] >= 6
    assert server.stop(signal.SIGINT) == 0
    assert not netlab.link_exists(b, "tun0")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tunconnector_both_mode_chain(netlab: NetLab, transport: str) -> None:
    # a (client) -> b (both: server part for a, client part towards c) -> c (server), as TunConnector chains
    a, b, c = netlab.ns("a"), netlab.ns("b"), netlab.ns("c")
    netlab.veth(a, b, ["10.1.0.1/24"], ["10.1.0.2/24"], tag="x")
    netlab.veth(b, c, ["10.2.0.1/24"], ["10.2.0.2/24"], tag="y")
    t = ["--transport", transport]
    rc = netlab.relay(c, "c", "-m", "server", "-p", "tun1", "-s", "10.0.2.2", "-i", "55555", *t)
    rb = netlab.relay(b, "b", "-m", "both", "-p", "tun1", "-s", "10.0.1.2", "-i", "55555", "-n", "tun0", "-c",
                      "10.0.2.1", "-r", "10.2.0.2", "-o", "55555", *t)
    assert rb.ready["dev"] == ["tun1", "tun0"]
    ra = netlab.relay(a, "a", "-m", "client", "-n", "tun0", "-c", "10.0.1.1", "-r", "10.1.0.2", "-o", "55555", *t)
    if transport == "tcp":
        ra.wait_connected("server")
        wait_until(lambda: rb.counters()["client"]["peers"]["server"]["connected"], "b's client part connected")
    ping(a, "10.0.1.2")
    ping(b, "10.0.2.2")
    ping(c, "10.0.2.1")
    counters = rb.counters()
    assert set(counters) == {"server", "client"}
    assert counters["server"]["peers"]["client"]["rx_packets"] >= 3
    assert counters["client"]["peers"]["server"]["rx_packets"] >= 6
    assert rb.stop() == 0
    assert not netlab.link_exists(b, "tun0") and not netlab.link_exists(b, "tun1")
    assert rc.counters()["peers"]["client"]["rx_packets"] >= 6


def test_tcp_client_started_before_server(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    client = netlab.relay(a, "cli", "-m", "client", "-n", "tun0", "-c", "10.0.0.1", "-r", "10.1.0.2", "-o", "55555",
                          "--transport", "tcp")
    wait_until(lambda: "retrying with backoff" in client.output(), "the client to find no server")
    assert client.peer("server")["connected"] is False
    netlab.relay(b, "srv", "-m", "server", "-p", "tun0", "-s", "10.0.0.2", "-i", "55555", "--transport", "tcp")
    client.wait_connected("server")
    ping(a, "10.0.0.2")


@pytest.mark.parametrize("transport, sig", [("udp", signal.SIGKILL), ("tcp", signal.SIGTERM), ("tcp", signal.SIGKILL)])
def test_server_survives_client_restart(netlab: NetLab, transport: str, sig: int) -> None:
    a, b = two_nodes(netlab)
    t = ["--transport", transport]
    server = netlab.relay(b, "srv", "-m", "server", "-p", "tun0", "-s", "10.0.0.2", "-i", "55555", *t)
    client_args = ["-m", "client", "-n", "tun0", "-c", "10.0.0.1", "-r", "10.1.0.2", "-o", "55555", *t]
    for round_ in range(3):
        client = netlab.relay(a, f"cli{round_}", *client_args)
        if transport == "tcp":
            client.wait_connected("server")
            server.wait_connected("client")
        ping(a, "10.0.0.2")
        ping(b, "10.0.0.1")
        client.stop(sig)
        wait_until(lambda: not netlab.link_exists(a, "tun0"), "the killed client's device to go")
        if transport == "tcp":
            wait_until(lambda: not server.peer("client")["connected"], "the server to see the client leave")
    assert server.proc.poll() is None
    assert server.peer("client")["rx_packets"] >= 18


def test_attach_to_persistent_device_without_pyroute2(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("p")
    for ns, ip in ((a, "10.78.0.1/24"), (b, "10.78.0.2/24")):
        sh("ip", "-n", ns, "tuntap", "add", "dev", dev, "mode", "tun")
        sh("ip", "-n", ns, "link", "set", dev, "mtu", "1400", "up")
        sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    ra = netlab.relay(a, "ra", "--attach", "--dev", dev, "--listen", "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000",
                      env=env)
    netlab.relay(b, "rb", "--attach", "--dev", dev, "--listen", "10.1.0.2:5000", "--peer", "a=10.1.0.1:5000")
    assert ra.ready["mtu"] == 1400  # an attached device is used as it is
    ping(a, "10.78.0.2", size=1400 - 28)
    assert ra.stop() == 0
    assert netlab.link_exists(a, dev), "a persistent device stays after the relay exits"
    imports = [line for line in ra.output().splitlines() if line.startswith("import time:")]
    assert any("tunlab.relay.engine" in line for line in imports)
    heavy = [line for line in imports if re.search(r"\| +(pyroute2|scapy|rich)\b", line)]
    assert not heavy, heavy[:3]
    # and attaching again works: the device was left as it was
    netlab.relay(a, "ra2", "--attach", "--dev", dev, "--listen", "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000")
    ping(a, "10.78.0.2")


def test_startup_errors_are_one_line(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    netlab.relay(a, "first", "--dev", netlab.ifname("t1"), "--listen", "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000")
    cases = [
        (["--dev", netlab.ifname("t2"), "--listen", "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000"], "the port is in use"),
        (["--dev", netlab.ifname("t3"), "--listen", "10.9.9.9:5000", "--peer", "b=10.9.9.8:5000"],
         "no interface in this network namespace has 10.9.9.9"),
        (["--dev", netlab.ifname("t1"), "--listen", "10.1.0.1:5001", "--peer", "b=10.1.0.2:5000"], "already exists"),
        (["--dev", netlab.ifname("t4"), "--attach", "--peer", "b=10.1.0.2:5000"], "--attach: there is no device"),
    ]
    for i, (args, needle) in enumerate(cases):
        rp = netlab.relay(a, f"bad{i}", *args, wait=False)
        assert rp.ready.get("ready") is False and needle in rp.ready["error"], rp.ready
        assert rp.proc.wait(10) != 0
        out = rp.output().strip().splitlines()
        assert out[-1].startswith("tunlab: ") and needle in out[-1] and "Traceback" not in rp.output()
        dev = args[1]
        if needle != "already exists":
            assert not netlab.link_exists(a, dev), "a failed start leaves no device behind"
    assert netlab.link_exists(a, netlab.ifname("t1"))
    nsexec(a, "true")


def test_device_deleted_under_the_relay_is_a_one_line_exit(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    ra = netlab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", "10.1.0.1:5000", "--peer",
                      "b=10.1.0.2:5000")
    sh("ip", "-n", a, "link", "del", dev)
    assert ra.proc.wait(10) == 2
    assert ra.output().strip().splitlines()[-1] == f"tunlab: device {dev} was deleted while the relay was using it"
