"""add_relay_chain's plan for a Mininet network: relay command lines the relay itself accepts (no root)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tunlab.lab.backends.mininet.api import ChainError, plan_chain
from tunlab.relay.command import configs_from_args


@dataclass(eq=False)
class FakeIntf:
    node: Any
    ip: str | None

    def IP(self) -> str | None:  # noqa: N802 - Mininet's name
        return self.ip


@dataclass(eq=False)
class FakeLink:
    intf1: FakeIntf
    intf2: FakeIntf


@dataclass(eq=False)
class FakeHost:
    name: str
    ip: str | None
    pid: int = 1

    def IP(self) -> str | None:  # noqa: N802
        return self.ip

    def cmd(self, *args: Any) -> str:
        raise AssertionError("planning runs nothing")


@dataclass
class FakeNet:
    hosts: list[FakeHost]
    links: list[FakeLink] = field(default_factory=list)

    def __getitem__(self, name: str) -> FakeHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def linksBetween(self, a: FakeHost, b: FakeHost) -> list[FakeLink]:  # noqa: N802
        return [lk for lk in self.links if {lk.intf1.node, lk.intf2.node} == {a, b}]


def switched(n: int) -> FakeNet:
    """Mininet's usual shape: every host on one switch, one address each."""
    return FakeNet([FakeHost(f"h{i}", f"10.0.0.{i}") for i in range(1, n + 1)])


def direct_line(n: int) -> FakeNet:
    """h1 - h2 - ... - hn with a /30 per direct link (hosts in the middle have two addresses)."""
    hosts = [FakeHost(f"h{i}", None) for i in range(1, n + 1)]
    links = [FakeLink(FakeIntf(x, f"10.1.{k}.1"), FakeIntf(y, f"10.1.{k}.2"))
             for k, (x, y) in enumerate(zip(hosts, hosts[1:]))]
    return FakeNet(hosts, links)


def opt(args: tuple[str, ...], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_udp_chain_on_a_switch() -> None:
    relays = plan_chain(switched(3), ["h1", "h2", "h3"], run_dir="/run/tunlab/abcd")
    assert [(r.name, r.role, r.overlay_ip) for r in relays] == [
        ("h1", "endpoint", "172.31.0.1"), ("h2", "vnf", "172.31.0.2"), ("h3", "endpoint", "172.31.0.3")]
    mid = relays[1].args
    assert opt(mid, "--listen") == ["10.0.0.2:55555"]
    assert opt(mid, "--peer") == ["h1=10.0.0.1:55555", "h3=10.0.0.3:55555"]
    assert opt(mid, "--route") == ["172.31.0.1/32=h1", "172.31.0.3/32=h3"]
    assert opt(mid, "--vnf") == ["kernel"]
    assert opt(relays[0].args, "--route") == ["172.31.0.2/31=h2"]  # collapsed: both lie beyond h2
    assert relays[1].control == "/run/tunlab/abcd/h2.ctl"
    for r in relays:  # the relay's own parser accepts every command line
        (cfg,) = configs_from_args(r.args)
        assert cfg.dev == "tlr0" and cfg.addr == f"{r.overlay_ip}/24" and cfg.transport == "udp"


def test_udp_middle_host_with_two_addresses_listens_on_all() -> None:
    relays = plan_chain(direct_line(3), ["h1", "h2", "h3"])
    mid = relays[1].args
    assert opt(mid, "--listen") == ["0.0.0.0:55555"]
    assert opt(mid, "--peer") == ["h1=10.1.0.1:55555", "h3=10.1.1.2:55555"]
    assert opt(relays[0].args, "--listen") == ["10.1.0.1:55555"]
    for r in relays:
        configs_from_args(r.args)


def test_tcp_chain_connects_downstream() -> None:
    relays = plan_chain(direct_line(4), ["h1", "h2", "h3", "h4"], transport="tcp", port=6000, mtu=1400)
    first, second, _, last = (r.args for r in relays)
    assert opt(first, "--listen") == [] and opt(first, "--peer") == ["h2=10.1.0.2:6000"]
    assert opt(second, "--listen") == ["10.1.0.2:6000"] and opt(second, "--accept") == ["h1=10.1.0.1"]
    assert opt(second, "--peer") == ["h3=10.1.1.2:6000"]
    assert opt(last, "--peer") == [] and opt(last, "--accept") == ["h3=10.1.2.1"]
    for r in relays:
        (cfg,) = configs_from_args(r.args)
        assert cfg.transport == "tcp" and cfg.mtu == 1400


def test_hook_vnf_and_host_objects() -> None:
    net = switched(3)
    relays = plan_chain(net, net.hosts, hooks={"h2": "tunlab.traffic.faults:drop_all"})
    assert opt(relays[1].args, "--vnf") == ["hook"]
    assert opt(relays[1].args, "--hook") == ["tunlab.traffic.faults:drop_all"]


@pytest.mark.parametrize("kwargs, words", [
    ({"hosts": ["h1"]}, "at least two hosts"),
    ({"hosts": ["h1", "h9"]}, "no host named 'h9'"),
    ({"hosts": ["h1", "h2", "h1"]}, "appears twice"),
    ({"hosts": ["h1", "h2"], "transport": "sctp"}, "transport='sctp'"),
    ({"hosts": ["h1", "h2"], "port": 0}, "port=0"),
    ({"hosts": ["h1", "h2"], "overlay": "nope"}, "is not an IPv4 prefix"),
    ({"hosts": ["h1", "h2", "h3"], "overlay": "172.31.0.0/30"}, "too small for 3 hosts"),
    ({"hosts": ["h1", "h2", "h3"], "hooks": {"h1": "m:f"}}, "only hosts inside the chain run hooks"),
])
def test_bad_chains_are_refused_in_one_line(kwargs: dict[str, Any], words: str) -> None:
    hosts = kwargs.pop("hosts")
    with pytest.raises(ChainError) as err:
        plan_chain(switched(3), hosts, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_host_without_address_is_named() -> None:
    net = switched(2)
    net.hosts[1].ip = None
    with pytest.raises(ChainError, match="host h2 has no IPv4 address to reach h1"):
        plan_chain(net, ["h1", "h2"])
