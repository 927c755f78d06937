"""Link impairments in the relay (issue 17): real TUNs and relays in namespaces, impaired with --impair,
changed at run time through the control socket; the decision log and the counters account for it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from relay_helpers import PY, NetLab, netlab, ping, two_nodes, wait_until  # noqa: F401

pytestmark = pytest.mark.netns

SINK = r'''
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
'''
SOURCE = r'''
import socket, sys
data = bytes(range(256)) * (int(sys.argv[2]) // 256)
s = socket.create_connection((sys.argv[1], 9000), timeout=60); s.sendall(data); s.close()
'''


def pair(lab: NetLab, transport: str = "udp", a_extra: tuple[str, ...] = (), b_extra: tuple[str, ...] = ()):
    a, b = two_nodes(lab)
    dev = lab.ifname("t")
    t = ["--transport", transport]
    if transport == "udp":
        ra = lab.relay(a, "a", *t, "--dev", dev, "--addr", "10.70.0.1/24", "--listen", "10.1.0.1:5000",
                       "--peer", "b=10.1.0.2:5000", *a_extra)
    else:
        ra = None
    rb = lab.relay(b, "b", *t, "--dev", dev, "--addr", "10.70.0.2/24", "--listen", "10.1.0.2:5000",
                   *(["--peer", "a=10.1.0.1:5000"] if transport == "udp" else ["--accept", "a=10.1.0.1"]), *b_extra)
    if ra is None:
        ra = lab.relay(a, "a", *t, "--dev", dev, "--addr", "10.70.0.1/24", "--peer", "b=10.1.0.2:5000", *a_extra)
        ra.wait_connected("b")
    return (a, b), (ra, rb)


def rtts(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def decisions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_delay_adds_to_the_round_trip(netlab: NetLab, transport: str) -> None:
    logf = netlab.tmp / "a-decisions.jsonl"
    (a, b), (ra, rb) = pair(netlab, transport, a_extra=(
        "--impair", "b=delay=30ms", "--seed", "5", "--impair-log", str(logf), "--link-label", "b=a-b,a>b"))
    out = ping(a, "10.70.0.2", count=5).stdout
    times = rtts(out)
    assert len(times) == 5, out
    # one direction waits 30 ms in a's relay: no reply can be faster, and the loop adds little
    assert min(times) >= 30.0, out
    assert sorted(times)[2] < 30.0 + 10.0, out
    c = ra.counters()
    assert c["impair"]["seed"] == 5 and c["impair"]["timers"] == "timerfd"
    assert c["peers"]["b"]["stages"]["impair"]["delay"] >= 5
    if transport == "udp":
        assert c["datapath"]["peers"]["b"]["datapath"] == "plain"
        assert "impair" in c["datapath"]["peers"]["b"]["why"]
    # b's direction is not impaired, and its own relay has no stages
    assert "impair" not in rb.counters()
    ra.stop()
    log = decisions(logf)
    delays = [d for d in log if d["kind"] == "delay"]
    assert len(delays) >= 5 and all(d["link"] == "a-b" and d["dir"] == "a>b" and d["value"] == 0.03
                                    for d in delays)
    assert all(len(d["pkt"]) == 12 for d in log)


def test_loss_tcp_transfer_completes_and_matches(netlab: NetLab) -> None:
    (a, b), (ra, rb) = pair(netlab, a_extra=("--impair", "b=loss=3% delay=2ms", "--seed", "11"),
                            b_extra=("--impair", "a=loss=3%", "--seed", "12"))
    size = 2 << 20
    sink = netlab.spawn(b, PY, "-c", SINK, "10.70.0.2", stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "listening"
    subprocess.run(["ip", "netns", "exec", a, PY, "-c", SOURCE, "10.70.0.2", str(size)], check=True, timeout=90)
    n, digest = sink.stdout.readline().split()
    sink.wait(10)
    want = hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()
    assert (int(n), digest) == (size, want)
    ca, cb = ra.counters(), rb.counters()
    # losses happened in both directions and were counted as impairment drops (so TCP retransmitted)
    assert ca["drops"].get("impair_loss", 0) > 0 and cb["drops"].get("impair_loss", 0) > 0
    sent = ca["peers"]["b"]["stages"]["impair"]["packets"]
    lost = ca["drops"]["impair_loss"]
    assert 0.01 < lost / sent < 0.06, (lost, sent)


def test_bad_impair_options_are_one_line_errors(netlab: NetLab) -> None:
    a, b = two_nodes(netlab)
    r = netlab.relay(a, "bad", "--dev", netlab.ifname("t"), "--addr", "10.70.0.1/24", "--listen",
                     "10.1.0.1:5000", "--peer", "b=10.1.0.2:5000", "--impair", "b=loss=120%", wait=False)
    r.proc.wait(20)
    assert r.ready.get("ready") is not True
    assert r.proc.returncode != 0
    assert "--impair: b: loss='120%' is out of range" in r.output()


RAW = r'''
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
src, dst = socket.inet_aton("10.70.0.1"), socket.inet_aton("10.70.0.2")
for i in range(int(sys.argv[1])):
    udp = struct.pack("!HHHH", 40001, 9998, 12, 0) + struct.pack("!I", i)
    s.sendto(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 32, i + 1, 0x4000, 64, 17, 0, src, dst) + udp, ("10.70.0.2", 0))
'''


def test_same_seed_same_decision_log(netlab: NetLab) -> None:
    """Two runs of the same 300 packets (every byte fixed) through a relay with one seed: identical logs."""
    logs = []
    a, b = two_nodes(netlab)
    for ns in (a, b):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    for run, seed in enumerate((21, 21, 22)):
        logf = netlab.tmp / f"run{run}.jsonl"
        dev = netlab.ifname(f"t{run}")
        ra = netlab.relay(a, f"a{run}", "--dev", dev, "--addr", "10.70.0.1/24", "--listen", "10.1.0.1:5000",
                          "--peer", "b=10.1.0.2:5000", "--impair", "b=loss=5% delay=1ms jitter=1ms duplicate=2%",
                          "--seed", str(seed), "--impair-log", str(logf), "--link-label", "b=a-b,a>b")
        subprocess.run(["ip", "-n", a, "link", "set", "dev", dev, "txqlen", "1000"], check=True)
        subprocess.run(["ip", "netns", "exec", a, PY, "-c", RAW, "300"], check=True, timeout=30)
        wait_until(lambda: ra.counters()["peers"]["b"]["stages"]["impair"]["packets"] >= 300, "300 packets decided")
        assert ra.counters()["peers"]["b"]["stages"]["impair"]["packets"] == 300
        ra.stop()
        logs.append(logf.read_bytes())
    assert logs[0] == logs[1] and logs[0] != logs[2]
    kinds = {json.loads(x)["kind"] for x in logs[0].splitlines()}
    assert {"loss", "delay", "duplicate"} <= kinds


UDP_SINK = r'''
import json, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9997)); print("ready", flush=True)
seqs, first, last = [], None, None
while True:
    r, _, _ = select.select([s], [], [], 1.0)
    if not r: break
    d = s.recv(2048); last = time.monotonic(); first = first or last
    seqs.append(struct.unpack("!I", d[:4])[0])
print(json.dumps({"seqs": seqs, "span": (last - first) if first else 0}), flush=True)
'''
UDP_SOURCE = r'''
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(struct.pack("!I", i) + bytes(int(sys.argv[3])), (sys.argv[1], 9997))
    time.sleep(0.001)
'''


def udp_run(lab: NetLab, a: str, b: str, count: int, size: int) -> dict:
    sink = lab.spawn(b, PY, "-c", UDP_SINK, stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    subprocess.run(["ip", "netns", "exec", a, PY, "-c", UDP_SOURCE, "10.70.0.2", str(count), str(size)],
                   check=True, timeout=60)
    out = json.loads(sink.stdout.readline())
    sink.wait(10)
    return out


def test_duplicate_reorder_and_rate_at_run_time(netlab: NetLab) -> None:
    from tunlab.relay.control import control_request

    (a, b), (ra, rb) = pair(netlab, a_extra=("--seed", "4"))

    def impair(spec: str) -> None:
        control_request(ra.control, {"cmd": "stage", "peer": "b", "stage": "impair", "clear": True, "set": spec})

    impair("duplicate=100%")
    got = udp_run(netlab, a, b, 50, 64)["seqs"]
    assert sorted(got) == sorted(list(range(50)) * 2)  # every datagram twice
    impair("delay=20ms reorder=50%")
    got = udp_run(netlab, a, b, 100, 64)["seqs"]
    assert sorted(got) == list(range(100)) and got != list(range(100))  # all there, some jumped the queue
    c = ra.counters()["peers"]["b"]["stages"]["impair"]
    assert c["reorder"] > 20 and c["delay"] > 20
    impair("rate=1mbit")
    run = udp_run(netlab, a, b, 200, 1000)  # 200 x ~1 kB = 1.6 Mbit: at least 1.4 s at 1 Mbit/s
    assert sorted(run["seqs"]) == list(range(200)) and run["span"] > 1.2, run["span"]
    trace = netlab.tmp / "every10ms.trace"
    trace.write_text("10\n")  # Mahimahi: one delivery opportunity every 10 ms
    impair(f"trace={trace}")
    run = udp_run(netlab, a, b, 40, 100)
    assert sorted(run["seqs"]) == list(range(40)) and run["span"] > 0.35, run["span"]
