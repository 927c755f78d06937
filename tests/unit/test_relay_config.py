"""Option parsing: TunConnector's options and defaults, native options, validation messages."""

from __future__ import annotations

import pytest

from tunlab.errors import TunlabError
from tunlab.relay.command import configs_from_args
from tunlab.relay.config import (PeerSpec, RelayConfig, RouteSpec, check_ifname, parse_hostport,
                                 parse_interface_addr, parse_ip)


def one(argv: list[str]) -> RelayConfig:
    configs = configs_from_args(argv)
    assert len(configs) == 1
    return configs[0]


def error_of(argv: list[str]) -> str:
    with pytest.raises(TunlabError) as info:
        configs_from_args(argv)
    text = str(info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------- TunConnector


def test_tunconnector_documented_server_example() -> None:
    cfg = one(["-p", "tun0", "-s", "10.0.0.2", "-i", "55555", "-m", "server"])
    assert cfg.dev == "tun0"
    assert cfg.addr == "10.0.0.2/24"  # bare address = /24, as TunConnector
    assert cfg.listen == ("0.0.0.0", 55555)
    assert cfg.peers == (PeerSpec("client", None),)  # no -r: the first source is the peer
    assert cfg.transport == "udp" and not cfg.tap and cfg.vnf == "kernel"
    assert cfg.effective_mtu() == 1472


def test_tunconnector_server_defaults() -> None:
    cfg = one(["-m", "server"])
    assert (cfg.dev, cfg.addr, cfg.listen) == ("tun1", "192.168.1.2/24", ("0.0.0.0", 55556))


def test_tunconnector_server_with_remote_accepts_only_it() -> None:
    cfg = one(["-m", "server", "-r", "10.1.0.1", "--transport", "tcp"])
    assert cfg.peers == (PeerSpec("client", "10.1.0.1"),)
    assert cfg.transport == "tcp"


def test_tunconnector_client_defaults_udp() -> None:
    cfg = one(["-m", "client", "-r", "10.1.0.2"])
    assert (cfg.dev, cfg.addr) == ("tun0", "192.168.0.2/24")
    assert cfg.peers == (PeerSpec("server", "10.1.0.2", 55555, outgoing=True),)
    assert cfg.listen == ("0.0.0.0", 55556)  # UDP client: bound to -i


def test_tunconnector_client_tcp_does_not_bind() -> None:
    cfg = one(["-m", "client", "-r", "10.1.0.2", "-o", "7000", "--transport", "tcp"])
    assert cfg.listen is None
    assert cfg.peers[0].port == 7000


def test_tunconnector_long_options() -> None:
    cfg = one(["--mode", "client", "--remoteip", "10.1.0.2", "--clientinterface", "tx0", "--clientip",
               "10.9.0.1/16", "--outport", "6000", "--inport", "6001"])
    assert (cfg.dev, cfg.addr, cfg.listen, cfg.peers[0].port) == ("tx0", "10.9.0.1/16", ("0.0.0.0", 6001), 6000)
    srv = one(["--mode", "server", "--serverinterface", "tx1", "--serverip", "10.8.0.1"])
    assert (srv.dev, srv.addr) == ("tx1", "10.8.0.1/24")


def test_tunconnector_both_is_default_and_has_two_devices() -> None:
    server, client = configs_from_args(["-r", "10.1.0.2"])
    assert (server.label, server.dev, server.addr, server.listen) == ("server", "tun1", "192.168.1.2/24",
                                                                    ("0.0.0.0", 55556))
    assert server.peers == (PeerSpec("client", None),)
    assert (client.label, client.dev, client.addr) == ("client", "tun0", "192.168.0.2/24")
    assert client.peers == (PeerSpec("server", "10.1.0.2", 55555, outgoing=True),)
    assert client.listen == ("0.0.0.0", 0)  # -i belongs to the server part


def test_tunconnector_ipv6_remote_binds_ipv6_wildcard() -> None:
    cfg = one(["-m", "client", "-r", "fd00::2"])
    assert cfg.listen == ("::", 55556)
    assert cfg.family_version == 6
    assert cfg.effective_mtu() == 1452


def test_dev_and_addr_override_tunconnector_device_options() -> None:
    cfg = one(["-m", "server", "--dev", "t2x", "--addr", "fd00::1/64"])
    assert (cfg.dev, cfg.addr) == ("t2x", "fd00::1/64")


@pytest.mark.parametrize("argv, needle", [
    ([], "-r/--remoteip"),
    (["-m", "client"], "-r/--remoteip"),
    (["-r", "10.0.0.1", "--dev", "x"], "-m both has two"),
    (["-r", "10.0.0.1", "-p", "same", "-n", "same"], "different devices"),
    (["-m", "server", "-s", "10.0.0.300"], "-s/--serverip"),
    (["-m", "server", "-s", "10.0.0.1/33"], "prefix length"),
    (["-m", "server", "-p", "bad name"], "-p/--serverinterface"),
    (["-m", "client", "-r", "host.example"], "-r/--remoteip"),
    (["-m", "client", "-r", "10.0.0.1", "-o", "70000"], "out of range"),
    (["-m", "server", "-i", "0"], "out of range"),
    (["-m", "sideways"], None),
])
def test_tunconnector_errors(argv: list[str], needle: str | None) -> None:
    if needle is None:  # click's own usage error for a bad choice
        with pytest.raises(Exception):
            configs_from_args(argv)
        return
    assert needle in error_of(argv)


def test_attach_ignores_default_addresses_but_rejects_explicit_ones() -> None:
    cfg = one(["-m", "server", "--attach"])
    assert cfg.attach and cfg.addr is None
    assert "no address" in error_of(["-m", "server", "--attach", "-s", "10.0.0.1"])
    assert "no address" in error_of(["--attach", "--addr", "10.0.0.1/24", "--dev", "x", "--peer", "a=1.2.3.4:5"])


# -------------------------------------------------------------------------------------------- native


def test_native_udp_peer() -> None:
    cfg = one(["--dev", "t2a", "--addr", "10.5.0.1/24", "--listen", "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000"])
    assert cfg.listen == ("10.1.0.1", 5000)
    assert cfg.peers == (PeerSpec("b", "10.1.0.2", 5000, outgoing=True),)
    assert cfg.label == "" and cfg.routes == ()


def test_native_chain_role_with_routes_and_hook() -> None:
    cfg = one(["--dev", "v", "--listen", "[fd00::2]:6000", "--accept", "up=fd00::1", "--peer",
               "down=[fd00::3]:6000", "--route", "fd10::/64=up", "--route", "default=down",
               "--hook", "mod:fn", "--transport", "tcp", "--tap", "--mtu", "9000"])
    assert cfg.listen == ("fd00::2", 6000)
    assert cfg.peers == (PeerSpec("down", "fd00::3", 6000, outgoing=True), PeerSpec("up", "fd00::1"))
    assert cfg.routes == (RouteSpec("fd10::/64", "up"), RouteSpec("default", "down"))
    assert (cfg.vnf, cfg.hook, cfg.transport, cfg.tap, cfg.effective_mtu()) == ("hook", "mod:fn", "tcp", True, 9000)


def test_native_defaults() -> None:
    cfg = one(["--peer", "x=127.0.0.1:9"])
    assert (cfg.dev, cfg.addr, cfg.listen, cfg.mtu) == ("tun0", None, None, None)
    assert cfg.effective_mtu() == 1472
    tap = one(["--peer", "x=127.0.0.1:9", "--tap"])
    assert tap.effective_mtu() == 1458


def test_listen_port_zero_allowed() -> None:
    assert one(["--listen", "127.0.0.1:0", "--peer", "x=127.0.0.1:9"]).listen == ("127.0.0.1", 0)


@pytest.mark.parametrize("argv, needle", [
    (["--peer", "x=10.0.0.1"], "IP:PORT"),
    (["--peer", "10.0.0.1:5"], "NAME=IP:PORT"),
    (["--peer", "x=fd00::1:5"], "brackets"),
    (["--peer", "x y=10.0.0.1:5"], "peer name"),
    (["--peer", "x=10.0.0.1:5", "--peer", "x=10.0.0.2:5", "--route", "default=x"], "used twice"),
    (["--peer", "x=10.0.0.1:5", "--peer", "y=10.0.0.2:5"], "--route"),
    (["--peer", "x=10.0.0.1:5", "--route", "10.0.0.1/24=x"], "did you mean 10.0.0.0/24"),
    (["--peer", "x=10.0.0.1:5", "--route", "default=nobody"], "no peer is named"),
    (["--accept", "x=10.0.0.1"], "needs --listen"),
    (["--listen", "0.0.0.0:5", "--accept", "x=10.0.0.1:5"], "--accept"),
    (["--listen", "0.0.0.0:5", "--peer", "x=10.0.0.1:5", "--transport", "tcp"], "lets nobody in"),
    (["--listen", "0.0.0.0:5", "--peer", "x=[fd00::1]:5"], "mix IPv4 and IPv6"),
    (["--peer", "x=10.0.0.1:5", "-r", "10.0.0.1"], "cannot be mixed"),
    (["--peer", "x=10.0.0.1:5", "-m", "server"], "cannot be mixed"),
    (["--peer", "x=10.0.0.1:5", "-s", "10.0.0.1"], "cannot be mixed"),
    (["--peer", "x=10.0.0.1:5", "--vnf", "hook"], "--hook"),
    (["--peer", "x=10.0.0.1:5", "--dev", "a/b"], "interface name"),
    (["--peer", "x=10.0.0.1:5", "--dev", "sixteen-chars-xx"], "interface name"),
    (["--peer", "x=10.0.0.1:5", "--mtu", "20"], "--mtu"),
    (["--peer", "x=10.0.0.1:5", "--addr", "10.0.0.1/40"], "--addr"),
    (["--peer", "x=10.0.0.1:5", "--addr", "nope"], "--addr"),
])
def test_native_errors(argv: list[str], needle: str) -> None:
    assert needle in error_of(argv)


# ----------------------------------------------------------------------------------------- validators


@pytest.mark.parametrize("name", ["tun0", "a", "t2r-ab_c.d", "x" * 15])
def test_good_interface_names(name: str) -> None:
    assert check_ifname(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "a b", "a/b", "a;rm -rf", "$(x)", ".", "..", "tün0", "a:1"])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(TunlabError):
        check_ifname(name)


@pytest.mark.parametrize("text, want", [
    ("10.0.0.2", "10.0.0.2/24"), ("10.0.0.2/30", "10.0.0.2/30"), ("fd00::1", "fd00::1/64"),
    ("FD00:0::1/120", "fd00::1/120"), (" 192.168.0.2 ", "192.168.0.2/24"),
])
def test_interface_addresses(text: str, want: str) -> None:
    assert parse_interface_addr(text, "--addr") == want


@pytest.mark.parametrize("text", ["", "10.0.0", "10.0.0.1/0", "10.0.0.1/x", "fd00::1/129", "example.com"])
def test_bad_interface_addresses(text: str) -> None:
    with pytest.raises(TunlabError):
        parse_interface_addr(text, "--addr")


def test_hostport_and_ip_parsing() -> None:
    assert parse_hostport("[fd00::1]:80", "x") == ("fd00::1", 80)
    assert parse_hostport("10.0.0.1:1", "x") == ("10.0.0.1", 1)
    assert parse_ip("[::1]", "x") == "::1"
    for bad in ("10.0.0.1", ":80", "[fd00::1]80", "10.0.0.1:", "10.0.0.1:-1", "10.0.0.1:65536"):
        with pytest.raises(TunlabError):
            parse_hostport(bad, "x")


def test_python_api_validates_too() -> None:
    with pytest.raises(TunlabError, match="no peer"):
        RelayConfig(dev="t0")
    cfg = RelayConfig(dev="t0", peers=(PeerSpec("a", "127.0.0.1", 9, outgoing=True),))
    assert cfg.to_json()["mtu"] == 1472
