#!/usr/bin/env python3
"""Relay throughput benchmark (issues 8, 20): every path measured in one run, ratios printed against the goals.

Two namespaces joined by a veth: bare veth, kernel VXLAN, socat TUN<->UDP, tunlab plain, tunlab gso
(iperf3 TCP Gbit/s, ping RTT; RSS and CPU seconds per GB for the tunlab relays). Then a chain of
three VNF namespaces between a source and a sink: tunlab gso hops vs kernel VXLAN hops.

The tunlab relays run the compiled datapath where it is built (``gso``, ``plain``, ``chain_gso``) and the
Python one with ``TUNLAB_DATAPATH_IMPL=python`` (``gso_py``, ``plain_py``, ``chain_gso_py``); a table puts
compiled, Python and VXLAN side by side. The machine is shared: compare figures within one run.

Run as root from the repository: ``sudo .venv/bin/python bench/throughput_bench.py [--seconds 5]``.
Everything it creates carries a random prefix and is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
PORT = 47000
GOALS = {"gso_vs_vxlan": 0.40, "plain_vs_socat": 2.0, "ping_over_vxlan_ms": 0.2, "chain_vs_vxlan": 0.25}
#: issue 20's goals for the compiled datapath
GOALS_C = {"gso_vs_vxlan": 0.50, "chain_vs_vxlan": 0.30, "ping_over_vxlan_ms": 0.2, "chain_ping_over_vxlan_ms": 0.6,
           "cpu_vs_python": 0.5}
PYTHON_IMPL = {"TUNLAB_DATAPATH_IMPL": "python"}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def nsx(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class Lab:
    """Namespaces and processes created by this run, removed in reverse order."""

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        self.namespaces.append(name)
        sh("ip", "netns", "add", name)
        nsx(name, "ip", "link", "set", "lo", "up")
        for key, val in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
                         ("net.ipv4.conf.default.rp_filter", "0"), ("net.ipv4.conf.all.send_redirects", "0"),
                         ("net.ipv4.conf.default.send_redirects", "0"), ("net.ipv6.conf.all.disable_ipv6", "1"),
                         ("net.ipv6.conf.default.disable_ipv6", "1")):
            nsx(name, "sysctl", "-qw", f"{key}={val}")
        return name

    def veth(self, a: str, ip_a: str, b: str, ip_b: str, tag: str) -> tuple[str, str]:
        ia, ib = f"{self.prefix}{tag}a", f"{self.prefix}{tag}b"
        sh("ip", "link", "add", ia, "netns", a, "type", "veth", "peer", "name", ib, "netns", b)
        for ns, dev, ip in ((a, ia, ip_a), (b, ib, ip_b)):
            nsx(ns, "ip", "addr", "add", ip, "dev", dev)
            nsx(ns, "ip", "link", "set", dev, "up")
        return ia, ib

    def popen(self, ns: str, argv: list[str], extra_env: dict[str, str] | None = None,
              **kw: object) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO), **(extra_env or {}))
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def stop_procs(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def close(self) -> None:
        self.stop_procs()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


@contextmanager
def lab() -> Iterator[Lab]:
    lb = Lab(prefix="tb" + secrets.token_hex(2))
    try:
        yield lb
    finally:
        lb.close()


def wait_for(pred: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------------
# measurements


def reachable(ns: str, dst: str) -> bool:
    return nsx(ns, "ping", "-q", "-c", "1", "-W", "0.5", dst, check=False).returncode == 0


def ping_ms(ns: str, dst: str, count: int = 50) -> tuple[float, float]:
    """(average, median) RTT in ms: on this shared machine a few replies wait milliseconds for a CPU (other
    jobs), which moves the average far more than the median."""
    out = nsx(ns, "ping", "-c", str(count), "-i", "0.02", "-W", "1", dst, check=False).stdout
    times = [float(w.split("=")[1]) for line in out.splitlines() for w in line.split() if w.startswith("time=")]
    if not times:
        return float("nan"), float("nan")
    return statistics.fmean(times), statistics.median(times)


def iperf(lb: Lab, client_ns: str, server_ns: str, dst: str, seconds: float) -> dict[str, float]:
    srv = lb.popen(server_ns, ["iperf3", "-s", "-1", "-B", dst, "-p", "5301"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wait_for(lambda: f"{dst}:5301" in nsx(server_ns, "ss", "-ltn").stdout, "iperf3 server")
    out = nsx(client_ns, "iperf3", "-c", dst, "-p", "5301", "-t", str(seconds), "-J", check=False).stdout
    with suppress(subprocess.TimeoutExpired):
        srv.wait(timeout=5)
    try:
        end = json.loads(out)["end"]
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9, "bytes": end["sum_received"]["bytes"],
                "retrans": end["sum_sent"].get("retransmits", 0)}
    except (ValueError, KeyError):
        return {"gbps": float("nan"), "bytes": 0.0, "retrans": float("nan")}


def proc_cpu(pid: int) -> float:
    """utime+stime in seconds of a process and its threads (children excluded)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def leaf_pid(p: subprocess.Popen[bytes]) -> int:
    """The pid that runs the relay (``ip netns exec`` execs it, so it is the Popen's pid)."""
    return p.pid


# ------------------------------------------------------------------------------------------------
# paths


def pair(lb: Lab) -> tuple[str, str, str, str]:
    a, b = lb.ns("a"), lb.ns("b")
    ia, ib = lb.veth(a, "10.241.0.1/24", b, "10.241.0.2/24", "u")
    return a, b, ia, ib


def start_fast(lb: Lab, ns: str, dev: str, addr: str, listen: str, peers: list[str], routes: list[str],
               datapath: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    r, w = os.pipe()
    argv = [PY, "-m", "tunlab", "relay", "--dev", dev, "--addr", addr, *(("--listen", listen) if listen else ()),
            "--datapath", datapath, "--ready-fd", str(w), *extra]
    for p in peers:
        argv += ["--peer", p]
    for rt in routes:
        argv += ["--route", rt]
    proc = lb.popen(ns, argv, env, pass_fds=(w,), stderr=subprocess.DEVNULL)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 15)
    line = os.read(r, 4096) if ready else b""
    os.close(r)
    if not line:
        raise RuntimeError(f"relay in {ns} did not become ready")
    info = json.loads(line).get("datapath") or {}
    want = "python" if env else None
    if want and info.get("impl") != want:
        raise RuntimeError(f"relay in {ns}: impl {info.get('impl')}, wanted {want}")
    IMPLS.add(f"{info.get('impl')}" + (f" ({info['impl_reason']})" if info.get("impl_reason") else ""))
    return proc


#: the implementations the relays of this run said they run (ready line)
IMPLS: set[str] = set()


def setup_vxlan(lb: Lab) -> tuple[str, str, str, list[int]]:
    a, b, ia, ib = pair(lb)
    for ns, dev, local, remote, ov in ((a, ia, "10.241.0.1", "10.241.0.2", "10.242.0.1/24"),
                                       (b, ib, "10.241.0.2", "10.241.0.1", "10.242.0.2/24")):
        nsx(ns, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local, "remote", remote,
            "dstport", "4789", "dev", dev)
        nsx(ns, "ip", "addr", "add", ov, "dev", "vx0")
        nsx(ns, "ip", "link", "set", "vx0", "up")
    return a, b, "10.242.0.2", []


def setup_veth(lb: Lab) -> tuple[str, str, str, list[int]]:
    a, b, _, _ = pair(lb)
    return a, b, "10.241.0.2", []


def setup_socat(lb: Lab) -> tuple[str, str, str, list[int]]:
    a, b, _, _ = pair(lb)
    pids = []
    dev = f"{lb.prefix}t"
    for ns, me, other, ov in ((a, "10.241.0.1", "10.241.0.2", "10.242.0.1/24"),
                              (b, "10.241.0.2", "10.241.0.1", "10.242.0.2/24")):
        p = lb.popen(ns, ["socat", f"UDP-DATAGRAM:{other}:{PORT},bind={me}:{PORT}",
                          f"TUN:{ov},tun-type=tun,iff-no-pi,iff-up,tun-name={dev}"], stderr=subprocess.DEVNULL)
        pids.append(p.pid)
        wait_for(lambda ns=ns: "UP" in nsx(ns, "ip", "link", "show", dev, check=False).stdout, "socat TUN")
        nsx(ns, "ip", "link", "set", dev, "mtu", "1472")
    return a, b, "10.242.0.2", pids


def setup_interop(lb: Lab) -> tuple[str, str, str, list[int]]:
    """tunlab (auto: it finds socat does not answer and stays plain) in a, socat in b."""
    a, b, _, _ = pair(lb)
    dev = f"{lb.prefix}t"
    p = lb.popen(b, ["socat", f"UDP-DATAGRAM:10.241.0.1:{PORT},bind=10.241.0.2:{PORT}",
                     f"TUN:10.242.0.2/24,tun-type=tun,iff-no-pi,iff-up,tun-name={dev}"], stderr=subprocess.DEVNULL)
    wait_for(lambda: "UP" in nsx(b, "ip", "link", "show", dev, check=False).stdout, "socat TUN")
    nsx(b, "ip", "link", "set", dev, "mtu", "1472")
    pa = start_fast(lb, a, dev, "10.242.0.1/24", f"10.241.0.1:{PORT}", [f"s=10.241.0.2:{PORT}"], [], "auto")
    return a, b, "10.242.0.2", [pa.pid, p.pid]


def setup_tunlab(lb: Lab, datapath: str, env: dict[str, str] | None = None) -> tuple[str, str, str, list[int]]:
    a, b, _, _ = pair(lb)
    dev = f"{lb.prefix}t"
    pa = start_fast(lb, a, dev, "10.242.0.1/24", f"10.241.0.1:{PORT}", [f"b=10.241.0.2:{PORT}"], [], datapath, env)
    pb = start_fast(lb, b, dev, "10.242.0.2/24", f"10.241.0.2:{PORT}", [f"a=10.241.0.1:{PORT}"], [], datapath, env)
    if datapath != "plain":  # the first relay started before its peer: let the hello exchange finish
        wait_for(lambda: reachable(a, "10.242.0.2"), "overlay ping")
    return a, b, "10.242.0.2", [pa.pid, pb.pid]


def measure_pair(name: str, setup: object, seconds: float) -> dict[str, float]:
    with lab() as lb:
        a, b, dst, pids = setup(lb)  # type: ignore[operator]
        wait_for(lambda: reachable(a, dst), f"{name}: first ping", 10)
        rtt, rtt_median = ping_ms(a, dst)
        cpu0 = sum(proc_cpu(p) for p in pids)
        res = iperf(lb, a, b, dst, seconds)
        cpu = sum(proc_cpu(p) for p in pids) - cpu0
        res["ping_ms"] = rtt
        res["ping_median_ms"] = rtt_median
        if pids:
            res["cpu_s_per_gb"] = cpu / (res["bytes"] / 1e9) if res["bytes"] else float("nan")
            res["rss_mb"] = max(proc_rss_mb(p) for p in pids)
        return res


# ------------------------------------------------------------------------------------------------
# three-VNF chain: src - v1 - v2 - v3 - dst, one underlay veth per hop


def chain_nodes(lb: Lab) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Namespaces s, v1, v2, v3, d and, per hop, (left ip, right ip, left veth, right veth)."""
    nodes = [lb.ns(s) for s in ("s", "v1", "v2", "v3", "d")]
    under = []
    for hop in range(1, 5):
        left, right = f"10.250.{hop}.1", f"10.250.{hop}.2"
        ia, ib = lb.veth(nodes[hop - 1], left + "/24", nodes[hop], right + "/24", f"h{hop}")
        under.append((left, right, ia, ib))
    return nodes, under


def setup_chain_vxlan(lb: Lab) -> tuple[str, str, str, list[int]]:
    nodes, under = chain_nodes(lb)
    for hop in range(1, 5):
        left, right, ia, ib = under[hop - 1]
        for k, local, remote, lower, ov in ((hop - 1, left, right, ia, f"10.251.{hop}.1/24"),
                                            (hop, right, left, ib, f"10.251.{hop}.2/24")):
            dev = f"vx{hop}"
            nsx(nodes[k], "ip", "link", "add", dev, "type", "vxlan", "id", str(100 + hop), "local", local,
                "remote", remote, "dstport", "4789", "dev", lower)
            nsx(nodes[k], "ip", "addr", "add", ov, "dev", dev)
            nsx(nodes[k], "ip", "link", "set", dev, "up")
    for k in range(5):
        if k < 3:  # toward the sink's subnet, through the next hop
            nsx(nodes[k], "ip", "route", "add", "10.251.4.0/24", "via", f"10.251.{k + 1}.2")
        if k >= 2:  # back toward the source's subnet, through the previous hop
            nsx(nodes[k], "ip", "route", "add", "10.251.1.0/24", "via", f"10.251.{k}.1")
    return nodes[0], nodes[4], "10.251.4.2", []


def setup_tunlab_tcp(lb: Lab, env: dict[str, str] | None = None) -> tuple[str, str, str, list[int]]:
    """A relay pair over TCP (TunConnector's framing): b listens and accepts a, a connects."""
    a, b, _, _ = pair(lb)
    dev = f"{lb.prefix}t"
    pb = start_fast(lb, b, dev, "10.242.0.2/24", f"10.241.0.2:{PORT}", [], [], "auto", env,
                    ("--transport", "tcp", "--accept", "a=10.241.0.1"))
    pa = start_fast(lb, a, dev, "10.242.0.1/24", "", [f"b=10.241.0.2:{PORT}"], [], "auto", env, ("--transport", "tcp"))
    wait_for(lambda: reachable(a, "10.242.0.2"), "overlay ping")
    return a, b, "10.242.0.2", [pa.pid, pb.pid]


def setup_chain_tunlab(lb: Lab, env: dict[str, str] | None = None) -> tuple[str, str, str, list[int]]:
    nodes, under = chain_nodes(lb)
    dev = f"{lb.prefix}t"
    pids = []
    for k in range(5):
        peers, routes = [], []
        if k > 0:
            peers.append(f"l={under[k - 1][0]}:{PORT}")
            routes += [f"10.252.0.{j + 1}/32=l" for j in range(k)]
        if k < 4:
            peers.append(f"r={under[k][1]}:{PORT}")
            routes.append("default=r")
        else:
            routes.append("default=l")
        p = start_fast(lb, nodes[k], dev, f"10.252.0.{k + 1}/24", f"0.0.0.0:{PORT}", peers, routes, "auto", env)
        pids.append(p.pid)
    return nodes[0], nodes[4], "10.252.0.5", pids


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", help="comma-separated subset: veth,vxlan,socat,plain,plain_py,gso,gso_py,plain_socat,"
                                   "chain_vxlan,chain_gso,chain_gso_py,tcp,tcp_py")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every path N times, interleaved, and report medians (the box is shared: noisy)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("throughput_bench: needs root (it creates namespaces): run it with sudo", file=sys.stderr)
        return 1
    for tool in ("iperf3", "socat", "ip", "ping"):
        if not shutil.which(tool):
            print(f"throughput_bench: {tool} is not installed", file=sys.stderr)
            return 1
    cases = {
        "veth": setup_veth, "vxlan": setup_vxlan, "socat": setup_socat,
        "plain": lambda lb: setup_tunlab(lb, "plain"), "plain_py": lambda lb: setup_tunlab(lb, "plain", PYTHON_IMPL),
        "gso": lambda lb: setup_tunlab(lb, "auto"), "gso_py": lambda lb: setup_tunlab(lb, "auto", PYTHON_IMPL),
        "plain_socat": setup_interop,
        "chain_vxlan": setup_chain_vxlan, "chain_gso": setup_chain_tunlab,
        "chain_gso_py": lambda lb: setup_chain_tunlab(lb, PYTHON_IMPL),
        "tcp": setup_tunlab_tcp, "tcp_py": lambda lb: setup_tunlab_tcp(lb, PYTHON_IMPL),
    }
    wanted = args.only.split(",") if args.only else list(cases)
    unknown = [w for w in wanted if w not in cases]
    if unknown:
        print(f"throughput_bench: --only: unknown {', '.join(unknown)} (known: {', '.join(cases)})", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in wanted}
    for rnd in range(max(1, args.repeat)):
        if args.repeat > 1:
            print(f"-- round {rnd + 1}/{args.repeat}", flush=True)
        for name in wanted:
            r = measure_pair(name, cases[name], args.seconds)
            runs[name].append(r)
            show(name, r)
    results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds")
        for name, r in results.items():
            show(name, r)
    print()
    print("The machine is shared (2 vCPUs, other agents' jobs running): figures are under load; compare within "
          "this run.")
    print(f"relay implementations: {', '.join(sorted(IMPLS)) or '-'}")
    print_side_by_side(results)
    print()
    print_ratios(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": results, "runs": runs}, indent=1))
    return 0


def show(name: str, r: dict[str, float]) -> None:
    extra = f"  cpu {r['cpu_s_per_gb']:.2f} s/GB  rss {r['rss_mb']:.1f} MB" if "rss_mb" in r else ""
    print(f"{name:12s} {r['gbps']:6.2f} Gbit/s  ping {r['ping_ms']:.3f} ms (median {r['ping_median_ms']:.3f})  "
          f"retrans {r['retrans']:.0f}{extra}",
          flush=True)


def print_side_by_side(r: dict[str, dict[str, float]]) -> None:
    """Compiled, Python and VXLAN in one table (issue 20)."""
    def cell(name: str, key: str, fmt: str) -> str:
        v = r.get(name, {}).get(key)
        return format(v, fmt) if v is not None else "-"

    print(f"\n{'':26s} {'compiled':>10s} {'python':>10s} {'vxlan':>10s}")
    rows = [("relay pair TCP Gbit/s", ("gso", "gso_py", "vxlan"), "gbps", ".2f"),
            ("relay pair ping ms", ("gso", "gso_py", "vxlan"), "ping_ms", ".3f"),
            ("relay pair ping median ms", ("gso", "gso_py", "vxlan"), "ping_median_ms", ".3f"),
            ("relay pair CPU s/GB", ("gso", "gso_py", ""), "cpu_s_per_gb", ".2f"),
            ("plain pair TCP Gbit/s", ("plain", "plain_py", ""), "gbps", ".2f"),
            ("plain pair CPU s/GB", ("plain", "plain_py", ""), "cpu_s_per_gb", ".2f"),
            ("TCP-framed pair Gbit/s", ("tcp", "tcp_py", ""), "gbps", ".2f"),
            ("TCP-framed pair CPU s/GB", ("tcp", "tcp_py", ""), "cpu_s_per_gb", ".2f"),
            ("3-VNF chain TCP Gbit/s", ("chain_gso", "chain_gso_py", "chain_vxlan"), "gbps", ".2f"),
            ("3-VNF chain ping ms", ("chain_gso", "chain_gso_py", "chain_vxlan"), "ping_ms", ".3f"),
            ("3-VNF chain ping median", ("chain_gso", "chain_gso_py", "chain_vxlan"), "ping_median_ms", ".3f"),
            ("3-VNF chain CPU s/GB", ("chain_gso", "chain_gso_py", ""), "cpu_s_per_gb", ".2f")]
    for label, names, key, fmt in rows:
        if not any(n in r for n in names if n):
            continue
        print(f"{label:26s} " + " ".join(f"{cell(n, key, fmt):>10s}" for n in names))


def print_ratios(r: dict[str, dict[str, float]]) -> None:
    def ratio(a: str, b: str) -> float | None:
        if a in r and b in r and r[b]["gbps"] > 0:
            return r[a]["gbps"] / r[b]["gbps"]
        return None

    rows = [("plain / socat", ratio("plain", "socat"), GOALS["plain_vs_socat"], ">=")]
    for mode in ("plain", "gso_py"):
        if mode in r and "vxlan" in r:
            rows.append((f"ping {mode} - vxlan (ms)", r[mode]["ping_ms"] - r["vxlan"]["ping_ms"],
                         GOALS["ping_over_vxlan_ms"], "<="))

    def diff(a: str, b: str, key: str) -> float | None:
        return r[a][key] - r[b][key] if a in r and b in r else None

    def cpu(a: str, b: str) -> float | None:
        if a in r and b in r and r[b].get("cpu_s_per_gb"):
            return r[a]["cpu_s_per_gb"] / r[b]["cpu_s_per_gb"]
        return None

    rows += [("C: gso / vxlan", ratio("gso", "vxlan"), GOALS_C["gso_vs_vxlan"], ">="),
             ("C: chain / chain vxlan", ratio("chain_gso", "chain_vxlan"), GOALS_C["chain_vs_vxlan"], ">="),
             ("C: ping pair - vxlan (ms)", diff("gso", "vxlan", "ping_ms"), GOALS_C["ping_over_vxlan_ms"], "<="),
             ("C: same, medians (ms)", diff("gso", "vxlan", "ping_median_ms"), GOALS_C["ping_over_vxlan_ms"], "<="),
             ("C: ping chain - vxlan (ms)", diff("chain_gso", "chain_vxlan", "ping_ms"),
              GOALS_C["chain_ping_over_vxlan_ms"], "<="),
             ("C: same, medians (ms)", diff("chain_gso", "chain_vxlan", "ping_median_ms"),
              GOALS_C["chain_ping_over_vxlan_ms"], "<="),
             ("C: CPU/GB / Python's", cpu("gso", "gso_py"), GOALS_C["cpu_vs_python"], "<="),
             ("python: gso / vxlan", ratio("gso_py", "vxlan"), GOALS["gso_vs_vxlan"], ">="),
             ("python: chain / vxlan", ratio("chain_gso_py", "chain_vxlan"), GOALS["chain_vs_vxlan"], ">=")]
    for label, value, goal, op in rows:
        if value is None:
            continue
        ok = value >= goal if op == ">=" else value <= goal
        print(f"{label:26s} {value:7.3f}   goal {op} {goal}   {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
