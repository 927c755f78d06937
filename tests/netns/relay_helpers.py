"""Helpers for the relay's tests: a stdlib pcap reader (also used by the unit tests) and, for the netns
tests, namespaces/links/relays that carry one unique prefix and are removed at the end.

Nothing here sleeps to wait: readiness comes from --ready-fd, other conditions are polled with a deadline.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
PY = sys.executable  # the interpreter running the tests (the project venv's)
CLONE_NEWNET = 0x40000000

# ------------------------------------------------------------------------------------------- pcap


def read_pcap(path: Path) -> list[bytes]:
    """Frames of a classic pcap file (either byte order, µs or ns timestamps)."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    linktype = struct.unpack(end + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(end + "I", data[off + 8:off + 12])[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def _ipv4(frame: bytes) -> tuple[str, str, int, bytes] | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    return socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), ip[9], ip[ihl:total]


def tcp_streams(path: Path) -> dict[tuple[str, int, str, int], list[bytes]]:
    """Per direction, the TCP payload segments in sequence order (retransmissions removed)."""
    segs: dict[tuple[str, int, str, int], dict[int, bytes]] = {}
    for fr in read_pcap(path):
        parsed = _ipv4(fr)
        if parsed is None or parsed[2] != 6:
            continue
        src, dst, _, tcp = parsed
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            segs.setdefault((src, sport, dst, dport), {})[seq] = payload
    return {k: [v[s] for s in sorted(v)] for k, v in segs.items()}


def udp_payloads(path: Path) -> list[bytes]:
    out = []
    for fr in read_pcap(path):
        parsed = _ipv4(fr)
        if parsed is not None and parsed[2] == 17:
            out.append(parsed[3][8:])
    return out


def recorded_tcp_streams() -> tuple[list[bytes], list[bytes]]:
    """(client->server segments, server->client segments) of tests/data/tcp-framing.pcap."""
    streams = tcp_streams(DATA / "tcp-framing.pcap")
    to_server = next(v for k, v in streams.items() if k[3] == 55555)
    to_client = next(v for k, v in streams.items() if k[1] == 55555)
    return to_server, to_client


def deframe_exact(stream: bytes) -> list[bytes]:
    """Split a framed stream, insisting it is exact (no bytes left over)."""
    out, i = [], 0
    while i < len(stream):
        n = struct.unpack("!H", stream[i:i + 2])[0]
        out.append(stream[i + 2:i + 2 + n])
        i += 2 + n
    assert i == len(stream)
    return out


# ------------------------------------------------------------------------------------------ waiting


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # polling interval with a deadline, not a guess at readiness


def read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


# ---------------------------------------------------------------------------------- netns tooling


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def nsexec(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


_libc = ctypes.CDLL(None, use_errno=True)


def ns_socket(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ``ns`` (made by a short-lived thread that entered it)."""
    box: dict[str, Any] = {}

    def work() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            box["sock"] = socket.socket(family, type, proto)
        except BaseException as exc:  # handed to the caller
            box["err"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["sock"]  # type: ignore[no-any-return]


def ping(ns: str, dst: str, count: int = 3, size: int | None = None, deadline: int = 8,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """``count`` echo replies within ``deadline`` seconds (ping keeps sending until it has them)."""
    argv = ["ping", "-c", str(count), "-i", "0.1", "-w", str(deadline), "-W", "1"]
    if size is not None:
        argv += ["-s", str(size)]
    res = nsexec(ns, *argv, dst, check=False, timeout=deadline + 5)
    if check:
        assert res.returncode == 0, f"ping {dst} from {ns} failed:\n{res.stdout}{res.stderr}"
    return res


class RelayProc:
    """A ``tunlab relay`` process in a namespace, started and waited for through --ready-fd."""

    def __init__(self, lab: "NetLab", ns: str, tag: str, args: list[str], *, wait: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.ns = ns
        self.tag = tag
        self.control = str(lab.tmp / f"{tag}.sock")
        self.stats_file = str(lab.tmp / f"{tag}.json")
        self.log = lab.tmp / f"{tag}.log"
        r, w = os.pipe()
        argv = ["ip", "netns", "exec", ns, PY, "-m", "tunlab", "relay", *args, "--ready-fd", str(w),
                "--control", self.control, "--stats-file", self.stats_file, "--log-level", "info"]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         env={**os.environ, "TUNLAB_RUN": lab.prefix, **(env or {})}, cwd=str(ROOT))
        os.close(w)
        self.ready: dict[str, Any] = {}
        try:
            line = read_line(r, 20.0)
        finally:
            os.close(r)
        if line:
            self.ready = json.loads(line)
        if wait and not self.ready.get("ready"):
            self.stop()
            raise AssertionError(f"relay {tag} in {ns} did not get ready: {line!r}\n{self.output()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def counters(self) -> dict[str, Any]:
        from tunlab.relay import query_stats

        return query_stats(self.control)

    def drops(self, reason: str) -> int:
        return int(self.counters()["drops"].get(reason, 0))

    def peer(self, name: str) -> dict[str, Any]:
        return self.counters()["peers"][name]  # type: ignore[no-any-return]

    def wait_connected(self, peer: str, timeout: float = 10.0) -> None:
        wait_until(lambda: self.peer(peer)["connected"], f"relay {self.tag}: peer {peer} connected", timeout)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class NetLab:
    """Namespaces, veth links and relays under one prefix ``t2r<6 hex>``; :meth:`cleanup` removes all."""

    def __init__(self) -> None:
        self.prefix = "t2r" + secrets.token_hex(3)
        from tunlab.lab.ledger import log_run

        log_run(self.prefix)  # scripts/suite.py's leak check judges this suite's own names only
        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix + "-"))
        self.namespaces: list[str] = []
        self.relays: list[RelayProc] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def ns(self, tag: str) -> str:
        name = f"{self.prefix}{tag}"
        self.namespaces.append(name)  # recorded before it exists: cleanup never misses it
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        nsexec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.all.send_redirects=0",
               "net.ipv4.conf.default.send_redirects=0",
               "net.ipv6.conf.all.forwarding=1")
        return name

    def ifname(self, tag: str) -> str:
        name = f"{self.prefix}{tag}"
        assert len(name) <= 15, name
        return name

    def veth(self, ns_a: str, ns_b: str, addrs_a: list[str], addrs_b: list[str], tag: str = "v") -> tuple[str, str]:
        """A veth pair between two namespaces, created inside them (never in the root namespace)."""
        a, b = self.ifname(tag + "a"), self.ifname(tag + "b")
        sh("ip", "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        return a, b

    def relay(self, ns: str, tag: str, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> RelayProc:
        rp = RelayProc(self, ns, tag, list(args), wait=False, env=env)
        self.relays.append(rp)
        if wait and not rp.ready.get("ready"):
            raise AssertionError(f"relay {tag} in {ns} did not get ready: {rp.ready}\n{rp.output()}")
        return rp

    def spawn(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(proc)
        return proc

    def link_exists(self, ns: str, dev: str) -> bool:
        return sh("ip", "-n", ns, "link", "show", "dev", dev, check=False).returncode == 0

    def cleanup(self) -> None:
        for rp in self.relays:
            rp.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in reversed(self.namespaces):
            if os.path.exists(f"/run/netns/{ns}"):
                sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = [ns for ns in self.namespaces if os.path.exists(f"/run/netns/{ns}")]
        assert not left, f"namespaces left behind: {left}"


def two_nodes(lab: NetLab, v6: bool = False) -> tuple[str, str]:
    """Namespaces a and b joined by a veth: 10.1.0.1/24 - 10.1.0.2/24 (or fd01::1/64 - fd01::2/64)."""
    a, b = lab.ns("a"), lab.ns("b")
    if v6:
        lab.veth(a, b, ["fd01::1/64"], ["fd01::2/64"])
    else:
        lab.veth(a, b, ["10.1.0.1/24"], ["10.1.0.2/24"])
    return a, b


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(params=["c", "python"])
def datapath_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The same tests against both implementations of the datapath (issue 20); a module takes it for all its
    tests with ``pytest.mark.usefixtures("datapath_impl")``."""
    if request.param == "c":
        pytest.importorskip("tunlab.relay.fast._cfast", reason="the compiled datapath is not built")
    monkeypatch.setenv("TUNLAB_DATAPATH_IMPL", request.param)
    return str(request.param)
