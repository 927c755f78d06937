"""The two loops of the fast relay: device -> UDP (``TxPump``) and UDP -> device (``RxPump``).

Each runs in its own thread and blocks only in ``poll`` when its descriptor has nothing to give.
Python work is per read/receive (one stream, one GRO batch), never per TCP segment on the offload
path; the plain path costs one device read per packet and one UDP send per batch of equal-size
packets (UDP GSO), and one UDP receive per GRO batch plus one device write per packet.
"""

from __future__ import annotations

import errno
import os
import select
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


def _wait(fd: int, wake: int) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.register(wake, select.POLLIN)
    p.poll()


class TxPump:
    """Device -> peers. Reads streams; chunks them (offload on) or batches plain packets (off)."""

    def __init__(self, relay: FastRelay) -> None:
        self.relay = relay
        self.drops = Drops()
        self.rx_packets = 0  # read from the device (streams)
        self.rx_bytes = 0
        self.segments = 0    # packets the streams stand for
        self.datagrams = 0
        self.sends = 0
        self.pid = 0

    # -- offload: whole streams as chunks --------------------------------------------------------
    def _gso_loop(self) -> None:
        relay = self.relay
        fd, sock, wake = relay.device.fd, relay.sock, relay.wake_r
        layout = encap.TxLayout(relay.segment, queue=0)
        slots, g = layout.slots, layout.segment
        cmsg = fast_io.gso_cmsg(g)
        readv, sendmsg, finish = os.readv, sock.sendmsg, layout.finish
        route = relay.route_packet
        gso_segments = encap.gso_segments
        slot0 = slots[0][encap.VNET_LEN:]
        while relay.running and relay.offload:
            try:
                n = readv(fd, slots)
            except BlockingIOError:
                _wait(fd, wake)
                continue
            except OSError as exc:
                if exc.errno == errno.EBADFD:
                    return
                self.drops.add("device_read_error")
                continue
            if n <= encap.VNET_LEN:
                self.drops.add("short_read")
                continue
            peer = route(slot0)
            if peer is None:
                self.drops.add("no_route")
                continue
            addr = peer.addr
            if addr is None:
                self.drops.add("peer_unknown_address")
                continue
            self.pid += 1
            data, count = finish(n, self.pid)
            try:
                if count == 1:
                    sock.sendto(data, addr)
                    self.sends += 1
                elif len(data) <= fast_io.UDP_MAX_PAYLOAD and count <= fast_io.UDP_MAX_SEGS:
                    sendmsg((data,), cmsg, 0, addr)
                    self.sends += 1
                else:
                    for a, b in encap.send_pieces(count, len(data), g, fast_io.UDP_MAX_PAYLOAD, fast_io.UDP_MAX_SEGS):
                        sendmsg((data[a:b],), cmsg, 0, addr)
                        self.sends += 1
            except OSError as exc:
                self.drops.add("send_error_" + (errno.errorcode.get(exc.errno or 0, "other")).lower())
                continue
            segs = gso_segments(slots[0], n)
            plen = n - encap.VNET_LEN
            self.rx_packets += 1
            self.rx_bytes += plen
            self.segments += segs
            self.datagrams += count
            peer.tx_packets += 1
            peer.tx_bytes += plen
            peer.tx_segments += segs

    # -- plain: one packet per datagram, equal-size runs sent with one UDP GSO send ----------
    def _plain_loop(self) -> None:
        relay = self.relay
        fd, sock, wake = relay.device.fd, relay.sock, relay.wake_r
        stride = relay.device.mtu + (14 if relay.device.tap else 0)
        nslots = max(1, min(PLAIN_BATCH, fast_io.UDP_MAX_SEGS, fast_io.UDP_MAX_PAYLOAD // stride))
        pbuf = bytearray(nslots * stride)
        view = memoryview(pbuf)
        scratch = bytearray(encap.VNET_LEN)
        overflow = bytearray(encap.MAX_STREAM)
        iovs = [(scratch, view[k * stride:(k + 1) * stride], overflow) for k in range(nslots)]
        readv, sendmsg = os.readv, sock.sendmsg
        route = relay.route_packet
        cmsgs: dict[int, list[tuple[int, int, bytes]]] = {}
        k = 0            # packets in the batch
        blen = 0         # length of every packet in the batch but the last
        bpeer: Peer | None = None
        short = False    # the batch ends with a shorter packet

        def flush() -> None:
            nonlocal k, short
            if not k:
                return
            addr = bpeer.addr if bpeer is not None else None
            if addr is None:
                self.drops.add("peer_unknown_address", k)
                k = 0
                short = False
                return
            try:
                if k == 1:
                    sock.sendto(view[:last_len], addr)
                elif blen == stride:
                    end = (k - 1) * stride + last_len
                    cm = cmsgs.get(blen) or cmsgs.setdefault(blen, fast_io.gso_cmsg(blen))
                    sendmsg((view[:end],), cm, 0, addr)
                else:
                    parts = [view[i * stride:i * stride + blen] for i in range(k - 1)]
                    parts.append(view[(k - 1) * stride:(k - 1) * stride + last_len])
                    cm = cmsgs.get(blen) or cmsgs.setdefault(blen, fast_io.gso_cmsg(blen))
                    sendmsg(parts, cm, 0, addr)
                self.sends += 1
                self.datagrams += k
            except OSError as exc:
                self.drops.add("send_error_" + (errno.errorcode.get(exc.errno or 0, "other")).lower(), k)
            k = 0
            short = False

        last_len = 0
        while relay.running and not relay.offload:
            if k == nslots or short:
                flush()
            try:
                n = readv(fd, iovs[k])
            except BlockingIOError:
                flush()
                _wait(fd, wake)
                continue
            except OSError as exc:
                if exc.errno == errno.EBADFD:
                    return
                self.drops.add("device_read_error")
                continue
            plen = n - encap.VNET_LEN
            if plen <= 0:
                self.drops.add("short_read")
                continue
            if plen > stride or scratch[0] or scratch[1]:
                flush()
                self._leftover(bytes(scratch) + bytes(view[:min(plen, stride)]) + bytes(overflow[:max(0, plen - stride)]))
                continue
            slot = view[k * stride:k * stride + plen]
            peer = route(slot)
            if peer is None:
                self.drops.add("no_route")
                continue
            self.rx_packets += 1
            self.rx_bytes += plen
            self.segments += 1
            peer.tx_packets += 1
            peer.tx_bytes += plen
            peer.tx_segments += 1
            if k and (peer is not bpeer or plen > blen):
                # does not extend the run: send what we have, restart the batch with this packet
                pkt = bytes(slot)
                flush()
                view[:plen] = pkt
            if k == 0:
                bpeer, blen = peer, plen
            elif plen < blen:
                short = True
            last_len = plen
            k += 1

    def _leftover(self, stream: bytes) -> None:
        """A stream read with plain framing that still carries offload metadata (offload just went off)."""
        peer = self.relay.route_packet(memoryview(stream)[encap.VNET_LEN:])
        if peer is None or peer.addr is None or peer.datapath != "gso":
            self.drops.add("offload_leftover")
            return
        self.pid += 1
        try:
            for d in encap.split_stream(stream, queue=0, pid=self.pid, csize=self.relay.segment - encap.HDR_LEN):
                self.relay.sock.sendto(d, peer.addr)
        except (OSError, ValueError):
            self.drops.add("offload_leftover")

    def run(self) -> None:
        relay = self.relay
        while relay.running:
            if relay.offload:
                self._gso_loop()
            else:
                self._plain_loop()


class RxPump:
    """Peers -> device. One receive per GRO batch; whole streams go to the device in one write."""

    def __init__(self, relay: FastRelay) -> None:
        self.relay = relay
        self.drops = Drops()
        self.tx_packets = 0  # written to the device
        self.tx_bytes = 0
        self.receives = 0
        self.datagrams = 0
        self.fast = 0
        self.reasm = encap.Reassembler()

    def run(self) -> None:
        relay = self.relay
        fd, sock, wake = relay.device.fd, relay.sock, relay.wake_r
        buf = bytearray(RX_BUF)
        view = memoryview(buf)
        views = encap.RxViews(buf)
        bufs = (buf,)
        recv = sock.recvmsg_into
        space = fast_io.GRO_CMSG_SPACE
        writev = os.writev
        lookup = relay.peer_for_source
        columns_ok = encap.gro_columns_ok
        magic0 = encap.MAGIC[0]
        zero = encap.ZERO_VNET
        drops = self.drops
        while relay.running:
            try:
                n, anc, flags, src = recv(bufs, space)
            except BlockingIOError:
                _wait(sock.fileno(), wake)
                continue
            except OSError as exc:
                if not relay.running:
                    return
                drops.add("recv_error_" + (errno.errorcode.get(exc.errno or 0, "other")).lower())
                continue
            self.receives += 1
            if flags & _MSG_TRUNC:
                drops.add("truncated")
                continue
            peer = lookup(src)
            if peer is None:
                drops.add("unknown_source")
                continue
            seg = fast_io.gro_segment(anc) if anc else 0
            if not seg or seg > n:
                seg = n
            if buf[0] == magic0:
                count = columns_ok(buf, n, seg)
                if count:
                    plen = n - count * encap.HDR_LEN - encap.VNET_LEN
                    if plen <= 0:
                        drops.add("malformed")
                        continue
                    self.datagrams += count
                    self.fast += 1
                    try:
                        writev(fd, views.payloads(seg, count, n))
                    except OSError:
                        drops.add("device_write_error")
                        continue
                    self.tx_packets += 1
                    self.tx_bytes += plen
                    peer.rx_packets += 1
                    peer.rx_bytes += plen
                    continue
            for off in range(0, n, seg):
                dgram = view[off:min(n, off + seg)]
                self.datagrams += 1
                first = dgram[0]
                if first == magic0:
                    stream = self.reasm.add(peer, dgram)
                    if stream is None:
                        continue
                    self._write(fd, peer, (stream,), len(stream) - encap.VNET_LEN)
                elif first >> 4 in (4, 6):
                    if dgram[9] == encap.HELLO_PROTO and encap.is_hello(dgram):
                        relay.on_hello(peer, bytes(dgram))
                        continue
                    self._write(fd, peer, (zero, dgram), len(dgram))
                else:
                    drops.add("malformed")

    def _write(self, fd: int, peer: Peer, parts: tuple[bytes | memoryview, ...], plen: int) -> None:
        try:
            os.writev(fd, parts)
        except OSError:
            self.drops.add("device_write_error")
            return
        self.tx_packets += 1
        self.tx_bytes += plen
        peer.rx_packets += 1
        peer.rx_bytes += plen

