"""The relay's NSH mode (``--nsh FILE``, issue 18, docs/nsh.md): classifier, service function forwarder (SFF),
NSH-aware service function hook and NSH proxy, on the simple UDP datapath.

Every datagram between relays in NSH mode is VXLAN-GPE + NSH + the inner packet (:mod:`tunlab.relay.nsh`).
The file (JSON) gives this relay's part of the service chains::

    {"vni": 0,
     "classifier": [{"spi": 10, "si": 255, "proto": "udp", "dport": 53, "context": HEX32 | "tlvs": [...]}, ...],
     "forward": [{"spi": 10, "si": 255, "to": "PEER"}, {"spi": 10, "si": 254, "to": "sf"},
                 {"spi": 10, "si": 253, "to": "end"}, ...],
     "aware_hook": "path/file.py:func"}          # optional: the local SF is NSH-aware

Per packet:

- from a peer: VXLAN-GPE and NSH checked (else dropped as ``nsh_<reason>``), TTL decremented (the SFF hop;
  0 -> ``nsh_ttl_expired``), SI 0 -> ``nsh_si_exhausted``, then the (SPI, SI) lookup: ``PEER`` forwards the
  datagram, ``end`` strips NSH and writes the inner packet into the device, ``sf`` hands it to the local SF,
  nothing -> ``nsh_no_path``;
- the local SF: an NSH-aware hook gets ``NSH header + inner`` as bytes and returns the same (SI decremented
  by itself, metadata as it likes) or None; otherwise the NSH proxy strips NSH, remembers the header by
  inner flow, hands the inner packet to the unaware hook (``--vnf hook``) or to the kernel (the device), and
  re-applies the header with SI - 1 to what comes back (the kernel's output: read from the device, matched
  by inner flow: addresses, protocol, ports or ICMP id; a VNF that rewrites those (NAT) needs a classifier
  rule on its own relay for what it sends, and the kernel's own packets (IPv6 router solicitations) are
  not mistaken for the chain's);
- from the device, not coming back from the SF: the classifier's first matching rule pushes NSH (SPI,
  starting SI, TTL, metadata) and the SFF forwards by (SPI, SI); nothing matches -> ``nsh_unclassified``.

Run-time changes arrive on the control socket: ``{"cmd": "nsh", "set": {"classifier": [...]}}`` or
``{"set": {"forward": [...]}}`` replaces that table; ``{"cmd": "nsh"}`` answers the tables and counters.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from tunlab.errors import TunlabError

from . import nsh
from .hook import load_hook
from .nsh import GPE_LEN, Classifier, NshError, Rule
from .simple import SimpleUdpDatapath

if TYPE_CHECKING:
    from .engine import Relay
    from .peers import Peer

log = logging.getLogger("tunlab.relay")

SF, END = "sf", "end"
_CACHE_MAX = 4096
#: bytes the NSH mode adds to a datagram when the lab leaves room for MD type 1 (GPE 8 + NSH 24) and a
#: little MD type 2 context: the default device MTU in NSH mode is this much lower
OVERHEAD = 64


class NshTables:
    """This relay's classifier, forwarding table and SF kind, read from the ``--nsh`` file (or a control
    request); every error names the file, the entry and the field."""

    def __init__(self, data: dict[str, Any], where: str, peers: set[str]) -> None:
        if not isinstance(data, dict):
            raise TunlabError(f"{where}: expected a JSON object", 'e.g. {"forward": [...], "classifier": [...]}')
        known = {"vni", "classifier", "forward", "aware_hook", "node"}
        extra = set(data) - known
        if extra:
            raise TunlabError(f"{where}: unknown field {sorted(extra)[0]!r}", f"known: {', '.join(sorted(known))}")
        self.vni = data.get("vni", 0)
        if not isinstance(self.vni, int) or not 0 <= self.vni < 1 << 24:
            raise TunlabError(f"{where}: vni {self.vni!r} is out of range", "a 24-bit number")
        self.aware_hook: str | None = data.get("aware_hook")
        self.peers = peers
        self.where = where
        self.classifier = self.parse_classifier(data.get("classifier") or [])
        self.forward = self.parse_forward(data.get("forward") or [])

    def parse_classifier(self, items: Any) -> Classifier:
        if not isinstance(items, list):
            raise TunlabError(f"{self.where}: classifier must be a list of rules")
        return Classifier(Rule.from_json(r if isinstance(r, dict) else {}, f"{self.where}: classifier[{i}]")
                          for i, r in enumerate(items))

    def parse_forward(self, items: Any) -> dict[tuple[int, int], str]:
        if not isinstance(items, list):
            raise TunlabError(f"{self.where}: forward must be a list of {{spi, si, to}}")
        table: dict[tuple[int, int], str] = {}
        for i, e in enumerate(items):
            at = f"{self.where}: forward[{i}]"
            if not isinstance(e, dict) or set(e) - {"spi", "si", "to"} or not {"spi", "si", "to"} <= set(e):
                raise TunlabError(f"{at}: expected {{\"spi\": N, \"si\": N, \"to\": PEER|sf|end}}, got {e!r}")
            spi, si, to = e["spi"], e["si"], e["to"]
            if not isinstance(spi, int) or not 0 <= spi <= nsh.MAX_SPI:
                raise TunlabError(f"{at}: spi {spi!r} is out of range", "0..16777215")
            if not isinstance(si, int) or not 1 <= si <= 255:
                raise TunlabError(f"{at}: si {si!r} is out of range", "1..255 (an SI of 0 is never forwarded)")
            if to not in (SF, END) and to not in self.peers:
                raise TunlabError(f"{at}: to {to!r} is not a peer of this relay",
                                  f"use sf, end or one of: {', '.join(sorted(self.peers))}")
            if (spi, si) in table:
                raise TunlabError(f"{at}: (spi {spi}, si {si}) is listed twice")
            table[(spi, si)] = to
        return table

    def to_json(self) -> dict[str, Any]:
        return {"vni": self.vni, "aware_hook": self.aware_hook,
                "classifier": [r.to_json() for r in self.classifier.rules],
                "forward": [{"spi": s, "si": i, "to": t} for (s, i), t in sorted(self.forward.items())]}


def load_tables(path: str, peers: set[str]) -> NshTables:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise TunlabError(f"--nsh {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise TunlabError(f"--nsh {path}: not JSON ({exc})") from None
    return NshTables(data, path, peers)


def _flow(pkt: bytes | bytearray | memoryview) -> bytes | None:
    """What the proxy remembers a packet by: addresses, protocol and ports (ICMP: type and id)."""
    n = len(pkt)
    if n >= 20 and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        addrs = bytes(pkt[12:20])
        l4 = ihl
    elif n >= 40 and pkt[0] >> 4 == 6:
        proto = pkt[6]
        addrs = bytes(pkt[8:40])
        l4 = 40
    else:
        return None
    if proto in (1, 58):
        tail = bytes(pkt[l4:l4 + 1]) + bytes(pkt[l4 + 4:l4 + 6])
    else:
        tail = bytes(pkt[l4:l4 + 4])
    return bytes((proto,)) + addrs + tail


class NshUdpDatapath(SimpleUdpDatapath):
    """The simple UDP datapath with the NSH roles (module docstring). One packet at a time."""

    def __init__(self, relay: "Relay") -> None:
        super().__init__(relay)
        cfg = relay.config
        assert cfg.nsh_file is not None
        self.tables = load_tables(cfg.nsh_file, set(self.table.peers))
        self.aware = load_hook(self.tables.aware_hook) if self.tables.aware_hook else None
        self.gpe = nsh.gpe_header(self.tables.vni)
        self.has_sf = SF in self.tables.forward.values()
        self.proxy_ctx: dict[bytes, bytes] = {}   # inner flow -> the NSH header it came in with
        self.counts = {"classified": 0, "forwarded": 0, "to_sf": 0, "from_sf": 0, "delivered": 0}
        self.seen: dict[tuple[int, int], int] = {}  # (SPI, SI) -> packets looked up at this SFF

    # -- counters and control
    def info(self) -> dict[str, Any]:
        out = super().info()
        out["nsh"] = True
        return out

    def nsh_counters(self) -> dict[str, Any]:
        return {**self.counts, "lookups": {f"{spi}/{si}": n for (spi, si), n in sorted(self.seen.items())}}

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"cmd": "nsh"}``: tables and counters; ``"set": {"classifier": [...], "forward": [...]}`` replaces
        those tables (all or nothing)."""
        change = request.get("set")
        if change is not None:
            if not isinstance(change, dict) or not change or set(change) - {"classifier", "forward"}:
                return {"ok": False, "error": "set takes {\"classifier\": [...]} and/or {\"forward\": [...]}"}
            t = self.tables
            try:
                cls = t.parse_classifier(change["classifier"]) if "classifier" in change else t.classifier
                fwd = t.parse_forward(change["forward"]) if "forward" in change else t.forward
            except TunlabError as exc:
                return {"ok": False, "error": str(exc) + (f" ({exc.hint})" if exc.hint else "")}
            t.classifier, t.forward = cls, fwd
            self.has_sf = SF in fwd.values()
            log.info("nsh: tables changed by the control socket (%s)", ", ".join(sorted(change)))
        return {"ok": True, "tables": self.tables.to_json(), "counters": self.nsh_counters()}

    # -- device -> chain
    def on_device(self, events: int) -> None:
        readv = os.readv
        fd = self.fd
        mv = self.dmv
        rx_p = rx_b = 0
        try:
            for _ in range(64):
                n = readv(fd, self.dvec)
                rx_p += 1
                rx_b += n
                self.from_device(bytes(mv[:n]))
        except BlockingIOError:
            pass
        except OSError as exc:
            self.device_error(exc)
        finally:
            self.stats.dev_rx_packets += rx_p
            self.stats.dev_rx_bytes += rx_b

    def from_device(self, inner: bytes) -> None:
        if self.has_sf:
            key = _flow(inner)
            hdr = self.proxy_ctx.get(key) if key is not None else None
            if hdr is not None:
                self.reapply(hdr, inner)
                return
        rule = self.tables.classifier.classify(inner)
        if rule is not None:
            self.counts["classified"] += 1
            header = rule.header_bytes(nsh.next_proto_of(inner))
            self.dispatch(bytearray(self.gpe + header + inner), rule.spi, rule.si, len(header), None)
            return
        self.drop("nsh_unclassified")

    # -- peer -> chain
    def on_socket(self, events: int) -> None:
        recv = self.sock.recvfrom_into
        buf = self.rbuf
        mv = self.rmv
        by_addr = self.table.by_addr
        for _ in range(64):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                break
            except OSError:
                self.drop("recv_error")
                break
            if self.v6:
                addr = addr[:2]
            peer = by_addr.get(addr)
            known = peer is not None
            if peer is None:
                peer = self.table.udp_candidate(addr[0])
                if peer is None:
                    self.drop("foreign")
                    continue
            try:
                nsh.check_gpe(mv, n)
                ttl, hlen, _, spi, si = nsh.peek(mv, GPE_LEN, n - GPE_LEN)
            except NshError as exc:
                self.drop(exc.reason if exc.reason.startswith("nsh_") else "nsh_" + exc.reason, peer)
                continue
            if not known:  # a new source moves the reply address only with a valid datagram
                self.table.accept_udp(addr[0], addr[1], peer)
            peer.rx_packets += 1
            peer.rx_bytes += n
            if ttl <= 1:
                self.drop("nsh_ttl_expired", peer)
                continue
            nsh.set_ttl_si(buf, GPE_LEN, ttl - 1, si)  # in place: forwarded from the receive buffer as it is
            self.dispatch(mv[:n], spi, si, hlen, peer)

    # -- the SFF
    def dispatch(self, data: bytearray | memoryview, spi: int, si: int, hlen: int, came: "Peer | None", *,
                 from_sf: bool = False) -> None:
        """Forward an NSH datagram (GPE + NSH + inner) by its (SPI, SI); ``data`` is only used until this
        returns (it may be the receive buffer)."""
        if si == 0:
            self.drop("nsh_si_exhausted", came)
            return
        key = (spi, si)
        self.seen[key] = self.seen.get(key, 0) + 1
        to = self.tables.forward.get((spi, si))
        if to is None:
            self.drop("nsh_no_path", came)
            return
        if to == END:
            inner = memoryview(data)[GPE_LEN + hlen:]
            why = self.check(inner, len(inner), self.limit)
            if why is not None:
                self.drop("nsh_inner_" + why, came)
                return
            self.counts["delivered"] += 1
            self.to_device(inner, len(inner))
            return
        if to == SF:
            if from_sf:
                self.drop("nsh_sf_loop", came)  # the SF gave back an index that leads to itself
                return
            self.counts["to_sf"] += 1
            self.service(data, hlen, came)
            return
        peer = self.table.peers[to]
        self.counts["forwarded"] += 1
        self.out(peer, data, len(data))  # through the peer's stages (impairments, link down) when it has any

    def service(self, data: bytearray | memoryview, hlen: int, came: "Peer | None") -> None:
        mv = memoryview(data)
        if self.aware is not None:
            self.through_aware(bytes(mv[GPE_LEN:]), came)
            return
        header = bytes(mv[GPE_LEN:GPE_LEN + hlen])
        inner = bytes(mv[GPE_LEN + hlen:])
        why = self.check(inner, len(inner), self.limit)
        if why is not None:
            self.drop("nsh_inner_" + why, came)
            return
        if self.hook is not None:  # an NSH-unaware hook behind the proxy
            try:
                out = self.hook(inner)
            except Exception as exc:
                self.drop("hook_error", came)
                log.debug("hook raised %s", exc)
                return
            if not out:
                self.drop("hook_drop", came)
                return
            self.reapply(header, bytes(out))
            return
        key = _flow(inner)
        if key is not None:
            if len(self.proxy_ctx) >= _CACHE_MAX:
                self.proxy_ctx.clear()
            self.proxy_ctx[key] = header
        self.to_device(inner, len(inner))  # the kernel VNF; what it routes back out comes to from_device

    def reapply(self, header: bytes, inner: bytes) -> None:
        """The proxy: the SF's output gets the header it came in with, SI - 1, next protocol of the output."""
        hdr = bytearray(header)
        hdr[3] = nsh.next_proto_of(inner)
        si = hdr[7] - 1
        hdr[7] = si & 0xFF
        self.counts["from_sf"] += 1
        spi = (hdr[4] << 16) | (hdr[5] << 8) | hdr[6]
        self.dispatch(bytearray(self.gpe) + hdr + inner, spi, si, len(hdr), None, from_sf=True)

    def through_aware(self, pkt: bytes, came: "Peer | None") -> None:
        assert self.aware is not None
        try:
            out = self.aware(pkt)
        except Exception as exc:
            self.drop("hook_error", came)
            if not self._hook_warned:
                self._hook_warned = True
                log.warning("NSH-aware hook %s raised %s: %s (packet dropped; later errors only counted)",
                            self.tables.aware_hook, type(exc).__name__, exc)
            return
        if not out:
            self.drop("hook_drop", came)
            return
        try:
            _, hlen, _, spi, si = nsh.peek(out, 0, len(out))
        except NshError as exc:
            self.drop("nsh_sf_" + exc.reason.removeprefix("nsh_"), came)
            return
        self.counts["from_sf"] += 1
        self.dispatch(bytearray(self.gpe) + bytes(out), spi, si, hlen, None, from_sf=True)
