"""Expected packets and how received ones are compared with them (PTF's vocabulary, no global state).

A :class:`Mask` wraps the packet a check expects and says which of its fields do not matter::

    m = Mask(IP(src="10.0.0.1", dst="10.0.0.2", ttl=61) / ICMP(id=7) / b"payload")
    m.set_do_not_care_packet(IP, "id")          # the path may change this field
    m.matches(received_bytes)                   # -> bool
    m.diff(received_bytes)                      # -> [FieldDiff]: what differs, field by field

Checksums are, by default, *followed* rather than compared: a received packet's IP, ICMP, UDP and TCP
checksums must be correct for the bytes it carries (so a TTL decremented by a forwarding VNF is fine, and a
payload rewritten without fixing the checksum is caught twice). ``checksums="equal"`` compares them as plain
fields and ``checksums="ignore"`` skips them.

:func:`decode` renders any packet as short lines (one per layer) so EXPECTED and RECEIVED are shown the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, _ICMPv6
from scapy.fields import ConditionalField
from scapy.packet import NoPayload, Packet, Padding, Raw

ChecksumMode = Literal["valid", "equal", "ignore"]

# layers whose "chksum" field is a checksum over bytes scapy can recompute
_CHECKSUMMED = (IP, ICMP, UDP, TCP)
_ICMPV6 = _ICMPv6
_PAYLOAD_LAYERS = (Raw, Padding)


@dataclass(frozen=True)
class FieldDiff:
    """One difference between an expected and a received packet."""

    layer: str
    field: str
    expected: str
    received: str

    def __str__(self) -> str:
        return f"{self.layer}.{self.field}: expected {self.expected}, received {self.received}"


def parse_ip(data: bytes | Packet) -> Packet:
    """Dissect raw L3 bytes as IPv4 or IPv6 (by the version nibble); a scapy packet is returned as is."""
    if isinstance(data, Packet):
        return data
    if data and data[0] >> 4 == 6:
        return IPv6(data)
    return IP(data)


# ICMP types whose body quotes the packet that caused them (IPv4: unreachable, source quench, redirect,
# time exceeded, parameter problem)
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})


def parse_flat(data: bytes | Packet) -> Packet:
    """Like :func:`parse_ip`, but the body of an ICMP error stays raw bytes (``Raw`` after the 8-byte ICMP
    header) instead of being dissected as a quoted IP packet: the quote is what the router saw, truncated,
    with checksums that cannot be recomputed, and scapy >= 2.8 reads a quote past 128 bytes as RFC 4884
    extensions. Compared byte for byte, it is exactly as reliable as the rest of the packet."""
    raw = bytes(data)
    pkt = parse_ip(raw)
    if isinstance(pkt, IPv6) and pkt.nh == 58 and len(raw) > 48 and raw[40] in (1, 2, 3, 4):
        flat = IPv6(raw[:48])  # ICMPv6 error header, then the quote as bytes
        flat.payload.remove_payload()
        flat.payload.add_payload(Raw(raw[48:]))
        return flat
    if isinstance(pkt, IP) and ICMP in pkt and pkt[ICMP].type in ICMP_ERRORS and not pkt.frag and not pkt.flags.MF:
        ihl = pkt.ihl * 4
        if len(raw) >= ihl + 8:
            flat = IP(raw[:ihl + 8])
            if ICMP in flat:
                flat[ICMP].remove_payload()
                body = raw[ihl + 8:]
                if body:
                    flat[ICMP].add_payload(Raw(body))
                return flat
    return pkt


def _name(layer: Packet) -> str:
    return str(layer.name)


def _layers(pkt: Packet) -> list[Packet]:
    out = []
    layer: Packet = pkt
    while not isinstance(layer, NoPayload):
        out.append(layer)
        layer = layer.payload
    return out


def _present_fields(layer: Packet) -> list:  # type: ignore[type-arg]
    """The fields of ``layer`` that exist in this packet (conditional ones only when their condition holds)."""
    return [f for f in layer.fields_desc if not (isinstance(f, ConditionalField) and not f._evalcond(layer))]


def _hexcap(data: bytes, cap: int = 16) -> str:
    more = f"... ({len(data)} bytes)" if len(data) > cap else ""
    return data[:cap].hex() + more


def _bytes_diff(layer: str, exp: bytes, rcv: bytes) -> FieldDiff:
    """Where two byte strings first differ: the offset, and a few bytes from there on each side."""
    n = min(len(exp), len(rcv))
    at = next((i for i in range(n) if exp[i] != rcv[i]), n)
    want, have = exp[at:at + 4].hex() or "(end)", rcv[at:at + 4].hex() or "(end)"
    if len(exp) != len(rcv):
        want, have = f"{want} ({len(exp)} bytes)", f"{have} ({len(rcv)} bytes)"
    return FieldDiff(layer, f"load[{at}]", want, have)


def bad_checksums(pkt: Packet) -> list[FieldDiff]:
    """The checksums of ``pkt`` that do not match the bytes they cover ([] when all do)."""
    fresh = parse_flat(bytes(pkt))
    rebuilt = fresh.copy()
    for layer in _layers(rebuilt):
        if isinstance(layer, _CHECKSUMMED) and layer.fields.get("chksum") is not None:
            # UDP over IPv4 may carry no checksum at all (0): that is valid
            if isinstance(layer, UDP) and layer.chksum == 0:
                continue
            layer.chksum = None
        elif isinstance(layer, _ICMPV6) and layer.fields.get("cksum") is not None:
            layer.cksum = None  # ICMPv6 names its checksum "cksum" (over the IPv6 pseudo-header)
    rebuilt = parse_flat(bytes(rebuilt))
    bad = []
    for got, want in zip(_layers(fresh), _layers(rebuilt)):
        if isinstance(got, _CHECKSUMMED) and got.chksum != want.chksum:
            bad.append(FieldDiff(_name(got), "chksum", f"0x{want.chksum:04x} (what the bytes give)",
                                 f"0x{got.chksum:04x}"))
        elif isinstance(got, _ICMPV6) and getattr(got, "cksum", None) != getattr(want, "cksum", None):
            bad.append(FieldDiff(_name(got), "cksum", f"0x{want.cksum:04x} (what the bytes give)",
                                 f"0x{got.cksum:04x}"))
    return bad


class Mask:
    """An expected packet plus the fields a comparison ignores."""

    def __init__(self, expected: Packet | bytes, *, checksums: ChecksumMode = "valid") -> None:
        self.expected = parse_flat(bytes(expected))  # built once: fields such as len and chksum are filled
        self.checksums: ChecksumMode = checksums
        self._ignored: set[tuple[type[Packet], str]] = set()

    def set_do_not_care_packet(self, layer: type[Packet], field: str) -> Mask:
        """Ignore ``field`` of ``layer`` (e.g. ``IP, "ttl"``); raises ValueError on a field the layer lacks."""
        if field not in {f.name for f in layer.fields_desc}:
            raise ValueError(f"{layer.__name__} has no field {field!r}")
        self._ignored.add((layer, field))
        return self

    @property
    def ignored(self) -> list[str]:
        return sorted(f"{cls.__name__}.{name}" for cls, name in self._ignored)

    def _cares(self, layer: Packet, field: str) -> bool:
        if any(isinstance(layer, cls) and field == name for cls, name in self._ignored):
            return False
        if field == "chksum" and isinstance(layer, _CHECKSUMMED):
            return self.checksums == "equal"
        return True

    def diff(self, received: Packet | bytes) -> list[FieldDiff]:
        """Every difference between the expected packet and ``received`` that this mask cares about."""
        rcv = parse_flat(bytes(received))
        diffs: list[FieldDiff] = []
        exp_layers, rcv_layers = _layers(self.expected), _layers(rcv)
        for exp, got in zip(exp_layers, rcv_layers):
            if type(exp) is not type(got):
                diffs.append(FieldDiff(_name(exp), "(layer)", _name(exp), _name(got)))
                return diffs
            if isinstance(exp, _PAYLOAD_LAYERS):
                if self._cares(exp, "load") and bytes(exp) != bytes(got):
                    diffs.append(_bytes_diff(_name(exp), bytes(exp), bytes(got)))
                continue
            for fdesc in _present_fields(exp):
                name = fdesc.name
                if not self._cares(exp, name):
                    continue
                want, have = exp.getfieldval(name), got.getfieldval(name)
                if want != have:
                    diffs.append(FieldDiff(_name(exp), name, str(fdesc.i2repr(exp, want)),
                                           str(fdesc.i2repr(got, have))))
        if len(exp_layers) != len(rcv_layers):
            diffs.append(FieldDiff("packet", "(layers)", " / ".join(_name(x) for x in exp_layers),
                                   " / ".join(_name(x) for x in rcv_layers)))
        if self.checksums == "valid":
            diffs.extend(bad_checksums(rcv))
        return diffs

    def matches(self, received: Packet | bytes) -> bool:
        return not self.diff(received)


def summary(data: Packet | bytes, *, brief: bool = False) -> str:
    """One line: protocol, ports or ICMP type/id/seq, addresses, TTL, IP id, length.

    ``brief``: what changes along a path or tells packets apart at a glance (no addresses, IP id, seq)."""
    try:
        pkt = parse_ip(bytes(data))
    except Exception:  # noqa: BLE001 - anything scapy cannot parse is shown as bytes
        return f"undecodable {len(bytes(data))} bytes"
    if isinstance(pkt, IP):
        head = f"ttl={pkt.ttl}" if brief else f"{pkt.src} > {pkt.dst} ttl={pkt.ttl} id={pkt.id}"
    elif isinstance(pkt, IPv6):
        head = f"hlim={pkt.hlim}" if brief else f"{pkt.src} > {pkt.dst} hlim={pkt.hlim}"
    else:
        return f"{pkt.name} {len(bytes(pkt))} bytes"
    if isinstance(pkt, IPv6) and pkt.nh == 58 and len(bytes(pkt)) >= 48:
        raw = bytes(pkt)
        kind = {128: "echo-request", 129: "echo-reply", 1: "dest-unreach", 3: "time-exceeded"}.get(raw[40], str(raw[40]))
        seq = int.from_bytes(raw[46:48], "big")
        tail = f"ICMPv6 {kind} seq={seq}" if brief else f"ICMPv6 {kind} id={int.from_bytes(raw[44:46], 'big')} seq={seq}"
    elif ICMP in pkt:
        icmp = pkt[ICMP]
        kind = icmp.sprintf("%ICMP.type%")
        tail = f"ICMP {kind} seq={icmp.seq}" if brief else f"ICMP {kind} id={icmp.id} seq={icmp.seq}"
    elif TCP in pkt:
        tcp = pkt[TCP]
        tail = f"TCP {tcp.sport}>{tcp.dport} [{tcp.sprintf('%TCP.flags%')}]" + ("" if brief else f" seq={tcp.seq}")
    elif UDP in pkt:
        tail = f"UDP {pkt[UDP].sport}>{pkt[UDP].dport}"
    else:
        tail = f"proto={getattr(pkt, 'proto', getattr(pkt, 'nh', '?'))}"
    return f"{tail} {head} len={len(bytes(pkt))}"


def decode(data: Packet | bytes, *, max_lines: int = 8, payload_cap: int = 32) -> list[str]:
    """Render a packet as one line per layer (fields as name=value), capped; used for EXPECTED and RECEIVED."""
    try:
        pkt = parse_ip(bytes(data))
    except Exception:  # noqa: BLE001
        raw = bytes(data)
        return [f"undecodable {len(raw)} bytes: {_hexcap(raw, payload_cap)}"]
    lines = []
    for layer in _layers(pkt):
        if isinstance(layer, _PAYLOAD_LAYERS):
            lines.append(f"{layer.name} {len(bytes(layer))} bytes: {_hexcap(bytes(layer), payload_cap)}")
            continue
        parts = []
        for fdesc in _present_fields(layer):
            value = layer.getfieldval(fdesc.name)
            if value in (None, b"", []) and fdesc.name in ("options", "unused"):
                continue
            shown = value if fdesc.name in ("sport", "dport") else fdesc.i2repr(layer, value)
            parts.append(f"{fdesc.name}={shown}")
        lines.append(f"{layer.name} " + " ".join(parts))
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [f"... {len(lines) - max_lines + 1} more layers"]
    return lines
