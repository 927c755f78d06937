"""The relay: ``Relay(config).run()``, ``.stop()``, ``.counters()``; ``serve()`` runs one or several
relays (TunConnector's ``both`` mode) on one event loop with readiness, control socket and stats file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import threading
from typing import Any, Sequence

from tunlab.errors import TunlabError

from .config import RelayConfig
from .datapath import Datapath, Stats, datapath_class
from .device import Device, configure, interface_mtu, open_device
from .hook import HookFn
from .loop import EPOLLIN, Loop
from .peers import PeerTable
from .transport import TcpTransport, UdpTransport

log = logging.getLogger("tunlab.relay")


class Relay:
    """One device linked to its peers. Not thread-safe, except :meth:`stop` and :meth:`counters`.

    ``device`` hands over an already open packet descriptor (the relay closes it); ``hook`` overrides
    ``config.hook`` with a callable.
    """

    def __init__(self, config: RelayConfig, *, loop: Loop | None = None, device: Device | None = None,
                 hook: HookFn | None = None) -> None:
        self.config = config
        self._own_loop = loop is None
        self.loop = loop if loop is not None else Loop()
        self.device: Device | None = device
        self.hook = hook
        if hook is not None and config.vnf != "hook":
            raise TunlabError("a hook callable needs a config with vnf='hook'")
        self.stats = Stats()
        self.table = PeerTable(config.peers, config.routes, tap=config.tap)
        self.transport: UdpTransport | TcpTransport | None = None
        self.datapath: Datapath | None = None
        self.mtu = 0
        self.packet_limit = 0
        self.error: str | None = None
        self.seed = config.seed
        self.paths: Any = None         # linkpath.PathContext once a peer has stages (issue 17, 18)
        self.scheduler: Any = None     # linkpath.Scheduler: packets that leave later
        self.decisions: Any = None     # linkpath.DecisionLog
        self._flush_timer: Any = None
        self.opened = False
        self.closed = False

    # -- life cycle
    def open(self) -> None:
        """Open (or attach) and configure the device, bind the sockets, start connecting. Idempotent."""
        if self.opened:
            return
        cfg = self.config
        try:
            dp_cls = datapath_class(cfg.datapath, cfg.transport, tap=cfg.tap)
            if cfg.psk_file:  # a keyed link: every datagram (TCP: frame) sealed, whatever --datapath says
                from .sealed import SealedTcpDatapath, SealedUdpDatapath

                dp_cls = SealedTcpDatapath if cfg.transport == "tcp" else SealedUdpDatapath
                if cfg.transport == "udp" and cfg.datapath in ("auto", "gso") and not cfg.tap and not cfg.hook and self.hook is None \
                        and not cfg.nsh_file:
                    # sealed chunks with GSO/GRO, in Python: the compiled datapath does not seal
                    from .fast.sealedudp import SealedFastUdpDatapath

                    dp_cls = SealedFastUdpDatapath
                    log.info("keyed link: datapath gso with each chunk sealed, in Python (the compiled "
                             "datapath does not seal)")
            if cfg.nsh_file:  # NSH mode (issue 18): classifier/SFF/proxy on the simple UDP datapath
                from .sff import NshUdpDatapath

                dp_cls = NshUdpDatapath
            if self.hook is None and cfg.hook:
                from .hook import load_hook

                self.hook = load_hook(cfg.hook)
            if self.device is None:
                self.device = open_device(cfg.dev, tap=cfg.tap, attach=cfg.attach, extra_flags=dp_cls.device_flags)
                if not cfg.attach:
                    configure(self.device, addr=cfg.addr, mtu=cfg.effective_mtu())
            self.mtu = cfg.effective_mtu(interface_mtu(self.device.name) if cfg.attach else None)
            self.packet_limit = self.mtu + cfg.l2_overhead
            self.transport = TcpTransport(self) if cfg.transport == "tcp" else UdpTransport(self)
            self.transport.open()
            if cfg.impair:
                self.build_paths({peer: {"impair": {"spec": spec}} for peer, spec in cfg.impair})
            self.datapath = dp_cls(self)
            self.loop.add(self.device.fd, EPOLLIN, self.datapath.on_device)
            self.transport.start(self.datapath)
        except BaseException:
            self.close()
            raise
        self.opened = True
        used = self.datapath.info().get("datapath", cfg.datapath)
        impl = self.datapath.impl_info()
        log.info("relay %s ready: %s device %s mtu %d, %s, datapath %s, %s, listening on %s",
                 cfg.label or cfg.dev, "TAP" if cfg.tap else "TUN", self.device.name, self.mtu, cfg.transport,
                 used if used == cfg.datapath else f"{used} (asked for {cfg.datapath})",
                 f"impl {impl['impl']}" + (f" ({impl['impl_reason']})" if "impl_reason" in impl else ""),
                 ", ".join(self.transport.bound()) or "-")
        log.info("relay %s peers: %s", cfg.label or cfg.dev, ", ".join(
            f"{p.name} {'at' if p.spec.outgoing else 'from'} {p.spec.ip or 'the first source'}"
            + (f":{p.spec.port}" if p.spec.outgoing else "") for p in self.table.peers.values()) or "-")
        for p in self.table.peers.values():
            if p.path is not None:
                self._log_path(p)

    # -- per-peer stages (relay/linkpath.py)
    def _path_context(self) -> Any:
        from . import linkpath

        if self.paths is None:
            if self.seed is None:
                import secrets

                self.seed = secrets.randbits(32)
            self.decisions = linkpath.DecisionLog(self.config.impair_log)
            labels = {peer: (link, d) for peer, link, d in self.config.link_labels}
            dev = self.config.label or self.config.dev
            for name in self.table.peers:
                labels.setdefault(name, (f"{dev}-{name}", f"{dev}>{name}"))
            self.paths = linkpath.PathContext(self.seed, self.decisions, labels)
            self.scheduler = linkpath.Scheduler(self.loop, self._send_later, self._send_many_later)
            log.info("relay %s: impairment seed %d, timers %s%s", dev, self.seed, self.scheduler.timer.kind,
                     f", decision log {self.config.impair_log}" if self.config.impair_log else "")
            if self.config.impair_log:
                self._flush_timer = self.loop.call_later(0.25, self._flush_decisions)
        return self.paths

    def _send_later(self, peer: Any, data: bytes) -> None:
        if self.datapath is not None:
            self.datapath.send(peer, data, len(data))

    def _send_many_later(self, peer: Any, datas: list[bytes]) -> None:
        if self.datapath is not None:
            self.datapath.send_many(peer, datas)

    def _flush_decisions(self) -> None:
        if self.decisions is not None:
            self.decisions.flush()
        self._flush_timer = self.loop.call_later(0.25, self._flush_decisions)

    def build_paths(self, conf: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Give peers their stages: peer -> stage kind -> configuration (linkpath.build_paths)."""
        from . import linkpath

        ctx = self._path_context()
        for name, path in linkpath.build_paths(self.table.peers, conf, ctx).items():
            self.table.peers[name].path = path

    def _log_path(self, peer: Any) -> None:
        path = peer.path
        why = ", ".join(s.name for s in path.stages if not s.gso_ok)
        desc = "; ".join(f"{s.name} {s.spec.describe()}" if hasattr(s, "spec") else s.name for s in path.stages)
        log.info("peer %s: %s%s", peer.name, desc or "no stages",
                 f" (datapath per packet: {why})" if why else "")

    def stage_control(self, peer_name: str, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """A run-time change of one stage of one peer (the control socket's ``stage`` and ``link``): the
        stage is made when the peer has none of that kind; an impair stage that ends up empty is removed
        (the peer gets its fast datapath back). Raises TunlabError with a one-line reason."""
        from . import linkpath

        peer = self.table.peers.get(peer_name)
        if peer is None:
            raise TunlabError(f"no peer is named {peer_name!r}", f"peers: {', '.join(sorted(self.table.peers))}")
        entry = linkpath.STAGES.get(kind)
        if entry is None:
            raise TunlabError(f"stage {kind!r} is unknown", f"known: {', '.join(sorted(linkpath.STAGES))}")
        ctx = self._path_context()
        path = peer.path or linkpath.LinkPath(peer_name)
        stage = path.stage(kind)
        fresh = stage is None
        if stage is None:
            stage = entry[1](ctx, peer_name, {})
        reply = stage.control(request)
        self.scheduler.late.clear()  # the counters' lateness figures start again with the change
        if fresh:
            path.add(stage)
        spec = getattr(stage, "spec", None)
        if spec is not None and spec.empty:
            path.stages.remove(stage)
        before = peer.path
        peer.path = path if path.stages else None
        if self.datapath is not None and (before is None) != (peer.path is None):
            self.datapath.paths_changed()
        if peer.path is not None:
            self._log_path(peer)
        else:
            log.info("peer %s: no stages", peer_name)
        return {"peer": peer_name, "stage": kind, **reply}

    def run(self, *, ready_fd: int | None = None, control: str | None = None, stats_file: str | None = None,
            handle_signals: bool | None = None) -> dict[str, Any]:
        """Open, run until :meth:`stop` (or SIGTERM/SIGINT in the main thread), close; return the counters."""
        return serve([self], ready_fd=ready_fd, control=control, stats_file=stats_file,
                     handle_signals=handle_signals)

    def stop(self) -> None:
        """Ask the loop to finish (safe from other threads and signal handlers)."""
        self.loop.stop()

    def fail(self, message: str) -> None:
        """A fatal problem found inside the loop: remember it and stop."""
        if self.error is None:
            self.error = message
            log.error("%s", message)
        self.loop.stop()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.decisions is not None:
            self.decisions.close()
        if self.transport is not None:
            self.transport.close()
        if self.device is not None:
            self.loop.remove(self.device.fd)
            self.device.close()  # a device we created disappears with its last descriptor
        if self._own_loop:
            self.loop.close()

    def __enter__(self) -> "Relay":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- information
    def own_ip_bytes(self) -> bytes | None:
        if not self.config.addr:
            return None
        return ipaddress.ip_address(self.config.addr.split("/")[0]).packed

    def ready_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dev": self.device.name if self.device else self.config.dev,
                               "listen": self.transport.bound() if self.transport else [], "mtu": self.mtu}
        if self.datapath is not None:
            info = self.datapath.info()
            out["datapath"] = {"requested": info.get("requested", self.config.datapath),
                               "peers": info.get("peers", {}), **self.datapath.impl_info()}
        return out

    def kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped before we could read it (counted by the kernel, read on demand):
        ``kernel_socket`` -- datagrams for our UDP socket when its receive buffer was full (the counter
        SO_RXQ_OVFL reports, read with SO_MEMINFO); ``kernel_device`` -- packets for us that did not fit
        the device's queue (its tx drops in /proc/net/dev)."""
        out = {}
        sock = getattr(self.transport, "sock", None)
        if sock is not None:
            n = socket_drops(sock)
            if n:
                out["kernel_socket"] = n
        if self.device is not None:
            n = device_tx_drops(self.device.name)
            if n:
                out["kernel_device"] = n
        return out

    def counters(self) -> dict[str, Any]:
        """``{"dev": {...}, "peers": {NAME: {...}}, "drops": {REASON: N}, "datapath": {...}}``
        (docs/ARCHITECTURE.md); each peer also says which datapath it gets."""
        t = self.transport
        out: dict[str, Any] = {
            "dev": self.stats.dev(),
            "peers": {name: p.stats(t.connected(p) if t is not None else False)
                      for name, p in self.table.peers.items()},
            "drops": dict(sorted({**self.stats.drops, **self.kernel_drops()}.items())),
        }
        if self.datapath is not None:
            info = {**self.datapath.info(), **self.datapath.impl_info()}
            out["datapath"] = info
            for name, p in out["peers"].items():
                p["datapath"] = info.get("peers", {}).get(name, {}).get("datapath", "?")
            nsh_counters = getattr(self.datapath, "nsh_counters", None)  # NSH mode (issue 18)
            if nsh_counters is not None:
                out["nsh"] = nsh_counters()
        if self.paths is not None:
            self.decisions.flush()  # whoever reads counters may read the decision log next (the checks do)
            drops = out["drops"]
            for name, peer in self.table.peers.items():
                path = peer.path
                if path is None:
                    continue
                out["peers"][name]["stages"] = path.counters()
                out["peers"][name]["waiting"] = path.waiting
                for k, v in path.drops().items():
                    drops[k] = drops.get(k, 0) + v
            out["drops"] = dict(sorted(drops.items()))
            out["impair"] = {"seed": self.seed, "timers": self.scheduler.timer.kind,
                             "log": self.config.impair_log, "log_lost": self.decisions.lost,
                             "lateness": self.scheduler.accuracy()}
        return out

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control-socket command for this relay's datapath (``{"cmd": "nsh", ...}``, issue 18)."""
        handler = getattr(self.datapath, "control", None)
        if handler is None:
            return {"ok": False, "error": f"command {request.get('cmd')!r} needs a relay in NSH mode (--nsh)"}
        return handler(request)  # type: ignore[no-any-return]


SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8


def socket_drops(sock: Any) -> int:
    """The kernel's drop counter of ``sock`` (sk_drops: receive buffer overflows and the like)."""
    import struct

    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    except OSError:
        return 0
    if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
        return 0
    return int(struct.unpack_from("I", raw, 4 * SK_MEMINFO_DROPS)[0])


def device_tx_drops(name: str) -> int:
    """Transmit drops of device ``name`` in this network namespace (for a TUN: packets toward the relay
    that found its queue full)."""
    try:
        with open("/proc/net/dev", "rb") as f:
            for line in f:
                head, _, rest = line.partition(b":")
                if head.strip() == name.encode():
                    return int(rest.split()[11])  # rx: 8 fields, then tx bytes, packets, errs, drop
    except (OSError, ValueError, IndexError):
        pass
    return 0


def group_counters(relays: Sequence[Relay]) -> dict[str, Any]:
    """One relay: its counters. Several (``-m both``): ``{label: counters}``."""
    if len(relays) == 1:
        return relays[0].counters()
    return {r.config.label or r.config.dev: r.counters() for r in relays}


def _one_relay(relays: Sequence[Relay], request: dict[str, Any]) -> Relay:
    """The relay a control request is for: the only one, or the one labelled ``request["relay"]``."""
    if len(relays) == 1:
        return relays[0]
    label = request.get("relay")
    for r in relays:
        if (r.config.label or r.config.dev) == label:
            return r
    raise TunlabError(f"name the relay: \"relay\": one of {', '.join(r.config.label or r.config.dev for r in relays)}")


def write_json_line(fd: int, obj: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    except OSError as exc:
        log.warning("cannot write to fd %d: %s", fd, exc.strerror)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def write_stats_file(path: str, counters: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(counters, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write --stats-file %s: %s", path, exc.strerror)


def _summary_line(counters: dict[str, Any]) -> str:
    """One line of final counters for the log: device packets, per-peer packets, drops."""
    groups = counters if "dev" not in counters else {"": counters}
    parts = []
    for label, c in groups.items():
        if not isinstance(c, dict) or "dev" not in c:
            continue
        dev = c["dev"]
        peers = ", ".join(f"{n} rx {p.get('rx_packets', 0)} tx {p.get('tx_packets', 0)}"
                          for n, p in (c.get("peers") or {}).items())
        drops = ", ".join(f"{k}={v}" for k, v in sorted((c.get("drops") or {}).items())) or "none"
        parts.append(f"{label + ': ' if label else ''}device rx {dev['rx_packets']} tx {dev['tx_packets']}; "
                     f"{peers}; drops {drops}")
    return " | ".join(parts)


def serve(relays: Sequence[Relay], *, ready_fd: int | None = None, control: str | None = None,
          stats_file: str | None = None, handle_signals: bool | None = None,
          control_group: str | None = None) -> dict[str, Any]:
    """Open every relay, signal readiness, run their shared loop until stopped, close; return counters.

    Raises TunlabError (after cleaning up, and after writing ``{"ready": false, "error": ...}`` to
    ``ready_fd`` when the relays never became ready) if opening fails or a relay fails while running.
    """
    from .control import ControlServer, register_command

    if not relays:
        raise ValueError("serve() needs at least one relay")
    loop = relays[0].loop
    if any(r.loop is not loop for r in relays):
        raise ValueError("relays served together must share one Loop")
    if handle_signals is None:
        handle_signals = threading.current_thread() is threading.main_thread()
    ctl: ControlServer | None = None
    saved: dict[int, Any] = {}
    final: dict[str, Any] = {}
    try:
        for r in relays:
            r.open()
        if control:
            register_command("nsh", lambda server, req: _one_relay(server.relays, req).control(req))  # issue 18
            ctl = ControlServer(loop, control, lambda: group_counters(relays), group=control_group, relays=relays)
            ctl.open()
        if handle_signals:
            def on_stop(signum: int, frame: object) -> None:
                loop.stop()

            def on_usr1(signum: int, frame: object) -> None:
                if stats_file:
                    loop.call_soon_threadsafe(lambda: write_stats_file(stats_file, group_counters(relays)))

            for sig, fn in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGUSR1, on_usr1)):
                saved[sig] = signal.signal(sig, fn)
        if ready_fd is not None:
            infos = [r.ready_info() for r in relays]
            one = len(infos) == 1
            write_json_line(ready_fd, {
                "ready": True, "pid": os.getpid(),
                "dev": infos[0]["dev"] if one else [i["dev"] for i in infos],
                "listen": [a for i in infos for a in i["listen"]],
                "mtu": infos[0]["mtu"] if one else [i["mtu"] for i in infos],
                "control": control,
                "datapath": infos[0].get("datapath") if one else [i.get("datapath") for i in infos],
            })
            ready_fd = None
        loop.run()
    except BaseException as exc:
        if ready_fd is not None:
            msg = str(exc) if isinstance(exc, TunlabError) else f"{type(exc).__name__}: {exc}"
            write_json_line(ready_fd, {"ready": False, "pid": os.getpid(), "error": msg})
        raise
    finally:
        # the handlers stay until the counters are written and the relays closed: a second SIGTERM (a
        # teardown signals the relay and its parent at once) must not cut the stats file short
        final = group_counters(relays)
        if all(r.opened for r in relays):
            log.info("relay stopping (pid %d): %s", os.getpid(), _summary_line(final))
        if stats_file and all(r.opened for r in relays):
            write_stats_file(stats_file, final)
        if ctl is not None:
            ctl.close()
        for r in relays:
            r.close()
        loop.close()
        for sig, old in saved.items():
            signal.signal(sig, old)
    failed = [r.error for r in relays if r.error]
    if failed:
        raise TunlabError(failed[0])
    return final
