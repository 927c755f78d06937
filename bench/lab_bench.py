"""Lab bring-up and teardown times: tunlab's netns and Mininet backends vs Mininet building a line, one run.

    sudo .venv/bin/python bench/lab_bench.py                 # chains of 3, 10, 50, 100 VNFs
    sudo .venv/bin/python bench/lab_bench.py --sizes 3,10 --repeat 3 --spawn fork,exec

tunlab: ``linear_chain(N)`` (N VNFs + sender + receiver = N+2 namespaces, N+1 veth links, N+2 relays);
"up" is until every relay has written its readiness line, "down" is the full ledger replay.
Mininet (Debian's 2.3): a line of the same number of hosts, each on its own Linux bridge (LinearTopo
shape, bridges chained), no controller, built with the project's shared-machine classes (QuietMininet,
LabHost, NsBridge: the bridges live in namespaces, nothing lands in the root namespace); "up" is
build + start, "down" is stop. Names carry a random prefix so concurrent runs never collide; `mn -c` is
never used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tunlab.lab.lab import Lab  # noqa: E402
from tunlab.model.topology import linear_chain  # noqa: E402
from tunlab.model.names import new_run_id  # noqa: E402


def bench_tunlab(n_vnfs: int, spawn: str, backend: str = "netns") -> dict[str, Any]:
    """Bring linear_chain(N) up on ``backend`` ("up" lasts until every relay is ready and TCP peers are
    connected) and down again (the whole ledger replay)."""
    os.environ["TUNLAB_RELAY_SPAWN"] = spawn
    t0 = time.perf_counter()
    lab = Lab(linear_chain(n_vnfs), backend=backend).__enter__()
    up = time.perf_counter() - t0
    phases = dict(lab.timings)
    t1 = time.perf_counter()
    lab.close()
    down = time.perf_counter() - t1
    if lab.teardown_errors:
        raise RuntimeError(f"teardown problems: {lab.teardown_errors}")
    return {"up": up, "down": down, "phases": phases}


def bench_mininet(n_hosts: int) -> dict[str, Any]:
    from tunlab.lab.backends.mininet.support import import_mininet

    import_mininet()
    from mininet.log import setLogLevel

    from tunlab.lab.backends.mininet.nodes import LabHost, NsBridge, QuietMininet

    setLogLevel("error")
    tag = "m" + new_run_id()
    t0 = time.perf_counter()
    net = QuietMininet(topo=None, controller=None, switch=NsBridge, host=LabHost, build=False,
                       autoSetMacs=False, waitConnected=False)
    try:
        prev = None
        for i in range(1, n_hosts + 1):
            h = net.addHost(f"{tag}h{i}")
            s = net.addSwitch(f"{tag}s{i}")
            net.addLink(h, s)
            if prev is not None:
                net.addLink(prev, s)
            prev = s
        net.build()
        net.start()
        up = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        net.stop()
        down = time.perf_counter() - t1
    return {"up": up, "down": down}


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3,10,50,100", help="numbers of VNFs (comma-separated)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (medians are shown)")
    ap.add_argument("--spawn", default="fork", help="relay start: fork, exec or fork,exec")
    ap.add_argument("--no-mininet", action="store_true",
                    help="skip the Mininet reference and tunlab's Mininet backend")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("lab_bench: needs root (run it with sudo)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    spawns = [s for s in args.spawn.split(",") if s]
    print(f"# lab bring-up/teardown, {os.cpu_count()} CPUs, median of {args.repeat}; seconds")
    head = ["VNFs", "nodes"] + [f"tunlab[{s}] up" for s in spawns] + [f"tunlab[{s}] down" for s in spawns]
    head += ["phases (nodes/links/configure/relays/connect)"]
    if not args.no_mininet:
        head += ["tunlab[mininet backend] up", "down", "mininet line up", "mininet line down"]
    print(" | ".join(head))
    for n in sizes:
        row: list[str] = [str(n), str(n + 2)]
        results = {s: [bench_tunlab(n, s) for _ in range(args.repeat)] for s in spawns}
        row += [f"{median(results[s], 'up'):.2f}" for s in spawns]
        row += [f"{median(results[s], 'down'):.2f}" for s in spawns]
        ph = results[spawns[0]][0]["phases"]
        row.append("/".join(f"{ph.get(k, 0):.2f}" for k in ("nodes", "links", "configure", "relays", "connect")))
        if not args.no_mininet:
            tm = [bench_tunlab(n, spawns[0], "mininet") for _ in range(args.repeat)]
            row += [f"{median(tm, 'up'):.2f}", f"{median(tm, 'down'):.2f}"]
            mn = [bench_mininet(n + 2) for _ in range(args.repeat)]
            row += [f"{median(mn, 'up'):.2f}", f"{median(mn, 'down'):.2f}"]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
