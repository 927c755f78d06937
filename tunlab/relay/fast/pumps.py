"""The two halves of the fast datapath: device -> UDP (``TxPump``) and UDP -> device (``RxPump``).

``drain(budget)`` works until its descriptor would block (returns False) or ``budget`` reads were
done (returns True). Python work is per read or receive (one stream, one GRO batch), never per TCP
segment on the offload path. The plain path costs one device read per packet and one UDP send per
run of equal-size packets (UDP GSO), one receive per GRO batch and one device write per packet.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING

from . import encap
from . import sockio as fast_io
from .gro import PSH, BatchViews, merge_run, super_header, whole_batch

if TYPE_CHECKING:
    from .udp import FastUdpDatapath
    from ..peers import Peer

_MSG_TRUNC = socket.MSG_TRUNC
RX_BUF = 65536 + 4096
BATCH = 64          # reads per handler call before the other descriptors get a turn
PLAIN_RUN = 64      # packets per plain UDP GSO send at most


class TxPump:
    """Device -> peers: streams become chunks (offload on) or runs of plain packets (offload off)."""

    def __init__(self, dp: FastUdpDatapath) -> None:
        self.dp = dp
        relay = dp.relay
        assert relay.device is not None
        self.fd = relay.device.fd
        self.reads = 0       # successful device reads
        self.segments = 0    # packets the reads stand for (a GSO read stands for several)
        self.datagrams = 0
        self.sends = 0
        # packet ids start anywhere: a restarted relay's ids do not collide with what its peer's
        # reassembler remembers of the previous run
        self.pid = secrets.randbits(32)
        # offload path: the device read scatters the stream into chunk slots
        self.layout = encap.TxLayout(dp.segment, queue=0)
        self.gso_cmsg = fast_io.gso_cmsg(dp.segment)
        # plain path: one packet per slot, slots of the largest packet back to back
        self.stride = relay.packet_limit
        nslots = max(1, min(PLAIN_RUN, fast_io.UDP_MAX_SEGS, fast_io.UDP_MAX_PAYLOAD // self.stride))
        self.pbuf = bytearray(nslots * self.stride)
        self.pview = memoryview(self.pbuf)
        self.scratch = bytearray(encap.VNET_LEN)
        self.overflow = bytearray(encap.MAX_STREAM)
        self.iovs = [(self.scratch, self.pview[k * self.stride:(k + 1) * self.stride], self.overflow)
                     for k in range(nslots)]
        self.cmsgs: dict[int, list[tuple[int, int, bytes]]] = {}

    def drain(self, budget: int) -> bool:
        if self.dp.offload:
            return self._drain_gso(budget)
        return self._drain_plain(budget)

    # -- offload: whole streams as chunks --------------------------------------------------------
    def _drain_gso(self, budget: int) -> bool:
        dp = self.dp
        fd, sock = self.fd, dp.sock
        layout = self.layout
        slots, g, cmsg = layout.slots, layout.segment, self.gso_cmsg
        readv, sendmsg, sendto, finish = os.readv, sock.sendmsg, sock.sendto, layout.finish
        fixed, route = dp.table.fixed, dp.table.route
        first = slots[0]
        pkt0 = first[encap.VNET_LEN:]
        drops = dp.drops
        gso_peers = dp.gso_peers
        maxpay, maxsegs = fast_io.UDP_MAX_PAYLOAD, fast_io.UDP_MAX_SEGS
        vlen = encap.VNET_LEN
        pid = self.pid
        reads = nbytes = segments = datagrams = sends = 0
        more = True
        try:
            for _ in range(budget):
                try:
                    n = readv(fd, slots)
                except BlockingIOError:
                    more = False
                    break
                plen = n - vlen
                reads += 1
                if plen <= 0:
                    drops["short_read"] = drops.get("short_read", 0) + 1
                    continue
                nbytes += plen
                peer = fixed if fixed is not None else route(pkt0, plen)
                if peer is None:
                    drops["no_route"] = drops.get("no_route", 0) + 1
                    continue
                addr = peer.addr
                if addr is None:
                    drops["peer_down"] = drops.get("peer_down", 0) + 1
                    continue
                if peer not in gso_peers:  # offload went off under our feet: this read predates it
                    self._leftover(b"".join(slots[:encap.chunk_count(n, layout.csize)])[:n], peer)
                    continue
                pid += 1
                data, count = finish(n, pid)
                try:
                    if count == 1:
                        sendto(data, addr)
                        sends += 1
                    elif count <= maxsegs and len(data) <= maxpay:
                        sendmsg((data,), cmsg, 0, addr)
                        sends += 1
                    else:
                        for a, b in encap.send_pieces(count, len(data), g, maxpay, maxsegs):
                            sendmsg((data[a:b],), cmsg, 0, addr)
                            sends += 1
                except BlockingIOError:
                    drops["backlog"] = drops.get("backlog", 0) + 1
                    continue
                except OSError:
                    drops["send_error"] = drops.get("send_error", 0) + 1
                    continue
                gso_size = first[4] | first[5] << 8
                if first[1] & 0x7F and gso_size:
                    segments += -(-(plen - (first[2] | first[3] << 8)) // gso_size)
                else:
                    segments += 1
                datagrams += count
                peer.tx_packets += 1
                peer.tx_bytes += plen
        except OSError as exc:
            dp.device_error(exc)
            more = False
        finally:
            self.pid = pid
            stats = dp.stats
            stats.dev_rx_packets += reads
            stats.dev_rx_bytes += nbytes
            self.reads += reads
            self.segments += segments
            self.datagrams += datagrams
            self.sends += sends
        return more

    # -- plain: one packet per datagram, runs of equal-size packets in one UDP GSO send ----------
    def _drain_plain(self, budget: int) -> bool:
        dp = self.dp
        fd, stats = self.fd, dp.stats
        stride, view, iovs = self.stride, self.pview, self.iovs
        nslots = len(iovs)
        scratch = self.scratch
        readv = os.readv
        fixed, route = dp.table.fixed, dp.table.route
        drops = dp.drops
        vlen = encap.VNET_LEN
        k = 0             # packets in the run
        blen = 0          # length of every packet of the run but the last
        last = 0          # length of the last packet of the run
        bpeer: Peer | None = None
        more = True
        for _ in range(budget):
            if k and (k == nslots or last < blen):
                self._flush(bpeer, k, blen, last)
                k = 0
            if dp.offload:
                break
            try:
                n = readv(fd, iovs[k])
            except BlockingIOError:
                more = False
                break
            except OSError as exc:
                dp.device_error(exc)
                more = False
                break
            plen = n - vlen
            self.reads += 1
            if plen <= 0:
                drops["short_read"] = drops.get("short_read", 0) + 1
                continue
            stats.dev_rx_packets += 1
            stats.dev_rx_bytes += plen
            off = k * stride
            if plen > stride or scratch[0] or scratch[1]:
                # offload metadata although offload is off: a read from before the switch
                stream = bytes(scratch) + bytes(view[off:off + min(plen, stride)]) \
                    + bytes(self.overflow[:max(0, plen - stride)])
                p = fixed if fixed is not None else route(memoryview(stream)[vlen:], plen)
                if p is not None:
                    self._leftover(stream, p)
                continue
            peer = fixed if fixed is not None else route(view[off:off + plen], plen)
            if peer is None:
                drops["no_route"] = drops.get("no_route", 0) + 1
                continue
            self.segments += 1
            if peer.path is not None:  # a peer with stages: one packet at a time through them (linkpath)
                pkt = bytes(view[off:off + plen])
                if k:
                    self._flush(bpeer, k, blen, last)
                    k = 0
                dp.staged(peer, pkt, plen)
                continue
            if k and (peer is not bpeer or plen > blen):
                # this packet cannot extend the run: send the run, restart it with this packet
                pkt = bytes(view[off:off + plen])
                self._flush(bpeer, k, blen, last)
                view[:plen] = pkt
                k = 0
            if k == 0:
                bpeer, blen = peer, plen
            last = plen
            k += 1
        if k:
            self._flush(bpeer, k, blen, last)
        return more

    def _flush(self, peer: Peer | None, k: int, blen: int, last: int) -> None:
        """Send a run of ``k`` packets (all ``blen`` bytes but the last) to ``peer``."""
        if peer is None:
            return
        dp = self.dp
        addr = peer.addr
        drops = dp.drops
        if addr is None:
            drops["peer_down"] = drops.get("peer_down", 0) + k
            return
        view, stride, sock = self.pview, self.stride, dp.sock
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
        except BlockingIOError:
            drops["backlog"] = drops.get("backlog", 0) + k
            return
        except OSError:
            drops["send_error"] = drops.get("send_error", 0) + k
            return
        self.sends += 1
        self.datagrams += k
        peer.tx_packets += k
        peer.tx_bytes += (k - 1) * blen + last

    def _leftover(self, stream: bytes, peer: Peer) -> None:
        """A stream that does not fit the current datapath (read just before offload switched)."""
        dp = self.dp
        if peer.path is not None and not stream[1] & 0x7F:  # one packet for a peer that got stages
            dp.staged(peer, stream[encap.VNET_LEN:], len(stream) - encap.VNET_LEN)
            return
        st = dp.states.get(peer.name)
        if peer.addr is None or st is None or not (st.caps & encap.CAP_GSO or st.datapath == "gso"):
            dp.drops["offload_leftover"] = dp.drops.get("offload_leftover", 0) + 1
            return
        self.pid += 1
        try:
            for d in encap.split_stream(stream, queue=0, pid=self.pid, csize=dp.segment - encap.HDR_LEN):
                dp.sock.sendto(d, peer.addr)
        except (OSError, ValueError):
            dp.drops["offload_leftover"] = dp.drops.get("offload_leftover", 0) + 1
            return
        peer.tx_packets += 1
        peer.tx_bytes += len(stream) - encap.VNET_LEN


class RxPump:
    """Peers -> device: one receive per GRO batch; a whole stream goes to the device in one write."""

    def __init__(self, dp: FastUdpDatapath) -> None:
        self.dp = dp
        assert dp.relay.device is not None
        self.fd = dp.relay.device.fd
        self.receives = 0
        self.datagrams = 0
        self.whole = 0       # streams that arrived whole in one receive
        self.merged = 0      # plain TCP segments written as part of a merged GSO packet
        self.reasm = encap.Reassembler(drops=dp.drops)
        self.buf = bytearray(RX_BUF)
        self.view = memoryview(self.buf)
        self.views = encap.RxViews(self.buf)
        self.batch_views = BatchViews(self.buf)

    def drain(self, budget: int) -> bool:
        dp = self.dp
        fd, table = self.fd, dp.table
        buf, views = self.buf, self.views
        bufs = (buf,)
        recv = dp.sock.recvmsg_into
        space = fast_io.GRO_CMSG_SPACE
        writev = os.writev
        by_addr = table.by_addr
        columns_ok = encap.gro_columns_ok
        payloads = views.payloads
        from_bytes = int.from_bytes
        udp_gro = fast_io.UDP_GRO
        magic0 = encap.MAGIC[0]
        hdr_len, vlen = encap.HDR_LEN, encap.VNET_LEN
        drops = dp.drops
        v6 = dp.v6
        receives = datagrams = whole = written = nbytes = merged = 0
        hook = dp.hook
        check = dp.check
        view = self.view
        batch_payloads = self.batch_views.payloads
        more = True
        try:
            for _ in range(budget):
                try:
                    n, anc, flags, addr = recv(bufs, space)
                except BlockingIOError:
                    more = False
                    break
                except OSError:
                    drops["recv_error"] = drops.get("recv_error", 0) + 1
                    more = False
                    break
                receives += 1
                if v6:
                    addr = addr[:2]
                peer = by_addr.get(addr)
                if peer is None:
                    peer = table.udp_candidate(addr[0])
                    if peer is None:
                        drops["foreign"] = drops.get("foreign", 0) + 1
                        continue
                    seg0 = from_bytes(anc[0][2], "little") if anc and anc[0][1] == udp_gro else n
                    if flags & _MSG_TRUNC:
                        drops["too_big"] = drops.get("too_big", 0) + 1
                        continue
                    if not self._proves(peer, addr, n, seg0 or n):
                        continue
                    table.accept_udp(addr[0], addr[1], peer)
                    dp.new_source(peer)
                if flags & _MSG_TRUNC:
                    drops["too_big"] = drops.get("too_big", 0) + 1
                    continue
                if n == 0:  # an empty datagram (as the simple datapath counts it)
                    drops["empty"] = drops.get("empty", 0) + 1
                    continue
                seg = n
                if anc:
                    c = anc[0]
                    if c[1] == udp_gro:
                        seg = from_bytes(c[2], "little") or n
                if seg < n and buf[0] == 0x45 and hook is None:
                    hl = whole_batch(buf, n, seg)
                    if hl:  # one run of TCP segments: one GSO packet to the device
                        k = -(-n // seg)
                        payload = n - k * hl
                        last_off = (k - 1) * seg
                        vnet, hdr = super_header(buf, 0, hl, payload, seg - hl, bool(buf[last_off + 33] & PSH))
                        datagrams += k
                        merged += k
                        peer.rx_packets += k
                        peer.rx_bytes += n
                        try:
                            writev(fd, (vnet, hdr) + batch_payloads(seg, hl, n))
                        except OSError:
                            drops["dev_write_error"] = drops.get("dev_write_error", 0) + 1
                            continue
                        written += 1
                        nbytes += hl + payload
                        continue
                elif n and buf[0] == magic0:
                    count = columns_ok(buf, n, seg)
                    if count:
                        plen = n - count * hdr_len - vlen
                        why = check(view[hdr_len + vlen:min(n, seg)], plen, encap.MAX_STREAM)
                        if why is not None:  # a chunked stream is checked like a packet
                            drops[why] = drops.get(why, 0) + 1
                            continue
                        if plen > 0:
                            datagrams += count
                            whole += 1
                            peer.rx_packets += 1
                            peer.rx_bytes += plen
                            try:
                                writev(fd, payloads(seg, count, n))
                            except OSError:
                                drops["dev_write_error"] = drops.get("dev_write_error", 0) + 1
                                continue
                            written += 1
                            nbytes += plen
                            continue
                self._datagrams(peer, n, seg)
        finally:
            stats = dp.stats
            stats.dev_tx_packets += written
            stats.dev_tx_bytes += nbytes
            self.receives += receives
            self.datagrams += datagrams
            self.whole += whole
            self.merged += merged
        return more

    def _proves(self, peer: Peer, addr: tuple[str, int], n: int, seg: int) -> bool:
        """Does the first datagram of a receive from a new source of ``peer`` prove it (a packet that passes
        the check, a well-formed chunk)? Otherwise it is counted and dropped and nothing moves; a hello is
        answered at its source without moving the peer's reply address."""
        dp = self.dp
        drops = dp.drops
        dgram = self.view[:min(n, seg)]
        size = len(dgram)
        why: str | None
        if size == encap.HELLO_LEN and dgram[9] == encap.HELLO_PROTO and encap.is_hello(dgram):
            dp.hello_from_new_source(peer, addr, bytes(dgram))
            return False
        if size and dgram[0] == encap.MAGIC[0]:
            hdr = encap.parse_header(dgram)
            why = "chunk_malformed" if hdr is None else None
            if hdr is not None and hdr.index == 0:
                why = dp.check(dgram[encap.HDR_LEN + encap.VNET_LEN:], size - encap.HDR_LEN - encap.VNET_LEN,
                               encap.MAX_STREAM)
        else:
            why = dp.check(dgram, size, dp.limit)
        if why is not None:
            drops[why] = drops.get(why, 0) + 1
            return False
        return True

    def _datagrams(self, peer: Peer, n: int, seg: int) -> None:
        """Datagram by datagram: plain packets (consecutive TCP segments merged into one GSO
        packet), hellos, and chunks through the reassembler."""
        dp = self.dp
        buf, view = self.buf, self.view
        magic0 = encap.MAGIC[0]
        zero = encap.ZERO_VNET
        check, limit, hook = dp.check, dp.limit, dp.hook
        drops = dp.drops
        k = -(-n // seg)
        i = 0
        while i < k:
            off = i * seg
            dgram = view[off:min(n, off + seg)]
            size = len(dgram)
            i += 1
            self.datagrams += 1
            if size and dgram[0] == magic0:
                stream = self.reasm.add(peer, dgram)
                if stream is not None:
                    plen = len(stream) - encap.VNET_LEN
                    why = check(memoryview(stream)[encap.VNET_LEN:], plen, encap.MAX_STREAM)
                    if why is not None:  # a chunked stream is checked like a packet
                        drops[why] = drops.get(why, 0) + 1
                        continue
                    peer.rx_packets += 1
                    peer.rx_bytes += plen
                    self._write((stream,), plen)
                continue
            if size == encap.HELLO_LEN and dgram[9] == encap.HELLO_PROTO and encap.is_hello(dgram):
                dp.on_hello(peer, bytes(dgram))
                continue
            why = check(dgram, size, limit)
            if why is not None:
                drops[why] = drops.get(why, 0) + 1
                continue
            if hook is not None:
                peer.rx_packets += 1
                peer.rx_bytes += size
                dp.through_hook(peer, dgram)
                continue
            if i < k and dgram[0] == 0x45:
                run, hl = merge_run(buf, off, seg, k - i + 1, n)
                if run > 1:
                    last_off = off + (run - 1) * seg
                    last_end = min(n, last_off + seg)
                    payload = (run - 1) * (seg - hl) + (last_end - last_off - hl)
                    vnet, hdr = super_header(buf, off, hl, payload, seg - hl, bool(buf[last_off + 33] & PSH))
                    parts = [vnet, hdr]
                    parts += [view[o + hl:o + seg] for o in range(off, last_off, seg)]
                    parts.append(view[last_off + hl:last_end])
                    i += run - 1
                    self.datagrams += run - 1
                    self.merged += run
                    peer.rx_packets += run
                    peer.rx_bytes += payload + run * hl
                    self._write(parts, hl + payload)
                    continue
            peer.rx_packets += 1
            peer.rx_bytes += size
            self._write((zero, dgram), size)

    def _write(self, parts: tuple[bytes | memoryview, ...] | list[bytes | memoryview], plen: int) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError:
            drops = self.dp.drops
            drops["dev_write_error"] = drops.get("dev_write_error", 0) + 1
            return
        stats = self.dp.stats
        stats.dev_tx_packets += 1
        stats.dev_tx_bytes += plen
