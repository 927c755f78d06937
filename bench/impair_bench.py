#!/usr/bin/env python3
"""Impairment benchmark (issue 17), one run, on this machine:

1. delay accuracy: 1, 10 and 100 ms of added delay at 1,000 and 10,000 packets/s through a real relay pair;
   the one-way latency of each packet (CLOCK_MONOTONIC is shared by the namespaces) minus the median
   latency of the same relays without delay (measured in the same run) minus the target = the error;
   median and 99th percentile of |error|. The relay's timers are a timerfd (relay/loop.py PreciseTimer).
2. loss and burst statistics of the decision engine over 100k packets vs the model's 99% interval:
   Bernoulli 1%, Gilbert-Elliott p=1% r=30% (loss rate p/(p+r), mean burst 1/r).
3. throughput: iperf3 TCP through the relay pair, plain datapath unimpaired (the reference) and gso, vs
   the link impaired with 0.1% loss and 5 ms delay in both directions (and each alone); TUN txqlen as in
   labs (tunlab.lab.backends.nsutil.TUN_TXQLEN).
4. replay: two runs of 10,000 identical UDP packets through an impaired relay (loss, delay+jitter,
   duplicate, reorder) with one seed give byte-identical decision logs (and another seed does not).

    sudo .venv/bin/python bench/impair_bench.py [--seconds 5] [--rounds 3] [--only delay,loss,throughput,replay]

Namespaces bimp<random>a/b, removed at the end. The machine is shared (2 vCPUs, other agents running):
figures are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
UNDER_A, UNDER_B = "10.202.0.1", "10.202.0.2"
OVER_A, OVER_B = "10.72.0.1", "10.72.0.2"
from tunlab.lab.backends.nsutil import TUN_TXQLEN  # noqa: E402  (the device queue of a lab's TUN)

SENDER = r'''
import socket, struct, sys, time
dst, rate, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 40000))
# bursts every millisecond (rate/1000 packets each), sleeping between: the sender must not take a CPU
# from the relays on a 2-CPU machine
per = max(1, int(rate / 1000)); t0 = time.monotonic() + 0.05; mono = time.monotonic_ns
for b in range(count // per):
    d = t0 + b * 0.001 - time.monotonic()
    if d > 0: time.sleep(d)
    for k in range(per):
        s.sendto(struct.pack("!IQ", b * per + k, mono()) + bytes(32), (dst, 9999))
'''
RECEIVER = r'''
import json, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9999)); print("ready", flush=True)
idle, out = float(sys.argv[1]), []
while True:
    r, _, _ = select.select([s], [], [], idle)
    if not r: break
    d = s.recv(2048); now = time.monotonic_ns()
    i, t = struct.unpack("!IQ", d[:12]); out.append((now - t) / 1e6)
print(json.dumps(out))
'''
REPLAY = r'''
import socket, struct, sys, time
# raw IP with every byte fixed (the kernel would pick IP ids that differ between runs)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
src, dst = socket.inet_aton(sys.argv[3]), socket.inet_aton(sys.argv[1])
for i in range(int(sys.argv[2])):
    payload = struct.pack("!I", i) + bytes(60)
    udp = struct.pack("!HHHH", 40001, 9998, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), (i % 65535) + 1, 0x4000, 64, 17, 0, src, dst)
    s.sendto(ip + udp, (sys.argv[1], 0))
    if i % 10 == 9: time.sleep(0.002)   # pacing (~4k/s)
'''


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


class Pair:
    """Two namespaces, a veth, and a relay in each (a's may be impaired toward b)."""

    def __init__(self) -> None:
        self.p = "bimp" + secrets.token_hex(2)
        self.a, self.b = self.p + "a", self.p + "b"
        self.tmp = Path(tempfile.mkdtemp(prefix=self.p))
        self.relays: list[subprocess.Popen[bytes]] = []
        self.procs: list[subprocess.Popen[Any]] = []
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", self.a, "link", "add", self.p + "va", "type", "veth", "peer", "name", self.p + "vb",
           "netns", self.b)
        for ns, dev, ip in ((self.a, self.p + "va", UNDER_A), (self.b, self.p + "vb", UNDER_B)):
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def relay(self, ns: str, me: str, peer: str, over: str, *extra: str) -> str:
        ctl = str(self.tmp / f"{ns}.ctl")
        r, w = os.pipe()
        argv = ["ip", "netns", "exec", ns, PY, "-m", "tunlab", "relay", "--dev", self.p + "t", "--addr", over + "/24",
                "--listen", f"{me}:5000", "--peer", f"peer={peer}:5000", "--control", ctl, "--ready-fd", str(w),
                "--log-level", "warning", *extra]
        proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=str(ROOT))
        os.close(w)
        select.select([r], [], [], 20)
        line = os.read(r, 4096)
        os.close(r)
        if b'"ready":true' not in line:
            raise SystemExit(f"relay in {ns} did not start: {line!r}")
        self.relays.append(proc)
        return ctl

    def start(self, a_extra: tuple[str, ...] = (), b_extra: tuple[str, ...] = (), *, probe: bool = True
              ) -> tuple[str, str]:
        self.stop_relays()
        ca = self.relay(self.a, UNDER_A, UNDER_B, OVER_A, *a_extra)
        cb = self.relay(self.b, UNDER_B, UNDER_A, OVER_B, *b_extra)
        if not probe:  # both ready: UDP relays carry packets from now on
            return ca, cb
        deadline = time.monotonic() + 10
        while sh("ip", "netns", "exec", self.a, "ping", "-c1", "-W1", OVER_B, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the relay pair does not carry pings")
        return ca, cb

    def stop_relays(self) -> None:
        for p in self.relays:
            p.terminate()
            p.wait(10)
        self.relays.clear()

    def close(self) -> None:
        self.stop_relays()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)
        for f in self.tmp.iterdir():
            f.unlink()
        self.tmp.rmdir()


def one_way(pair: Pair, rate: float, count: int) -> list[float]:
    rx = subprocess.Popen(["ip", "netns", "exec", pair.b, PY, "-c", RECEIVER, "1.0"], stdout=subprocess.PIPE,
                          text=True)
    pair.procs.append(rx)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    sh("ip", "netns", "exec", pair.a, PY, "-c", SENDER, OVER_B, str(rate), str(count))
    out = rx.stdout.read()
    rx.wait()
    return [float(x) for x in json.loads(out)]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_delay(pair: Pair, seconds: float) -> dict[str, Any]:
    from tunlab.relay.control import control_request, query_stats

    out: dict[str, Any] = {}
    ca, _ = pair.start(("--datapath", "plain", "--seed", "1"), ("--datapath", "plain"))
    for rate in (1000, 10000):
        count = int(rate * min(seconds, 2.0))
        base = one_way(pair, rate, count)
        ref = statistics.median(base)
        print(f"  {rate:>5} pps, no delay: {len(base)}/{count} received, one-way median {ref:.3f} ms, "
              f"p99 {pct(base, 0.99):.3f} ms (the reference)")
        for ms in (1, 10, 100):
            control_request(ca, {"cmd": "stage", "peer": "peer", "stage": "impair", "clear": True,
                                 "set": f"delay={ms}ms"})
            lat = one_way(pair, rate, count)
            err = [abs(x - ref - ms) for x in lat]
            med, p99 = statistics.median(err), pct(err, 0.99)
            late = query_stats(ca)["impair"]["lateness"]  # the relay's own: send time - target, per packet
            ok = late["median_us"] < 100 and late["p99_us"] < 500
            print(f"  {rate:>5} pps, delay {ms:>3} ms: {len(lat)}/{count} received; end to end: added median "
                  f"{statistics.median(lat) - ref:.3f} ms, |error| median {med:.3f} ms, p99 {p99:.3f} ms; "
                  f"in the relay (n={late['n']}): late median {late['median_us']:.0f} us, p99 {late['p99_us']:.0f} us, "
                  f"max {late['max_us']:.0f} us {'(goal met)' if ok else '(goal: median < 100 us, p99 < 500 us)'}")
            out[f"{rate}pps_{ms}ms"] = {"e2e_median_err_ms": round(med, 4), "e2e_p99_err_ms": round(p99, 4),
                                        "relay_late_us": late, "received": len(lat), "sent": count}
        control_request(ca, {"cmd": "stage", "peer": "peer", "stage": "impair", "clear": True})
    return out


def bench_loss(n: int = 100_000) -> dict[str, Any]:
    from tunlab.relay.impair import Impairer, confidence_interval, parse_spec

    out: dict[str, Any] = {}
    for label, spec, p_model, burst_model in (("bernoulli 1%", "loss=1%", 0.01, 1 / 0.99),
                                               ("gemodel p=1% r=30%", "loss=gemodel:1%/30%", 0.01 / 0.31, 1 / 0.3)):
        imp = Impairer(parse_spec(spec), seed=3, link="bench")
        lost = [not imp.process(b"x" * 100, i * 1e-4) for i in range(n)]
        rate = sum(lost) / n
        bursts, run = [], 0
        for x in lost:
            if x:
                run += 1
            elif run:
                bursts.append(run)
                run = 0
        lo, hi = confidence_interval(n, p_model)
        mean_b = statistics.mean(bursts)
        # geometric burst lengths: sd = sqrt(1-q)/q with q = 1/mean; 99% interval of the mean over the bursts
        q = 1 / burst_model
        half = 2.576 * math.sqrt(1 - q) / q / math.sqrt(len(bursts))
        ok = lo <= rate <= hi and burst_model - half <= mean_b <= burst_model + half
        print(f"  {label}: loss {rate:.4%} (model {p_model:.4%}, 99% {lo:.4%}..{hi:.4%}); mean burst "
              f"{mean_b:.3f} (model {burst_model:.3f} +- {half:.3f}) over {len(bursts)} bursts: "
              f"{'within' if ok else 'OUTSIDE'}")
        out[label] = {"loss": rate, "model": p_model, "ci": [lo, hi], "mean_burst": mean_b,
                      "burst_model": burst_model, "ok": ok}
    return out


def iperf(pair: Pair, seconds: float, udp: bool = False) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", pair.b, "iperf3", "-s", "-1", "-B", OVER_B, "-p", "5302"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pair.procs.append(srv)
    deadline = time.monotonic() + 10
    while f"{OVER_B}:5302" not in sh("ip", "netns", "exec", pair.b, "ss", "-ltn").stdout:
        if time.monotonic() > deadline:
            raise SystemExit("iperf3 server did not listen")
        time.sleep(0.02)  # polling a readiness condition with a deadline
    extra = ["-u", "-b", "0", "-l", "1400"] if udp else []
    res = sh("ip", "netns", "exec", pair.a, "iperf3", "-c", OVER_B, "-p", "5302", "-t", str(seconds), "-J", *extra,
             check=False)
    srv.wait(10)
    try:
        end = json.loads(res.stdout)["end"]
        if udp:  # what arrived: sent rate times the share not lost
            s = end["sum"]
            return float(s["bits_per_second"]) * (1 - float(s.get("lost_percent", 0)) / 100) / 1e9
        return float(end["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError):
        return 0.0


def bench_throughput(pair: Pair, seconds: float, rounds: int = 3) -> dict[str, float]:
    out: dict[str, float] = {}
    def imp(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("--impair", f"peer={spec}", "--seed", "2"), ("--impair", f"peer={spec}", "--seed", "3")
    configs = (("plain (reference)", ("--datapath", "plain"), ("--datapath", "plain")), ("gso", (), ()),
               ("loss=0.1% delay=5ms", *imp("loss=0.1% delay=5ms")), ("delay=5ms", *imp("delay=5ms")),
               ("loss=0.1%", *imp("loss=0.1%")))
    runs: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    for _ in range(rounds):  # interleaved rounds: the machine's load drifts; medians per configuration
        for label, a_extra, b_extra in configs:
            pair.start(a_extra, b_extra)
            for ns in (pair.a, pair.b):  # the device queue a lab's TUN has (issue 13 sized it for latency)
                sh("ip", "-n", ns, "link", "set", "dev", pair.p + "t", "txqlen", str(TUN_TXQLEN))
            runs[label].append(iperf(pair, seconds))
    for label, _, _ in configs:
        out[label] = gbps = statistics.median(runs[label])
        ratio = gbps / out["plain (reference)"] if out["plain (reference)"] else 0.0
        print(f"  TCP {label}{' both ways' if '=' in label else ''}: median {gbps:.3f} Gbit/s ({ratio:.2f} of plain; "
              f"rounds {', '.join(f'{x:.3f}' for x in runs[label])})")
    ratio = out["loss=0.1% delay=5ms"] / out["plain (reference)"] if out["plain (reference)"] else 0.0
    out["ratio"] = ratio
    verdict = "goal met" if ratio >= 0.5 else "goal: at least 0.5"
    print(f"  impaired (0.1% loss, 5 ms) / plain = {ratio:.2f} ({verdict})")
    # TCP over 0.1% loss and a 10 ms round trip is bounded by the loss itself (Mathis: MSS / RTT * 1.22 /
    # sqrt(p) = 1448 B / 10 ms * 38.6 = 45 Mbit/s for Reno; CUBIC does somewhat better), whatever the relay
    mathis = 1448 * 8 / 0.010 * 1.22 / math.sqrt(0.001) / 1e9
    print(f"  (TCP's own bound at 0.1% loss and 10 ms RTT, Mathis/Reno: {mathis:.3f} Gbit/s)")
    out["tcp_mathis_bound"] = mathis
    return out


def bench_replay(pair: Pair, n: int = 10_000) -> dict[str, Any]:
    spec = "loss=1% delay=1ms jitter=1ms duplicate=0.5% reorder=2%"
    digests = []
    for k, seed in enumerate((7, 7, 8)):
        log = pair.tmp / f"replay{k}.jsonl"
        ca, _ = pair.start(("--impair", f"peer={spec}", "--seed", str(seed), "--impair-log", str(log),
                            "--link-label", "peer=a-b,a>b"), (), probe=False)
        # a long device queue: on a loaded machine the relay must not lose packets before deciding on them
        sh("ip", "-n", pair.a, "link", "set", "dev", pair.p + "t", "txqlen", "20000")
        sh("ip", "netns", "exec", pair.a, PY, "-c", REPLAY, OVER_B, str(n), OVER_A)
        from tunlab.relay.control import query_stats

        c = query_stats(ca)
        pair.stop_relays()
        data = log.read_bytes()
        if os.environ.get("IMPAIR_BENCH_KEEP"):  # a folder to keep the logs in (to diff them)
            Path(os.environ["IMPAIR_BENCH_KEEP"], log.name).write_bytes(data)
        digests.append(hashlib.sha256(data).hexdigest())
        lines = data.count(b"\n")
        print(f"  seed {seed}: {lines} decisions, {c['peers']['peer']['stages']['impair']['packets']} "
              f"packets through the stage, kernel drops before it {c['drops'].get('kernel_device', 0)}, "
              f"log sha256 {digests[-1][:16]}")
    same = digests[0] == digests[1]
    print(f"  same seed, same log: {same}; other seed differs: {digests[0] != digests[2]}")
    return {"identical": same, "other_seed_differs": digests[0] != digests[2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="delay,loss,throughput,replay")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (medians)")
    args = ap.parse_args()
    parts = args.only.split(",")
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 3
    results: dict[str, Any] = {"load": os.getloadavg()}
    print(f"impair bench: load average {results['load'][0]:.2f} on {os.cpu_count()} CPUs (shared machine)")
    if "loss" in parts:
        print("loss and burst statistics (decision engine, 100k packets):")
        results["loss"] = bench_loss()
    pair = Pair()
    try:
        if "delay" in parts:
            print("delay accuracy (one way, through a real relay pair, plain datapath):")
            results["delay"] = bench_delay(pair, args.seconds)
        if "throughput" in parts:
            print(f"throughput (iperf3 TCP, {args.seconds:g} s each, {args.rounds} interleaved rounds):")
            results["throughput"] = bench_throughput(pair, args.seconds, args.rounds)
        if "replay" in parts:
            print("replay (10,000 identical UDP packets, three runs):")
            results["replay"] = bench_replay(pair)
    finally:
        pair.close()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
