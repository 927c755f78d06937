"""Check time vs probe count: the per-hop verdict of N probes on a 3-VNF chain, from simulated captures.

    .venv/bin/python bench/check_bench.py                  # 10, 100, 1000 probes (no root needed)
    .venv/bin/python bench/check_bench.py --sizes 10,200 --transport tcp

Each probe is a ping with its echo reply, walked through sender - vnf1 - vnf2 - vnf3 - receiver as the
capture points of a real run see it (TUN out/in of every kernel VNF, every link encapsulated in UDP or in the
relay's TCP framing): 24 captured packets per probe. "check" is ``check_flow`` for every probe plus
``check_links``; the reference in the same run is "decode" alone (every link's frames cut into inner
packets, what any check must do at least once), so the ratio says how much the verdict adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402

from tunlab.model.flows import Expect, Probe  # noqa: E402
from tunlab.traffic.decap import Frame, RelayEnd, decode_link  # noqa: E402
from tunlab.verdict.checks import Captures, Chain, LinkInfo, check_flow, check_links, lower_ttl  # noqa: E402

NODES = ("sender", "vnf1", "vnf2", "vnf3", "receiver")


def make_chain(transport: str) -> Chain:
    links = tuple(LinkInfo(f"{a}-{b}", RelayEnd(a, f"10.0.{i}.1", 55555), RelayEnd(b, f"10.0.{i}.2", 55555), transport)
                  for i, (a, b) in enumerate(zip(NODES, NODES[1:])))
    return Chain(NODES, links, frozenset(NODES[1:-1]), ("172.16.0.0/16",))


def simulate(chain: Chain, n: int) -> tuple[list[Probe], Captures]:
    frames: dict[str, list[Frame]] = {}
    seqs: dict[tuple[str, str], int] = {}
    ts = 1000.0
    probes = []
    packets = []
    for k in range(n):
        req = bytes(IP(src="172.16.0.1", dst="172.16.0.2", id=(1000 + k) & 0xFFFF) / ICMP(id=9, seq=k + 1)
                    / f"tunlab bench {k} ".encode())
        rep = bytes(IP(src="172.16.0.2", dst="172.16.0.1", id=(5000 + k) & 0xFFFF)
                    / ICMP(type=0, id=9, seq=k + 1) / f"tunlab bench {k} ".encode())
        probes.append(Probe(f"ping #{k + 1}", req, Expect(reply=True)))
        packets += [(req, False), (rep, True)]
    for pkt, reverse in packets:
        for step in chain.steps(reverse=reverse):
            ts += 0.00001
            cur = lower_ttl(pkt, step.ttl_dec)
            if step.direction != "link":
                frames.setdefault(step.point, []).append(Frame(ts, cur, step.direction == "out"))
                continue
            link = next(lk for lk in chain.links if chain.link_point(lk) == step.point)
            src, dst = (link.a, link.b) if step.src_node == link.a.node else (link.b, link.a)
            if chain.links[0].transport == "udp":
                outer = IP(src=src.ip, dst=dst.ip) / UDP(sport=src.port, dport=dst.port) / cur
            else:
                seq = seqs.get((src.ip, dst.ip), 1000)
                framed = len(cur).to_bytes(2, "big") + cur
                seqs[(src.ip, dst.ip)] = seq + len(framed)
                outer = IP(src=src.ip, dst=dst.ip) / TCP(sport=src.port, dport=dst.port, seq=seq, flags="PA") / framed
            frames.setdefault(step.point, []).append(Frame(ts, bytes(outer)))
    return probes, Captures(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--transport", default="udp", choices=("udp", "tcp"))
    args = ap.parse_args()
    chain = make_chain(args.transport)
    print(f"{'probes':>7} {'packets':>8} {'decode s':>9} {'check s':>8} {'ms/probe':>9} {'check/decode':>13}  verdict")
    for n in (int(x) for x in args.sizes.split(",")):
        probes, caps = simulate(chain, n)
        packets = sum(len(v) for v in caps.frames.values())
        t0 = time.perf_counter()
        for link in chain.links:
            decode_link(caps.frames.get(chain.link_point(link), []), link.a, link.b, link.transport, chain.overlay)
        decode = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = [check_flow(chain, caps, p) for p in probes]
        check_links(chain, caps)
        check = time.perf_counter() - t1
        verdict = "all pass" if all(r.passed for r in results) else \
            f"{sum(not r.passed for r in results)} FAIL"
        print(f"{n:>7} {packets:>8} {decode:>9.3f} {check:>8.3f} {1000 * check / n:>9.2f} "
              f"{check / decode if decode else 0:>13.1f}  {verdict}")


if __name__ == "__main__":
    main()
