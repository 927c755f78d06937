"""The two halves of the fast relay: device -> UDP (``TxPump``) and UDP -> device (``RxPump``).

Each pump has ``drain(budget)``: it works until its descriptor would block (returns False) or
``budget`` reads were done (returns True). Python work is per read/receive (one stream, one GRO
batch), never per TCP segment on the offload path. The plain path costs one device read per
packet and one UDP send per run of equal-size packets (UDP GSO), and one receive per GRO batch
plus one device write per packet.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING

from tunlab.relay import encap, fast_io

if TYPE_CHECKING:
    from tunlab.relay.fast import FastRelay, Peer

_MSG_TRUNC = socket.MSG_TRUNC
RX_BUF = 65536 + 4096
PLAIN_BATCH = 64


class Drops(dict[str, int]):
    def add(self, reason: str, n: int = 1) -> None:
        self[reason] = self.get(reason, 0) + n


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "other").lower()


class TxPump:
    """Device -> peers. Streams become chunks (offload on) or runs of plain packets (offload off)."""

    def __init__(self, relay: FastRelay) -> None:
        self.relay = relay
        self.drops = Drops()
        self.rx_packets = 0  # read from the device
        self.rx_bytes = 0
        self.segments = 0    # packets the reads stand for (a GSO read stands for several)
        self.datagrams = 0
        self.sends = 0
        self.pid = 0
        dev = relay.device
        assert dev is not None
        # offload path: the device read scatters the stream into chunk slots
        self.layout = encap.TxLayout(relay.segment, queue=0)
        self.gso_cmsg = fast_io.gso_cmsg(relay.segment)
        # plain path: one packet per slot, slots of the device MTU back to back
        self.stride = dev.mtu + (14 if dev.tap else 0)
        nslots = max(1, min(PLAIN_BATCH, fast_io.UDP_MAX_SEGS, fast_io.UDP_MAX_PAYLOAD // self.stride))
        self.pbuf = bytearray(nslots * self.stride)
        self.pview = memoryview(self.pbuf)
        self.scratch = bytearray(encap.VNET_LEN)
        self.overflow = bytearray(encap.MAX_STREAM)
        self.iovs = [(self.scratch, self.pview[k * self.stride:(k + 1) * self.stride], self.overflow)
                     for k in range(nslots)]
        self.cmsgs: dict[int, list[tuple[int, int, bytes]]] = {}

    def drain(self, budget: int) -> bool:
        if self.relay.offload:
            return self._drain_gso(budget)
        return self._drain_plain(budget)

    # -- offload: whole streams as chunks --------------------------------------------------------
    def _drain_gso(self, budget: int) -> bool:
        relay = self.relay
        fd, sock = relay.device.fd, relay.sock  # type: ignore[union-attr]
        layout = self.layout
        slots, g, cmsg = layout.slots, layout.segment, self.gso_cmsg
        readv, sendmsg, sendto, finish = os.readv, sock.sendmsg, sock.sendto, layout.finish  # type: ignore[union-attr]
        route = relay.route_packet
        gso_segments = encap.gso_segments
        first = slots[0]
        slot0 = first[encap.VNET_LEN:]
        drops = self.drops
        maxpay, maxsegs = fast_io.UDP_MAX_PAYLOAD, fast_io.UDP_MAX_SEGS
        for _ in range(budget):
            if not relay.offload:
                return True
            try:
                n = readv(fd, slots)
            except BlockingIOError:
                return False
            except OSError as exc:
                drops.add("device_read_" + _errname(exc))
                if exc.errno == errno.EBADF:
                    return False
                continue
            if n <= encap.VNET_LEN:
                drops.add("short_read")
                continue
            peer = route(slot0)
            if peer is None:
                drops.add("no_route")
                continue
            addr = peer.addr
            if addr is None or peer.datapath != "gso":
                drops.add("peer_unknown_address" if addr is None else "offload_leftover")
                continue
            self.pid += 1
            data, count = finish(n, self.pid)
            try:
                if count == 1:
                    sendto(data, addr)
                    self.sends += 1
                elif len(data) <= maxpay and count <= maxsegs:
                    sendmsg((data,), cmsg, 0, addr)
                    self.sends += 1
                else:
                    for a, b in encap.send_pieces(count, len(data), g, maxpay, maxsegs):
                        sendmsg((data[a:b],), cmsg, 0, addr)
                        self.sends += 1
            except OSError as exc:
                drops.add("send_" + _errname(exc))
                continue
            segs = gso_segments(first, n)
            plen = n - encap.VNET_LEN
            self.rx_packets += 1
            self.rx_bytes += plen
            self.segments += segs
            self.datagrams += count
            peer.tx_packets += 1
            peer.tx_bytes += plen
            peer.tx_segments += segs
        return True

    # -- plain: one packet per datagram, runs of equal-size packets in one UDP GSO send ----------
    def _drain_plain(self, budget: int) -> bool:
        relay = self.relay
        fd, sock = relay.device.fd, relay.sock  # type: ignore[union-attr]
        stride, view, iovs = self.stride, self.pview, self.iovs
        nslots = len(iovs)
        scratch = self.scratch
        readv = os.readv
        route = relay.route_packet
        drops = self.drops
        k = 0             # packets in the run
        blen = 0          # length of every packet of the run but the last
        last = 0          # length of the last packet of the run
        bpeer: Peer | None = None
        more = True
        for _ in range(budget):
            if k == nslots or (k and last < blen):
                self._flush(sock, bpeer, k, blen, last)  # type: ignore[arg-type]
                k = 0
            if relay.offload:
                break
            try:
                n = readv(fd, iovs[k])
            except BlockingIOError:
                more = False
                break
            except OSError as exc:
                drops.add("device_read_" + _errname(exc))
                if exc.errno == errno.EBADF:
                    more = False
                    break
                continue
            plen = n - encap.VNET_LEN
            if plen <= 0:
                drops.add("short_read")
                continue
            if plen > stride or scratch[0] or scratch[1]:
                self._flush(sock, bpeer, k, blen, last)  # type: ignore[arg-type]
                k = 0
                self._leftover(bytes(scratch) + bytes(view[:min(plen, stride)])
                               + bytes(self.overflow[:max(0, plen - stride)]))
                continue
            off = k * stride
            peer = route(view[off:off + plen])
            if peer is None:
                drops.add("no_route")
                continue
            self.rx_packets += 1
            self.rx_bytes += plen
            self.segments += 1
            peer.tx_packets += 1
            peer.tx_bytes += plen
            peer.tx_segments += 1
            if k and (peer is not bpeer or plen > blen):
                # this packet cannot extend the run: send the run, restart it with this packet
                pkt = bytes(view[off:off + plen])
                self._flush(sock, bpeer, k, blen, last)  # type: ignore[arg-type]
                view[:plen] = pkt
                k = 0
            if k == 0:
                bpeer, blen = peer, plen
            last = plen
            k += 1
        self._flush(sock, bpeer, k, blen, last)  # type: ignore[arg-type]
        return more

    def _flush(self, sock: socket.socket, peer: Peer | None, k: int, blen: int, last: int) -> None:
        if not k or peer is None:
            return
        addr = peer.addr
        if addr is None:
            self.drops.add("peer_unknown_address", k)
            return
        view, stride = self.pview, self.stride
        try:
            if k == 1:
                sock.sendto(view[:last], addr)
            else:
                cm = self.cmsgs.get(blen)
                if cm is None:
                    cm = self.cmsgs[blen] = fast_io.gso_cmsg(blen)
                if blen == stride:
                    sock.sendmsg((view[:(k - 1) * stride + last],), cm, 0, addr)
                else:
                    parts = [view[i * stride:i * stride + blen] for i in range(k - 1)]
                    parts.append(view[(k - 1) * stride:(k - 1) * stride + last])
                    sock.sendmsg(parts, cm, 0, addr)
            self.sends += 1
            self.datagrams += k
        except OSError as exc:
            self.drops.add("send_" + _errname(exc), k)

    def _leftover(self, stream: bytes) -> None:
        """A read that still carries offload metadata after offload was turned off."""
        relay = self.relay
        peer = relay.route_packet(memoryview(stream)[encap.VNET_LEN:])
        if peer is None or peer.addr is None or relay.sock is None or "gso" not in (peer.datapath, peer.capable):
            self.drops.add("offload_leftover")
            return
        self.pid += 1
        try:
            for d in encap.split_stream(stream, queue=0, pid=self.pid, csize=relay.segment - encap.HDR_LEN):
                relay.sock.sendto(d, peer.addr)
        except (OSError, ValueError):
            self.drops.add("offload_leftover")


class RxPump:
    """Peers -> device. One receive per GRO batch; a whole stream goes to the device in one write."""

    def __init__(self, relay: FastRelay) -> None:
        self.relay = relay
        self.drops = Drops()
        self.tx_packets = 0  # written to the device
        self.tx_bytes = 0
        self.receives = 0
        self.datagrams = 0
        self.fast = 0        # streams that arrived whole in one receive
        self.reasm = encap.Reassembler()
        self.buf = bytearray(RX_BUF)
        self.view = memoryview(self.buf)
        self.views = encap.RxViews(self.buf)

    def drain(self, budget: int) -> bool:
        relay = self.relay
        fd, sock = relay.device.fd, relay.sock  # type: ignore[union-attr]
        buf, view, views = self.buf, self.view, self.views
        bufs = (buf,)
        recv = sock.recvmsg_into  # type: ignore[union-attr]
        space = fast_io.GRO_CMSG_SPACE
        writev = os.writev
        lookup = relay.peer_for_source
        columns_ok = encap.gro_columns_ok
        gro_segment = fast_io.gro_segment
        magic0 = encap.MAGIC[0]
        hdr_len, vnet_len = encap.HDR_LEN, encap.VNET_LEN
        drops = self.drops
        for _ in range(budget):
            try:
                n, anc, flags, src = recv(bufs, space)
            except BlockingIOError:
                return False
            except OSError as exc:
                drops.add("recv_" + _errname(exc))
                if exc.errno == errno.EBADF:
                    return False
                continue
            self.receives += 1
            if flags & _MSG_TRUNC:
                drops.add("truncated")
                continue
            peer = lookup(src)
            if peer is None:
                drops.add("unknown_source")
                continue
            seg = gro_segment(anc) if anc else 0
            if not seg or seg > n:
                seg = n
            if n and buf[0] == magic0:
                count = columns_ok(buf, n, seg)
                if count:
                    plen = n - count * hdr_len - vnet_len
                    if plen <= 0:
                        drops.add("malformed")
                        continue
                    self.datagrams += count
                    self.fast += 1
                    try:
                        writev(fd, views.payloads(seg, count, n))
                    except OSError as exc:
                        drops.add("device_write_" + _errname(exc))
                        continue
                    self.tx_packets += 1
                    self.tx_bytes += plen
                    peer.rx_packets += 1
                    peer.rx_bytes += plen
                    continue
            self._slow(fd, peer, view, n, seg)
        return True

    def _slow(self, fd: int, peer: Peer, view: memoryview, n: int, seg: int) -> None:
        """Datagram by datagram: plain packets, hellos, chunks through the reassembler."""
        magic0 = encap.MAGIC[0]
        zero = encap.ZERO_VNET
        for off in range(0, n, seg):
            dgram = view[off:min(n, off + seg)]
            self.datagrams += 1
            first = dgram[0] if len(dgram) else 0
            if first == magic0:
                stream = self.reasm.add(peer, dgram)
                if stream is not None:
                    self._write(fd, peer, (stream,), len(stream) - encap.VNET_LEN)
            elif first >> 4 == 4 or first >> 4 == 6:
                if len(dgram) == encap.HELLO_LEN and dgram[9] == encap.HELLO_PROTO and encap.is_hello(dgram):
                    self.relay.on_hello(peer, bytes(dgram))
                    continue
                self._write(fd, peer, (zero, dgram), len(dgram))
            else:
                self.drops.add("malformed")

    def _write(self, fd: int, peer: Peer, parts: tuple[bytes | memoryview, ...], plen: int) -> None:
        try:
            os.writev(fd, parts)
        except OSError as exc:
            self.drops.add("device_write_" + _errname(exc))
            return
        self.tx_packets += 1
        self.tx_bytes += plen
        peer.rx_packets += 1
        peer.rx_bytes += plen
