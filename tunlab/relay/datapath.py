"""The datapath interface and registry: the per-packet code between the device and the peers.

A datapath subclasses :class:`Datapath` and supplies the handlers (device readable, socket readable, TCP
stream readable); everything else (device, peer table, counters, sockets, connections) belongs to the
:class:`~tunlab.relay.engine.Relay` and is shared. ``--datapath NAME`` picks one from :data:`DATAPATHS`:
``simple`` (:mod:`tunlab.relay.simple`, the reference loop) or ``auto``/``plain``/``gso``
(:mod:`tunlab.relay.fast`), each imported only when chosen. A new datapath registers here.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from .framing import check_l2, check_l3
from .peers import Peer

if TYPE_CHECKING:
    from .engine import Relay

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
    #: the implementation of the loops ("python" or "c") and, for Python, why (the counters and ready line)
    impl = "python"
    impl_reason: str | None = "the reference loop"

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
        self.impl_reason = IMPL_REASON.get(type(self), self.impl_reason)

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
        self.out(dest, out, n)

    def staged(self, peer: Peer, pkt: Any, n: int) -> None:
        """A packet for a peer with stages (relay/linkpath.py): through them, then sent now or later."""
        path = peer.path
        now = time.monotonic()
        try:
            items = path.tx(bytes(pkt), now)
        except Exception:  # a stage's bug drops its packet, never the relay
            self.drop("stage_error", peer)
            return
        if items:
            self.relay.scheduler.put(peer, path, items, now)

    def out(self, peer: Peer, pkt: Any, n: int) -> None:
        """One packet to ``peer``: through its stages if it has any."""
        if peer.path is not None:
            self.staged(peer, pkt, n)
        else:
            self.send(peer, pkt, n)

    def send_many(self, peer: Peer, pkts: list[bytes]) -> None:
        """Several packets for one peer at once (delayed packets that fell due together)."""
        for pkt in pkts:
            self.send(peer, pkt, len(pkt))

    def paths_changed(self) -> None:
        """A peer gained or lost its stages at run time (a datapath that batches re-plans here)."""

    def send(self, peer: Peer, pkt: Any, n: int) -> None:  # pragma: no cover - per transport
        raise NotImplementedError

    def on_device(self, events: int) -> None:  # pragma: no cover - per transport
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """The counters' ``datapath`` section: what was asked for and what each peer gets."""
        return {"requested": self.relay.config.datapath, "datapath": "simple",
                "peers": {name: {"datapath": "simple"} for name in self.table.peers}}

    def impl_info(self) -> dict[str, Any]:
        """``{"impl": "python"|"c"}`` and, for Python, ``"impl_reason"``: merged into ``info()`` by the engine."""
        if self.impl == "c":
            return {"impl": "c"}
        return {"impl": self.impl, "impl_reason": self.impl_reason or "the reference loop"}

    def device_error(self, exc: OSError) -> None:
        name = self.relay.device.name if self.relay.device else "?"
        if exc.errno == 77:  # EBADFD: the interface was deleted under us
            self.relay.fail(f"device {name} was deleted while the relay was using it")
        else:
            self.relay.fail(f"reading device {name} failed: {exc.strerror or exc}")


#: --datapath NAME -> (module, its UDP datapath class, its TCP datapath class or None); imported when chosen
DATAPATHS: dict[str, tuple[str, str | None, str | None]] = {
    "simple": ("tunlab.relay.simple", "SimpleUdpDatapath", "SimpleTcpDatapath"),
    # the batched, offloaded UDP datapath (docs/fastpath.md)
    "auto": ("tunlab.relay.fast.udp", "FastUdpDatapath", None),
    "plain": ("tunlab.relay.fast.udp", "FastUdpDatapath", None),
    "gso": ("tunlab.relay.fast.udp", "FastUdpDatapath", None),
}

#: the datapath ``auto`` stands for where its module has nothing for the transport (TCP)
AUTO_FALLBACK = "simple"

#: (module, Python class) -> (module, compiled twin): the same wire format and counters, its loops in C
#: (tunlab/relay/fast/_cfast.c). Chosen when its extension imports, unless $TUNLAB_DATAPATH_IMPL says
#: ``python``; ``--datapath simple`` (the reference loop) stays Python.
COMPILED: dict[tuple[str, str], tuple[str, str]] = {
    ("tunlab.relay.fast.udp", "FastUdpDatapath"): ("tunlab.relay.fast.cudp", "CFastUdpDatapath"),
    ("tunlab.relay.simple", "SimpleTcpDatapath"): ("tunlab.relay.fast.ctcp", "CTcpDatapath"),
}
IMPL_ENV = "TUNLAB_DATAPATH_IMPL"
IMPL_CHOICES = ("auto", "c", "python")
#: Python class -> why it runs instead of its compiled twin (the counters' ``impl_reason``)
IMPL_REASON: dict[type, str] = {}


def _compiled(name: str, mod_name: str, attr: str, py_cls: type) -> type:
    """The compiled twin of ``py_cls`` when there is one and it may and can run, else ``py_cls`` (the
    reason recorded in IMPL_REASON)."""
    import importlib

    from tunlab.errors import TunlabError

    twin = COMPILED.get((mod_name, attr))
    if twin is None:
        return py_cls
    want = os.environ.get(IMPL_ENV, "auto") or "auto"
    if want not in IMPL_CHOICES:
        raise TunlabError(f"${IMPL_ENV}: unknown value {want!r}", f"use one of {', '.join(IMPL_CHOICES)}")
    if name == "simple":
        IMPL_REASON[py_cls] = "--datapath simple is the reference loop"
        return py_cls
    if want == "python":
        IMPL_REASON[py_cls] = f"{IMPL_ENV}=python"
        return py_cls
    try:
        cls = getattr(importlib.import_module(twin[0]), twin[1])
    except ImportError as exc:
        if want == "c":
            raise TunlabError(f"{IMPL_ENV}=c but the compiled datapath does not import: {exc}",
                              "reinstall with a C compiler and Python's headers (scripts/setup.sh installs "
                              "build-essential and python3-dev), or unset it") from None
        IMPL_REASON[py_cls] = f"compiled datapath unavailable: {exc}"
        log.info("compiled datapath unavailable (%s): the Python one runs", exc)
        return py_cls
    return cls  # type: ignore[no-any-return]


def datapath_class(name: str, transport: str, *, tap: bool = False) -> type[Datapath]:
    """The datapath class for ``--datapath NAME``; other modules register theirs in DATAPATHS (lazily
    imported: an entry names the module and its class per transport, None where it has none).
    ``auto`` is the fast datapath over UDP and the simple one over TCP and on TAP devices: a TAP peer
    that is not a tunlab relay would write the negotiation hello into its device as an Ethernet frame
    with a multicast destination, and a bridge behind it would flood it (``--datapath gso`` still
    forces the fast datapath between two tunlab TAP relays)."""
    import importlib

    from tunlab.errors import TunlabError

    entry = DATAPATHS.get(name)
    if entry is None:
        raise TunlabError(f"--datapath: unknown datapath {name!r}", f"known: {', '.join(sorted(DATAPATHS))}")
    if name == "auto" and (transport == "tcp" or tap):
        entry = DATAPATHS[AUTO_FALLBACK]
    mod_name, udp_cls, tcp_cls = entry
    attr = tcp_cls if transport == "tcp" else udp_cls
    cls = getattr(importlib.import_module(mod_name), attr) if attr else None
    if cls is None:
        raise TunlabError(f"--datapath {name} does not support --transport {transport}",
                          "use --datapath auto or simple")
    return _compiled(name, mod_name, attr, cls)  # type: ignore[arg-type]
