"""The batched, offloaded UDP datapath (issue 8), plugged into the relay engine as ``--datapath``:

* ``gso``: the device is opened with IFF_VNET_HDR and TSO/USO offload, so a read hands over a whole
  GSO super-packet (up to 64 KiB). It crosses UDP as MTU-sized chunks (docs/fastpath.md) in one UDP
  GSO send, arrives in one UDP GRO receive, and is written to the peer's device whole, with its
  virtio-net header, so the kernels segment. Only between two tunlab relays.
* ``plain``: one IP packet per datagram (socat's format, the chain design), batched: runs of
  equal-size packets leave in one UDP GSO send; GRO batches arrive in one receive, and a batch of
  consecutive segments of one TCP connection is written to the device as one GSO packet.
* ``auto``: ``gso`` toward peers that answer our hello, ``plain`` toward the others.

The receive side takes chunks, plain packets and hellos at any time; only what is *sent* to a peer
depends on the negotiated datapath. A hello is an IPv4 packet with a wrong header checksum: a plain
peer such as socat writes it into its TUN and its kernel drops it.

``tunlab.relay.datapath.DATAPATHS`` maps ``auto``, ``plain`` and ``gso`` to this module's class (imported only
when one of them is used); the engine's counters carry :meth:`FastUdpDatapath.info` as their ``datapath``
section.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
import time
from typing import Any

from . import encap
from . import sockio as fast_io
from .sockio import GSO_MAX_SIZE, TXQLEN, tune_device
from ..datapath import Datapath
from ..simple import SimpleUdpDatapath
from ..device import IFF_VNET_HDR
from ..engine import Relay
from .pumps import BATCH, RxPump, TxPump
from ..loop import Timer
from ..peers import Peer

log = logging.getLogger("tunlab.relay.fast")

MODES = ("auto", "plain", "gso")
HELLO_TRIES = 5
HELLO_FIRST_GAP = 0.1
#: a peer's hello makes us probe it again at most this often (seconds after the last hello we sent)
REPROBE_GAP = 1.0


class PeerState:
    """What we know about one peer's datapath."""

    __slots__ = ("datapath", "state", "caps", "session", "sent", "next", "first", "hurried")

    def __init__(self, datapath: str, state: str) -> None:
        self.datapath = datapath  # what we send it: "plain" or "gso"
        self.state = state        # probing | answered | silent | forced
        self.caps = 0
        self.session = 0
        self.sent = 0
        self.next = 0.0
        self.first = 0.0
        self.hurried = False  # a hello from it while we probe made our next hello go out at once (once)

    def as_dict(self) -> dict[str, Any]:
        return {"datapath": self.datapath, "negotiation": self.state, "caps": self.caps}


class FastUdpDatapath(Datapath):
    """``--datapath auto|plain|gso`` over UDP; see the module docstring."""

    device_flags = IFF_VNET_HDR
    impl_reason = "the Python fast datapath"

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        assert relay.device is not None and relay.transport is not None
        self.sock: socket.socket = relay.transport.sock  # type: ignore[attr-defined]
        self.mode = relay.config.datapath if relay.config.datapath in MODES else "auto"
        if self.hook is not None and self.mode != "plain":
            log.info("--vnf hook sees one packet at a time: datapath plain")
            self.mode = "plain"
        fd = relay.device.fd
        fast_io.set_vnet_header(fd, encap.VNET_LEN)
        fast_io.set_offload(fd, 0)
        try:
            self.sock.setsockopt(fast_io.SOL_UDP, fast_io.UDP_GRO, 1)
        except OSError:
            log.info("UDP_GRO unavailable: one receive per datagram")
        self.v6 = self.sock.family == socket.AF_INET6
        self.segment = self._segment_size()
        if relay.device.created:
            tune_device(relay.device.name, gso_max_size=GSO_MAX_SIZE, txqlen=TXQLEN)
        self.offload = False
        self.session = secrets.randbits(32) or 1
        self.hello = {"hello_tx": 0, "hello_rx": 0, "reply_tx": 0, "reply_rx": 0}
        forced = self.mode != "auto"
        self.states = {name: PeerState("gso" if self.mode == "gso" else "plain", "forced" if forced else "probing")
                       for name in self.table.peers}
        self.gso_peers: set[Peer] = set()
        self._timer: Timer | None = None
        self.tx = TxPump(self)
        self.rx = RxPump(self)
        self._refresh()
        if self.mode == "auto":
            self._schedule(0.0)
        # everything imported and set up so far lives as long as the relay: keep it out of the
        # garbage collector's full passes (about 35 000 objects, 20 ms per pass on this machine)
        gc.freeze()

    # -- set-up helpers ---------------------------------------------------------------------------
    def _segment_size(self) -> int:
        """Chunk datagram size: the smallest path MTU toward the peers, minus IP and UDP headers."""
        overhead = 48 if self.v6 else 28
        mtus = [m for m in (fast_io.path_mtu(p.addr[:2]) for p in self.table.peers.values() if p.addr) if m]
        mtu = min(mtus) if mtus else 1500
        return max(encap.HDR_LEN + encap.MIN_CSIZE, min(65507, mtu - overhead))

    # -- engine handlers --------------------------------------------------------------------------
    def on_device(self, events: int) -> None:
        self.tx.drain(BATCH)

    def on_socket(self, events: int) -> None:
        self.rx.drain(BATCH)

    def to_device(self, pkt: Any, n: int) -> None:
        """One packet into the device (hook output for our own address): with an empty vnet header."""
        try:
            os.writev(self.fd, (encap.ZERO_VNET, pkt))
        except OSError:
            self.drop("dev_write_error")
            return
        self.stats.dev_tx_packets += 1
        self.stats.dev_tx_bytes += n

    # hook output toward a peer: one plain datagram, exactly as the simple UDP datapath sends it
    send = SimpleUdpDatapath.send

    # -- negotiation ------------------------------------------------------------------------------
    def _caps(self) -> int:
        return encap.CAP_PLAIN if self.mode == "plain" else encap.CAP_PLAIN | encap.CAP_GSO

    def _send_hello(self, peer: Peer, kind: int, echo: int = 0) -> None:
        if peer.addr is None:
            return
        data = encap.pack_hello(kind, caps=self._caps(), session=self.session, echo=echo, segment=self.segment)
        try:
            self.sock.sendto(data, peer.addr)
        except OSError as exc:
            log.debug("hello to %s: %s", peer.name, exc)
            return
        self.hello["hello_tx" if kind == encap.HELLO_KIND else "reply_tx"] += 1

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.relay.loop.call_later(delay, self._probe)

    def _probe(self) -> None:
        """Send the hellos that are due; give up on a peer after HELLO_TRIES unanswered ones."""
        self._timer = None
        now = time.monotonic()
        nxt: float | None = None
        for name, st in self.states.items():
            peer = self.table.peers[name]
            if st.state != "probing" or peer.addr is None:
                continue
            if st.sent >= HELLO_TRIES:
                st.state = "silent"
                log.info("peer %s: no answer to %d hellos: datapath %s", name, st.sent, st.datapath)
                continue
            if now >= st.next:
                st.first = st.first or now
                self._send_hello(peer, encap.HELLO_KIND)
                st.sent += 1
                st.next = now + HELLO_FIRST_GAP * (2 ** (st.sent - 1))
            nxt = st.next if nxt is None else min(nxt, st.next)
        if nxt is not None:
            self._schedule(max(0.0, nxt - now))

    def new_source(self, peer: Peer) -> None:
        """An accepted peer showed up (or moved): say hello now if we are still probing it."""
        st = self.states[peer.name]
        if st.state == "probing":
            st.next = 0.0
            self._schedule(0.0)

    def hello_from_new_source(self, peer: Peer, addr: tuple[str, int], data: bytes) -> None:
        """A hello from an address ``peer`` may have moved to: answered there, but it moves nothing (only
        a valid packet or chunk does, and only our own hello's answer switches a datapath)."""
        hello = encap.parse_hello(data)
        if hello is None or hello.kind != encap.HELLO_KIND:
            self.drop("unverified_hello", peer)
            return
        self.hello["hello_rx"] += 1
        reply = encap.pack_hello(encap.REPLY_KIND, caps=self._caps(), session=self.session, echo=hello.session,
                                 segment=self.segment)
        try:
            self.sock.sendto(reply, addr)
        except OSError:
            return
        self.hello["reply_tx"] += 1

    def on_hello(self, peer: Peer, data: bytes) -> None:
        """A hello is answered; only a reply that echoes our own session (the peer at that address saw our
        hello) sets what we send it. A hello alone never switches a datapath -- one spoofed datagram would
        otherwise turn a socat peer's traffic into chunks -- it makes us ask (probe) again instead."""
        hello = encap.parse_hello(data)
        if hello is None:
            self.drop("malformed", peer)
            return
        st = self.states[peer.name]
        if hello.kind == encap.HELLO_KIND:
            self.hello["hello_rx"] += 1
            self._send_hello(peer, encap.REPLY_KIND, echo=hello.session)
            if self.mode == "auto" and st.state == "probing" and not st.hurried:
                # it is up now, while our hellos back off (it started after our first ones were lost):
                # our next hello goes at once, so it is not the last one of a schedule that gives up
                st.hurried = True
                st.next = 0.0
                st.sent = min(st.sent, HELLO_TRIES - 1)
                self._schedule(0.0)
            elif self.mode == "auto" and st.state != "probing" and hello.session != st.session:
                # a tunlab relay that came up after we gave up on it, or one that restarted: ask again
                # (at most once per REPROBE_GAP, so spoofed hellos cost little)
                now = time.monotonic()
                if now >= st.next + REPROBE_GAP:
                    log.info("peer %s: a hello (session %#x): asking it again", peer.name, hello.session)
                    st.state, st.sent, st.next, st.first = "probing", 0, 0.0, 0.0
                    self._schedule(0.0)
            return
        self.hello["reply_rx"] += 1
        if hello.echo != self.session:
            self.drop("unverified_hello", peer)
            return  # answers an earlier incarnation of this relay, or forged
        if st.session and st.session != hello.session:
            log.info("peer %s restarted", peer.name)
        st.session, st.caps = hello.session, hello.caps
        before = st.datapath
        if self.mode == "auto":
            st.datapath = "gso" if hello.caps & encap.CAP_GSO else "plain"
            st.state = "answered"
        elif self.mode == "gso" and not hello.caps & encap.CAP_GSO:
            log.warning("peer %s speaks only the plain datapath but --datapath gso is forced", peer.name)
        if before != st.datapath or st.sent:
            ms = (time.monotonic() - st.first) * 1e3 if st.first else 0.0
            log.info("peer %s: datapath %s (hello answered after %.1f ms, its caps %#x)", peer.name, st.datapath,
                     ms, hello.caps)
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the set of gso peers and switch device offload on iff every peer is gso."""
        # a peer whose stages are not all gso_ok gets one packet at a time (relay/linkpath.py)
        self.gso_peers = {self.table.peers[n] for n, st in self.states.items() if st.datapath == "gso"
                          and (self.table.peers[n].path is None or self.table.peers[n].path.gso_ok)}
        want = bool(self.states) and len(self.gso_peers) == len(self.states)
        if want == self.offload:
            return
        dev = self.relay.device
        assert dev is not None
        self.offload = fast_io.switch_offload(dev.fd, dev.name, want, "whole GSO packets")

    def paths_changed(self) -> None:
        self._refresh()

    def send_many(self, peer: Peer, pkts: list[bytes]) -> None:
        """Delayed packets due together: runs of one size (the last of a run may be shorter) in one UDP GSO
        send each, as the plain pump sends what it reads; plain datagrams on the wire either way."""
        addr = peer.addr
        if addr is None:
            self.drop("peer_down", peer, len(pkts))
            return
        i, n = 0, len(pkts)
        while i < n:
            size = len(pkts[i])
            j = i + 1
            while j < n and j - i < fast_io.UDP_MAX_SEGS and len(pkts[j]) == size \
                    and (j - i + 1) * size <= fast_io.UDP_MAX_PAYLOAD:
                j += 1
            if j < n and j - i < fast_io.UDP_MAX_SEGS and len(pkts[j]) < size \
                    and (j - i) * size + len(pkts[j]) <= fast_io.UDP_MAX_PAYLOAD:
                j += 1  # a shorter last one ends the run
            run = pkts[i:j]
            if len(run) == 1:
                self.send(peer, run[0], size)
            else:
                try:
                    self.sock.sendmsg(run, fast_io.gso_cmsg(size), 0, addr)
                except BlockingIOError:
                    self.drop("backlog", peer, len(run))
                except OSError:
                    for pkt in run:  # no GSO for this one: one by one
                        self.send(peer, pkt, len(pkt))
                else:
                    peer.tx_packets += len(run)
                    peer.tx_bytes += sum(len(p) for p in run)
            i = j

    # -- information ------------------------------------------------------------------------------
    def _peer_info(self, name: str, st: PeerState) -> dict[str, Any]:
        out = st.as_dict()
        path = self.table.peers[name].path
        if path is not None and not path.gso_ok:
            out["datapath"] = "plain"
            out["why"] = "stages: " + ", ".join(s.name for s in path.stages if not s.gso_ok)
        return out

    def info(self) -> dict[str, Any]:
        tx, rx = self.tx, self.rx
        return {
            "requested": self.mode, "offload": self.offload, "segment": self.segment,
            "peers": {n: self._peer_info(n, st) for n, st in self.states.items()},
            **self.hello,
            "segments_read": tx.segments, "datagrams_tx": tx.datagrams, "udp_sends": tx.sends,
            "datagrams_rx": rx.datagrams, "udp_receives": rx.receives, "whole_streams_rx": rx.whole, "segments_merged_rx": rx.merged,
            "partial_streams": len(rx.reasm.partials),
        }
