"""Chain checks on hand-built captures: a simulated chain, then one fault at a time (no root)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tunlab.model.flows import Expect, Probe
from tunlab.verdict.checks import Captures, Chain, LinkInfo, check_flow, check_links, identity
from tunlab.traffic.decap import Frame, RelayEnd

NODES = ("sender", "vnf1", "vnf2", "receiver")
ADDR = {"sender": "10.77.0.1", "receiver": "10.77.0.2"}


def chain(transport: str = "udp", kernel: frozenset[str] = frozenset({"vnf1", "vnf2"})) -> Chain:
    links = []
    for i in range(3):
        a, b = NODES[i], NODES[i + 1]
        links.append(LinkInfo(f"l{i + 1}", RelayEnd(a, f"10.88.{i}.1", 40000 + 2 * i),
                              RelayEnd(b, f"10.88.{i}.2", 40001 + 2 * i), transport))
    return Chain(NODES, tuple(links), kernel, ("10.77.0.0/24",))


def icmp_probe(payload: bytes = b"tunlab-probe-0001" * 4) -> IP:
    return IP(src=ADDR["sender"], dst=ADDR["receiver"], ttl=64, id=777) / ICMP(id=5, seq=1) / payload


def echo_reply(req: IP) -> IP:
    return (IP(src=req.dst, dst=req.src, ttl=64, id=1234) / ICMP(type=0, id=req[ICMP].id, seq=req[ICMP].seq)
            / bytes(req[ICMP].payload))


def lowered(pkt: bytes, n: int) -> bytes:
    q = IP(pkt)
    q.ttl -= n
    q.chksum = None
    return bytes(q)


Fault = Callable[[str, bytes], list[bytes] | None]


def simulate(ch: Chain, packets: list[tuple[bytes, bool]], fault: Fault | None = None) -> Captures:
    """Walk each packet (bytes, reverse?) along the chain, recording what each capture point sees.

    ``fault(step label, inner packet)`` may replace the packet at a step by a list (empty = dropped there).
    """
    caps = Captures()
    ts = 1000.0
    for pkt, reverse in packets:
        cur: bytes | None = pkt
        dec = 0
        for step in ch.steps(reverse=reverse):
            if cur is None:
                break
            ts += 0.0001
            cur = lowered(cur, step.ttl_dec - dec) if step.ttl_dec != dec else cur
            dec = step.ttl_dec
            outs = fault(step.label, cur) if fault else None
            outs = [cur] if outs is None else outs
            for out in outs:
                if step.direction == "link":
                    link = next(lk for lk in ch.links if ch.link_point(lk) == step.point)
                    src, dst = (link.a, link.b) if step.src_node == link.a.node else (link.b, link.a)
                    frames = caps.frames.setdefault(step.point, [])
                    if ch.links[0].transport == "udp":
                        outer = IP(src=src.ip, dst=dst.ip) / UDP(sport=src.port, dport=dst.port) / out
                        frames.append(Frame(ts, bytes(outer)))
                    else:
                        seq = 1000 + sum(len(IP(f.data)[TCP].payload) for f in frames
                                         if IP(f.data).src == src.ip)
                        framed = len(out).to_bytes(2, "big") + out
                        # cut each frame in two segments to exercise reassembly
                        for cut, part in ((0, framed[:3]), (3, framed[3:])):
                            outer = (IP(src=src.ip, dst=dst.ip)
                                     / TCP(sport=src.port, dport=dst.port, seq=seq + cut, flags="PA") / part)
                            frames.append(Frame(ts, bytes(outer)))
                else:
                    caps.frames.setdefault(step.point, []).append(Frame(ts, out, step.direction == "out"))
            cur = outs[0] if outs else None
    return caps


def sent_and_reply(ch: Chain, fault: Fault | None = None) -> tuple[Probe, Captures]:
    p = icmp_probe()
    probe = Probe("icmp", bytes(p), Expect(reply=True))
    return probe, simulate(ch, [(bytes(p), False), (bytes(echo_reply(p)), True)], fault)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_clean_chain_passes_every_check(transport: str) -> None:
    ch = chain(transport)
    probe, caps = sent_and_reply(ch)
    res = check_flow(ch, caps, probe)
    assert [(c.name, c.passed) for c in res.checks] == [("every hop", True), ("delivered", True), ("reply", True),
                                                        ("nowhere else", True)]
    assert [r.status for r in res.hops] == ["seen"] * len(ch.steps())
    assert res.hops[-1].step.ttl_dec == 2  # two kernel VNFs lowered the TTL
    assert res.hops[1].outer.startswith(("UDP 10.88.0.1:40000 > 10.88.0.2:40001",
                                         "TCP 10.88.0.1:40000 > 10.88.0.2:40001"))
    assert all(r.latency_ms is not None and r.latency_ms >= 0 for r in res.hops)
    assert all(c.passed for c in check_links(ch, caps))


def test_ttl_not_lowered_by_a_kernel_vnf_is_caught() -> None:
    ch = chain()

    def no_decrement(label: str, pkt: bytes) -> list[bytes] | None:
        return [lowered(pkt, -1)] if label == "vnf2 TUN out" else None

    probe, caps = sent_and_reply(ch, no_decrement)
    res = check_flow(ch, caps, probe)
    hops = next(c for c in res.checks if c.name == "every hop")
    assert not hops.passed and hops.hop == "vnf2 TUN out" and "IP.ttl" in hops.message


def test_ttl_can_be_masked() -> None:
    ch = chain(kernel=frozenset())  # the capture says nobody forwards in the kernel, yet TTL drops
    p = icmp_probe()
    caps = simulate(chain(), [(bytes(p), False)])
    caps_frames = Captures({k.replace("tun@vnf", "unused@vnf"): v for k, v in caps.frames.items()})
    strict = check_flow(ch, caps_frames, Probe("icmp", bytes(p)))
    assert not strict.passed
    loose = check_flow(ch, caps_frames, Probe("icmp", bytes(p), ignore=((IP, "ttl"),)))
    assert loose.passed, [c.message for c in loose.checks]


def test_wrong_inner_payload_names_the_first_hop_where_it_changed() -> None:
    ch = chain()

    def rewrite(label: str, pkt: bytes) -> list[bytes] | None:
        if label in ("link l3 vnf2>receiver",):
            b = bytearray(pkt)
            b[-1] ^= 0x20
            return [bytes(b)]
        return None

    probe, caps = sent_and_reply(ch, rewrite)
    res = check_flow(ch, caps, probe)
    by = {c.name: c for c in res.checks}
    assert not by["every hop"].passed and by["every hop"].hop == "link l3 vnf2>receiver"
    assert "altered" in by["every hop"].message and "Raw.load" in by["every hop"].message
    assert by["every hop"].expected and by["every hop"].nearest  # EXPECTED and RECEIVED for the report
    assert not by["delivered"].passed and "first altered at link l3 vnf2>receiver" in by["delivered"].message


def test_missing_hop_names_where_the_packet_was_last_seen() -> None:
    ch = chain()

    def drop(label: str, pkt: bytes) -> list[bytes] | None:
        return [] if label == "vnf2 TUN out" else None

    probe, caps = sent_and_reply(ch, drop)
    res = check_flow(ch, caps, probe)
    by = {c.name: c for c in res.checks}
    assert not by["every hop"].passed
    assert by["every hop"].hop == "vnf2 TUN out" and "lost at vnf2" in by["every hop"].message
    assert by["delivered"].last_seen == "vnf2 TUN in"
    assert "lost at vnf2" in by["delivered"].message
    statuses = [r.status for r in res.hops]
    assert statuses.index("missing") == [s.label for s in ch.steps()].index("vnf2 TUN out")


def test_duplicate_on_a_link_is_caught() -> None:
    ch = chain()
    probe, caps = sent_and_reply(ch, lambda label, pkt: [pkt, pkt] if label == "link l2 vnf1>vnf2" else None)
    res = check_flow(ch, caps, probe)
    hops = next(c for c in res.checks if c.name == "every hop")
    assert not hops.passed and hops.hop == "link l2 vnf1>vnf2" and "more than once" in hops.message


def test_extra_bare_packet_on_an_underlay_is_caught_and_named() -> None:
    ch = chain()
    probe, caps = sent_and_reply(ch)
    bare = lowered(probe.packet, 1)
    caps.frames["link:l2"].append(Frame(1000.5, bare))
    links = {c.name: c for c in check_links(ch, caps)}
    assert links["link l1"].passed and links["link l3"].passed
    assert not links["link l2"].passed
    assert "bare" in links["link l2"].message and links["link l2"].hop == "l2"
    assert links["link l2"].nearest == [bare]


def test_bare_instead_of_encapsulated_hints_on_the_missing_hop() -> None:
    ch = chain()
    p = icmp_probe()
    caps = simulate(ch, [(bytes(p), False)], lambda label, pkt: [] if label == "link l2 vnf1>vnf2" else None)
    caps.frames.setdefault("link:l2", []).append(Frame(1000.5, lowered(bytes(p), 1)))
    res = check_flow(ch, caps, Probe("icmp", bytes(p)))
    hops = next(c for c in res.checks if c.name == "every hop")
    assert hops.hop == "link l2 vnf1>vnf2" and "bare" in hops.message
    assert hops.nearest  # the bare packet is the nearest received


def test_drop_expected_at_the_right_vnf_passes_and_elsewhere_fails() -> None:
    ch = chain()
    p = IP(src=ADDR["sender"], dst=ADDR["receiver"], id=99) / UDP(sport=999, dport=53) / b"dns?"
    caps = simulate(ch, [(bytes(p), False)], lambda label, pkt: [] if label == "vnf2 TUN out" else None)
    ok = check_flow(ch, caps, Probe("udp", bytes(p), Expect(delivered=False, dropped_at="vnf2")))
    assert ok.passed, [c.message for c in ok.checks]
    assert all(r.expected_missing for r in ok.hops if r.status == "missing")
    wrong = check_flow(ch, caps, Probe("udp", bytes(p), Expect(delivered=False, dropped_at="vnf1")))
    assert not wrong.passed
    assert "dropped at vnf2, not at vnf1" in wrong.checks[0].message
    delivered = simulate(ch, [(bytes(p), False)])
    leak = check_flow(ch, delivered, Probe("udp", bytes(p), Expect(delivered=False, dropped_at="vnf2")))
    assert not leak.passed and "not dropped" in leak.checks[0].message


def test_missing_reply_and_never_sent() -> None:
    ch = chain()
    p = icmp_probe()
    caps = simulate(ch, [(bytes(p), False)])
    res = check_flow(ch, caps, Probe("icmp", bytes(p), Expect(reply=True)))
    reply = next(c for c in res.checks if c.name == "reply")
    assert not reply.passed and "no reply" in reply.message
    nothing = check_flow(ch, Captures(), Probe("icmp", bytes(p)))
    assert [c.name for c in nothing.checks] == ["sent"] and not nothing.passed


def test_reply_lost_on_the_way_back() -> None:
    ch = chain()
    probe, caps = sent_and_reply(ch, lambda label, pkt: [] if label == "link l2 vnf2>vnf1" else None)
    res = check_flow(ch, caps, probe)
    reply = next(c for c in res.checks if c.name == "reply")
    assert not reply.passed and reply.hop == "link l2 vnf2>vnf1"
    assert [c.passed for c in res.checks if c.name != "reply"] == [True, True, True]


def test_identity_ignores_ttl_and_checksum_but_not_the_id() -> None:
    p = icmp_probe()
    assert identity(bytes(p)) == identity(lowered(bytes(p), 3))
    q = p.copy()
    q.id = 778
    assert identity(bytes(p)) != identity(bytes(q))
    t = IP(src="10.77.0.1", dst="10.77.0.2", id=1) / TCP(sport=1, dport=2, seq=5)
    assert 5 in identity(bytes(t))


def test_chain_rejects_links_that_do_not_join_consecutive_nodes() -> None:
    good = chain()
    with pytest.raises(ValueError, match="joins"):
        Chain(good.nodes, (good.links[1], good.links[0], good.links[2]))
    with pytest.raises(ValueError, match="needs 3 links"):
        Chain(good.nodes, good.links[:2])


def test_tcp_replies_syn_ack_rst_ack_and_bare_rst() -> None:
    from tunlab.verdict.checks import reply_matcher

    syn = IP(src="10.77.0.1", dst="10.77.0.2") / TCP(sport=4000, dport=80, flags="S", seq=100)
    data = IP(src="10.77.0.1", dst="10.77.0.2") / TCP(sport=4000, dport=80, flags="PA", seq=100, ack=7) / b"abc"
    back = IP(src="10.77.0.2", dst="10.77.0.1")
    assert reply_matcher(bytes(syn))(bytes(back / TCP(sport=80, dport=4000, flags="SA", ack=101)))
    assert reply_matcher(bytes(syn))(bytes(back / TCP(sport=80, dport=4000, flags="RA", ack=101)))
    assert not reply_matcher(bytes(syn))(bytes(back / TCP(sport=80, dport=4000, flags="RA", ack=100)))
    assert reply_matcher(bytes(data))(bytes(back / TCP(sport=80, dport=4000, flags="R", seq=7)))
    assert reply_matcher(bytes(data))(bytes(back / TCP(sport=80, dport=4000, flags="A", ack=103)))
    assert not reply_matcher(bytes(data))(bytes(back / TCP(sport=80, dport=4000, flags="R", seq=8)))
    assert not reply_matcher(bytes(data))(bytes(back / TCP(sport=81, dport=4000, flags="R", seq=7)))
