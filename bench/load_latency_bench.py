#!/usr/bin/env python3
"""Ping under load through three VNFs (issue 13): how much queueing a loaded hop adds.

For the three-VNF chain of tunlab relays (``topologies/three_vnf``, a real `Lab`) and, in the same run, a
chain of three VNF namespaces joined by kernel VXLAN hops: ping RTT idle, then while iperf3 pushes a UDP
flow at ``--rate`` (default 200 Mbit/s) and then a TCP flow through the chain. Printed: ping median / mean /
90th percentile in ms, what iperf3 got across, and the relays' kernel drop counters.

Run as root from the repository: ``sudo .venv/bin/python bench/load_latency_bench.py [--seconds 6]``.
Everything it creates is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput_bench as tb  # noqa: E402  (the kernel VXLAN chain and namespace helpers)

IPERF_PORT = 5302


def ping_stats(out: str) -> dict[str, float]:
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    if not rtts:
        return {"median": float("nan"), "mean": float("nan"), "p90": float("nan"), "n": 0}
    rtts.sort()
    return {"median": statistics.median(rtts), "mean": statistics.fmean(rtts),
            "p90": rtts[min(len(rtts) - 1, int(0.9 * len(rtts)))], "n": len(rtts)}


def measure(run: Callable[[list[str]], subprocess.Popen[str]], src_run: Callable[[list[str]], subprocess.Popen[str]],
            dst: str, seconds: float, rate: str) -> dict[str, dict[str, float]]:
    """``run(argv)`` starts argv in the destination node, ``src_run(argv)`` in the source node."""
    out: dict[str, dict[str, float]] = {}
    idle = src_run(["ping", "-c", "40", "-i", "0.02", "-W", "1", dst])
    out["idle"] = ping_stats(idle.communicate(timeout=30)[0])
    for kind, extra in (("udp", ["-u", "-b", rate, "-l", "1400"]), ("tcp", [])):
        srv = run(["iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT)])
        time.sleep(0.5)  # iperf3 has no readiness signal here; a benchmark, not a test
        cli = src_run(["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra])
        time.sleep(1.0)  # let the queues fill before measuring
        n = int((seconds - 1.5) / 0.05)
        ping = src_run(["ping", "-c", str(n), "-i", "0.05", "-W", "2", dst])
        pout = ping.communicate(timeout=seconds + 30)[0]
        iout = cli.communicate(timeout=seconds + 30)[0]
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        stats = ping_stats(pout)
        try:
            end = json.loads(iout)["end"]
            got = end["sum_received"] if kind == "tcp" else end["sum"]
            stats["lost_pct"] = float(got.get("lost_percent", 0.0))
            stats["mbps"] = got["bits_per_second"] / 1e6 * (1 - stats["lost_pct"] / 100)  # what got across
        except (ValueError, KeyError):
            stats["mbps"] = float("nan")
            stats["lost_pct"] = float("nan")
        out[kind] = stats
    return out


def tunlab_chain(seconds: float, rate: str, datapath: str) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    from tunlab import Lab, load_topology
    from tunlab.model.topofile import parse_params

    topo = load_topology("three_vnf", parse_params((f"datapath={datapath}",)))
    with Lab(topo) as lab:
        def in_node(name: str) -> Callable[[list[str]], subprocess.Popen[str]]:
            node = lab.node(name)
            return lambda argv: subprocess.Popen(["nsenter", f"--net={node.netns_file}", "--", *argv],
                                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        res = measure(in_node("receiver"), in_node("sender"), lab.node("receiver").overlay_ip, seconds, rate)
        drops: dict[str, int] = {}
        for c in lab.relay_counters().values():
            for k, v in c["drops"].items():
                drops[k] = drops.get(k, 0) + v
    return res, drops


def vxlan_chain(seconds: float, rate: str) -> dict[str, dict[str, float]]:
    with tb.lab() as lb:
        src, dst_ns, dst, _ = tb.setup_chain_vxlan(lb)
        tb.wait_for(lambda: tb.reachable(src, dst), "the VXLAN chain")

        def in_ns(ns: str) -> Callable[[list[str]], subprocess.Popen[str]]:
            def start(argv: list[str]) -> subprocess.Popen[str]:
                p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
                lb.procs.append(p)  # type: ignore[arg-type]
                return p
            return start
        return measure(in_ns(dst_ns), in_ns(src), dst, seconds, rate)


def show(name: str, r: dict[str, dict[str, float]]) -> None:
    for kind in ("idle", "udp", "tcp"):
        s = r[kind]
        load = "" if kind == "idle" else f"   iperf3 {s['mbps']:7.1f} Mbit/s" + (
            f", lost {s['lost_pct']:.1f} %" if kind == "udp" else "")
        print(f"  {name:<22} {kind:<5} ping median {s['median']:7.2f}  mean {s['mean']:7.2f}  "
              f"p90 {s['p90']:7.2f} ms  (n={int(s['n'])}){load}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="load duration per flow")
    ap.add_argument("--rate", default="200M", help="UDP load rate (iperf3 -b)")
    ap.add_argument("--datapath", default="auto", help="the tunlab chain's datapath (three_vnf -p datapath=)")
    ap.add_argument("--no-vxlan", action="store_true", help="skip the kernel VXLAN reference")
    args = ap.parse_args()
    print(f"ping under load through three VNFs, {args.seconds:g} s per flow, UDP at {args.rate}bit/s")
    vx = vxlan_chain(args.seconds, args.rate) if not args.no_vxlan else {
        k: {"median": float("nan"), "mean": float("nan"), "p90": float("nan"), "n": 0, "mbps": float("nan"),
            "lost_pct": float("nan")} for k in ("idle", "udp", "tcp")}
    show("kernel VXLAN", vx)
    tl, drops = tunlab_chain(args.seconds, args.rate, args.datapath)
    show(f"tunlab {args.datapath}", tl)
    print(f"  tunlab relays' drops: {drops or 'none'}")
    for kind in ("udp", "tcp"):
        print(f"  queueing added under {kind} load (median ping, loaded - idle): tunlab "
              f"{tl[kind]['median'] - tl['idle']['median']:.2f} ms, VXLAN {vx[kind]['median'] - vx['idle']['median']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
