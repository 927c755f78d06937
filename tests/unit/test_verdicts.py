"""Issue 12: verdicts that were wrong or impossible, each on hand-built captures (no root).

UDP probes answered by ICMP port unreachable (short and long quotes), TCP count>1 answered by the kernel's
RSTs (IP id 0, seq 0), a probe leaking onto another branch, declared rewrites (a NAT), the check cost
(linear in probes), the ping label and relative hook paths of a topology written in a scenario file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from test_traffic_checks import ADDR, chain, simulate

import tunlab.verdict.checks as checks
from tunlab.model.flows import Expect, Ping, Probe
from tunlab.traffic.decap import Frame, RelayEnd
from tunlab.verdict.checks import Captures, Chain, LinkInfo, check_flow, check_links


def port_unreachable(req: bytes, ttl_dec: int = 2) -> bytes:
    """What Linux answers a UDP datagram to a closed port: the quote is the datagram as received (TTL
    lowered on the way), cut so that the error fits in 576 bytes."""
    got = IP(req)
    got.ttl -= ttl_dec
    got.chksum = None
    quote = bytes(got)[:576 - 28]
    return bytes(IP(src=got.dst, dst=got.src, ttl=64, id=0) / ICMP(type=3, code=3) / quote)


def by_name(res: checks.FlowResult) -> dict[str, checks.CheckResult]:
    return {c.name: c for c in res.checks}


@pytest.mark.parametrize("size", [60, 128, 129, 200, 600, 1400])
def test_udp_probe_with_its_port_unreachable_reply_passes(size: int) -> None:
    ch = chain()
    req = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=4242) / UDP(sport=33000, dport=5001) / (b"u" * (size - 28))
    caps = simulate(ch, [(bytes(req), False), (port_unreachable(bytes(req)), True)])
    res = check_flow(ch, caps, Probe("udp", bytes(req), Expect(reply=True)))
    assert res.passed, [c.message for c in res.checks]
    assert [r.status for r in res.reply_hops] == ["seen"] * len(ch.steps())


def test_udp_reply_quoting_another_datagram_is_not_taken() -> None:
    ch = chain()
    req = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=4242) / UDP(sport=33000, dport=5001) / b"x"
    other = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=4243) / UDP(sport=33000, dport=5001) / b"x"
    caps = simulate(ch, [(bytes(req), False), (port_unreachable(bytes(other)), True)])
    assert not by_name(check_flow(ch, caps, Probe("udp", bytes(req), Expect(reply=True))))["reply"].passed


@pytest.mark.parametrize("flags", ["S", "PA"])
def test_tcp_count_two_with_kernel_resets_passes(flags: str) -> None:
    """The kernel's resets all carry IP id 0 (and seq 0 for RST-ACK): only the ACK number tells them apart."""
    ch = chain()
    packets, probes = [], []
    for k in range(2):
        seg = (IP(src=ADDR["sender"], dst=ADDR["receiver"], id=100 + k)
               / TCP(sport=40000, dport=80, flags=flags, seq=1000 + k * 5, ack=77 + k if "A" in flags else 0)
               / (b"hello" if "P" in flags else b""))
        if "A" in flags:  # RST with seq = the segment's ack, no ACK of its own
            rst = TCP(sport=80, dport=40000, flags="R", seq=77 + k)
        else:
            rst = TCP(sport=80, dport=40000, flags="RA", seq=0, ack=1000 + k * 5 + 1)
        packets += [(bytes(seg), False), (bytes(IP(src=ADDR["receiver"], dst=ADDR["sender"], id=0) / rst), True)]
        probes.append(Probe(f"tcp #{k + 1}", bytes(seg), Expect(reply=True)))
    caps = simulate(ch, packets)
    results = [check_flow(ch, caps, p) for p in probes]
    assert all(r.passed for r in results), [c.message for r in results for c in r.checks if not c.passed]


def test_tcp_probes_with_ack_carry_distinct_ack_numbers() -> None:
    """Otherwise the kernel's RSTs to them (seq = their ack, IP id 0) are identical and cannot be told apart."""
    from tunlab import Tcp
    from tunlab.model.scenario import Scenario, build_probes
    from tunlab.model.topology import linear_chain

    sc = Scenario("t", "t", linear_chain(1), (Tcp(80, flags="PA", payload=b"x", count=3),), src="sender",
                  dst="receiver")
    acks = [IP(p.probe.packet)[TCP].ack for p in build_probes(sc, seed=1)]
    assert len(set(acks)) == 3


# ----------------------------------------------------------------------------------------- witnesses


def fork() -> tuple[Chain, Chain, dict[str, LinkInfo]]:
    """sender - classifier - fw_a - rx_a, and classifier - fw_b - rx_b (topologies/fork.py)."""
    def lk(name: str, a: str, b: str, i: int) -> LinkInfo:
        return LinkInfo(name, RelayEnd(a, f"10.0.{i}.1", 55555), RelayEnd(b, f"10.0.{i}.2", 55555))
    links = {"sender-classifier": lk("sender-classifier", "sender", "classifier", 0),
             "classifier-fw_a": lk("classifier-fw_a", "classifier", "fw_a", 1),
             "fw_a-rx_a": lk("fw_a-rx_a", "fw_a", "rx_a", 2),
             "classifier-fw_b": lk("classifier-fw_b", "classifier", "fw_b", 3),
             "fw_b-rx_b": lk("fw_b-rx_b", "fw_b", "rx_b", 4)}
    kernel = frozenset({"classifier", "fw_a", "fw_b"})
    a = Chain(("sender", "classifier", "fw_a", "rx_a"), (links["sender-classifier"], links["classifier-fw_a"],
                                                         links["fw_a-rx_a"]), kernel, ("172.16.0.0/16",))
    b = Chain(("sender", "classifier", "fw_b", "rx_b"), (links["sender-classifier"], links["classifier-fw_b"],
                                                         links["fw_b-rx_b"]), kernel, ("172.16.0.0/16",))
    return a, b, links


def test_a_flooding_classifier_is_caught_naming_the_other_branch() -> None:
    a, b, links = fork()
    ping = IP(src="172.16.0.1", dst="172.16.1.2", id=900) / ICMP(id=3, seq=1) / b"fork probe"
    clean = simulate(a, [(bytes(ping), False)])
    ok = check_flow(a, Captures(clean.frames, links=links), Probe("ping", bytes(ping)))
    assert ok.passed, [c.message for c in ok.checks]
    # the classifier copies every packet onto both branches: fw_b forwards it to rx_b as well
    flooded = simulate(b, [(bytes(ping), False)])
    frames = dict(clean.frames)
    for point in ("link:classifier-fw_b", "tun@fw_b", "link:fw_b-rx_b", "tun@rx_b"):
        frames[point] = flooded.frames[point]
    res = check_flow(a, Captures(frames, links=links), Probe("ping", bytes(ping)))
    leak = by_name(res)["nowhere else"]
    assert not leak.passed
    assert "link classifier-fw_b classifier>fw_b" in leak.message and "rx_b TUN in" in leak.message
    assert leak.hop == "link classifier-fw_b classifier>fw_b"
    assert by_name(res)["every hop"].passed  # its own path is fine: only the witnesses see the leak


def test_a_packet_past_its_drop_point_and_a_second_copy_fail() -> None:
    ch = chain()
    p = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=99) / UDP(sport=999, dport=53) / b"dns?"
    caps = simulate(ch, [(bytes(p), False)])
    res = check_flow(ch, caps, Probe("udp", bytes(p), Expect(delivered=False, dropped_at="vnf2")))
    assert not res.passed and "not dropped" in res.checks[0].message
    twice = simulate(ch, [(bytes(p), False)], lambda label, pkt: [pkt, pkt] if label == "vnf2 TUN out" else None)
    res = check_flow(ch, twice, Probe("udp", bytes(p)))
    assert not by_name(res)["every hop"].passed and "more than once at vnf2 TUN out" in by_name(res)["every hop"].message


def test_bare_packet_on_a_link_off_every_chain_is_caught() -> None:
    a, b, links = fork()
    ping = IP(src="172.16.0.1", dst="172.16.1.2", id=901) / ICMP(id=3, seq=1)
    caps = simulate(a, [(bytes(ping), False)])
    caps.frames["link:fw_b-rx_b"] = [Frame(2000.0, bytes(ping))]
    res = {c.name: c for c in check_links(a, Captures(caps.frames, links=links), list(links.values()))}
    assert not res["link fw_b-rx_b"].passed and "bare" in res["link fw_b-rx_b"].message


# ----------------------------------------------------------------------------------------- cost


def test_check_cost_is_linear_in_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Identities are computed once per captured packet (plus a few per probe), never per pair."""
    calls = {"n": 0}
    real = checks.head

    def counting(data: bytes, **kw: object) -> object:
        calls["n"] += 1
        return real(data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checks, "head", counting)
    per: list[float] = []
    for n in (20, 80):
        ch = chain()
        packets = []
        probes = []
        for k in range(n):
            req = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=1000 + k) / ICMP(id=7, seq=k + 1) / (b"p" * 8)
            rep = IP(src=ADDR["receiver"], dst=ADDR["sender"], id=0) / ICMP(type=0, id=7, seq=k + 1) / (b"p" * 8)
            packets += [(bytes(req), False), (bytes(rep), True)]
            probes.append(Probe(f"p{k}", bytes(req), Expect(reply=True)))
        caps = simulate(ch, packets)
        frames = sum(len(v) for v in caps.frames.values())
        calls["n"] = 0
        results = [check_flow(ch, caps, p) for p in probes]
        assert all(r.passed for r in results)
        per.append(calls["n"] / (frames + n))
    assert per[1] <= per[0] * 1.2, per  # calls per (packet + probe) do not grow with the number of probes


# ----------------------------------------------------------------------------------------- small ones


def test_ping_label_says_its_real_size() -> None:
    assert Ping().label() == "ping 84"
    assert Ping(payload=b"x" * 100).label() == "ping 128"
    assert Ping(size=300).label() == "ping 300"
    assert Ping(size="mtu").label() == "ping mtu"


def test_relative_hook_path_of_a_topology_in_a_scenario_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab.model.scenario import load_scenario
    from tunlab.model.topology import hook_spec

    folder = tmp_path / "mine"
    (folder / "hooks").mkdir(parents=True)
    (folder / "hooks" / "pass.py").write_text("def keep(pkt):\n    return pkt\n")
    (folder / "sc.py").write_text(textwrap.dedent("""
        from tunlab import Endpoint, Link, Path, Ping, Topology, Vnf

        topology = Topology(
            name="hooked",
            endpoints=(Endpoint("a", "172.16.0.1"), Endpoint("b", "172.16.0.2")),
            vnfs=(Vnf("h", "172.16.0.3", kind="hook", hook="hooks/pass.py:keep"),),
            links=(Link("a", "h", "10.0.0.1/30", "10.0.0.2/30"), Link("h", "b", "10.0.0.5/30", "10.0.0.6/30")),
            paths=(Path(("a", "h", "b")),),
        )
        traffic = [Ping()]
    """))
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    sc = load_scenario(folder / "sc.py")
    vnf = sc.topology.node("h")
    assert hook_spec(vnf, sc.topology.base_dir()) == f"{folder / 'hooks' / 'pass.py'}:keep"  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- MTU


@pytest.mark.parametrize("mtu,transport,veth", [(1472, "udp", 1500), (1400, "udp", 1500), (4000, "udp", 4028),
                                                (9000, "tcp", 1500), (65000, "udp", 65028)])
def test_veths_get_the_mtu_the_overlay_needs(mtu: int, transport: str, veth: int) -> None:
    from tunlab.model.plan import build_plan
    from tunlab.model.topology import linear_chain

    plan = build_plan(linear_chain(2, transport, mtu=mtu), "t12m", "/run/tunlab/t12m")  # type: ignore[arg-type]
    assert {lk.mtu for lk in plan.links} == {veth}
    assert {n.mtu for n in plan.nodes} == {mtu}
    for n in plan.nodes:
        assert all(i.link.mtu == veth for i in n.ifaces)


def test_a_probe_one_byte_over_the_mtu_is_refused_with_the_reason(tmp_path: Path) -> None:
    from tunlab.errors import DescriptionError
    from tunlab.model.scenario import load_scenario

    path = tmp_path / "sc.py"
    path.write_text("from tunlab import Ping, linear_chain\ntopology = linear_chain(1, mtu=2000)\n"
                    "traffic = [Ping(size='mtu'), Ping(size=2001)]\n")
    with pytest.raises(DescriptionError, match=r"traffic\[1\].size.*2001 bytes is more than the overlay MTU \(2000\)"):
        load_scenario(path)


# ----------------------------------------------------------------------------------------- rewrites

NAT_ADDR = "10.77.0.9"


def nat(tos: int | None = None) -> object:
    """vnf2 as a source NAT: src -> NAT_ADDR (UDP: sport -> 40000) on the way out, undone on the way back."""
    def fault(label: str, pkt: bytes) -> list[bytes] | None:
        if label != "vnf2 TUN out":
            return None
        p = IP(pkt)
        if p.src == ADDR["sender"]:
            p.src = NAT_ADDR
            if UDP in p:
                p[UDP].sport = 40000
                p[UDP].chksum = None
            if ICMP in p:
                p[ICMP].chksum = None
            if tos is not None:
                p.tos = tos
        elif p.dst == NAT_ADDR:
            p.dst = ADDR["sender"]
        else:
            return None
        p.chksum = None
        return [bytes(p)]
    return fault


def nat_run(rewrites: tuple[tuple[str, tuple[str, ...]], ...], tos: int | None = None) -> list[checks.FlowResult]:
    ch = chain()
    ping = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=501) / ICMP(id=5, seq=1) / b"nat ping"
    reply = IP(src=ADDR["receiver"], dst=NAT_ADDR, id=0) / ICMP(type=0, id=5, seq=1) / b"nat ping"
    udp = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=502) / UDP(sport=33000, dport=5001) / b"nat udp"
    caps = simulate(ch, [(bytes(ping), False), (bytes(reply), True), (bytes(udp), False)], nat(tos))
    return [check_flow(ch, caps, Probe("ping", bytes(ping), Expect(reply=True), rewrites=rewrites)),
            check_flow(ch, caps, Probe("udp", bytes(udp), rewrites=rewrites))]


def test_declared_nat_is_followed_through_the_rewrite() -> None:
    results = nat_run((("vnf2", ("IP.src", "UDP.sport")),))
    assert all(r.passed for r in results), [c.message for r in results for c in r.checks]
    assert [r.status for r in results[0].reply_hops] == ["seen"] * len(chain().steps())
    assert "declared rewrites: vnf2: IP.src, UDP.sport" in by_name(results[1])["delivered"].message


def test_undeclared_nat_fails_as_altered_at_the_vnf_not_as_lost() -> None:
    for res in nat_run(()):
        hops = by_name(res)["every hop"]
        assert not hops.passed and hops.hop == "vnf2 TUN out", hops.message
        assert "altered at vnf2 TUN out" in hops.message and "IP.src" in hops.message
        assert "declare it" in hops.message and "lost" not in hops.message
        assert hops.expected and hops.nearest  # EXPECTED / RECEIVED


def test_a_change_beyond_the_declared_one_still_fails() -> None:
    results = nat_run((("vnf2", ("IP.src", "UDP.sport")),), tos=0x20)
    for res in results:
        hops = by_name(res)["every hop"]
        assert not hops.passed and "IP.tos" in hops.message and hops.hop == "vnf2 TUN out"
    assert all(r.passed for r in nat_run((("vnf2", ("L3", "L4")),), tos=0x20))  # "any L3/L4 header"
    assert all(r.passed for r in nat_run((("vnf2", ("any",)),), tos=0x20))


def test_rewrites_are_checked_when_the_scenario_loads(tmp_path: Path) -> None:
    from tunlab.errors import DescriptionError
    from tunlab.model.scenario import build_probes, load_scenario

    path = tmp_path / "sc.py"
    for bad, match in (('{"vnf9": ["IP.src"]}', "no node 'vnf9'"), ('{"sender": ["IP.src"]}', "endpoint"),
                       ('{"vnf2": ["IP.srcx"]}', "not a field")):
        path.write_text(f"from tunlab import Ping, linear_chain\ntopology = linear_chain(3)\ntraffic = [Ping()]\n"
                        f"rewrites = {bad}\n")
        with pytest.raises(DescriptionError, match=match):
            load_scenario(path)
    path.write_text("from tunlab import Ping, Udp, linear_chain\ntopology = linear_chain(3)\n"
                    "rewrites = {'vnf2': ['IP.src']}\n"
                    "traffic = [Ping(), Udp(53, rewrites={'vnf2': ['UDP.sport'], 'vnf1': ['IP.tos']})]\n")
    probes = build_probes(load_scenario(path))
    assert probes[0].probe.rewrites == (("vnf2", ("IP.src",)),)
    assert probes[1].probe.rewrites == (("vnf1", ("IP.tos",)), ("vnf2", ("IP.src", "UDP.sport")))


# ----------------------------------------------------------------------------------------- IPv6


def test_ipv6_and_dual_stack_overlays_in_the_model() -> None:
    from tunlab.errors import DescriptionError
    from tunlab.model.plan import build_plan
    from tunlab.model.topology import Endpoint, Link, Path as TPath, Topology, linear_chain

    v6 = linear_chain(2, overlay_net="fd00:16::/64")
    assert v6.families == (6,) and v6.node("vnf1").overlay == "fd00:16::101"
    assert v6.routes_for("vnf1")["fd00:16::2/128"] == "vnf2"
    dual = linear_chain(2, overlay_net6="fd00:16::/64")
    assert dual.families == (4, 6) and dual.node("receiver").addresses == ("172.16.0.2", "fd00:16::2")
    plan = build_plan(dual, "t12v", "/run/tunlab/t12v")
    n = plan.node("vnf1")
    assert n.ipv6 and n.extra_addrs == ("fd00:16::101/64",)
    assert "fd00:16::2/128=vnf2" in " ".join(n.relay_args)
    assert not build_plan(linear_chain(2), "t12v", "/x").node("vnf1").ipv6
    eps = (Endpoint("a", "172.16.0.1"), Endpoint("b", "172.16.0.2", "fd00:16::2"))
    with pytest.raises(DescriptionError, match="overlay6.*no overlay_net6"):
        Topology("t", eps, (), (Link("a", "b", "10.0.0.1/30", "10.0.0.2/30"),), (TPath(("a", "b")),))
    with pytest.raises(DescriptionError, match="overlay6.*needs an IPv6 address"):
        Topology("t", eps, (), (Link("a", "b", "10.0.0.1/30", "10.0.0.2/30"),), (TPath(("a", "b")),),
                 overlay_net6="fd00:16::/64")
    with pytest.raises(DescriptionError, match="IPv6 minimum MTU"):
        linear_chain(1, overlay_net="fd00:16::/64", mtu=1000)


def test_ipv6_probes_are_built_with_a_unique_flow_label(tmp_path: Path) -> None:
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    from tunlab.errors import DescriptionError
    from tunlab.model.scenario import build_probes, load_scenario

    path = tmp_path / "sc.py"
    path.write_text("from tunlab import Ping, Tcp, Udp, linear_chain\n"
                    "topology = linear_chain(1, overlay_net6='fd00:16::/64', mtu=1400)\n"
                    "traffic = [Ping(family=6, count=2), Udp(53, family=6, size='mtu'), Tcp(80, dst='fd00:16::2'),"
                    " Ping(), Ping(family=6, payload=b'x' * 10)]\n")
    probes = [p.probe for p in build_probes(load_scenario(path))]
    six = [IPv6(p.packet) for p in probes if p.packet[0] >> 4 == 6]
    assert len(six) == 5 and len({p.fl for p in six}) == 5
    assert six[0].src == "fd00:16::1" and six[0].dst == "fd00:16::2" and ICMPv6EchoRequest in six[0]
    assert len(six[2]) == 1400  # size='mtu' is the IPv6 packet length
    assert probes[4].packet[0] >> 4 == 4  # the first overlay by default
    assert probes[5].name == "ping6 58"
    path.write_text("from tunlab import Ping, linear_chain\ntopology = linear_chain(1)\ntraffic = [Ping(family=6)]\n")
    with pytest.raises(DescriptionError, match=r"traffic\[0\].family.*carries no IPv6"):
        load_scenario(path)


def test_ipv6_chain_checks_hop_by_hop_with_replies() -> None:
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

    def lowered6(pkt: bytes, n: int) -> bytes:
        q = IPv6(pkt)
        q.hlim -= n
        return bytes(q)

    import test_traffic_checks as t

    ch = Chain(t.NODES, chain().links, frozenset({"vnf1", "vnf2"}), ("fd00:77::/64",))
    a, b = "fd00:77::1", "fd00:77::2"
    ping = IPv6(src=a, dst=b, fl=7001) / ICMPv6EchoRequest(id=9, seq=1, data=b"v6 ping")
    pong = IPv6(src=b, dst=a, fl=99) / ICMPv6EchoReply(id=9, seq=1, data=b"v6 ping")
    udp = IPv6(src=a, dst=b, fl=7002) / UDP(sport=3000, dport=5001) / (b"u" * 400)
    unreach = IPv6(src=b, dst=a) / ICMPv6DestUnreach(code=4) / lowered6(bytes(udp), 2)
    orig = t.lowered
    t.lowered = lowered6  # the simulator lowers the hop limit instead of the TTL
    try:
        caps = simulate(ch, [(bytes(ping), False), (bytes(pong), True), (bytes(udp), False), (bytes(unreach), True)])
    finally:
        t.lowered = orig
    for probe in (Probe("ping6", bytes(ping), Expect(reply=True)), Probe("udp6", bytes(udp), Expect(reply=True))):
        res = check_flow(ch, caps, probe)
        assert res.passed, [c.message for c in res.checks]
        assert res.hops[-1].received and IPv6(res.hops[-1].received).hlim == 62


def test_ipv6_underlay_in_the_model_and_the_relay_command_lines() -> None:
    from tunlab.errors import DescriptionError
    from tunlab.model.plan import build_plan
    from tunlab.model.topology import Endpoint, Link, Path as TPath, Topology, Vnf, linear_chain
    from tunlab.relay.command import configs_from_args

    plan = build_plan(linear_chain(2, "udp", underlay_net="fd01::/64"), "t12u", "/run/tunlab/t12u")
    assert {lk.mtu for lk in plan.links} == {1472 + 48}  # outer IPv6 + UDP
    args = plan.node("vnf1").relay_args
    assert "sender=[fd01::1]:55555" in args and "[::]:55555" in args
    assert configs_from_args(list(args))[0].listen == ("::", 55555)  # the relay takes them
    tcp = build_plan(linear_chain(1, "tcp", underlay_net="fd01::/64"), "t12u", "/x")
    assert "[fd01::2]:55555" in " ".join(tcp.node("sender").relay_args)
    with pytest.raises(DescriptionError, match="mix IPv4 and IPv6"):
        Topology("t", (Endpoint("a", "172.16.0.1"), Endpoint("b", "172.16.0.2")), (Vnf("v", "172.16.0.3"),),
                 (Link("a", "v", "fd01::1/64", "fd01::2/64"), Link("v", "b", "10.0.0.1/30", "10.0.0.2/30")),
                 (TPath(("a", "v", "b")),))
    with pytest.raises(DescriptionError, match="not in the same subnet"):
        Link("a", "b", "fd01::1/64", "fd02::2/64")


def test_decap_reads_ipv6_outer_headers() -> None:
    from scapy.layers.inet6 import IPv6

    from tunlab.traffic.decap import decode_link

    a, b = RelayEnd("a", "fd01::1", 55555), RelayEnd("b", "fd01::2", 55555)
    inner = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / ICMP())
    frames = [Frame(1.0, bytes(IPv6(src="fd01::1", dst="fd01::2") / UDP(sport=55555, dport=55555) / inner)),
              Frame(2.0, bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2)))]
    got = decode_link(frames, a, b, "udp", ["172.16.0.0/16", "fd00::/64"])
    assert [s.kind for s in got] == ["encap", "bare"]
    assert got[0].inner == inner and got[0].outer == "UDP [fd01::1]:55555 > [fd01::2]:55555"


def test_declared_dscp_marking_passes_and_undeclared_fails() -> None:
    ch = chain()
    p = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=601) / UDP(sport=3000, dport=5001) / b"dscp"

    def mark(label: str, pkt: bytes) -> list[bytes] | None:
        if label != "vnf1 TUN out":
            return None
        q = IP(pkt)
        q.tos = 0xB8  # EF
        q.chksum = None
        return [bytes(q)]

    caps = simulate(ch, [(bytes(p), False)], mark)
    assert check_flow(ch, caps, Probe("udp", bytes(p), rewrites=(("vnf1", ("IP.tos",)),))).passed
    wrong_vnf = check_flow(ch, caps, Probe("udp", bytes(p), rewrites=(("vnf2", ("IP.tos",)),)))
    hops = by_name(wrong_vnf)["every hop"]
    assert not hops.passed and hops.hop == "vnf1 TUN out" and "IP.tos" in hops.message


def test_icmpv6_checksums_are_followed_too() -> None:
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    from tunlab.verdict.masks import bad_checksums

    good = bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(id=1, seq=2, data=b"abc"))
    bad = bytearray(good)
    bad[-1] ^= 1  # payload changed, checksum not
    assert bad_checksums(good) == []
    assert [d.field for d in bad_checksums(bytes(bad))] == ["cksum"]
