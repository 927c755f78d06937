#!/usr/bin/env python3
"""NSH chain benchmark (issue 18): iperf3 TCP throughput and ping RTT through A - V1 - V2 - B, two kernel VNFs,
in one run, in three modes of the same relays:

- ``nsh``: ``--nsh`` (VXLAN-GPE + NSH on every link; A classifies, V1/V2 run the NSH proxy in front of their
  kernels, B strips; the reverse path likewise), the simple per-packet datapath underneath;
- ``plain-simple``: bare inner packets, ``--datapath simple`` (the same per-packet loop without NSH);
- ``plain-auto``: bare inner packets, the default datapath (batched, GSO/GRO between tunlab relays).

    sudo .venv/bin/python bench/nsh_bench.py [--seconds 5] [--pings 20] [--rounds 1]

Namespaces are t2r<hex>*, removed at the end. The machine is shared and loaded: compare ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "netns"))

from relay_helpers import NetLab, nsexec  # noqa: E402

A, V1, V2, B = "10.70.0.1", "10.70.0.254", "10.70.0.253", "10.70.0.2"
NODES = ("a", "v1", "v2", "b")
PEERS = {"a": [("v1", "10.1.0.2")], "v1": [("a", "10.1.0.1"), ("v2", "10.2.0.2")],
         "v2": [("v1", "10.2.0.1"), ("b", "10.3.0.2")], "b": [("v2", "10.3.0.1")]}
ADDRS = {"a": A, "v1": V1, "v2": V2, "b": B}
TABLES = {
    "a": {"classifier": [{"spi": 10, "src": f"{A}/32", "dst": f"{B}/32"}],
          "forward": [{"spi": 10, "si": 255, "to": "v1"}, {"spi": 11, "si": 253, "to": "end"}]},
    "v1": {"forward": [{"spi": 10, "si": 255, "to": "sf"}, {"spi": 10, "si": 254, "to": "v2"},
                       {"spi": 11, "si": 254, "to": "sf"}, {"spi": 11, "si": 253, "to": "a"}]},
    "v2": {"forward": [{"spi": 10, "si": 254, "to": "sf"}, {"spi": 10, "si": 253, "to": "b"},
                       {"spi": 11, "si": 255, "to": "sf"}, {"spi": 11, "si": 254, "to": "v1"}]},
    "b": {"classifier": [{"spi": 11, "src": f"{B}/32", "dst": f"{A}/32"}],
          "forward": [{"spi": 10, "si": 253, "to": "end"}, {"spi": 11, "si": 255, "to": "v2"}]},
}


def chain(lab: NetLab, mode: str) -> dict[str, str]:
    ns = {n: lab.ns(n + mode[:1] + mode[-1]) for n in NODES}
    lab.veth(ns["a"], ns["v1"], ["10.1.0.1/24"], ["10.1.0.2/24"], tag=mode[:1] + mode[-1] + "x")
    lab.veth(ns["v1"], ns["v2"], ["10.2.0.1/24"], ["10.2.0.2/24"], tag=mode[:1] + mode[-1] + "y")
    lab.veth(ns["v2"], ns["b"], ["10.3.0.1/24"], ["10.3.0.2/24"], tag=mode[:1] + mode[-1] + "z")
    for n in NODES:
        args = ["--dev", lab.ifname("t"), "--addr", f"{ADDRS[n]}/24", "--mtu", "1400", "--listen", "0.0.0.0:4790"]
        for name, ip in PEERS[n]:
            args += ["--peer", f"{name}={ip}:4790"]
        if mode == "nsh":
            f = lab.tmp / f"{n}.nsh.json"
            f.write_text(json.dumps(TABLES[n]))
            args += ["--nsh", str(f), "--route", f"default={PEERS[n][0][0]}"]
        else:
            if len(PEERS[n]) == 2:
                args += ["--route", f"{A}/32={PEERS[n][0][0]}", "--route", f"default={PEERS[n][1][0]}"]
            args += ["--datapath", "simple" if mode == "plain-simple" else "auto"]
        lab.relay(ns[n], n + mode[:1] + mode[-1], *args)
    return ns


def measure(lab: NetLab, ns: dict[str, str], seconds: float, pings: int) -> tuple[float, float]:
    nsexec(ns["a"], "ping", "-c", "3", "-i", "0.1", "-w", "10", B)  # the chain carries traffic
    out = nsexec(ns["a"], "ping", "-c", str(pings), "-i", "0.05", "-w", "30", B).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+)", out)]
    server = lab.spawn(ns["b"], "iperf3", "-s", "-1", "-B", B, "--forceflush", stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert server.stdout is not None
    server.stdout.readline()  # "Server listening on 5201": ready
    res = nsexec(ns["a"], "iperf3", "-c", B, "-t", str(seconds), "-J", timeout=seconds + 30)
    server.wait(10)
    gbit = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    return gbit, statistics.median(rtts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run still removes its namespaces
    lab = NetLab()
    try:
        chains = {mode: chain(lab, mode) for mode in ("nsh", "plain-simple", "plain-auto")}
        for _ in range(args.rounds):
            for mode, ns in chains.items():
                results.setdefault(mode, []).append(measure(lab, ns, args.seconds, args.pings))
    finally:
        lab.cleanup()
    ref = statistics.median(g for g, _ in results["plain-simple"])
    print(f"chain A-V1-V2-B, two kernel VNFs, iperf3 TCP {args.seconds:g} s x {args.rounds}, medians "
          "(shared, loaded machine: compare ratios)")
    for mode, rows in results.items():
        g = statistics.median(r[0] for r in rows)
        rtt = statistics.median(r[1] for r in rows)
        print(f"  {mode:13s} {g:6.3f} Gbit/s  ({g / ref:4.2f} x plain-simple)  ping RTT {rtt:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
