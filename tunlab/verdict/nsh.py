"""Per-hop NSH checks (issue 18): the SPI, SI, TTL and metadata a probe (and its reply) carries on each link,
compared with what the relays' tables say it must carry (:func:`tunlab.model.nsh.walk`).

A failure names the hop and what is wrong: another SPI (wrong path), another SI (an SF before the hop took a
wrong decrement), another TTL, lost or altered metadata, a packet forwarded with SI 0, or a hop the packet
should have crossed and did not.
"""

from __future__ import annotations

from typing import Any, Sequence

from tunlab.model.nsh import HopHeader
from tunlab.verdict.checks import Captures, Chain, CheckResult, identity, reply_matcher


def _md_of(h: Any) -> dict[str, Any]:
    return h.metadata() if h.md_type == 1 else {"tlvs": h.metadata()["tlvs"]}


def _describe(md: dict[str, Any]) -> str:
    if "context" in md:
        return f"context {md['context']}"
    return "tlvs " + (", ".join(f"{t['class']:#x}/{t['type']}={t['value']}" for t in md["tlvs"]) or "none")


def check_nsh(chain: Chain, caps: Captures, probe_packet: bytes, expected: Sequence[HopHeader], outcome: str, *,
              reply: bool = False, name: str = "nsh") -> list[CheckResult]:
    """One CheckResult per expected hop (``reply``: the probe's answers on the reverse path), plus one for
    anything of the probe forwarded with SI 0."""
    want = reply_matcher(probe_packet) if reply else (lambda d, k=identity(probe_packet): identity(d) == k)
    what = "reply" if reply else "probe"
    links = {frozenset((lk.a.node, lk.b.node)): lk for lk in chain.links}
    out: list[CheckResult] = []
    zero: list[str] = []
    for lk in chain.links:
        for s in caps.sightings(chain, lk):
            if s.nsh is not None and s.inner is not None and s.nsh.si == 0 and want(s.inner):
                zero.append(f"{s.src_node}>{s.dst_node}")
    for hop in expected:
        label = f"{hop.src}>{hop.dst}"
        lk = links.get(frozenset((hop.src, hop.dst)))
        if lk is None:
            out.append(CheckResult(f"{name} {label}", False, f"NSH {what}: the tables send it over {label}, which is "
                                   "not on this chain (wrong path)", hop=label))
            continue
        seen = [s for s in caps.sightings(chain, lk) if s.nsh is not None and s.inner is not None
                and s.src_node == hop.src and s.dst_node == hop.dst and want(s.inner)]
        exp = f"SPI {hop.spi} SI {hop.si} TTL {hop.ttl}"
        if not seen:
            others = [s for s in caps.sightings(chain, lk) if s.inner is not None and want(s.inner)]
            why = "seen only without NSH" if others else "not seen"
            out.append(CheckResult(f"{name} {label}", False, f"NSH {what} at hop {label}: {why}; expected {exp}",
                                   hop=label))
            continue
        problems = []
        for s in seen:
            h = s.nsh
            if h.spi != hop.spi:
                problems.append(f"SPI {h.spi}, expected {hop.spi} (wrong path)")
            elif h.si != hop.si:
                problems.append(f"SI {h.si}, expected {hop.si} (wrong SI decrement at or before {hop.src})")
            elif h.ttl != hop.ttl:
                problems.append(f"TTL {h.ttl}, expected {hop.ttl}")
            elif hop.md is not None and _md_of(h) != hop.md:
                got = _md_of(h)
                lost = "lost" if not any(v.strip("0") if isinstance(v, str) else v for v in got.values()) else "altered"
                problems.append(f"metadata {lost}: {_describe(got)}, expected {_describe(hop.md)}")
        if problems:
            out.append(CheckResult(f"{name} {label}", False, f"NSH {what} at hop {label}: {problems[0]}", hop=label))
        else:
            md = "" if hop.md is None else f", {_describe(hop.md)}"
            out.append(CheckResult(f"{name} {label}", True, f"NSH {what} at hop {label}: {exp}{md}", hop=label))
    if zero:
        out.append(CheckResult(f"{name} si0", False, f"NSH {what} forwarded after SI reached 0 at hop {zero[0]}",
                               hop=zero[0]))
    if not expected:
        out.append(CheckResult(f"{name} path", False, f"NSH {what}: the relays' tables give it no hop ({outcome})"))
    return out
