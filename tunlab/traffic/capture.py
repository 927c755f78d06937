"""Capture on many interfaces of many namespaces at once, from one thread, with kernel timestamps.

Each :class:`CapturePoint` gets an ``AF_PACKET``/``SOCK_DGRAM`` socket opened inside the point's namespace
(so the link-layer header is gone: veths and TUNs alike give L3 bytes), with a BPF filter compiled by
libpcap for raw IP and attached *before* the socket is bound, so nothing unfiltered is ever queued. One
reader thread waits on all sockets; :class:`Capture` is a context manager that returns only when every
socket is bound (the readiness handshake: nothing is sent before that, and nothing sleeps).

Frames are kept in memory (a check run sends tens of packets) and written as pcap files (LINKTYPE_RAW,
nanosecond timestamps) with :meth:`Capture.write_pcaps`. A packet the kernel had not yet checksummed
(checksum offload: a TUN of the fast datapath, a veth with tx checksum offload; ``PACKET_AUXDATA`` says
``TP_STATUS_CSUMNOTREADY``) gets its TCP/UDP checksum completed when the frames are read (not in the
reader thread: a 64 KiB GSO packet takes 0.2 ms), as the receiver would see it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tunlab.errors import TunlabError
from tunlab.traffic.decap import Frame, complete_checksum
from tunlab.system.netns import entered
from tunlab.system.pace import patient

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
PACKET_AUXDATA = 8
ARPHRD_LOOPBACK = 772
TP_STATUS_CSUMNOTREADY = 8
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
DLT_RAW = 12          # what libpcap compiles raw-IP filters for
LINKTYPE_RAW = 101    # what pcap files say for raw IP
SNAPLEN = 65535 + 64  # GSO packets on veths can be up to 64 KiB


@dataclass(frozen=True)
class CapturePoint:
    """Where to listen: an interface inside a namespace, with a BPF filter (libpcap syntax, raw IP)."""

    name: str
    netns_file: str
    ifname: str
    bpf: str = "ip"


def compile_bpf(expr: str) -> bytes:
    """A ``struct sock_fprog``-ready list of BPF instructions for raw IP packets (via libpcap)."""
    from scapy.arch.common import compile_filter  # needs libpcap; imported only here (~0.3 s)
    from scapy.error import Scapy_Exception

    try:
        prog = compile_filter(expr, linktype=DLT_RAW)
    except Scapy_Exception as exc:
        raise TunlabError(f"bad capture filter {expr!r}: {exc}") from None
    import ctypes

    return ctypes.string_at(prog.bf_insns, 8 * prog.bf_len)  # 8 bytes per struct sock_filter


def _attach(sock: socket.socket, program: bytes) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _open(point: CapturePoint, program: bytes) -> socket.socket:
    """Open, filter and bind the socket of one point (inside its namespace)."""
    with entered(point.netns_file):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # protocol 0: receives nothing yet
    try:
        _attach(sock, program)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((point.ifname, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise TunlabError(f"cannot capture on {point.ifname} for {point.name}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class Capture:
    """Listen on every point until the context exits; ``frames()`` gives what each point saw so far.

    With ``spool=FOLDER`` nothing is kept in memory: each point's frames go to its pcap in that folder
    (:func:`pcap_path`) as they arrive, flushed after every batch, for captures that last as long as a test
    whatever it sends (the pytest plugin's pcaps of every link). ``files`` lists them."""

    def __init__(self, points: Iterable[CapturePoint], *, ready_timeout: float | None = None,
                 spool: str | os.PathLike[str] | None = None) -> None:
        self.points = list(points)
        self.spool = Path(spool) if spool is not None else None
        self._writers: dict[str, PcapWriter] = {}
        self.counts: dict[str, int] = {p.name: 0 for p in self.points}
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ValueError(f"capture point names repeat: {names}")
        self._frames: dict[str, list[Frame]] = {p.name: [] for p in self.points}
        self._cond = threading.Condition()
        self._last = time.monotonic()
        self._socks: dict[int, tuple[CapturePoint, socket.socket]] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ready_timeout = ready_timeout if ready_timeout is not None else patient(10.0)
        self.stats: dict[str, tuple[int, int]] = {}  # point -> (packets, drops) as the kernel counted them

    # -- lifecycle
    def __enter__(self) -> Capture:
        programs = {bpf: compile_bpf(bpf) for bpf in {p.bpf for p in self.points}}
        if self.spool is not None:
            try:
                for p in self.points:
                    self._writers[p.name] = open_writer(self.spool, p.name)
            except BaseException:
                self._close_writers()
                raise
        self._thread = threading.Thread(target=self._run, args=(programs,), name="tunlab-capture", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._ready_timeout):
            self.__exit__(None, None, None)
            raise TunlabError(f"captures were not ready within {self._ready_timeout:.0f} s")
        if self._error is not None:
            self.__exit__(None, None, None)
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(5)
        for _, sock in self._socks.values():
            sock.close()
        self._socks.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self._close_writers()

    def _close_writers(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except OSError:
                pass

    @property
    def files(self) -> list[Path]:
        """The spooled pcaps (one per point), empty for an in-memory capture."""
        return [w.path for w in self._writers.values()]

    def _run(self, programs: dict[str, bytes]) -> None:
        try:
            for p in self.points:
                sock = _open(p, programs[p.bpf])
                self._socks[sock.fileno()] = (p, sock)
        except BaseException as exc:  # noqa: BLE001 - re-raised by __enter__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in self._socks:
            poller.register(fd, select.POLLIN)
        while not self._stop:
            for fd, _ in poller.poll(1000):
                if fd == self._wake_r:
                    continue
                self._drain(*self._socks[fd])
        for point, sock in self._socks.values():  # what arrived before the stop
            self._drain(point, sock)
            try:
                packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.stats[point.name] = (packets, drops)
            except OSError:
                pass

    def _drain(self, point: CapturePoint, sock: socket.socket) -> None:
        got = []
        while True:
            try:
                data, anc, _flags, addr = sock.recvmsg(SNAPLEN, socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                continue  # loopback shows each packet twice, going out and coming in: keep one, as libpcap does
            ts = time.time()
            pending = False
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    ts = sec + nsec / 1e9
                elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= 4:
                    pending = bool(struct.unpack_from("I", value)[0] & TP_STATUS_CSUMNOTREADY)
            got.append(Frame(ts, data, addr[2] == PACKET_OUTGOING, pending))
        if got and self._writers:
            writer = self._writers[point.name]
            try:
                writer.write(Frame(f.ts, complete_checksum(f.data), f.outgoing) if f.csum_pending else f
                             for f in got)
                writer.flush()
            except (OSError, ValueError):  # a full disk ends that point's file, never the capture thread
                pass
            with self._cond:
                self.counts[point.name] += len(got)
                self._last = time.monotonic()
                self._cond.notify_all()
        elif got:
            with self._cond:
                self.counts[point.name] += len(got)
                self._frames[point.name].extend(got)
                self._last = time.monotonic()
                self._cond.notify_all()

    # -- reading
    def frames(self) -> dict[str, list[Frame]]:
        """Every point's frames so far, checksums left to offload completed (once, in place)."""
        if self.spool is not None:
            raise ValueError(f"a spooled capture keeps no frames in memory: read its files in {self.spool}")
        with self._cond:
            for frames in self._frames.values():
                for i, f in enumerate(frames):
                    if f.csum_pending:
                        frames[i] = Frame(f.ts, complete_checksum(f.data), f.outgoing)
            return {k: list(v) for k, v in self._frames.items()}

    def touch(self) -> None:
        """Count silence from now (call it right before sending)."""
        with self._cond:
            self._last = time.monotonic()

    def wait_for(self, predicate: Callable[[dict[str, list[Frame]]], bool], timeout: float, *,
                 quiet: float | None = None) -> bool:
        """Wait until ``predicate(frames)`` holds (re-checked on every new frame) or ``timeout`` passes.

        With ``quiet``, also give up once no point has seen anything for that long: what has not arrived
        by then is lost, not late (nothing in a lab holds a packet back that long)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self._frames):
                    return True
                now = time.monotonic()
                left = deadline - now
                if quiet is not None:
                    silent_left = quiet - (now - self._last)
                    if silent_left <= 0:
                        return False
                    left = min(left, silent_left)
                if left <= 0:
                    return False
                self._cond.wait(left)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until no point has seen a frame for ``quiet`` seconds (False if that never happens)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if now - self._last >= quiet:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(quiet - (now - self._last), deadline - now))

    def write_pcaps(self, folder: str | os.PathLike[str]) -> list[Path]:
        """One file per point in ``folder`` (named by :func:`pcap_path`): ``link_<name>.pcap`` for an underlay
        link, ``tun_<node>.pcapng`` for a TUN (pcapng: each packet says whether it went out of the TUN, toward
        the relay, or came in from it)."""
        return write_pcaps(folder, self.frames())


class PcapWriter:
    """A nanosecond-resolution pcap of raw IP packets, written frame by frame (never through a link planted
    in the results folder: :func:`open_user_file`)."""

    suffix = ".pcap"

    def __init__(self, path: str | os.PathLike[str], *, ifname: str = "") -> None:
        from tunlab.system.privileges import open_user_file

        self.path = Path(path)
        self._f = open_user_file(self.path, "wb")
        self._f.write(self._header(ifname))

    def _header(self, ifname: str) -> bytes:
        return struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW)

    def _record(self, fr: Frame) -> bytes:
        sec = int(fr.ts)
        nsec = int(round((fr.ts - sec) * 1e9))
        if nsec >= 1_000_000_000:
            sec, nsec = sec + 1, nsec - 1_000_000_000
        return struct.pack("<IIII", sec, nsec, len(fr.data), len(fr.data)) + fr.data

    def write(self, frames: Iterable[Frame]) -> None:
        self._f.write(b"".join(self._record(fr) for fr in frames))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pcapng_block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    size = len(body) + 12
    return struct.pack("<II", kind, size) + body + struct.pack("<I", size)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


class PcapngWriter(PcapWriter):
    """A pcapng of raw IP packets, nanosecond timestamps, and each packet's direction (the ``epb_flags``
    inbound/outbound bits: Wireshark's ``frame.packet_flags_direction``, tcpdump's ``-Q``'s sense)."""

    suffix = ".pcapng"

    def _header(self, ifname: str) -> bytes:
        shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(0, b""))
        idb_opts = _option(2, ifname.encode()) + _option(9, bytes([9])) + _option(0, b"")  # if_name, if_tsresol=ns
        return shb + _pcapng_block(1, struct.pack("<HHI", LINKTYPE_RAW, 0, SNAPLEN) + idb_opts)

    def _record(self, fr: Frame) -> bytes:
        ts = int(round(fr.ts * 1e9))
        flags = 2 if fr.outgoing else 1  # epb_flags bits 0-1: 1 inbound, 2 outbound
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(fr.data), len(fr.data))
        body += fr.data + bytes(-len(fr.data) % 4) + _option(2, struct.pack("<I", flags)) + _option(0, b"")
        return _pcapng_block(6, body)


def pcap_path(folder: str | os.PathLike[str], point: str) -> Path:
    """The one naming scheme: ``link_<name>.pcap`` for an underlay link (``link:<name>``), ``tun_<node>.pcapng``
    for a TUN (``tun@<node>``); ':', '@' and '/' made file-name safe."""
    stem = point.replace(":", "_").replace("@", "_").replace("/", "_")
    return Path(folder) / (stem + (".pcapng" if point.startswith("tun@") else ".pcap"))


def open_writer(folder: str | os.PathLike[str], point: str) -> PcapWriter:
    path = pcap_path(folder, point)
    return (PcapngWriter if path.suffix == ".pcapng" else PcapWriter)(path, ifname=point)


def write_pcaps(folder: str | os.PathLike[str], frames: dict[str, list[Frame]]) -> list[Path]:
    """One file per capture point (:meth:`Capture.write_pcaps`; also frames gathered from other hosts)."""
    out = []
    for name, fs in frames.items():
        with open_writer(folder, name) as w:
            w.write(fs)
        out.append(w.path)
    return out


def write_pcap(path: str | os.PathLike[str], frames: Iterable[Frame]) -> None:
    """A nanosecond-resolution pcap of raw IP packets."""
    with PcapWriter(path) as w:
        w.write(frames)


def write_pcapng(path: str | os.PathLike[str], frames: Iterable[Frame], *, ifname: str = "") -> None:
    """A pcapng of raw IP packets with each packet's direction."""
    with PcapngWriter(path, ifname=ifname) as w:
        w.write(frames)
