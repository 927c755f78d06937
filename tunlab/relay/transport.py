"""Underlay sockets: one UDP socket for all peers, or a TCP listener plus one connection per peer.

This module owns socket set-up and connection life (connect with backoff, reconnect, accept, replace);
the bytes themselves are moved by the datapath.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

from tunlab.errors import NeedRoot, TunlabError

from .config import format_hostport
from .framing import FrameReader, frame_limit
from .loop import EPOLLIN, EPOLLOUT
from .peers import Peer

if TYPE_CHECKING:
    from .datapath import Datapath
    from .simple import SimpleTcpDatapath, SimpleUdpDatapath
    from .engine import Relay

log = logging.getLogger("tunlab.relay")

SOCK_BUF = 4 << 20
#: a UDP socket's buffers: big enough for a few GSO super-packets, small enough that a loaded hop queues
#: tens of milliseconds, not seconds (4 MiB queued ~1.7 s of ping at the ~60 Mbit/s a loaded Python relay carries;
#: bench/load_latency_bench.py). What the kernel drops when it is full is counted (``kernel_socket``).
UDP_SOCK_BUF = 1 << 20
BACKOFF_FIRST = 0.05
#: retries of a refused connection back off up to this; a connect that is not answered (SYNs dropped) is
#: abandoned after CONNECT_TIMEOUT and tried again at once, so a peer that becomes reachable is connected
#: within about half a second, not after the kernel's SYN backoff (1, 2, 4, 8, 16 s...)
BACKOFF_MAX = 0.5
CONNECT_TIMEOUT = 0.4
#: liveness of an established connection: keepalive probes after 5 s idle, every 1 s, 3 unanswered = dead;
#: data unacknowledged for 5 s = dead (TCP_USER_TIMEOUT)
KEEPIDLE, KEEPINTVL, KEEPCNT, USER_TIMEOUT_MS = 5, 1, 3, 5000
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


def _tcp_liveness(sock: socket.socket) -> None:
    """Keepalive and a user timeout, so a peer that vanished without a FIN is noticed and replaced."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18), USER_TIMEOUT_MS)
    except OSError as exc:
        log.debug("TCP liveness options: %s", exc)


def _family(relay: "Relay") -> socket.AddressFamily:
    return socket.AF_INET6 if relay.config.family_version == 6 else socket.AF_INET


def _wildcard(family: socket.AddressFamily) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def _bind(sock: socket.socket, host: str, port: int, what: str) -> None:
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise TunlabError(f"cannot {what} on {where}: the port is in use",
                              "pick another port (--listen, -i) or stop the program that holds it") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise TunlabError(f"cannot {what} on {where}: no interface in this network namespace has {host}",
                              "use one of this namespace's addresses, or the wildcard") from None
        if exc.errno == errno.EACCES:
            raise NeedRoot(f"{what} on port {port} needs root", "run it with sudo or use a port >= 1024") from None
        raise TunlabError(f"cannot {what} on {where}: {exc.strerror}") from None


def _grow_buffers(sock: socket.socket, size: int = SOCK_BUF) -> None:
    """Socket buffers of ``size``; the FORCE variants need CAP_NET_ADMIN, else use the cap."""
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


class UdpTransport:
    """One datagram socket bound to --listen (or an ephemeral port) that talks to every peer."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.sock: socket.socket | None = None

    def open(self) -> None:
        fam = _family(self.relay)
        sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _grow_buffers(sock, UDP_SOCK_BUF)
        host, port = self.relay.config.listen or (_wildcard(fam), 0)
        _bind(sock, host, port, "listen (UDP)")
        self.sock = sock

    def start(self, dp: "Datapath") -> None:
        assert self.sock is not None
        udp: SimpleUdpDatapath = dp  # type: ignore[assignment]
        self.relay.loop.add(self.sock.fileno(), EPOLLIN, udp.on_socket)

    def bound(self) -> list[str]:
        if self.sock is None:
            return []
        host, port = self.sock.getsockname()[:2]
        return [format_hostport(host, port)]

    def connected(self, peer: Peer) -> bool:
        return peer.addr is not None

    def close(self) -> None:
        if self.sock is not None:
            self.relay.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None


class Conn:
    """One TCP connection to a peer, with its de-framer and its queue of unsent bytes."""

    __slots__ = ("sock", "fd", "peer", "reader", "out", "closed", "writing", "remote", "probation")

    def __init__(self, sock: socket.socket, peer: Peer, max_frame: int, remote: str) -> None:
        #: a second connection from a peer's address while its live one stands: it carries nothing and
        #: replaces the live one only once it sends a valid frame (or the live one dies)
        self.probation = False
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.reader = FrameReader(max_frame)
        self.out = bytearray()
        self.closed = False
        self.writing = False
        self.remote = remote


class TcpTransport:
    """Listener for --accept peers, connector (retry with backoff, reconnect) for --peer peers."""

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.loop = relay.loop
        self.family = _family(relay)
        self.listener: socket.socket | None = None
        self.connecting: dict[str, socket.socket] = {}
        self.timers: dict[str, object] = {}
        self.backoff: dict[str, float] = {}
        self.conns: set[Conn] = set()
        self.candidates: dict[str, Conn] = {}  # peer name -> the connection on probation (at most one)
        self.dp: SimpleTcpDatapath | None = None
        self.max_frame = frame_limit(relay.packet_limit)
        if relay.config.psk_file:  # a keyed link's frames carry sealed records: header and tag on top
            from .seal import OVERHEAD

            self.max_frame += OVERHEAD
        self.closing = False

    def open(self) -> None:
        listen = self.relay.config.listen
        if listen is None:
            return
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _bind(sock, listen[0], listen[1], "listen (TCP)")
        sock.listen(64)
        self.listener = sock

    def start(self, dp: "Datapath") -> None:
        self.dp = dp  # type: ignore[assignment]
        if self.listener is not None:
            self.loop.add(self.listener.fileno(), EPOLLIN, self._on_accept)
        for peer in self.relay.table.peers.values():
            if peer.spec.outgoing:
                self._connect(peer)

    def bound(self) -> list[str]:
        if self.listener is None:
            return []
        host, port = self.listener.getsockname()[:2]
        return [format_hostport(host, port)]

    def connected(self, peer: Peer) -> bool:
        return peer.conn is not None

    # -- outgoing
    def _connect(self, peer: Peer) -> None:
        t = self.timers.pop(peer.name, None)
        if t is not None:
            t.cancel()  # type: ignore[attr-defined]
        if self.closing:
            return
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _grow_buffers(sock)
        err = sock.connect_ex((peer.spec.ip, peer.spec.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._retry(peer, os.strerror(err))
            return
        self.connecting[peer.name] = sock
        self.loop.add(sock.fileno(), EPOLLOUT, lambda ev: self._connect_done(peer, sock))
        self.timers[peer.name] = self.loop.call_later(CONNECT_TIMEOUT, lambda: self._connect_timeout(peer, sock))

    def _connect_timeout(self, peer: Peer, sock: socket.socket) -> None:
        """No answer to our SYNs: abandon this attempt and start a fresh one at once."""
        if self.connecting.get(peer.name) is not sock:
            return
        self.timers.pop(peer.name, None)
        self.loop.remove(sock.fileno())
        del self.connecting[peer.name]
        sock.close()
        if peer.name not in self.backoff:
            log.info("peer %s at %s: no answer in %.1f s; retrying", peer.name,
                     format_hostport(peer.spec.ip or "?", peer.spec.port or 0), CONNECT_TIMEOUT)
        self.backoff[peer.name] = BACKOFF_FIRST
        self._connect(peer)

    def _connect_done(self, peer: Peer, sock: socket.socket) -> None:
        self.loop.remove(sock.fileno())
        self.connecting.pop(peer.name, None)
        t = self.timers.pop(peer.name, None)
        if t is not None:
            t.cancel()  # type: ignore[attr-defined]
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._retry(peer, os.strerror(err))
            return
        self.backoff.pop(peer.name, None)
        self._established(peer, sock, format_hostport(peer.spec.ip or "?", peer.spec.port or 0))

    def _retry(self, peer: Peer, why: str) -> None:
        if self.closing:
            return
        delay = self.backoff.get(peer.name)
        where = format_hostport(peer.spec.ip or "?", peer.spec.port or 0)
        if delay is None:
            delay = BACKOFF_FIRST
            log.info("peer %s at %s: %s; retrying with backoff", peer.name, where, why)
        else:
            log.debug("peer %s at %s: %s; next try in %.2fs", peer.name, where, why, delay)
        self.backoff[peer.name] = min(BACKOFF_MAX, delay * 2)
        self.timers[peer.name] = self.loop.call_later(delay, lambda: self._connect(peer))

    # -- incoming
    def _on_accept(self, events: int) -> None:
        assert self.listener is not None and self.dp is not None
        for _ in range(16):
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: try again on the next event
                log.warning("accept failed: %s", exc.strerror or exc)
                return
            peer = self.relay.table.accept_tcp(addr[0])
            if peer is None:
                self.dp.drop("foreign_connection")
                log.info("refused a TCP connection from %s (not a peer)", format_hostport(addr[0], addr[1]))
                sock.close()
                continue
            self._established(peer, sock, format_hostport(addr[0], addr[1]), incoming=True)

    # -- both
    def _established(self, peer: Peer, sock: socket.socket, remote: str, *, incoming: bool = False) -> None:
        assert self.dp is not None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _tcp_liveness(sock)
        conn = Conn(sock, peer, self.max_frame, remote)
        self.conns.add(conn)
        dp = self.dp
        self.loop.add(conn.fd, EPOLLIN, lambda ev: dp.on_conn(conn, ev))
        if incoming and peer.conn is not None and not peer.conn.closed:
            # anyone on the peer's machine can connect from its address: the live connection stays until
            # this one proves itself with a valid frame, or the live one dies
            conn.probation = True
            old = self.candidates.pop(peer.name, None)
            self.candidates[peer.name] = conn
            if old is not None:
                self.lost(old, f"a newer connection from {remote} came")
            log.info("peer %s: a second connection (%s) waits for a valid frame before it replaces %s",
                     peer.name, remote, peer.conn.remote)
            return
        if peer.conn is not None:
            self.lost(peer.conn, f"replaced by a new connection from {remote}")
        peer.conn = conn
        log.info("peer %s connected (%s)", peer.name, remote)
        dp.on_connected(conn)

    def promote(self, conn: Conn, why: str = "it sent a valid frame") -> None:
        """A connection on probation becomes its peer's live connection."""
        peer = conn.peer
        if self.candidates.get(peer.name) is conn:
            del self.candidates[peer.name]
        conn.probation = False
        old = peer.conn
        peer.conn = conn
        if old is not None and old is not conn:
            self.lost(old, f"replaced by {conn.remote}: {why}")
        log.info("peer %s connected (%s)", peer.name, conn.remote)

    def lost(self, conn: Conn, why: str) -> None:
        """Close one connection (idempotent); an outgoing peer reconnects after a backoff."""
        if conn.closed:
            return
        conn.closed = True
        self.loop.remove(conn.fd)
        conn.sock.close()
        self.conns.discard(conn)
        peer = conn.peer
        if self.candidates.get(peer.name) is conn:
            del self.candidates[peer.name]
            log.info("peer %s: connection on probation (%s) closed: %s", peer.name, conn.remote, why)
            return
        if peer.conn is conn:
            peer.conn = None
        log.info("peer %s disconnected (%s): %s", peer.name, conn.remote, why)
        cand = self.candidates.get(peer.name)
        if cand is not None and peer.conn is None and not self.closing:
            self.promote(cand, "the live one is gone")
        if peer.spec.outgoing and not self.closing:
            self._retry(peer, why)

    def want_write(self, conn: Conn) -> None:
        if not conn.writing and not conn.closed:
            conn.writing = True
            self.loop.modify(conn.fd, EPOLLIN | EPOLLOUT)

    def flush(self, conn: Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return
            except OSError as exc:
                self.lost(conn, f"send failed: {exc.strerror or exc}")
                return
            del conn.out[:sent]
        if not conn.out and conn.writing:
            conn.writing = False
            self.loop.modify(conn.fd, EPOLLIN)

    def close(self) -> None:
        self.closing = True
        for t in self.timers.values():
            t.cancel()  # type: ignore[attr-defined]
        self.timers.clear()
        for sock in self.connecting.values():
            self.loop.remove(sock.fileno())
            sock.close()
        self.connecting.clear()
        for conn in list(self.conns):
            self.lost(conn, "relay stopping")
        if self.listener is not None:
            self.loop.remove(self.listener.fileno())
            self.listener.close()
            self.listener = None
