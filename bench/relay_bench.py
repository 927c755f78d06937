#!/usr/bin/env python3
"""Relay benchmark: iperf3 TCP throughput and ping RTT between two namespaces, in one run, through
the bare veth, kernel VXLAN, socat's TUN<->UDP-DATAGRAM, and the tunlab relay (UDP and TCP).

    sudo .venv/bin/python bench/relay_bench.py [--seconds 5] [--pings 40] [--only veth,tunlab-udp]

Everything lives in two namespaces named bnch<random>a/b (removed at the end, also on Ctrl-C).
The figures are noisy on a shared 2-core machine: compare the ratios within one run.
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
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
UNDER_A, UNDER_B = "10.201.0.1", "10.201.0.2"
PATHS = ["veth", "vxlan", "socat", "tunlab-udp", "tunlab-udp-simple", "tunlab-udp-keyed", "tunlab-udp-keyed-simple",
         "tunlab-tcp"]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def nsx(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class Bench:
    def __init__(self, seconds: float, pings: int) -> None:
        self.p = "bnch" + secrets.token_hex(2)
        self.a, self.b = self.p + "a", self.p + "b"
        self.seconds = seconds
        self.pings = pings
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- set-up and tear-down
    def setup(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.a, "link", "add", self.p + "va", "type", "veth", "peer", "name", self.p + "vb",
           "netns", self.b)
        for ns, dev, ip in ((self.a, self.p + "va", UNDER_A), (self.b, self.p + "vb", UNDER_B)):
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    # -- tunnels (each returns the overlay address of namespace b)
    def veth(self) -> str:
        return UNDER_B

    def vxlan(self) -> str:
        for ns, dev, local, remote, ip in ((self.a, self.p + "va", UNDER_A, UNDER_B, "10.202.0.1"),
                                           (self.b, self.p + "vb", UNDER_B, UNDER_A, "10.202.0.2")):
            x = self.p + "x"
            sh("ip", "-n", ns, "link", "add", x, "type", "vxlan", "id", "42", "local", local, "remote", remote,
               "dstport", "4789", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", x)
            sh("ip", "-n", ns, "link", "set", x, "up")
        return "10.202.0.2"

    def socat(self) -> str:
        dev = self.p + "s"
        for ns, ip, local, remote in ((self.a, "10.203.0.1", UNDER_A, UNDER_B),
                                      (self.b, "10.203.0.2", UNDER_B, UNDER_A)):
            self.spawn(nsx(ns, "socat", f"TUN:{ip}/24,tun-name={dev},tun-type=tun,iff-no-pi,iff-up",
                           f"UDP-DATAGRAM:{remote}:40000,bind={local}:40000"))
        for ns in (self.a, self.b):
            wait_for(lambda ns=ns: "UP" in sh("ip", "-n", ns, "link", "show", dev, check=False).stdout,
                     f"socat's {dev} in {ns}")
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1472")  # same MTU as the relay: no fragmentation
        return "10.203.0.2"

    def _relays(self, transport: str, port: int, net: str, dev: str, datapath: str = "auto",
                extra_args: tuple[str, ...] = ()) -> str:
        args_a = ["--listen", f"{UNDER_A}:{port}", *extra_args]
        args_b = ["--listen", f"{UNDER_B}:{port}", "--peer", f"a={UNDER_A}:{port}", *extra_args]
        if transport == "udp":
            args_a += ["--peer", f"b={UNDER_B}:{port}"]
        else:
            args_a += ["--accept", f"b={UNDER_B}"]
            args_b = ["--peer", f"a={UNDER_A}:{port}"]
        for ns, ip, extra in ((self.a, net + ".1", args_a), (self.b, net + ".2", args_b)):
            r, w = os.pipe()
            self.spawn(nsx(ns, PY, "-m", "tunlab", "relay", "--transport", transport, "--dev", dev,
                           "--addr", ip + "/24", "--datapath", datapath, "--ready-fd", str(w), *extra),
                       pass_fds=(w,))
            os.close(w)
            line = read_line(r, 10.0)
            os.close(r)
            if not json.loads(line or "{}").get("ready"):
                raise RuntimeError(f"relay in {ns} did not start: {line!r}")
        if transport == "tcp":  # wait until the client's connection is up: the first ping may be lost
            wait_for(lambda: sh(*nsx(self.a, "ping", "-c", "1", "-W", "0.5", net + ".2"), check=False).returncode == 0,
                     "tunlab tcp tunnel")
        return net + ".2"

    def tunlab_udp(self) -> str:
        return self._relays("udp", 41000, "10.204.0", self.p + "u")

    def tunlab_udp_simple(self) -> str:  # one packet per syscall: the per-packet reference
        return self._relays("udp", 43000, "10.206.0", self.p + "n", "simple")

    def tunlab_udp_keyed(self) -> str:  # --psk-file: every datagram sealed (ChaCha20-Poly1305); gso: each chunk
        return self._keyed(44000, "10.207.0", "k", "auto")

    def tunlab_udp_keyed_simple(self) -> str:  # --psk-file, --datapath simple: one sealed packet per datagram
        return self._keyed(45000, "10.208.0", "m", "simple")

    def _keyed(self, port: int, net: str, tag: str, datapath: str) -> str:
        key = Path(f"/tmp/{self.p}{tag}.psk")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, os.urandom(32))
        os.close(fd)
        dst = self._relays("udp", port, net, self.p + tag, datapath, extra_args=("--psk-file", str(key)))
        wait_for(lambda: sh(*nsx(self.a, "ping", "-c", "1", "-W", "0.5", dst), check=False).returncode == 0,
                 "keyed tunnel (session up)")
        key.unlink()
        return dst

    def tunlab_tcp(self) -> str:
        return self._relays("tcp", 42000, "10.205.0", self.p + "t")

    # -- measurements
    def ping(self, dst: str) -> float:
        sh(*nsx(self.a, "ping", "-c", "3", "-i", "0.05", "-W", "1", dst), check=False)  # warm-up (ARP, routes)
        out = sh(*nsx(self.a, "ping", "-c", str(self.pings), "-i", "0.02", "-W", "1", dst), check=False).stdout
        times = [float(tok.split("=")[1]) for line in out.splitlines() for tok in line.split() if tok.startswith("time=")]
        if not times:
            raise RuntimeError(f"no ping replies from {dst}")
        return statistics.median(times)

    def iperf(self, dst: str) -> float:
        server = subprocess.Popen(nsx(self.b, "iperf3", "-s", "-1", "--forceflush", "-B", dst), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        try:
            assert server.stdout is not None
            if "Server listening" not in read_line(server.stdout.fileno(), 5.0, marker="Server listening"):
                raise RuntimeError("iperf3 server did not start")
            out = sh(*nsx(self.a, "iperf3", "-c", dst, "-t", str(self.seconds), "-J"), check=False).stdout
            data = json.loads(out)
            return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(5)


def read_line(fd: int, timeout: float, marker: str | None = None) -> str:
    """Read from fd until a newline (or ``marker``) shows up, EOF, or the deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if (marker is None and b"\n" in data) or (marker is not None and marker.encode() in data):
            break
    return data.decode(errors="replace")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 run length per path")
    ap.add_argument("--pings", type=int, default=40)
    ap.add_argument("--only", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}")
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("relay_bench: needs root (namespaces, TUN devices); run it with sudo", file=sys.stderr)
        return 1
    for tool in ("iperf3", "socat", "ping"):
        if shutil.which(tool) is None:
            print(f"relay_bench: {tool} is not installed", file=sys.stderr)
            return 1
    wanted = [p for p in ns.only.split(",") if p]
    bad = [p for p in wanted if p not in PATHS]
    if bad:
        print(f"relay_bench: unknown path(s) {bad}; known: {PATHS}", file=sys.stderr)
        return 2
    bench = Bench(ns.seconds, ns.pings)
    results: dict[str, tuple[float, float]] = {}
    try:
        bench.setup()
        for path in wanted:
            dst = getattr(bench, path.replace("-", "_"))()
            rtt = bench.ping(dst)
            gbps = bench.iperf(dst)
            results[path] = (gbps, rtt)
            print(f"  {path:<11} {gbps:6.2f} Gbit/s  rtt {rtt:.3f} ms", file=sys.stderr, flush=True)
    finally:
        bench.cleanup()
    veth = results.get("veth")
    socat = results.get("socat")
    print(f"\n{'path':<12}{'TCP Gbit/s':>11}{'x veth':>8}{'x socat':>9}{'RTT ms':>9}{'RTT-veth':>10}")
    for path, (gbps, rtt) in results.items():
        xv = f"{gbps / veth[0]:.3f}" if veth else "-"
        xs = f"{gbps / socat[0]:.2f}" if socat else "-"
        dv = f"{rtt - veth[1]:+.3f}" if veth else "-"
        print(f"{path:<12}{gbps:>11.2f}{xv:>8}{xs:>9}{rtt:>9.3f}{dv:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
