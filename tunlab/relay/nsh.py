"""NSH (RFC 8300) over VXLAN-GPE: the codec, and the classifier's rules (issue 18, docs/nsh.md).

On the wire (one UDP datagram, port 4790 by default)::

    VXLAN-GPE (8 bytes)   flags 0x0C (I and P bits), 2 reserved bytes, next protocol 4 (NSH), VNI (24), reserved
    NSH base (4 bytes)    ver(2)=0 O(1) U(1) TTL(6) length(6, in 4-byte words) U(4) MD type(4) next protocol(8)
    service path (4)      SPI (24) SI (8)
    context               MD type 1: 16 bytes; MD type 2: TLVs (class 16, type 8, U 1, length 7 in bytes,
                          value padded to 4 bytes)
    inner packet          next protocol 1 = IPv4, 2 = IPv6, 3 = Ethernet

:class:`Nsh` is the whole header as a value (encode/decode, used by classifiers, hooks and tests); the
forwarder's per-packet path reads and rewrites the fixed fields in place (:func:`peek`, :func:`set_ttl_si`).
Imports nothing of tunlab but errors (the relay's rule).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from tunlab.errors import TunlabError

GPE_PORT = 4790
GPE_FLAGS = 0x0C          # I (VNI valid) and P (next protocol present)
GPE_NP_NSH = 4
GPE_LEN = 8
NSH_BASE_LEN = 8          # base header + service path header
MD1_CONTEXT_LEN = 16
NP_IPV4, NP_IPV6, NP_ETHERNET, NP_NSH, NP_MPLS = 1, 2, 3, 4, 5
DEFAULT_TTL = 63
MAX_TTL = 63
MAX_SPI = (1 << 24) - 1

_BASE = struct.Struct("!II")


class NshError(ValueError):
    """A malformed NSH or VXLAN-GPE header (the reason is a short counter name)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True)
class Tlv:
    """An MD type 2 context header: class (16 bits), type (8 bits, top bit = critical), value (<= 127 bytes)."""

    cls: int
    type: int
    value: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.cls <= 0xFFFF or not 0 <= self.type <= 0xFF or len(self.value) > 127:
            raise NshError("bad_tlv", f"TLV class {self.cls} type {self.type} length {len(self.value)}")

    def encode(self) -> bytes:
        pad = -len(self.value) % 4
        return struct.pack("!HBB", self.cls, self.type, len(self.value)) + self.value + b"\0" * pad

    def to_json(self) -> dict[str, Any]:
        return {"class": self.cls, "type": self.type, "value": self.value.hex()}


@dataclass(frozen=True)
class Nsh:
    """One NSH header. ``context`` is MD type 1's 16 bytes; ``tlvs`` MD type 2's context headers."""

    spi: int
    si: int
    ttl: int = DEFAULT_TTL
    md_type: int = 1
    next_proto: int = NP_IPV4
    context: bytes = b"\0" * MD1_CONTEXT_LEN
    tlvs: tuple[Tlv, ...] = ()
    oam: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.spi <= MAX_SPI:
            raise NshError("bad_spi", f"SPI {self.spi} is not 0..{MAX_SPI}")
        if not 0 <= self.si <= 255:
            raise NshError("bad_si", f"SI {self.si} is not 0..255")
        if not 0 <= self.ttl <= MAX_TTL:
            raise NshError("bad_ttl", f"TTL {self.ttl} is not 0..63")
        if self.md_type == 1 and len(self.context) != MD1_CONTEXT_LEN:
            raise NshError("bad_context", f"MD type 1 context is 16 bytes, not {len(self.context)}")
        if self.md_type == 2 and len(self.encode_context()) > 4 * (63 - 2):
            raise NshError("bad_context", "MD type 2 context longer than 244 bytes")
        if self.md_type not in (1, 2):
            raise NshError("bad_md_type", f"MD type {self.md_type} (supported: 1, 2)")
        if not 0 <= self.next_proto <= 255:
            raise NshError("bad_next_proto", f"next protocol {self.next_proto}")

    def encode_context(self) -> bytes:
        if self.md_type == 1:
            return self.context
        return b"".join(t.encode() for t in self.tlvs)

    def encode(self) -> bytes:
        ctx = self.encode_context()
        length = 2 + len(ctx) // 4
        word0 = ((1 << 29) if self.oam else 0) | (self.ttl << 22) | (length << 16) | (self.md_type << 8) | \
            self.next_proto
        return _BASE.pack(word0, (self.spi << 8) | self.si) + ctx

    @property
    def length(self) -> int:
        """The header's length in bytes."""
        return NSH_BASE_LEN + len(self.encode_context())

    def replace(self, **kw: Any) -> "Nsh":
        from dataclasses import replace

        return replace(self, **kw)

    def metadata(self) -> dict[str, Any]:
        """The context as JSON-able data: ``{"context": hex}`` (MD 1) or ``{"tlvs": [...]}`` (MD 2)."""
        if self.md_type == 1:
            return {"context": self.context.hex()}
        return {"tlvs": [t.to_json() for t in self.tlvs]}


def decode(buf: bytes | bytearray | memoryview, off: int = 0, n: int | None = None) -> Nsh:
    """The NSH header at ``buf[off:]`` (``n``: bytes available from ``off``); raises NshError."""
    end = len(buf) if n is None else off + n
    if end - off < NSH_BASE_LEN:
        raise NshError("nsh_short", "shorter than NSH's 8-byte base and service path headers")
    word0, word1 = _BASE.unpack_from(buf, off)
    ver = word0 >> 30
    if ver != 0:
        raise NshError("nsh_version", f"NSH version {ver}")
    length = ((word0 >> 16) & 0x3F) * 4
    md_type = (word0 >> 8) & 0x0F
    if length < NSH_BASE_LEN or off + length > end:
        raise NshError("nsh_length", f"length {length} bytes, {end - off} available")
    ctx = bytes(buf[off + NSH_BASE_LEN:off + length])
    tlvs: tuple[Tlv, ...] = ()
    if md_type == 1:
        if length != NSH_BASE_LEN + MD1_CONTEXT_LEN:
            raise NshError("nsh_length", f"MD type 1 with length {length} bytes (must be 24)")
        context = ctx
    elif md_type == 2:
        context = b""
        tlvs = tuple(_decode_tlvs(ctx))
    else:
        raise NshError("nsh_md_type", f"MD type {md_type}")
    return Nsh(spi=word1 >> 8, si=word1 & 0xFF, ttl=(word0 >> 22) & 0x3F, md_type=md_type,
               next_proto=word0 & 0xFF, context=context, tlvs=tlvs, oam=bool(word0 & (1 << 29)))


def _decode_tlvs(ctx: bytes) -> Iterable[Tlv]:
    i = 0
    while i < len(ctx):
        if len(ctx) - i < 4:
            raise NshError("nsh_tlv", "truncated TLV header")
        cls, typ, ln = struct.unpack_from("!HBB", ctx, i)
        ln &= 0x7F
        if i + 4 + ln > len(ctx):
            raise NshError("nsh_tlv", f"TLV length {ln} past the header's end")
        yield Tlv(cls, typ, ctx[i + 4:i + 4 + ln])
        i += 4 + ln + (-ln % 4)


def peek(buf: bytes | bytearray | memoryview, off: int, n: int) -> tuple[int, int, int, int, int]:
    """(TTL, header length in bytes, next protocol, SPI, SI) of the NSH header at ``buf[off:off+n]``, checked
    enough to forward it (version 0, length within the datagram, MD type 1 or 2 with a consistent length)."""
    if n < NSH_BASE_LEN:
        raise NshError("nsh_short")
    b0, b1, b2, np = buf[off], buf[off + 1], buf[off + 2], buf[off + 3]
    if b0 >> 6:
        raise NshError("nsh_version")
    length = (b1 & 0x3F) * 4
    md = b2 & 0x0F
    if length < NSH_BASE_LEN or length > n or (md == 1 and length != 24) or md not in (1, 2):
        raise NshError("nsh_length" if md in (1, 2) else "nsh_md_type")
    ttl = ((b0 & 0x0F) << 2) | (b1 >> 6)
    spi = (buf[off + 4] << 16) | (buf[off + 5] << 8) | buf[off + 6]
    return ttl, length, np, spi, buf[off + 7]


def set_ttl_si(buf: bytearray | memoryview, off: int, ttl: int, si: int) -> None:
    """Rewrite TTL and SI of the NSH header at ``buf[off]`` in place."""
    buf[off] = (buf[off] & 0xF0) | (ttl >> 2)
    buf[off + 1] = ((ttl & 3) << 6) | (buf[off + 1] & 0x3F)
    buf[off + 7] = si


def gpe_header(vni: int = 0) -> bytes:
    """The VXLAN-GPE header announcing NSH."""
    return bytes((GPE_FLAGS, 0, 0, GPE_NP_NSH)) + (vni << 8).to_bytes(4, "big")


def check_gpe(buf: bytes | bytearray | memoryview, n: int) -> None:
    """Raise NshError unless ``buf`` starts with a VXLAN-GPE header whose next protocol is NSH."""
    if n < GPE_LEN + NSH_BASE_LEN:
        raise NshError("nsh_short")
    if not is_gpe_nsh(buf):
        raise NshError("nsh_not_gpe")


def is_gpe_nsh(buf: bytes | bytearray | memoryview) -> bool:
    """A VXLAN-GPE header announcing NSH: reserved and version bits 0, P set, next protocol 4. (An IPv4 or
    IPv6 packet, or a fast-datapath chunk, never passes: their first byte has a reserved bit set.)"""
    return len(buf) >= GPE_LEN and buf[0] & 0xF4 == 0x04 and buf[3] == GPE_NP_NSH


def next_proto_of(inner: bytes | bytearray | memoryview) -> int:
    """NSH next protocol for an inner packet read from a TUN (IPv4 or IPv6)."""
    return NP_IPV6 if len(inner) and inner[0] >> 4 == 6 else NP_IPV4


# ------------------------------------------------------------------------------------------ classifier

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}


class FlowKey(NamedTuple):
    """The fields a classifier looks at, read from an inner IPv4/IPv6 packet (a tuple: cheap per packet)."""

    version: int
    src: int
    dst: int
    proto: int
    sport: int | None
    dport: int | None
    dscp: int


def flow_key(pkt: bytes | bytearray | memoryview, n: int | None = None) -> FlowKey | None:
    """The classifier's view of an IP packet, or None when it is not IPv4/IPv6 (or too short)."""
    n = len(pkt) if n is None else n
    if n < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        dscp = pkt[1] >> 2
        src, dst = int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big")
        l4 = ihl
        frag = (int.from_bytes(pkt[6:8], "big") & 0x1FFF) != 0
    elif v == 6 and n >= 40:
        proto = pkt[6]
        dscp = ((pkt[0] & 0x0F) << 2) | (pkt[1] >> 6)
        src, dst = int.from_bytes(pkt[8:24], "big"), int.from_bytes(pkt[24:40], "big")
        l4 = 40
        frag = False
    else:
        return None
    sport = dport = None
    if proto in (6, 17, 132) and not frag and n >= l4 + 4:
        sport = int.from_bytes(pkt[l4:l4 + 2], "big")
        dport = int.from_bytes(pkt[l4 + 2:l4 + 4], "big")
    return FlowKey(v, src, dst, proto, sport, dport, dscp)


def _net(value: Any, where: str, fld: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise TunlabError(f"{where}: {fld} {value!r} is not a network prefix ({exc})",
                          "write it like 10.0.0.0/24 or fd00::/64") from None


def _ports(value: Any, where: str, fld: str) -> tuple[int, int]:
    text = str(value)
    lo, sep, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise TunlabError(f"{where}: {fld} {value!r} is not a port or a range", "write 53 or 1000-2000") from None
    if not 0 <= a <= b <= 65535:
        raise TunlabError(f"{where}: {fld} {value!r} is out of range", "ports are 0..65535, low-high")
    return a, b


def _proto(value: Any, where: str) -> int:
    if isinstance(value, int) and 0 <= value <= 255:
        return value
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return PROTOCOLS[value.lower()]
    if isinstance(value, str) and value.isdigit() and int(value) <= 255:
        return int(value)
    raise TunlabError(f"{where}: proto {value!r} is not a protocol", f"use a number or one of {', '.join(PROTOCOLS)}")


def parse_metadata(d: dict[str, Any], where: str) -> tuple[int, bytes, tuple[Tlv, ...]]:
    """(MD type, MD 1 context, MD 2 TLVs) from ``{"md_type": 1, "context": HEX}`` or ``{"md_type": 2, "tlvs":
    [{"class": C, "type": T, "value": HEX}]}`` (md_type defaults to 2 when tlvs are given, else 1)."""
    md_type = d.get("md_type", 2 if "tlvs" in d else 1)
    if md_type not in (1, 2):
        raise TunlabError(f"{where}: md_type {md_type!r} is not 1 or 2")
    context = b"\0" * MD1_CONTEXT_LEN
    tlvs: list[Tlv] = []
    try:
        if md_type == 1 and d.get("context") is not None:
            context = bytes.fromhex(str(d["context"]))
            if len(context) != MD1_CONTEXT_LEN:
                raise TunlabError(f"{where}: context is {len(context)} bytes", "MD type 1 context: 32 hex digits")
        if md_type == 1 and "tlvs" in d:
            raise TunlabError(f"{where}: tlvs need md_type 2")
        for t in d.get("tlvs") or ():
            tlvs.append(Tlv(int(t["class"]), int(t["type"]), bytes.fromhex(str(t.get("value", "")))))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TunlabError):
            raise
        raise TunlabError(f"{where}: bad metadata ({exc})",
                          'context: 32 hex digits; tlvs: [{"class": N, "type": N, "value": HEX}]') from None
    return md_type, context, tuple(tlvs)


@dataclass(frozen=True)
class Rule:
    """A classifier rule: every given field must match; the first matching rule picks the path."""

    spi: int
    si: int = 255
    src: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    dscp: int | None = None
    ttl: int = DEFAULT_TTL
    md_type: int = 1
    context: bytes = b"\0" * MD1_CONTEXT_LEN
    tlvs: tuple[Tlv, ...] = ()
    name: str = ""
    _masks: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    _encoded: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        masks = []
        for net in (self.src, self.dst):
            masks.append(None if net is None else (net.version, int(net.network_address), int(net.netmask)))
        object.__setattr__(self, "_masks", tuple(masks))

    def matches(self, k: FlowKey) -> bool:
        for m, addr in zip(self._masks, (k.src, k.dst)):
            if m is not None and (m[0] != k.version or addr & m[2] != m[1]):
                return False
        if self.proto is not None and k.proto != self.proto:
            return False
        if self.sport is not None and (k.sport is None or not self.sport[0] <= k.sport <= self.sport[1]):
            return False
        if self.dport is not None and (k.dport is None or not self.dport[0] <= k.dport <= self.dport[1]):
            return False
        return self.dscp is None or k.dscp == self.dscp

    def header(self, next_proto: int) -> Nsh:
        return Nsh(self.spi, self.si, self.ttl, self.md_type, next_proto, self.context, self.tlvs)

    def header_bytes(self, next_proto: int) -> bytes:
        """``header(next_proto).encode()``, made once per next protocol (the classifier's per-packet path)."""
        cache = self._encoded
        raw = cache.get(next_proto)
        if raw is None:
            raw = cache[next_proto] = self.header(next_proto).encode()
        return raw

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Rule":
        known = {"name", "spi", "si", "src", "dst", "proto", "sport", "dport", "dscp", "ttl", "md_type", "context",
                 "tlvs"}
        extra = set(d) - known
        if extra:
            raise TunlabError(f"{where}: unknown field {sorted(extra)[0]!r}", f"known: {', '.join(sorted(known))}")
        if "spi" not in d:
            raise TunlabError(f"{where}: a rule needs spi", "add \"spi\": N (the service path it selects)")
        spi, si, ttl = d["spi"], d.get("si", 255), d.get("ttl", DEFAULT_TTL)
        for fld, v, hi in (("spi", spi, MAX_SPI), ("si", si, 255), ("ttl", ttl, MAX_TTL)):
            if not isinstance(v, int) or not (1 if fld != "spi" else 0) <= v <= hi:
                raise TunlabError(f"{where}: {fld} {v!r} is out of range", f"{fld} is an integer up to {hi}")
        dscp = d.get("dscp")
        if dscp is not None and (not isinstance(dscp, int) or not 0 <= dscp <= 63):
            raise TunlabError(f"{where}: dscp {dscp!r} is out of range", "DSCP is 0..63")
        md_type, context, tlvs = parse_metadata(d, where)
        src = _net(d["src"], where, "src") if d.get("src") is not None else None
        dst = _net(d["dst"], where, "dst") if d.get("dst") is not None else None
        if src is not None and dst is not None and src.version != dst.version:
            raise TunlabError(f"{where}: src and dst are of different IP versions")
        return cls(spi=spi, si=si, ttl=ttl, dscp=dscp, md_type=md_type, context=context, tlvs=tlvs,
                   src=src, dst=dst, name=str(d.get("name", "")),
                   proto=_proto(d["proto"], where) if d.get("proto") is not None else None,
                   sport=_ports(d["sport"], where, "sport") if d.get("sport") is not None else None,
                   dport=_ports(d["dport"], where, "dport") if d.get("dport") is not None else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spi": self.spi, "si": self.si}
        if self.name:
            out["name"] = self.name
        for k in ("src", "dst"):
            v = getattr(self, k)
            if v is not None:
                out[k] = str(v)
        if self.proto is not None:
            out["proto"] = self.proto
        for k in ("sport", "dport"):
            v = getattr(self, k)
            if v is not None:
                out[k] = str(v[0]) if v[0] == v[1] else f"{v[0]}-{v[1]}"
        if self.dscp is not None:
            out["dscp"] = self.dscp
        if self.ttl != DEFAULT_TTL:
            out["ttl"] = self.ttl
        out["md_type"] = self.md_type
        out.update(self.header(NP_IPV4).metadata())
        return out


class Classifier:
    """Ordered rules; :meth:`classify` returns the first rule that matches a packet, or None."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def classify(self, pkt: bytes | bytearray | memoryview, n: int | None = None) -> Rule | None:
        k = flow_key(pkt, n)
        if k is None:
            return None
        for r in self.rules:
            if r.matches(k):
                return r
        return None
