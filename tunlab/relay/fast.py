"""The batched, offloaded relay datapath (issue 8): ``FastRelay(config).run() / .stop() / .counters()``.

Two datapaths share one UDP socket and one TUN/TAP queue opened with IFF_VNET_HDR:

* ``gso``: the device hands over GSO super-packets (TSO/USO offload on); each crosses UDP whole as
  MTU-sized chunks (docs/fastpath.md) in one UDP GSO send, arrives in one UDP GRO receive and is
  written to the peer's device whole, so the kernels segment. Only between two tunlab relays.
* ``plain``: one IP packet per datagram (socat, the chain design); runs of equal-size packets
  leave in one UDP GSO send, GRO batches arrive in one receive.

The receive side understands both at all times; what is sent to a peer is negotiated with a hello
(an IPv4 packet with a wrong header checksum that a plain peer's kernel drops) unless forced.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunlab.errors import TunlabError
from tunlab.relay import encap, fast_io
from tunlab.relay.fast_dev import Device
from tunlab.relay.fast_pumps import RxPump, TxPump

log = logging.getLogger("tunlab.relay.fast")

DATAPATHS = ("auto", "plain", "gso")
UDP_IPV4_OVERHEAD = 28
UDP_IPV6_OVERHEAD = 48
DEFAULT_SEGMENT = 1500 - UDP_IPV4_OVERHEAD


@dataclass
class FastConfig:
    """What the fast relay needs; mirrors the relay command-line contract (docs/ARCHITECTURE.md)."""

    dev: str = "tun0"
    listen: tuple[str, int] = ("0.0.0.0", 55556)
    addr: str | None = None                 # ADDR/PREFIX for the device (not with attach)
    mtu: int | None = 1472
    tap: bool = False
    attach: bool = False
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)   # NAME -> (ip, port)
    accepts: dict[str, str] = field(default_factory=dict)             # NAME -> ip (port learnt)
    routes: list[tuple[str, str]] = field(default_factory=list)       # (PREFIX | "default", NAME)
    datapath: str = "auto"
    segment: int | None = None              # chunk datagram size; default: path MTU - 28
    hello_tries: int = 5
    negotiate_wait: float = 0.25            # ready waits this long at most for hello replies
    threads: bool = False                   # one thread per direction instead of one loop

    def validate(self) -> None:
        if self.datapath not in DATAPATHS:
            raise TunlabError(f"--datapath {self.datapath!r} is not one of {', '.join(DATAPATHS)}")
        names = set(self.peers) | set(self.accepts)
        if not names:
            raise TunlabError("the relay has no peer", "give --peer NAME=IP:PORT or --accept NAME=IP")
        if set(self.peers) & set(self.accepts):
            raise TunlabError(f"peer names used twice: {sorted(set(self.peers) & set(self.accepts))}")
        for prefix, name in self.routes:
            if name not in names:
                raise TunlabError(f"--route {prefix}={name}: no peer named {name!r}", f"peers: {sorted(names)}")
            if prefix != "default":
                try:
                    ipaddress.ip_network(prefix, strict=False)
                except ValueError as exc:
                    raise TunlabError(f"--route {prefix}={name}: {exc}") from exc
        if self.tap and len(names) > 1:
            raise TunlabError("the fast relay carries TAP frames to one peer only", "use one --peer")
        if self.segment is not None and not encap.HDR_LEN + encap.MIN_CSIZE <= self.segment <= 65507:
            raise TunlabError(f"chunk datagram size {self.segment} outside "
                              f"{encap.HDR_LEN + encap.MIN_CSIZE}..65507")


class Peer:
    """One peer's address, negotiated datapath and counters."""

    def __init__(self, name: str, addr: tuple[str, int] | None, accept_ip: str | None) -> None:
        self.name = name
        self.addr = addr
        self.accept_ip = accept_ip
        self.datapath = "plain"           # what we send it now: "plain" or "gso"
        self.state = "probing"            # probing | answered | silent | forced
        self.caps = 0
        self.capable = "unknown"          # what its hello said it can receive
        self.session = 0
        self.hellos_sent = 0
        self.next_hello = 0.0
        self.first_hello = 0.0
        self.connected = False
        self.rx_packets = self.rx_bytes = 0
        self.tx_packets = self.tx_bytes = self.tx_segments = 0

    def as_counters(self) -> dict[str, Any]:
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
                "connected": self.connected, "datapath": self.datapath, "negotiation": self.state}


class FastRelay:
    """The fast relay. ``run()`` blocks until ``stop()``; ``ready`` is called (and ``ready_fd``
    written) once the device is up, the socket bound and the first hello round is over."""

    def __init__(self, config: FastConfig, *, ready: Callable[[dict[str, Any]], None] | None = None,
                 ready_fd: int | None = None) -> None:
        config.validate()
        self.config = config
        self._ready_cb = ready
        self._ready_fd = ready_fd
        self.session = secrets.randbits(32) or 1
        self.peers: dict[str, Peer] = {}
        for name, addr in config.peers.items():
            self.peers[name] = Peer(name, _resolve(addr), None)
        for name, ip in config.accepts.items():
            self.peers[name] = Peer(name, None, ip)
        self._by_addr: dict[tuple[str, int], Peer] = {p.addr: p for p in self.peers.values() if p.addr}
        self._by_ip: dict[str, Peer] = {p.accept_ip: p for p in self.peers.values() if p.accept_ip}
        self._routes = self._build_routes()
        self._route_cache: dict[bytes, Peer | None] = {}
        self._single = next(iter(self.peers.values())) if len(self.peers) == 1 else None
        self.running = False
        self.offload = False
        self.segment = config.segment or DEFAULT_SEGMENT
        self.device: Device | None = None
        self.sock: socket.socket | None = None
        self.wake_r = self._wake_w = -1
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.tx: TxPump | None = None
        self.rx: RxPump | None = None
        self.hello = {"hello_tx": 0, "hello_rx": 0, "reply_tx": 0, "reply_rx": 0}
        self.started = 0.0
        self.wakeups = 0

    # -- routing ---------------------------------------------------------------------------------
    def _build_routes(self) -> list[tuple[int, int, int, Peer]]:
        table = []
        for prefix, name in self.config.routes:
            peer = self.peers[name]
            nets = ([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")] if prefix == "default"
                    else [ipaddress.ip_network(prefix, strict=False)])
            for net in nets:
                table.append((net.version, net.prefixlen, int(net.network_address), peer))
        table.sort(key=lambda r: -r[1])
        return table

    def route_packet(self, pkt: memoryview) -> Peer | None:
        """The peer for a packet (an IP packet or, with TAP, a frame) by longest-prefix match."""
        if self._single is not None and not self._routes:
            return self._single
        version = pkt[0] >> 4
        dst = bytes(pkt[16:20]) if version == 4 else bytes(pkt[24:40]) if version == 6 else b""
        try:
            return self._route_cache[dst]
        except KeyError:
            pass
        peer = self._lookup(version, dst)
        if len(self._route_cache) > 4096:
            self._route_cache.clear()
        self._route_cache[dst] = peer
        return peer

    def _lookup(self, version: int, dst: bytes) -> Peer | None:
        if not dst:
            return self._single
        value = int.from_bytes(dst, "big")
        bits = 32 if version == 4 else 128
        for v, plen, net, peer in self._routes:
            if v == version and (value >> (bits - plen) if plen else 0) == (net >> (bits - plen) if plen else 0):
                return peer
        return self._single

    def peer_for_source(self, src: tuple[Any, ...]) -> Peer | None:
        peer = self._by_addr.get(src[:2])
        if peer is not None:
            return peer
        peer = self._by_ip.get(src[0])
        if peer is None:
            return None
        with self._lock:
            if peer.addr is not None:
                self._by_addr.pop(peer.addr, None)
            peer.addr = (src[0], src[1])
            self._by_addr[peer.addr] = peer
            peer.connected = True
            if self.config.datapath != "plain" and peer.state == "probing":
                peer.next_hello = 0.0  # learnt its port: say hello now
        log.info("peer %s: learnt address %s:%s", peer.name, src[0], src[1])
        self._stop_wait_kick()
        return peer

    # -- negotiation ----------------------------------------------------------------------------
    def _caps(self) -> int:
        return encap.CAP_PLAIN if self.config.datapath == "plain" else encap.CAP_PLAIN | encap.CAP_GSO

    def _send_hello(self, peer: Peer, kind: int, echo: int = 0) -> None:
        if peer.addr is None or self.sock is None:
            return
        data = encap.pack_hello(kind, caps=self._caps(), session=self.session, echo=echo, segment=self.segment)
        try:
            self.sock.sendto(data, peer.addr)
        except OSError as exc:
            log.debug("hello to %s failed: %s", peer.name, exc)
            return
        self.hello["hello_tx" if kind == encap.HELLO_KIND else "reply_tx"] += 1

    def on_hello(self, peer: Peer, data: bytes) -> None:
        """A hello or reply from ``peer`` (called by the receive loop)."""
        hello = encap.parse_hello(data)
        if hello is None:
            return
        with self._lock:
            peer.connected = True
            if hello.kind == encap.HELLO_KIND:
                self.hello["hello_rx"] += 1
                self._send_hello(peer, encap.REPLY_KIND, echo=hello.session)
            else:
                self.hello["reply_rx"] += 1
                if hello.echo != self.session:
                    return  # an answer to an earlier incarnation of us
            if peer.session and peer.session != hello.session and self.rx is not None:
                log.info("peer %s restarted (new session)", peer.name)
            peer.session, peer.caps = hello.session, hello.caps
            peer.capable = "gso" if hello.caps & encap.CAP_GSO else "plain"
            was = peer.datapath
            if self.config.datapath == "auto":
                peer.datapath = "gso" if hello.caps & encap.CAP_GSO else "plain"
                peer.state = "answered"
            elif self.config.datapath == "gso" and not hello.caps & encap.CAP_GSO:
                log.warning("peer %s speaks only the plain datapath but --datapath gso is forced", peer.name)
            if was != peer.datapath or hello.kind == encap.REPLY_KIND:
                ms = (time.monotonic() - peer.first_hello) * 1e3 if peer.first_hello else 0.0
                log.info("peer %s: %s datapath (its caps %#x, %s after %.1f ms)", peer.name, peer.datapath,
                         hello.caps, "hello answered" if hello.kind == encap.REPLY_KIND else "its hello", ms)
            self._update_offload()
        self._stop_wait_kick()

    def _update_offload(self) -> None:
        want = bool(self.peers) and all(p.datapath == "gso" for p in self.peers.values())
        if self.device is None or want == self.offload:
            return
        if not want:
            self.offload = False
            self.device.set_offload(False)
        else:
            self.offload = self.device.set_offload(True)
        log.info("device %s: offload %s", self.device.name, "on (GSO super-packets)" if self.offload else "off")

    def _hello_round(self, now: float) -> float:
        """Send the hellos that are due; returns the seconds until the next one."""
        if self.config.datapath == "plain":
            return 3600.0
        nxt = 3600.0
        with self._lock:
            for peer in self.peers.values():
                if peer.state != "probing" or peer.addr is None:
                    continue
                if peer.hellos_sent >= self.config.hello_tries:
                    peer.state = "silent"
                    log.info("peer %s: no answer to %d hellos: %s datapath", peer.name, peer.hellos_sent,
                             peer.datapath)
                    continue
                if now >= peer.next_hello:
                    if not peer.first_hello:
                        peer.first_hello = now
                    self._send_hello(peer, encap.HELLO_KIND)
                    peer.hellos_sent += 1
                    peer.next_hello = now + 0.1 * (2 ** peer.hellos_sent)
                nxt = min(nxt, peer.next_hello - now)
        return max(0.0, nxt)

    def _negotiated(self) -> bool:
        return all(p.state != "probing" or p.addr is None for p in self.peers.values())

    def _stop_wait_kick(self) -> None:
        self._kick.set()

    # -- life cycle ------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        self.device = Device(cfg.dev, tap=cfg.tap, addr=cfg.addr, mtu=None if cfg.attach else cfg.mtu,
                             attach=cfg.attach)
        self.sock = fast_io.make_udp_socket(cfg.listen)
        if cfg.segment is None:
            mtus = [m for m in (fast_io.path_mtu(p.addr) for p in self.peers.values() if p.addr) if m]
            if mtus:
                overhead = UDP_IPV6_OVERHEAD if ":" in cfg.listen[0] else UDP_IPV4_OVERHEAD
                self.segment = max(encap.HDR_LEN + encap.MIN_CSIZE, min(65507, min(mtus) - overhead))
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if cfg.datapath == "gso":
            for p in self.peers.values():
                p.datapath, p.state = "gso", "forced"
        elif cfg.datapath == "plain":
            for p in self.peers.values():
                p.state = "forced"
        self._update_offload()

    def run(self) -> None:
        """Set up, serve until :meth:`stop`, tear down what this relay opened."""
        self.started = time.monotonic()
        try:
            self._setup()
            self.running = True
            self.tx, self.rx = TxPump(self), RxPump(self)
            if self.config.threads:
                targets = [("tx", self._pump_loop, (self.tx, self.device.fd)),  # type: ignore[union-attr]
                           ("rx", self._pump_loop, (self.rx, self.sock.fileno()))]  # type: ignore[union-attr]
            else:
                targets = [("io", self._io_loop, ())]
            self._threads = [threading.Thread(target=self._guard, args=(fn, *a), name=f"fast-{n}", daemon=True)
                             for n, fn, a in targets]
            for t in self._threads:
                t.start()
            deadline = time.monotonic() + self.config.negotiate_wait
            while not self._stop.is_set():
                wait = self._hello_round(time.monotonic())
                if self._negotiated() or time.monotonic() >= deadline:
                    break
                self._kick.clear()
                self._kick.wait(min(wait, max(0.0, deadline - time.monotonic())))
            self._signal_ready()
            while not self._stop.is_set():
                wait = self._hello_round(time.monotonic())
                self._kick.clear()
                self._kick.wait(min(wait, 1.0))
        finally:
            self.running = False
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
            for t in self._threads:
                t.join(timeout=2.0)
            self._close()

    def _io_loop(self) -> None:
        """Both directions in one thread: poll, then drain whatever is readable."""
        tx, rx = self.tx, self.rx
        assert tx is not None and rx is not None and self.device is not None and self.sock is not None
        tun, udp = self.device.fd, self.sock.fileno()
        poller = select.poll()
        for fd in (tun, udp, self.wake_r):
            poller.register(fd, select.POLLIN)
        budget = 64
        while self.running:
            self.wakeups += 1
            for fd, _ in poller.poll():
                if fd == tun:
                    tx.drain(budget)
                elif fd == udp:
                    rx.drain(budget)

    def _pump_loop(self, pump: TxPump | RxPump, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while self.running:
            if not pump.drain(1 << 20):
                self.wakeups += 1
                poller.poll()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception:  # a bug in a loop: stop the relay instead of limping on half-duplex
            log.exception("datapath loop failed")
            self.stop()

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.device is not None:
            self.device.close()
        for fd in (self.wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self._wake_w = -1

    def stop(self) -> None:
        """Ask ``run()`` to return (thread- and signal-safe)."""
        self._stop.set()
        self._kick.set()

    def ready_info(self) -> dict[str, Any]:
        dev = self.device.name if self.device else self.config.dev
        host, port = self.config.listen
        return {"ready": True, "pid": os.getpid(), "dev": dev, "listen": [f"{host}:{port}"],
                "datapath": {"requested": self.config.datapath, "offload": self.offload,
                             "peers": {p.name: p.datapath for p in self.peers.values()}}}

    def _signal_ready(self) -> None:
        info = self.ready_info()
        log.info("ready: %s", json.dumps(info["datapath"]))
        if self._ready_fd is not None:
            try:
                os.write(self._ready_fd, (json.dumps(info) + "\n").encode())
            finally:
                os.close(self._ready_fd)
                self._ready_fd = None
        if self._ready_cb is not None:
            self._ready_cb(info)

    # -- counters ----------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Counters in the relay's JSON shape, plus a ``datapath`` section."""
        tx, rx = self.tx, self.rx
        drops: dict[str, int] = {}
        for pump_drops in ((tx.drops if tx else {}), (rx.drops if rx else {}), (rx.reasm.drops if rx else {})):
            for k, v in list(pump_drops.items()):
                drops[k] = drops.get(k, 0) + v
        return {
            "dev": {"rx_packets": tx.rx_packets if tx else 0, "rx_bytes": tx.rx_bytes if tx else 0,
                    "tx_packets": rx.tx_packets if rx else 0, "tx_bytes": rx.tx_bytes if rx else 0},
            "peers": {p.name: p.as_counters() for p in self.peers.values()},
            "drops": drops,
            "datapath": {
                "requested": self.config.datapath, "offload": self.offload, "segment": self.segment,
                "segments_read": tx.segments if tx else 0,
                "datagrams_tx": tx.datagrams if tx else 0, "udp_sends": tx.sends if tx else 0,
                "datagrams_rx": rx.datagrams if rx else 0, "udp_receives": rx.receives if rx else 0,
                "whole_streams_rx": rx.fast if rx else 0, "wakeups": self.wakeups,
                "partial_streams": len(rx.reasm.partials) if rx else 0,
                **self.hello,
            },
        }


def _resolve(addr: tuple[str, int]) -> tuple[str, int]:
    host, port = addr
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return str(info[0][4][0]), int(port)
