"""``--datapath auto|plain|gso`` over UDP with the loops in C (issue 20): see :mod:`.cpump`."""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

from . import encap
from .cpump import (DEV_ERROR, DRAINED, MORE, PY, ROUNDS, Counters, new_pump, python_link_reason,
                    python_link_send, route_lists, stays_python)
from .pumps import BATCH
from .udp import FastUdpDatapath

if TYPE_CHECKING:
    from ..engine import Relay
    from ..peers import Peer

log = logging.getLogger("tunlab.relay.fast")


class CFastUdpDatapath(Counters, FastUdpDatapath):
    """``--datapath auto|plain|gso`` over UDP with the loops in C."""

    impl = "c"

    def __init__(self, relay: "Relay") -> None:
        self.pump: Any = None
        super().__init__(relay)
        self.plist = list(self.table.peers.values())
        index = {p.name: i for i, p in enumerate(self.plist)}
        if stays_python(self, relay):
            return
        tx, rx = self.tx, self.rx
        self.pump = new_pump(self, self.sock.fileno(), self.v6, self.segment,
                              (tx.layout.buf, rx.buf, tx.pbuf, tx.stride, tx.scratch, tx.overflow), len(self.plist))
        self.pump.set_routes(*route_lists(relay, index))
        self.python_links: dict[str, str] = {}
        self._synced: list[Any] = []
        self._sync_peers()
        # what the last poll left for the device (1) or socket (2) handler: (which, loop status)
        self._waiting = (0, 0)
        loop = relay.loop
        if loop.poller is None:  # one datapath per loop waits in C (the second relay of -m both does not)
            loop.poller = self._poll
            self._epfd = loop.ep.fileno()

    def _poll(self, timeout: float) -> list[tuple[int, int]]:
        """The loop's poll: in C, which carries device and socket events itself and returns the rest."""
        ms = -1 if timeout < 0 else math.ceil(timeout * 1000)
        try:
            events, which, status, self.tx.pid = self.pump.poll(self._epfd, ms, BATCH, self.offload, self.tx.pid)
        finally:
            self.take()
        self._waiting = (which, status)
        return events  # type: ignore[no-any-return]

    def _left_by_poll(self, which: int) -> int | None:
        """The loop status the last poll stopped at for this handler (None: none)."""
        w, status = self._waiting
        if w != which:
            return None
        self._waiting = (0, 0)
        return status

    # -- what C knows of the peers ----------------------------------------------------------------
    def _sync_peers(self) -> None:
        """Tell C each peer's address, whether it gets chunks, and whether its link is Python's."""
        if self.pump is None:
            return
        now = []
        for p in self.plist:
            reason = python_link_reason(p)
            if reason != self.python_links.get(p.name):
                if reason is None:
                    del self.python_links[p.name]
                    log.info("peer %s: datapath c again", p.name)
                else:
                    self.python_links[p.name] = reason
                    log.info("peer %s: datapath python (%s)", p.name, reason)
            now.append((p.addr[:2] if p.addr else None, p in self.gso_peers, reason is not None))
        if now == self._synced:
            return
        for i, (addr, gso, py) in enumerate(now):
            self.pump.set_peer(i, addr, gso, py)
        self._synced = now

    def _refresh(self) -> None:
        super()._refresh()
        self._sync_peers()

    def paths_changed(self) -> None:
        """A peer gained or lost its stages at run time (seam 2): its link moves to Python or back."""
        parent = getattr(super(), "paths_changed", None)
        if parent is not None:
            parent()
        self._sync_peers()


    def take_extra(self, cs: tuple[int, ...]) -> None:
        tx, rx = self.tx, self.rx
        tx.reads += cs[4]
        tx.segments += cs[5]
        tx.datagrams += cs[6]
        tx.sends += cs[7]
        rx.datagrams += cs[8]
        rx.receives += cs[9]
        rx.whole += cs[10]
        rx.merged += cs[11]

    # -- device -> peers --------------------------------------------------------------------------
    def on_device(self, events: int) -> None:
        pump = self.pump
        if pump is None:
            super().on_device(events)
            return
        tx = self.tx
        status = self._left_by_poll(1)
        try:
            for _ in range(ROUNDS):
                if status is None:
                    status, tx.pid = pump.tx(BATCH, self.offload, tx.pid)
                if status == DRAINED or status == MORE:
                    break
                n, off, pi, _, _, err = pump.left()
                if status == DEV_ERROR:
                    self.device_error(OSError(err, os.strerror(err)))
                    break
                self._tx_left(status, n, off, self.plist[pi] if pi >= 0 else None)
                status = None
        finally:
            self.take()

    def _tx_left(self, status: int, n: int, off: int, peer: "Peer | None") -> None:
        """A read the C loop left: from before an offload switch (LEFTOVER) or for a Python link (PY)."""
        tx = self.tx
        if self.offload:  # n = the whole read, virtio header included, in the chunk slots
            layout = tx.layout
            stream = b"".join(layout.slots[:encap.chunk_count(n, layout.csize)])[:n]
            if peer is not None:
                tx._leftover(stream, peer)
            return
        # offload off: n = packet length, at `off` in the plain slots (and the overflow past them)
        stride = tx.stride
        if status == PY and peer is not None:
            tx.segments += 1
            python_link_send(self, peer, tx.pview[off:off + n], n)
            return
        stream = bytes(tx.scratch) + bytes(tx.pview[off:off + min(n, stride)]) + bytes(tx.overflow[:max(0, n - stride)])
        table = self.table
        p = table.fixed if table.fixed is not None else table.route(memoryview(stream)[encap.VNET_LEN:], n)
        if p is not None:
            tx._leftover(stream, p)

    # -- peers -> device --------------------------------------------------------------------------
    def on_socket(self, events: int) -> None:
        pump = self.pump
        if pump is None:
            super().on_socket(events)
            return
        status = self._left_by_poll(2)
        try:
            for _ in range(ROUNDS):
                if status is None:
                    status = pump.rx(BATCH)
                if status != PY:
                    break
                status = None
                n, seg, pi, trunc, addr, _ = pump.left()
                self._rx_left(n, seg, self.plist[pi] if pi >= 0 else None, bool(trunc), addr)
        finally:
            self.take()

    def _rx_left(self, n: int, seg: int, peer: "Peer | None", trunc: bool, addr: tuple[str, int]) -> None:
        """A receive the C loop left in the receive buffer, handled as the Python datapath does."""
        rx, table, drops = self.rx, self.table, self.drops
        rx.receives += 1
        if peer is None:
            peer = table.by_addr.get(addr)
        if peer is None:
            peer = table.udp_candidate(addr[0])
            if peer is None:
                drops["foreign"] = drops.get("foreign", 0) + 1
                return
            if trunc:
                drops["too_big"] = drops.get("too_big", 0) + 1
                return
            if not rx._proves(peer, addr, n, seg or n):
                return
            table.accept_udp(addr[0], addr[1], peer)
            self.new_source(peer)
            self._sync_peers()
        if trunc:
            drops["too_big"] = drops.get("too_big", 0) + 1
            return
        if n == 0:
            drops["empty"] = drops.get("empty", 0) + 1
            return
        rx._datagrams(peer, n, seg if 0 < seg <= n else n)

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.pump is not None:
            for name, st in out["peers"].items():
                st["impl"] = "python" if name in self.python_links else "c"
        return out
