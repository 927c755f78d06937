"""Labs across hosts (issue 19): bring-up and teardown of a 30-VNF chain on 1, 2 and 3 stand-in hosts, and the
SSH round trips they took, beside the same chain brought up locally (the netns backend) in the same run.

    sudo .venv/bin/python bench/multihost_bench.py                    # 30 VNFs, hosts 1,2,3, 2 rounds
    sudo .venv/bin/python bench/multihost_bench.py --vnfs 50 --hosts 1,3 --repeat 3

Stand-in hosts (tunlab.testing.standin): sandboxes with their own network, mount and PID namespaces on this
machine, each running sshd, reached by the system ssh with ControlMaster through a ProxyCommand; so the
figures are the cost of tunlab's protocol, ssh and the hosts' work, not of a real network. "up" is until
every relay on every host is ready and every hop (within and between hosts) connected; "down" is every
host's ledger replayed. Links between hosts are keyed (the default). Medians of --repeat rounds; the machine
is shared and loaded (2 vCPUs), so compare figures of the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tunlab.lab.lab import Lab  # noqa: E402
from tunlab.lab.multihost import MultiHostLab  # noqa: E402
from tunlab.model.hosts import cross_links, parse_inventory  # noqa: E402
from tunlab.model.topology import linear_chain  # noqa: E402
from tunlab.testing import standin  # noqa: E402


def local(n_vnfs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    lab = Lab(linear_chain(n_vnfs)).__enter__()
    up = time.perf_counter() - t0
    t1 = time.perf_counter()
    lab.close()
    return {"up": up, "down": time.perf_counter() - t1, "trips": 0, "crossing": 0}


def across(n_vnfs: int, sset: standin.StandinSet, hosts: int) -> dict[str, Any]:
    text = sset.inventory.read_text()
    keep = {f"h{i}" for i in range(1, hosts + 1)}
    inv = parse_inventory("\n".join(ln for ln in text.splitlines() if not ln.startswith("h") or ln.split()[0] in keep),
                          str(sset.inventory))
    topo = linear_chain(n_vnfs)
    t0 = time.perf_counter()
    lab = MultiHostLab(topo, inv).__enter__()
    up = time.perf_counter() - t0
    trips = lab.trips.total
    phases = dict(lab.timings)
    ping = lab.node("sender").cmd_status(["ping", "-c1", "-W5", lab.node("receiver").overlay_ip])
    t1 = time.perf_counter()
    lab.close()
    down = time.perf_counter() - t1
    if ping.returncode != 0:
        raise SystemExit(f"{hosts} host(s): the chain did not carry a ping: {ping.stdout}{ping.stderr}")
    return {"up": up, "down": down, "trips": trips, "per_host": trips / hosts,
            "crossing": len(cross_links(topo, lab.placement)), "phases": phases,
            "down_trips": lab.trips.total - trips - 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vnfs", type=int, default=30)
    ap.add_argument("--hosts", default="1,2,3")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    counts = [int(x) for x in args.hosts.split(",")]
    with tempfile.TemporaryDirectory(prefix="tunlab-mh-bench-") as d:
        t0 = time.perf_counter()
        sset = standin.up(max(counts), d)
        print(f"{max(counts)} stand-in host(s) up in {time.perf_counter() - t0:.2f} s; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        try:
            rows: list[tuple[str, list[dict[str, Any]]]] = []
            for _ in range(args.repeat):
                rows.append(("local (netns backend, no ssh)", [local(args.vnfs)]))
                for h in counts:
                    rows.append((f"{h} stand-in host(s)", [across(args.vnfs, sset, h)]))
        finally:
            problems = standin.down(sset)
            if problems:
                print("standin: " + "; ".join(problems), file=sys.stderr)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for name, rs in rows:
        grouped.setdefault(name, []).extend(rs)
    print(f"\n{args.vnfs}-VNF chain ({args.vnfs + 2} nodes), median of {args.repeat}:")
    print(f"{'where':32} {'up s':>7} {'down s':>7} {'ssh round trips (up)':>21} {'per host':>9} {'links between hosts':>20}")
    for name, rs in grouped.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("up", "down", "trips", "crossing")}
        per = statistics.median(r.get("per_host", 0) for r in rs)
        print(f"{name:32} {med['up']:7.2f} {med['down']:7.2f} {med['trips']:21.0f} {per:9.1f} {med['crossing']:20.0f}")
        if "phases" in rs[0]:
            ph = {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]}
            print(f"{'':32} phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in ph.items())
                  + f"; down: {rs[0]['down_trips']} round trip(s) in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
