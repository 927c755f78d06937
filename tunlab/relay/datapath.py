"""The per-packet code: device <-> UDP datagrams, device <-> TCP frames.

Each handler drains its descriptor in batches until EAGAIN, with preallocated buffers and no per-packet
logging or allocation beyond a memoryview slice. Everything else (device, peer table, counters, sockets,
connections) belongs to the :class:`~tunlab.relay.engine.Relay` and is shared, so another datapath (a
batched/offloaded one) can subclass :class:`Datapath` and replace only these handlers.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable

from .framing import check_l2, check_l3
from .peers import Peer

if TYPE_CHECKING:
    from .engine import Relay
    from .transport import Conn

log = logging.getLogger("tunlab.relay")

BATCH = 64          # packets per handler call before giving the other descriptors a turn
BUF = 1 << 16       # receive buffer: big enough for any datagram, so oversize ones are seen and dropped
OUT_MAX = 1 << 20   # bytes queued per TCP connection before frames are dropped as "backlog"
TCP_BATCH_BUF = 1 << 18  # device packets framed in place before one send

Hook = Callable[[bytes], "bytes | bytearray | None"]


class Stats:
    """Device counters (relay's view: rx = read from the device, tx = written to it) and drops by reason."""

    __slots__ = ("dev_rx_packets", "dev_rx_bytes", "dev_tx_packets", "dev_tx_bytes", "drops")

    def __init__(self) -> None:
        self.dev_rx_packets = 0
        self.dev_rx_bytes = 0
        self.dev_tx_packets = 0
        self.dev_tx_bytes = 0
        self.drops: dict[str, int] = {}

    def dev(self) -> dict[str, int]:
        return {"rx_packets": self.dev_rx_packets, "rx_bytes": self.dev_rx_bytes,
                "tx_packets": self.dev_tx_packets, "tx_bytes": self.dev_tx_bytes}


class Datapath:
    """Shared per-packet helpers; subclasses implement the handlers for one transport."""

    #: extra TUNSETIFF flags this datapath needs (e.g. IFF_VNET_HDR for an offloading one)
    device_flags = 0

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.fd = relay.device.fd
        self.table = relay.table
        self.stats = relay.stats
        self.drops = relay.stats.drops
        self.limit = relay.packet_limit
        self.check = check_l2 if relay.config.tap else check_l3
        self.hook: Hook | None = relay.hook
        self.own_ip: bytes | None = relay.own_ip_bytes()
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._hook_warned = False
        self.dbuf = bytearray(BUF)
        self.dmv = memoryview(self.dbuf)

    # -- slow paths (drops, hooks, generic sends)
    def drop(self, reason: str, peer: Peer | None = None, count: int = 1) -> None:
        drops = self.drops
        drops[reason] = drops.get(reason, 0) + count
        if self.debug:
            log.debug("drop %s%s", reason, f" (peer {peer.name})" if peer is not None else "")

    def to_device(self, pkt: Any, n: int) -> None:
        try:
            os.write(self.fd, pkt)
        except OSError:
            self.drop("dev_write_error")
            return
        self.stats.dev_tx_packets += 1
        self.stats.dev_tx_bytes += n

    def through_hook(self, peer: Peer, pkt: memoryview) -> None:
        """vnf=hook: FUNC(bytes) -> bytes | None, then --route (or the device for our own address)."""
        assert self.hook is not None
        try:
            out = self.hook(bytes(pkt))
        except Exception as exc:  # a hook's bug drops its packet, never the relay
            self.drop("hook_error", peer)
            if not self._hook_warned:
                self._hook_warned = True
                log.warning("hook %s raised %s: %s (packet dropped; later errors only counted)",
                            self.relay.config.hook, type(exc).__name__, exc)
            return
        if out is None or not isinstance(out, (bytes, bytearray, memoryview)) or len(out) == 0:
            self.drop("hook_drop", peer)
            return
        n = len(out)
        why = self.check(out, n, self.limit)
        if why is not None:
            self.drop("hook_" + why, peer)
            return
        own = self.own_ip
        if own is not None and not self.relay.config.tap:
            dst = bytes(out[16:20]) if out[0] >> 4 == 4 else bytes(out[24:40])
            if dst == own:
                self.to_device(out, n)
                return
        dest = self.table.route(out, n)
        if dest is None:
            self.drop("no_route")
            return
        self.send(dest, out, n)

    def send(self, peer: Peer, pkt: Any, n: int) -> None:  # pragma: no cover - per transport
        raise NotImplementedError

    def on_device(self, events: int) -> None:  # pragma: no cover - per transport
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """The counters' ``datapath`` section: what was asked for and what each peer gets."""
        return {"requested": self.relay.config.datapath, "datapath": "simple",
                "peers": {name: {"datapath": "simple"} for name in self.table.peers}}

    def device_error(self, exc: OSError) -> None:
        name = self.relay.device.name if self.relay.device else "?"
        if exc.errno == 77:  # EBADFD: the interface was deleted under us
            self.relay.fail(f"device {name} was deleted while the relay was using it")
        else:
            self.relay.fail(f"reading device {name} failed: {exc.strerror or exc}")


class UdpDatapath(Datapath):
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
                    peer = self.table.accept_udp(addr[0], addr[1])
                    if peer is None:
                        self.drop("foreign")
                        continue
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


class TcpDatapath(Datapath):
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
        check = self.check
        limit = self.limit
        write = os.write
        fd = self.fd
        hook = self.hook
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
                for frame in reader.frames():
                    n = len(frame)
                    why = check(frame, n, limit)
                    if why is not None:
                        self.drop(why, peer)
                        continue
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


DATAPATHS: dict[str, str] = {
    "simple": "tunlab.relay.datapath",
    # the batched, offloaded UDP datapath (docs/fastpath.md); imported only when chosen
    "auto": "tunlab.relay.fast.datapath",
    "plain": "tunlab.relay.fast.datapath",
    "gso": "tunlab.relay.fast.datapath",
}

#: the datapath ``auto`` stands for where its module has nothing for the transport (TCP)
AUTO_FALLBACK = "simple"


def datapath_class(name: str, transport: str, *, tap: bool = False) -> type[Datapath]:
    """The datapath class for ``--datapath NAME``; other modules register theirs in DATAPATHS (lazily
    imported: the module must define ``UdpDatapath``/``TcpDatapath`` for the transports it supports).
    ``auto`` is the fast datapath over UDP and the simple one over TCP and on TAP devices: a TAP peer
    that is not a tunlab relay would write the negotiation hello into its device as an Ethernet frame
    with a multicast destination, and a bridge behind it would flood it (``--datapath gso`` still
    forces the fast datapath between two tunlab TAP relays)."""
    import importlib

    from tunlab.errors import TunlabError

    mod_name = DATAPATHS.get(name)
    if mod_name is None:
        raise TunlabError(f"--datapath: unknown datapath {name!r}", f"known: {', '.join(sorted(DATAPATHS))}")
    attr = "TcpDatapath" if transport == "tcp" else "UdpDatapath"
    if name == "auto" and (transport == "tcp" or tap):
        mod_name = DATAPATHS[AUTO_FALLBACK]
    mod = importlib.import_module(mod_name)
    cls = getattr(mod, attr, None)
    if cls is None:
        raise TunlabError(f"--datapath {name} does not support --transport {transport}",
                          "use --datapath auto or simple")
    return cls  # type: ignore[no-any-return]
