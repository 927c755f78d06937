"""The simple datapath (``--datapath simple``, and ``auto`` over TCP or on TAP): one packet per system call.

Device <-> UDP datagrams (one packet per datagram, no header: socat's UDP-DATAGRAM format) and device <->
TCP frames (2-byte big-endian length + packet: simpletun's and TunConnector's format). Each handler drains
its descriptor in batches until EAGAIN, with preallocated buffers and no per-packet logging or allocation
beyond a memoryview slice.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from .datapath import BATCH, BUF, OUT_MAX, TCP_BATCH_BUF, Datapath
from .transport import TCP_QUICKACK

IPPROTO_TCP = socket.IPPROTO_TCP
from .peers import Peer

if TYPE_CHECKING:
    from .engine import Relay
    from .framing import FrameReader
    from .transport import Conn


class SimpleUdpDatapath(Datapath):
    """One packet per datagram, no header (socat's UDP-DATAGRAM format)."""

    def __init__(self, relay: "Relay") -> None:
        super().__init__(relay)
        self.sock: socket.socket = relay.transport.sock  # type: ignore[attr-defined]
        self.v6 = self.sock.family == socket.AF_INET6
        self.rbuf = bytearray(BUF)
        self.rmv = memoryview(self.rbuf)
        self.dvec = [self.dmv]

    def on_device(self, events: int) -> None:
        readv = os.readv
        fd = self.fd
        vec = self.dvec
        mv = self.dmv
        sendto = self.sock.sendto
        fixed = self.table.fixed
        route = self.table.route
        rx_p = rx_b = 0
        try:
            for _ in range(BATCH):
                n = readv(fd, vec)
                rx_p += 1
                rx_b += n
                peer = fixed if fixed is not None else route(mv, n)
                if peer is None:
                    self.drop("no_route")
                    continue
                if peer.path is not None:
                    self.staged(peer, mv[:n], n)
                    continue
                addr = peer.addr
                if addr is None:
                    self.drop("peer_down", peer)
                    continue
                try:
                    sendto(mv[:n], addr)
                except BlockingIOError:
                    self.drop("backlog", peer)
                    continue
                except OSError:
                    self.drop("send_error", peer)
                    continue
                peer.tx_packets += 1
                peer.tx_bytes += n
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b

    def on_socket(self, events: int) -> None:
        recv = self.sock.recvfrom_into
        buf = self.rbuf
        mv = self.rmv
        by_addr = self.table.by_addr
        check = self.check
        limit = self.limit
        write = os.write
        fd = self.fd
        hook = self.hook
        v6 = self.v6
        tx_p = tx_b = 0
        try:
            for _ in range(BATCH):
                try:
                    n, addr = recv(buf)
                except BlockingIOError:
                    break
                except OSError:
                    self.drop("recv_error")
                    break
                if v6:
                    addr = addr[:2]
                peer = by_addr.get(addr)
                if peer is None:
                    peer = self.table.udp_candidate(addr[0])
                    if peer is None:
                        self.drop("foreign")
                        continue
                    why = check(buf, n, limit)
                    if why is not None:  # a new source moves the reply address only with a valid packet
                        self.drop(why, peer)
                        continue
                    self.table.accept_udp(addr[0], addr[1], peer)
                else:
                    why = check(buf, n, limit)
                    if why is not None:
                        self.drop(why, peer)
                        continue
                peer.rx_packets += 1
                peer.rx_bytes += n
                if hook is None:
                    try:
                        write(fd, mv[:n])
                    except OSError:
                        self.drop("dev_write_error", peer)
                        continue
                    tx_p += 1
                    tx_b += n
                else:
                    self.through_hook(peer, mv[:n])
        finally:
            st = self.stats
            st.dev_tx_packets += tx_p
            st.dev_tx_bytes += tx_b

    def send(self, peer: Peer, pkt: Any, n: int) -> None:
        if peer.addr is None:
            self.drop("peer_down", peer)
            return
        try:
            self.sock.sendto(pkt, peer.addr)
        except BlockingIOError:
            self.drop("backlog", peer)
            return
        except OSError:
            self.drop("send_error", peer)
            return
        peer.tx_packets += 1
        peer.tx_bytes += n


class SimpleTcpDatapath(Datapath):
    """A stream of frames: 2-byte big-endian length + one packet.

    Packets read from the device in one batch are framed in place in one buffer and handed to the socket
    in one send per peer (a frame is never split into header and packet writes; TCP_NODELAY is on), so a
    burst costs one syscall instead of one per packet, and a lone packet (ping) goes out at once.
    """

    def __init__(self, relay: "Relay") -> None:
        super().__init__(relay)
        self.transport = relay.transport
        self.tbuf = bytearray(TCP_BATCH_BUF)
        self.tmv = memoryview(self.tbuf)
        self.room = 2 + BUF  # what one more read may need

    def on_device(self, events: int) -> None:
        readv = os.readv
        fd = self.fd
        buf = self.tbuf
        mv = self.tmv
        size = len(buf)
        room = self.room
        fixed = self.table.fixed
        route = self.table.route
        rx_p = rx_b = 0
        off = 0              # framed bytes waiting for `cur`
        cur: Peer | None = None
        cur_p = cur_b = 0
        try:
            for _ in range(BATCH):
                if off and size - off < room:
                    self.flush(cur, mv[:off], cur_p, cur_b)  # type: ignore[arg-type]
                    off = cur_p = cur_b = 0
                n = readv(fd, [mv[off + 2:]])
                rx_p += 1
                rx_b += n
                peer = fixed if fixed is not None else route(mv[off + 2:off + 2 + n], n)
                if peer is None:
                    self.drop("no_route")
                    continue
                if peer.path is not None:  # through its stages, one frame per packet (linkpath)
                    pkt = bytes(mv[off + 2:off + 2 + n])
                    if off:
                        self.flush(cur, mv[:off], cur_p, cur_b)  # type: ignore[arg-type]
                        off = cur_p = cur_b = 0
                        cur = None
                    self.staged(peer, pkt, n)
                    continue
                if peer.conn is None:
                    self.drop("peer_down", peer)
                    continue
                if peer is not cur:
                    if off:
                        self.flush(cur, mv[:off], cur_p, cur_b)  # type: ignore[arg-type]
                        buf[2:2 + n] = buf[off + 2:off + 2 + n]
                        off = cur_p = cur_b = 0
                    cur = peer
                buf[off] = n >> 8
                buf[off + 1] = n & 0xFF
                off += n + 2
                cur_p += 1
                cur_b += n
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            if off:
                self.flush(cur, mv[:off], cur_p, cur_b)  # type: ignore[arg-type]
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b

    def on_connected(self, conn: "Conn") -> None:
        """A connection became its peer's live one (a keyed datapath starts its session here)."""

    def flush(self, peer: Peer, frames: memoryview, packets: int, nbytes: int) -> None:
        conn = peer.conn
        if conn is None:
            self.drop("peer_down", peer, packets)
        elif self.send_frame(conn, frames, packets):
            peer.tx_packets += packets
            peer.tx_bytes += nbytes

    def send_frame(self, conn: "Conn", data: memoryview | bytes, packets: int = 1) -> bool:
        """Send whole frames (queue what the socket does not take now). False if they were dropped."""
        if conn.out:
            if len(conn.out) >= OUT_MAX:
                self.drop("backlog", conn.peer, packets)
                return False
            conn.out += data
            return True
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.drop("send_error", conn.peer, packets)
            self.transport.lost(conn, f"send failed: {exc.strerror or exc}")
            return False
        if sent < len(data):
            conn.out += data[sent:]
            self.transport.want_write(conn)
        return True

    def send(self, peer: Peer, pkt: Any, n: int) -> None:
        conn = peer.conn
        if conn is None:
            self.drop("peer_down", peer)
            return
        if self.send_frame(conn, n.to_bytes(2, "big") + bytes(pkt)):
            peer.tx_packets += 1
            peer.tx_bytes += n

    def on_conn(self, conn: "Conn", events: int) -> None:
        if events & 0x004:  # EPOLLOUT
            self.transport.flush(conn)
            if conn.closed:
                return
        if not events & ~0x004:
            return
        sock = conn.sock
        reader = conn.reader
        peer = conn.peer
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
                # acknowledge at once: a legacy peer (simpletun, TunConnector) writes the length and the
                # packet in two writes without TCP_NODELAY, and its Nagle holds the packet until our ACK;
                # a delayed ACK would add ~40 ms to every round trip
                try:
                    sock.setsockopt(IPPROTO_TCP, TCP_QUICKACK, 1)
                except OSError:
                    pass
                reader.end += got
                self.deliver(conn, reader)
                if conn.closed:
                    return
                if reader.error is not None:
                    self.drop(reader.error, peer)
                    self.transport.lost(conn, "bad frame length: the stream is not 2-byte length framing")
                    return
        finally:
            self.delivered()

    def deliver(self, conn: "Conn", reader: "FrameReader") -> None:
        """The whole frames received on ``conn``: checked, then into the device (or the hook)."""
        peer = conn.peer
        check = self.check
        limit = self.limit
        write = os.write
        fd = self.fd
        hook = self.hook
        tx_p = tx_b = 0
        for frame in reader.frames():
            n = len(frame)
            why = check(frame, n, limit)
            if why is not None:
                self.drop(why, peer)
                continue
            if conn.probation:
                self.transport.promote(conn)
            peer.rx_packets += 1
            peer.rx_bytes += n
            if hook is None:
                try:
                    write(fd, frame)
                except OSError:
                    self.drop("dev_write_error", peer)
                    continue
                tx_p += 1
                tx_b += n
            else:
                self.through_hook(peer, frame)
        st = self.stats
        st.dev_tx_packets += tx_p
        st.dev_tx_bytes += tx_b

    def delivered(self) -> None:
        """After a readable connection was handled (the compiled datapath takes its counters here)."""
