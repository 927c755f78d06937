"""The TCP framing path (2-byte length + packet) with its loops in C (issue 20): see :mod:`.cpump`.

Imports nothing of the fast UDP datapath: a relay over TCP starts as lean as with the simple one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import encap
from .cpump import (DRAINED, LEFTOVER, PY, ROUNDS, Counters, _cfast, new_pump, python_link_reason, python_link_send,
                    route_lists, stays_python)
from ..datapath import BATCH
from ..simple import SimpleTcpDatapath

if TYPE_CHECKING:
    from ..engine import Relay
    from ..framing import FrameReader
    from ..transport import Conn

log = logging.getLogger("tunlab.relay")


class CTcpDatapath(Counters, SimpleTcpDatapath):
    """The TCP framing path (2-byte length + packet) with its loops in C."""

    impl = "c"

    def __init__(self, relay: "Relay") -> None:
        super().__init__(relay)
        self.plist = list(self.table.peers.values())
        self.pump: Any = None
        if stays_python(self, relay):
            return
        seg = encap.HDR_LEN + encap.MIN_CSIZE
        # the UDP loops' buffers are not used over TCP: the smallest the Pump accepts
        self.pump = new_pump(self, -1, False, seg, (bytearray(seg), bytearray(65536 + encap.HDR_LEN), bytearray(1), 1,
                                                     bytearray(encap.VNET_LEN), bytearray(1)), len(self.plist))
        self.pump.set_routes(*route_lists(relay, {p.name: i for i, p in enumerate(self.plist)}))
        self.python_links: dict[str, str] = {}
        self._sync_links()

    def _sync_links(self) -> None:
        """Mark the peers whose links need Python (stages) in the C peer table."""
        for i, p in enumerate(self.plist):
            reason = python_link_reason(p)
            if reason != self.python_links.get(p.name):
                if reason is None:
                    del self.python_links[p.name]
                else:
                    self.python_links[p.name] = reason
                log.info("peer %s: datapath %s", p.name, "c again" if reason is None else f"python ({reason})")
                self.pump.set_peer(i, None, False, reason is not None)

    def paths_changed(self) -> None:
        """A peer gained or lost its stages at run time (seam 2): its link moves to Python or back."""
        parent = getattr(super(), "paths_changed", None)
        if parent is not None:
            parent()
        if self.pump is not None:
            self._sync_links()

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.pump is not None:
            for name, st in out.get("peers", {}).items():
                st["impl"] = "python" if name in self.python_links else "c"
        return out

    def on_device(self, events: int) -> None:
        pump = self.pump
        if pump is None:
            super().on_device(events)
            return
        buf, mv, plist = self.tbuf, self.tmv, self.plist
        off, cur, cp, cb = 0, -1, 0, 0
        rx_p = rx_b = 0
        try:
            for _ in range(ROUNDS):
                status, off, cur, packets, nbytes, reads, rbytes, pending, nxt = pump.tcp_read(buf, off, BATCH, cur)
                rx_p += reads
                rx_b += rbytes
                cp += packets
                cb += nbytes
                if status == PY:  # the next packet goes to another peer: send this run, start the next
                    self.flush(plist[cur], mv[:off], cp, cb)
                    buf[2:2 + pending] = buf[off + 2:off + 2 + pending]
                    buf[0], buf[1] = pending >> 8, pending & 0xFF
                    off, cur, cp, cb = pending + 2, nxt, 1, pending
                    continue
                if status == LEFTOVER:  # a packet for a Python link: after the run, through Python
                    pkt = bytes(buf[off + 2:off + 2 + pending])
                    if off:
                        self.flush(plist[cur], mv[:off], cp, cb)
                    off, cur, cp, cb = 0, -1, 0, 0
                    python_link_send(self, plist[nxt], pkt, pending)
                    continue
                if off:
                    self.flush(plist[cur], mv[:off], cp, cb)
                    off, cur, cp, cb = 0, -1, 0, 0
                if status == DRAINED:
                    break
        except OSError as exc:
            self.device_error(exc)
        finally:
            if off:
                self.flush(plist[cur], mv[:off], cp, cb)
            st = self.stats
            st.dev_rx_packets += rx_p
            st.dev_rx_bytes += rx_b
            self.take()

    def deliver(self, conn: "Conn", reader: "FrameReader") -> None:
        if self.pump is None or conn.probation:  # a connection on probation is promoted by Python
            super().deliver(conn, reader)
            return
        start, error, frames, fbytes, written, wbytes, drops, _ = _cfast.deframe(
            reader.buf, reader.start, reader.end, reader.max_len, self.limit, self.relay.config.tap, self.fd)
        reader.start = start
        if error:
            reader.error = "bad_length"
        peer = conn.peer
        peer.rx_packets += frames
        peer.rx_bytes += fbytes
        st = self.stats
        st.dev_tx_packets += written
        st.dev_tx_bytes += wbytes
        d = self.drops
        for k, v in drops.items():
            d[k] = d.get(k, 0) + v

    def delivered(self) -> None:
        if self.pump is not None:
            self.take()
