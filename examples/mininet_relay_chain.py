#!/usr/bin/env python3
"""Add a chain of tunlab relays to an ordinary Mininet network.

    sudo .venv/bin/python examples/mininet_relay_chain.py [--hosts 4] [--transport tcp] [--cli]

The Mininet part is plain Mininet: a Topo with hosts on one switch, no controller. Two tunlab classes make
it polite on a shared machine, and plain ``Mininet`` / ``LinuxBridge`` work the same: QuietMininet is
Mininet without its start-up ``fixLimits()`` (which rewrites machine-wide sysctls such as
net.ipv4.tcp_rmem), and NsBridge is a Linux bridge kept in a namespace of its own, so nothing of the
example lands in the root namespace. Then one call puts a relay in every host: the first and last hosts are
the chain's endpoints, the hosts between them forward the chain's packets in their own kernel (VNFs), and
each hop is a UDP (or TCP) tunnel over the Mininet network. Names carry --prefix so two runs on one
machine never share a name.
"""

from __future__ import annotations

import argparse
import re
import sys

from tunlab import TunlabError


def build_topo(prefix: str, n: int):  # type: ignore[no-untyped-def]
    from mininet.topo import Topo

    class Line(Topo):  # type: ignore[misc]
        def build(self) -> None:
            switch = self.addSwitch(f"{prefix}s1")
            for i in range(1, n + 1):
                host = self.addHost(f"{prefix}h{i}", ip=f"10.0.0.{i}/24")
                self.addLink(host, switch)

    return Line()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=3, help="hosts in the chain (>= 2)")
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--prefix", default="ex", help="prefix of every Mininet node name")
    ap.add_argument("--cli", action="store_true", help="open Mininet's CLI while the chain runs")
    args = ap.parse_args()

    from tunlab import NsBridge, add_relay_chain  # NsBridge: one line saying how to install Mininet if missing
    from tunlab import QuietMininet as Mininet

    from mininet.log import setLogLevel

    setLogLevel("warning")
    net = Mininet(topo=build_topo(args.prefix, args.hosts), switch=NsBridge, controller=None)
    net.start()
    try:
        hosts = net.hosts
        with add_relay_chain(net, hosts, transport=args.transport) as chain:
            first, last = chain.relays[0], chain.relays[-1]
            print(f"chain {chain.run_id}: " + " -> ".join(f"{r.name} ({r.overlay_ip})" for r in chain))
            out = first.host.cmd(f"ping -n -c 3 -i 0.2 -W 2 {last.overlay_ip}")
            received = re.search(r"(\d+) received", out)
            ttls = sorted(set(re.findall(r"ttl=(\d+)", out)))
            print(f"ping {first.name} -> {last.overlay_ip}: {received.group(1) if received else 0}/3 replies, "
                  f"ttl {','.join(ttls) or '-'} ({len(chain) - 2} VNF hop(s) on the way back)")
            for name, c in chain.counters().items():
                peers = ", ".join(f"{p}: rx {v['rx_packets']} tx {v['tx_packets']}" for p, v in c["peers"].items())
                print(f"  relay {name}: dev rx {c['dev']['rx_packets']} tx {c['dev']['tx_packets']}; {peers}")
            if args.cli:
                from mininet.cli import CLI

                CLI(net)
            ok = bool(received) and received.group(1) == "3"
    finally:
        net.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TunlabError as exc:
        print(f"tunlab: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
