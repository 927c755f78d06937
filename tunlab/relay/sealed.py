"""``--psk-file``: every UDP datagram, and every TCP frame, authenticated and encrypted (relay/seal.py).

What it guarantees (issue 14, the WireGuard behaviour): a datagram that does not open is dropped and counted
by reason and changes nothing -- it never reaches the device or a hook, never moves a peer's reply address,
never starts a session; a peer's endpoint moves only on an authentic datagram (so a roaming peer is followed
and a spoofing one is not). Hellos go to every peer whose address is known, every second until it answers,
and a session is renewed before its counter or age runs out (the previous one stays valid for a grace
period). Sealed links carry one packet per datagram (the gso datapath's chunks are not sealed yet: it runs
``plain``), and socat or other non-tunlab peers cannot be reached under a key.

Over TCP (:class:`SealedTcpDatapath`) each frame keeps the 2-byte length and carries a sealed record (a
hello or a data record, the UDP datagram's exact bytes): each connection starts with a fresh hello from both
ends, a connection from the peer's address replaces the live one only once it sent an authentic record
(a recorded hello replayed on a new connection is a replay: the peer's hello times only grow), and a record
that does not open is dropped and counted and changes nothing.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .datapath import BATCH
from .peers import Peer
from .seal import OVERHEAD, Sealer, read_key_file
from .simple import SimpleTcpDatapath, SimpleUdpDatapath

if TYPE_CHECKING:
    from .engine import Relay
    from .transport import Conn

HELLO_RETRY = 1.0   # s between hellos to a peer without a session
TICK = 5.0          # s between checks of sessions that are up (rekey by age)


class SealedUdpDatapath(SimpleUdpDatapath):
    impl_reason = "keyed link: sealing runs in Python"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        psk = read_key_file(str(relay.config.psk_file))
        keylog = relay.config.seal_keylog
        on_key = self._keylog_writer(keylog) if keylog else None
        self.sealers: dict[str, Sealer] = {name: Sealer(psk, drops=self.drops, on_key=on_key)
                                           for name in self.table.peers}
        self.by_ip: dict[str, list[Peer]] = {}
        for p in self.table.peers.values():
            self.by_ip.setdefault(p.spec.ip or "", []).append(p)
        self.loop = relay.loop
        self.timer: Any = None
        self._tick()

    @staticmethod
    def _keylog_writer(path: str) -> Any:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

        def write(key_id: int, key: bytes) -> None:
            os.write(fd, b'{"key_id": %d, "key": "%s"}\n' % (key_id, key.hex().encode()))
        return write

    # -- sessions
    def _hello(self, peer: Peer, now: float, fresh: bool = False) -> None:
        if peer.addr is None:
            return
        s = self.sealers[peer.name]
        data = s.rekey(now) if fresh else s.hello(now)
        try:
            self.sock.sendto(data, peer.addr)
        except OSError:
            self.drop("send_error", peer)

    def _tick(self) -> None:
        now = time.time()
        waiting = False
        for name, peer in self.table.peers.items():
            s = self.sealers[name]
            if s.tx is None:
                waiting = True
                self._hello(peer, now)
            elif s.needs_rekey(now):
                self._hello(peer, now, fresh=True)
        self.timer = self.loop.call_later(HELLO_RETRY if waiting else TICK, self._tick)

    # -- device -> peers
    def on_device(self, events: int) -> None:
        readv = os.readv
        fd = self.fd
        vec = self.dvec
        mv = self.dmv
        rx_p = rx_b = 0
        now = time.time()
        try:
            for _ in range(BATCH):
                n = readv(fd, vec)
                rx_p += 1
                rx_b += n
                peer = self.table.fixed or self.table.route(mv, n)
                if peer is None:
                    self.drop("no_route")
                    continue
                if peer.path is not None:  # impaired first, sealed when it leaves (linkpath)
                    self.staged(peer, mv[:n], n)
                    continue
                self.send(peer, mv[:n], n, now)
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b

    def send(self, peer: Peer, pkt: Any, n: int, now: float | None = None) -> None:
        if peer.addr is None:
            self.drop("peer_down", peer)
            return
        sealed = self.sealers[peer.name].seal(bytes(pkt), time.time() if now is None else now)
        if sealed is None:
            self.drop("seal_no_session", peer)
            return
        try:
            self.sock.sendto(sealed, peer.addr)
        except BlockingIOError:
            self.drop("backlog", peer)
            return
        except OSError:
            self.drop("send_error", peer)
            return
        peer.tx_packets += 1
        peer.tx_bytes += n

    # -- peers -> device
    def on_socket(self, events: int) -> None:
        recv = self.sock.recvfrom_into
        buf = self.rbuf
        now = time.time()
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:
                self.drop("recv_error")
                break
            if self.v6:
                addr = addr[:2]
            data = bytes(buf[:n])
            candidates = self._candidates(addr)
            if not candidates:
                self.drop("foreign")
                continue
            for peer in candidates:  # a peer's IP may stand for several names: the key decides which
                kind, packet, reply = self.sealers[peer.name].open(data, now)
                if kind in ("hello", "data"):
                    break
            else:
                continue  # dropped and counted by the sealer, nothing changed
            self._authentic(peer, addr, reply)
            if kind == "hello":
                continue
            assert packet is not None
            self._deliver(peer, packet)

    def _authentic(self, peer: Peer, addr: tuple[Any, ...], reply: bytes | None) -> None:
        """An authentic datagram from ``addr``: the peer is (now) there; a hello's answer goes back."""
        if peer.addr != addr:
            if peer.addr is not None:
                self.table.by_addr.pop(peer.addr, None)  # type: ignore[arg-type]
            peer.addr = addr
            self.table.by_addr[addr] = peer  # type: ignore[index]
        if reply is not None:
            try:
                self.sock.sendto(reply, addr)
            except OSError:
                self.drop("send_error", peer)

    def _deliver(self, peer: Peer, packet: bytes) -> None:
        """An opened inner packet: checked, counted, into the device (or the hook)."""
        size = len(packet)
        why = self.check(packet, size, self.limit)
        if why is not None:
            self.drop(why, peer)
            return
        peer.rx_packets += 1
        peer.rx_bytes += size
        if self.hook is None:
            self.to_device(packet, size)
        else:
            self.through_hook(peer, memoryview(packet))

    def _candidates(self, addr: tuple[Any, ...]) -> list[Peer]:
        known = self.table.by_addr.get(addr)
        if known is not None:
            return [known]
        return self.by_ip.get(addr[0], []) + self.by_ip.get("", [])

    def info(self) -> dict[str, Any]:
        return {"requested": self.relay.config.datapath, "datapath": "sealed",
                "seal": {"aead": "chacha20-poly1305", "overhead": OVERHEAD},
                "peers": {name: {"datapath": "sealed", "session": self.sealers[name].tx is not None}
                          for name in self.table.peers}}


class SealedTcpDatapath(SimpleTcpDatapath):
    """Keyed TCP: 2-byte length + one sealed record per frame; one key session per peer (its hello times
    survive reconnections, so an old connection's hello replayed on a new one is refused)."""

    impl_reason = "keyed link: sealing runs in Python"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        psk = read_key_file(str(relay.config.psk_file))
        keylog = relay.config.seal_keylog
        on_key = SealedUdpDatapath._keylog_writer(keylog) if keylog else None
        self.sealers: dict[str, Sealer] = {name: Sealer(psk, drops=self.drops, on_key=on_key)
                                           for name in self.table.peers}
        self.dvec = [self.dmv]
        self.loop = relay.loop
        self.timer: Any = self.loop.call_later(TICK, self._tick)

    def _send_record(self, conn: Conn, record: bytes) -> bool:
        return self.send_frame(conn, len(record).to_bytes(2, "big") + record)

    def on_connected(self, conn: Conn) -> None:
        """A new connection (either side): a fresh session, proposed at once."""
        self._send_record(conn, self.sealers[conn.peer.name].rekey(time.time()))

    def _tick(self) -> None:
        now = time.time()
        for name, peer in self.table.peers.items():
            s = self.sealers[name]
            if peer.conn is not None and s.needs_rekey(now):
                self._send_record(peer.conn, s.rekey(now))
        self.timer = self.loop.call_later(TICK, self._tick)

    # -- device -> peers
    def on_device(self, events: int) -> None:
        readv = os.readv
        fd = self.fd
        vec = self.dvec
        mv = self.dmv
        rx_p = rx_b = 0
        now = time.time()
        try:
            for _ in range(BATCH):
                n = readv(fd, vec)
                rx_p += 1
                rx_b += n
                peer = self.table.fixed or self.table.route(mv, n)
                if peer is None:
                    self.drop("no_route")
                    continue
                if peer.path is not None:  # impaired first, sealed when it leaves (linkpath)
                    self.staged(peer, mv[:n], n)
                    continue
                self.send(peer, mv[:n], n, now)
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b

    def send(self, peer: Peer, pkt: Any, n: int, now: float | None = None) -> None:
        conn = peer.conn
        if conn is None:
            self.drop("peer_down", peer)
            return
        record = self.sealers[peer.name].seal(bytes(pkt), time.time() if now is None else now)
        if record is None:
            self.drop("seal_no_session", peer)
            return
        if self._send_record(conn, record):
            peer.tx_packets += 1
            peer.tx_bytes += n

    # -- peers -> device
    def on_conn(self, conn: Conn, events: int) -> None:
        if events & 0x004:  # EPOLLOUT
            self.transport.flush(conn)
            if conn.closed:
                return
        if not events & ~0x004:
            return
        sock = conn.sock
        reader = conn.reader
        peer = conn.peer
        sealer = self.sealers[peer.name]
        tx_p = tx_b = 0
        try:
            for _ in range(BATCH // 4):
                try:
                    got = sock.recv_into(reader.space())
                except BlockingIOError:
                    break
                except OSError as exc:
                    self.transport.lost(conn, f"receive failed: {exc.strerror or exc}")
                    return
                if got == 0:
                    self.transport.lost(conn, "closed by the peer")
                    return
                reader.end += got
                now = time.time()
                for frame in reader.frames():
                    kind, packet, reply = sealer.open(bytes(frame), now)
                    if kind not in ("hello", "data"):
                        continue  # dropped and counted by the sealer; nothing changed
                    if conn.probation:  # an authentic record: this connection is the peer's
                        self.transport.promote(conn, "it sent an authentic record")
                    if kind == "hello":
                        if reply is not None:
                            self._send_record(conn, reply)
                        continue
                    assert packet is not None
                    n = len(packet)
                    why = self.check(packet, n, self.limit)
                    if why is not None:
                        self.drop(why, peer)
                        continue
                    peer.rx_packets += 1
                    peer.rx_bytes += n
                    if self.hook is None:
                        try:
                            os.write(self.fd, packet)
                        except OSError:
                            self.drop("dev_write_error", peer)
                            continue
                        tx_p += 1
                        tx_b += n
                    else:
                        self.through_hook(peer, memoryview(packet))
                if conn.closed:
                    return
                if reader.error is not None:
                    self.drop(reader.error, peer)
                    self.transport.lost(conn, "bad frame length: the stream is not 2-byte length framing")
                    return
        finally:
            st = self.stats
            st.dev_tx_packets += tx_p
            st.dev_tx_bytes += tx_b

    def info(self) -> dict[str, Any]:
        return {"requested": self.relay.config.datapath, "datapath": "sealed",
                "seal": {"aead": "chacha20-poly1305", "overhead": OVERHEAD},
                "peers": {name: {"datapath": "sealed", "session": self.sealers[name].tx is not None}
                          for name in self.table.peers}}
