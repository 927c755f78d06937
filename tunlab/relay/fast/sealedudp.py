"""Keyed links on the gso datapath (issue 14): every chunk datagram sealed on its own.

A GSO super-packet read from the device (virtio-net header + packet, docs/fastpath.md) is cut into chunks
exactly as the unkeyed gso datapath cuts it, and each chunk datagram is then sealed as one record of
relay/seal.py (same handshake, record format, counters and replay window as the per-packet sealed path).
All sealed chunks of a stream but the last have the same size, so the stream still leaves in one UDP GSO
send and arrives in one GRO receive; the receiver splits the batch by segment size and opens each datagram
*before* anything else looks at it.

Why each chunk and not each stream: a sealed stream would have to be reassembled from unauthenticated
chunks, so a forged chunk (a guessed packet id from the peer's own address) could evict or poison a real
stream in the bounded reassembler; sealed chunks give the reassembler only authentic input. The cost is
29 bytes and one AEAD call per chunk instead of per stream.

Negotiation happens inside the sealed channel: once a session is up, the fast datapath's hello (an IPv4
packet with a wrong header checksum, docs/fastpath.md) is sent *sealed*; a keyed gso peer answers with a
sealed reply and only then gets chunks (``--datapath gso`` sends chunks without asking). A keyed per-packet
peer (``--datapath simple``) opens the hello and writes it to its TUN, whose kernel drops it: it keeps
getting one sealed packet per datagram. Single packets (no GSO metadata) always leave as plain sealed
packets, which every keyed relay reads.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

from . import encap
from . import sockio as fast_io
from ..device import IFF_VNET_HDR
from ..seal import OVERHEAD, Sealer
from ..sealed import SealedUdpDatapath

if TYPE_CHECKING:
    from ..engine import Relay
    from ..peers import Peer

log = logging.getLogger("tunlab.relay.fast")

#: chunk payload per sealed datagram: segment - chunk header - seal overhead
SEAL_CHUNK_OVERHEAD = encap.HDR_LEN + OVERHEAD
HELLO_TRIES = 5
RX_BUF = 65536 + 4096
BATCH = 64


def chunk_size(segment: int) -> int:
    """Stream bytes per sealed chunk for sealed datagrams of ``segment`` bytes."""
    return segment - SEAL_CHUNK_OVERHEAD


def seal_stream(sealer: Sealer, stream: bytes, *, pid: int, segment: int, now: float) -> list[bytes] | None:
    """The sealed chunk datagrams of one stream (virtio-net header + packet): every one ``segment`` bytes
    but the last; None when the session cannot seal (no session yet, counter exhausted)."""
    return sealer.seal_many(encap.split_stream(stream, queue=0, pid=pid, csize=chunk_size(segment)), now)


def open_datagram(sealer: Sealer, reasm: encap.Reassembler, source: object, data: bytes,
                  now: float) -> tuple[str, bytes | None, bytes | None]:
    """One received datagram of a keyed gso link: (kind, payload, reply). kind "stream" (payload = a
    whole stream, virtio-net header + packet), "packet" (one plain inner packet), "partial" (an authentic
    chunk of a stream not yet complete), "hello" (reply = a hello to send back, or None), or the sealer's
    drop reason (counted there). Only opened chunks reach the reassembler."""
    kind, payload, reply = sealer.open(data, now)
    if kind != "data":
        return kind, payload, reply
    assert payload is not None
    return open_more(payload, reasm, source)


def open_more(payload: bytes, reasm: encap.Reassembler, source: object) -> tuple[str, bytes | None, None]:
    """An opened data record: a chunk goes to the reassembler ("partial" or "stream"), else a "packet"."""
    if payload[:1] == encap.MAGIC[:1]:
        stream = reasm.add(source, payload)
        return ("partial", None, None) if stream is None else ("stream", stream, None)
    return "packet", payload, None


class SealedFastUdpDatapath(SealedUdpDatapath):
    """Keyed ``--datapath auto|gso`` over UDP: sealed chunks with UDP GSO/GRO (see the module docstring)."""

    device_flags = IFF_VNET_HDR
    impl_reason = "keyed link: the compiled datapath does not seal; sealed chunks in Python"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        assert relay.device is not None
        self.mode = relay.config.datapath if relay.config.datapath in ("auto", "gso") else "auto"
        fd = relay.device.fd
        fast_io.set_vnet_header(fd, encap.VNET_LEN)
        fast_io.set_offload(fd, 0)
        self.offload = False
        try:
            self.sock.setsockopt(fast_io.SOL_UDP, fast_io.UDP_GRO, 1)
        except OSError:
            log.info("UDP_GRO unavailable: one receive per datagram")
        self.segment = self._segment_size()
        self.per_send = max(1, min(fast_io.UDP_MAX_SEGS, fast_io.UDP_MAX_PAYLOAD // self.segment))
        # super-packets that fit one UDP GSO send once sealed (so one GRO receive): also on a device a lab made
        # for this relay (its 64900 fits the unkeyed chunks only); the queue length only on our own device
        gso_max = min(fast_io.GSO_MAX_SIZE, self.per_send * chunk_size(self.segment) - encap.VNET_LEN)
        fast_io.tune_device(relay.device.name, gso_max_size=gso_max,
                            **({"txqlen": fast_io.TXQLEN} if relay.device.created else {}))
        self.session = secrets.randbits(32) or 1
        self.pid = secrets.randbits(32)
        self.reasm = encap.Reassembler(drops=self.drops)
        # what we send each peer: "gso" (sealed chunks) once it answered our sealed hello, or forced
        self.peer_dp = {name: "gso" if self.mode == "gso" else "plain" for name in self.table.peers}
        self.asked = dict.fromkeys(self.table.peers, 0)
        self.ibuf = bytearray(encap.MAX_STREAM)
        self.imv = memoryview(self.ibuf)
        self.rxbuf = bytearray(RX_BUF)
        self.rxmv = memoryview(self.rxbuf)
        self.gso_cmsg = fast_io.gso_cmsg(self.segment)
        self.counts = {"chunks_tx": 0, "chunks_rx": 0, "streams_tx": 0, "streams_rx": 0, "udp_sends": 0,
                       "udp_receives": 0, "whole_streams_rx": 0}
        self._refresh()

    def _segment_size(self) -> int:
        overhead = 48 if self.v6 else 28
        mtus = [m for m in (fast_io.path_mtu(p.addr[:2]) for p in self.table.peers.values() if p.addr) if m]
        mtu = min(mtus) if mtus else 1500
        return max(SEAL_CHUNK_OVERHEAD + encap.MIN_CSIZE, min(65507, mtu - overhead))

    # -- negotiation, inside the sealed channel
    def _tick(self) -> None:
        super()._tick()
        if getattr(self, "mode", None) != "auto":  # (the first tick runs inside SealedUdpDatapath.__init__)
            return
        now = time.time()
        for peer in self.table.peers.values():
            self._ask(peer, now)

    def _ask(self, peer: Peer, now: float) -> None:
        """Ask a peer with a session whether it takes sealed chunks (a sealed fast hello), a few times."""
        name = peer.name
        if self.mode == "auto" and self.peer_dp[name] == "plain" and self.asked[name] < HELLO_TRIES and \
                self.sealers[name].tx is not None and peer.addr is not None:
            self.asked[name] += 1
            self._sealed_hello(peer, encap.HELLO_KIND, now)

    def _sealed_hello(self, peer: Peer, kind: int, now: float, echo: int = 0) -> None:
        hello = encap.pack_hello(kind, caps=encap.CAP_PLAIN | encap.CAP_GSO, session=self.session, echo=echo,
                                 segment=self.segment)
        sealed = self.sealers[peer.name].seal(hello, now)
        if sealed is None or peer.addr is None:
            return
        try:  # not counted as a packet of the peer's: it never reaches a device
            self.sock.sendto(sealed, peer.addr)
        except OSError:
            self.drop("send_error", peer)

    def _on_fast_hello(self, peer: Peer, packet: bytes, now: float) -> None:
        hello = encap.parse_hello(packet)
        if hello is None:
            self.drop("malformed", peer)
            return
        if hello.kind == encap.HELLO_KIND:
            self._sealed_hello(peer, encap.REPLY_KIND, now, echo=hello.session)
            return
        if hello.echo != self.session or not hello.caps & encap.CAP_GSO:
            return
        if self.peer_dp[peer.name] != "gso":
            log.info("peer %s: keyed datapath gso (sealed chunks)", peer.name)
            self.peer_dp[peer.name] = "gso"
            self._refresh()

    def _refresh(self) -> None:
        """Device offload on iff every peer gets sealed chunks and has no per-packet stages."""
        peers = self.table.peers
        want = bool(peers) and all(self.peer_dp[n] == "gso" and (p.path is None or p.path.gso_ok)
                                   for n, p in peers.items())
        if want == self.offload:
            return
        dev = self.relay.device
        assert dev is not None
        self.offload = fast_io.switch_offload(dev.fd, dev.name, want, "whole GSO packets as sealed chunks")

    def paths_changed(self) -> None:
        self._refresh()

    def to_device(self, pkt: Any, n: int) -> None:
        try:
            os.writev(self.fd, (encap.ZERO_VNET, pkt))
        except OSError:
            self.drop("dev_write_error")
            return
        self.stats.dev_tx_packets += 1
        self.stats.dev_tx_bytes += n

    # -- device -> peers
    def on_device(self, events: int) -> None:
        fd, mv, vlen = self.fd, self.imv, encap.VNET_LEN
        read = os.readv
        vec = [self.ibuf]
        rx_p = rx_b = 0
        now = time.time()
        try:
            for _ in range(BATCH):
                n = read(fd, vec)
                plen = n - vlen
                if plen <= 0:
                    self.drop("short_read")
                    continue
                rx_p += 1
                rx_b += plen
                pkt = mv[vlen:n]
                peer = self.table.fixed or self.table.route(pkt, plen)
                if peer is None:
                    self.drop("no_route")
                    continue
                if not mv[0] & encap.VNET_F_NEEDS_CSUM and not mv[1]:  # one packet, checksum done: a plain sealed packet
                    if peer.path is not None:
                        self.staged(peer, bytes(pkt), plen)
                    else:
                        self.send(peer, pkt, plen, now)
                    continue
                if self.peer_dp[peer.name] != "gso":  # read just before offload switched off
                    self.drop("offload_leftover", peer)
                    continue
                self._send_stream(peer, bytes(mv[:n]), plen, now)
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b

    def _send_stream(self, peer: Peer, stream: bytes, plen: int, now: float) -> None:
        addr = peer.addr
        if addr is None:
            self.drop("peer_down", peer)
            return
        self.pid = (self.pid + 1) & 0xFFFFFFFF
        try:
            dgrams = seal_stream(self.sealers[peer.name], stream, pid=self.pid, segment=self.segment, now=now)
        except ValueError:
            self.drop("too_big", peer)
            return
        if dgrams is None:
            self.drop("seal_no_session", peer)
            return
        per, cmsg, sock = self.per_send, self.gso_cmsg, self.sock
        try:
            for i in range(0, len(dgrams), per):
                part = dgrams[i:i + per]
                if len(part) == 1:
                    sock.sendto(part[0], addr)
                else:
                    sock.sendmsg(part, cmsg, 0, addr)
                self.counts["udp_sends"] += 1
        except BlockingIOError:
            self.drop("backlog", peer)
            return
        except OSError:
            self.drop("send_error", peer)
            return
        self.counts["chunks_tx"] += len(dgrams)
        self.counts["streams_tx"] += 1
        peer.tx_packets += 1
        peer.tx_bytes += plen

    # -- peers -> device
    def on_socket(self, events: int) -> None:
        recv = self.sock.recvmsg_into
        bufs = (self.rxbuf,)
        mv = self.rxmv
        space = fast_io.GRO_CMSG_SPACE
        udp_gro = fast_io.UDP_GRO
        now = time.time()
        for _ in range(BATCH):
            try:
                n, anc, flags, addr = recv(bufs, space)
            except BlockingIOError:
                break
            except OSError:
                self.drop("recv_error")
                break
            self.counts["udp_receives"] += 1
            if flags & socket.MSG_TRUNC:
                self.drop("too_big")
                continue
            if self.v6:
                addr = addr[:2]
            candidates = self._candidates(addr)
            if not candidates:
                self.drop("foreign")
                continue
            seg = n
            if anc and anc[0][1] == udp_gro:
                seg = int.from_bytes(anc[0][2], "little") or n
            if seg < n and len(candidates) == 1 and self._whole(candidates[0], addr, n, seg, now):
                continue
            for off in range(0, n, seg) if n else (0,):
                self._datagram(candidates, addr, bytes(mv[off:min(n, off + seg)]), now)
                if len(candidates) > 1:  # the first authentic one decided which peer this source is
                    candidates = self._candidates(addr)

    def _whole(self, peer: Peer, addr: tuple[Any, ...], n: int, seg: int, now: float) -> bool:
        """The common case of a GRO batch: every datagram opens, and the opened chunks are one whole stream
        in order (the unkeyed datapath's column check on the plaintexts): written without the reassembler.
        Anything else is handled datagram by datagram, each opened once. False (nothing opened yet) when
        the batch does not start with a data record."""
        sealer = self.sealers[peer.name]
        mv = self.rxmv
        k = -(-n // seg)
        if k > encap.MAX_COUNT or self.rxbuf[0] != 2:
            return False
        kind, head, reply = sealer.open(bytes(mv[:seg]), now)  # is the first a chunk 0 of k?
        if kind != "data" or head is None or head[:2] != encap.MAGIC or len(head) <= encap.HDR_LEN \
                or head[8] != 0 or head[9] != k:
            if kind == "hello":
                self._handle(peer, addr, kind, head, reply, now)
            elif kind == "data":
                self._handle(peer, addr, *open_more(head, self.reasm, peer), now)  # type: ignore[arg-type]
            # else: dropped and counted by the sealer
            for off in range(seg, n, seg):  # the rest one by one
                self._datagram([peer], addr, bytes(mv[off:min(n, off + seg)]), now)
            return True
        opened = [head]
        for off in range(seg, n, seg):
            got = sealer.open(bytes(mv[off:min(n, off + seg)]), now)
            if got[0] != "data":  # an authentic prefix, then something else: each goes its own way
                for p in opened:
                    self._handle(peer, addr, *open_more(p, self.reasm, peer), now)
                if got[0] == "hello":  # (a hello ends a GRO batch: it is shorter)
                    self._handle(peer, addr, *got, now)
                for off2 in range(off + seg, n, seg):
                    self._datagram([peer], addr, bytes(mv[off2:min(n, off2 + seg)]), now)
                return True
            opened.append(got[1])  # type: ignore[arg-type]
        joined = b"".join(opened)
        if encap.gro_columns_ok(joined, len(joined), seg - OVERHEAD) != k:
            for p in opened:
                self._handle(peer, addr, *open_more(p, self.reasm, peer), now)
            return True
        self._authentic(peer, addr, None)
        self.counts["chunks_rx"] += k
        self.counts["whole_streams_rx"] += 1
        h = encap.HDR_LEN
        self._stream(peer, b"".join([p[h:] for p in opened]))
        return True

    def _datagram(self, candidates: list[Peer], addr: tuple[Any, ...], data: bytes, now: float) -> None:
        for peer in candidates:  # a peer's IP may stand for several names: the key decides which
            kind, payload, reply = open_datagram(self.sealers[peer.name], self.reasm, peer, data, now)
            if kind in ("hello", "stream", "packet", "partial"):
                break
        else:
            return  # dropped and counted by the sealer, nothing changed
        self._handle(peer, addr, kind, payload, reply, now)

    def _handle(self, peer: Peer, addr: tuple[Any, ...], kind: str, payload: bytes | None, reply: bytes | None,
                now: float) -> None:
        """An authentic datagram, opened (``open_datagram``'s kinds)."""
        self._authentic(peer, addr, reply)
        if kind in ("partial", "stream"):
            self.counts["chunks_rx"] += 1  # authentic chunks only
        if kind == "partial":
            return
        if kind == "hello":
            self._ask(peer, now)  # the session may have just come up
            return
        assert payload is not None
        if kind == "stream":
            self._stream(peer, payload)
            return
        if len(payload) == encap.HELLO_LEN and encap.is_hello(payload):
            self._on_fast_hello(peer, payload, now)
            return
        self._deliver(peer, payload)

    def _stream(self, peer: Peer, stream: bytes) -> None:
        """A whole stream (virtio-net header + packet), checked like a packet, into the device."""
        plen = len(stream) - encap.VNET_LEN
        why = self.check(memoryview(stream)[encap.VNET_LEN:], plen, encap.MAX_STREAM)
        if why is not None:
            self.drop(why, peer)
            return
        self.counts["streams_rx"] += 1
        peer.rx_packets += 1
        peer.rx_bytes += plen
        try:
            os.write(self.fd, stream)
        except OSError:
            self.drop("dev_write_error", peer)
            return
        self.stats.dev_tx_packets += 1
        self.stats.dev_tx_bytes += plen

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["datapath"] = "sealed"
        out["seal"]["chunks"] = "each chunk sealed"
        out.update(offload=self.offload, segment=self.segment, partial_streams=len(self.reasm.partials),
                   **self.counts)
        for name, p in out["peers"].items():
            p["datapath"] = "sealed-gso" if self.peer_dp[name] == "gso" else "sealed"
        return out
