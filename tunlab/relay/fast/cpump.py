"""The compiled datapath (issue 20): the fast UDP datapath (:mod:`.cudp`) and the TCP framing path
(:mod:`.ctcp`) with their loops in C; this module holds what both share.

Same wire format, negotiation, counters and drop reasons as :mod:`.udp` (``FastUdpDatapath``) and
:mod:`..simple` (``SimpleTcpDatapath``), which these classes subclass: the C loops of
``_cfast.Pump`` (``tunlab/relay/fast/_cfast.c``) move packets between the device and the socket with the
GIL released and stop at anything Python must decide -- a hello, a source not yet accepted, chunks to
reassemble, a read from before an offload switch, a link whose stages need Python -- which then goes
through the Python datapath's own code, from the same buffers. The registry
(:data:`tunlab.relay.datapath.COMPILED`) picks these classes when ``_cfast`` imports; importing this
module fails (ImportError) when it does not.

Per link: a peer whose send path has stages (``peer.path``, relay/linkpath.py) or that is named in
``$TUNLAB_DATAPATH_PYTHON_PEERS`` (comma-separated) is carried by Python, the others by C, and the log
says why (``peer b: datapath python (stages impair)``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from . import _cfast

if TYPE_CHECKING:
    from ..engine import Relay
    from ..peers import Peer

log = logging.getLogger("tunlab.relay.fast")

PYTHON_PEERS_ENV = "TUNLAB_DATAPATH_PYTHON_PEERS"
#: rounds of a handler: each ends at a packet Python handles (a hello, a new source, ...)
ROUNDS = 8
DRAINED, MORE, PY, LEFTOVER, DEV_ERROR = _cfast.DRAINED, _cfast.MORE, _cfast.PY, _cfast.LEFTOVER, _cfast.DEV_ERROR


def python_link_reason(peer: "Peer") -> str | None:
    """Why this peer's link must be carried by Python (None: the compiled loops may carry it): it has
    stages (``peer.path``, relay/linkpath.py: impairments, NSH run in Python) or is named in
    $TUNLAB_DATAPATH_PYTHON_PEERS."""
    named = {n.strip() for n in os.environ.get(PYTHON_PEERS_ENV, "").split(",") if n.strip()}
    if peer.name in named:
        return f"${PYTHON_PEERS_ENV}"
    stages = getattr(getattr(peer, "path", None), "stages", None) or ()
    if stages:
        return "stages " + ", ".join(str(getattr(s, "name", s)) for s in stages)
    return None


def too_big_for_c(relay: "Relay") -> str | None:
    """Why the compiled loops cannot take this relay's peer or route table (None: they can)."""
    if len(relay.table.peers) > _cfast.MAX_PEERS:
        return f"more than {_cfast.MAX_PEERS} peers"
    routes = relay.table.routes
    if routes is not None and max(len(routes.v4), len(routes.v6)) > _cfast.MAX_ROUTES:
        return f"more than {_cfast.MAX_ROUTES} routes per address family"
    return None


def stays_python(dp: Any, relay: "Relay") -> bool:
    """Whether this relay's packets must stay in the Python loops (a hook sees every packet, or the tables
    are too big for C); if so ``dp`` says so (impl, impl_reason) and the log has why."""
    why = "--vnf hook: a Python function sees every packet" if dp.hook is not None else too_big_for_c(relay)
    if why is None:
        return False
    dp.impl, dp.impl_reason = "python", why
    log.info("datapath: Python loops (%s)", why)
    return True


def python_link_send(dp: Any, peer: "Peer", pkt: Any, n: int) -> None:
    """A packet for a Python link: through its stages where the relay has them (``Datapath.out``, seam 2),
    else sent as the Python datapath sends it."""
    getattr(dp, "out", dp.send)(peer, pkt, n)


def route_lists(relay: "Relay", index: dict[str, int]) -> tuple[int, bool, list[Any], list[Any]]:
    table = relay.table
    fixed = index[table.fixed.name] if table.fixed is not None else -1
    routes = table.routes
    if routes is None:
        return fixed, False, [], []
    v4 = [(net.to_bytes(4, "big"), mask.to_bytes(4, "big"), index[p.name]) for net, mask, p in routes.v4]
    v6 = [(net.to_bytes(16, "big"), mask.to_bytes(16, "big"), index[p.name]) for net, mask, p in routes.v6]
    return fixed, True, v4, v6


def new_pump(dp: Any, sock_fd: int, v6: bool, segment: int, bufs: tuple[Any, ...], npeers: int) -> Any:
    relay = dp.relay
    tx_layout_buf, rx_buf, pbuf, stride, scratch, overflow = bufs
    return _cfast.Pump(dp.fd, sock_fd, v6, relay.config.tap, segment, dp.limit, tx_layout_buf, rx_buf, pbuf,
                       stride, scratch, overflow, npeers)


class Counters:
    """Folds the C counters into the relay's (after every handler call, so they read the same)."""

    def take(self: Any) -> None:
        cs, drops, per_peer = self.pump.take()
        st = self.stats
        st.dev_rx_packets += cs[0]
        st.dev_rx_bytes += cs[1]
        st.dev_tx_packets += cs[2]
        st.dev_tx_bytes += cs[3]
        self.take_extra(cs)
        d = self.drops
        for k, v in drops.items():
            d[k] = d.get(k, 0) + v
        for p, (rxp, rxb, txp, txb) in zip(self.plist, per_peer):
            if rxp or txp:
                p.rx_packets += rxp
                p.rx_bytes += rxb
                p.tx_packets += txp
                p.tx_bytes += txb

    def take_extra(self, cs: tuple[int, ...]) -> None:
        pass
