"""Decode what was captured on an underlay link: which packets are relay encapsulation, which are bare.

Pure (no root; scapy only to cut GSO super-packets, via tunlab.relay.fast.scapy_encap): a capture is a list of :class:`Frame` (raw L3 bytes plus a kernel timestamp);
:func:`decode_link` turns the frames seen on one link into :class:`Sighting` objects:

- ``encap``: an outer IPv4/UDP datagram between the link's two relay endpoints (one inner packet per
  datagram), or one frame of the relay's TCP stream (2-byte big-endian length + packet), reassembled per
  direction from the captured segments, whatever the segment boundaries. The fast datapath
  (docs/fastpath.md) is decoded too: a UDP GSO send captured whole (several datagrams glued in one
  frame) is cut back into its datagrams, and ``gso`` chunks are reassembled per sender into streams,
  each cut into the packets the receiving kernel makes of it (outer ``UDP gso ...``);
- ``hello``: the fast datapath's negotiation datagram (an IPv4 header with a deliberately wrong checksum):
  neither an inner packet nor bare;
- ``chunk-error``: ``gso`` chunks that do not reassemble (malformed, duplicated, or a stream never
  completed in the capture);
- ``bare``: an IP packet whose source or destination is an overlay address, i.e. an inner packet that
  left a relay without encapsulation;
- ``fragment``: an outer IP fragment (the TUN MTU leaves no room for the encapsulation);
- ``stream-error``: bytes of a relay TCP stream that do not de-frame (a gap in the capture, a bad length);
- ``other``: anything else (ICMP errors from the underlay, TCP handshakes, ...). Never a failure by itself.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_FRAME_HDR = 2  # TCP framing: 2-byte big-endian length (tunlab.relay.framing.HEADER)


@dataclass(frozen=True)
class Frame:
    """One captured packet: the L3 bytes, a kernel timestamp (seconds) and whether the capturing
    namespace sent it (True) or received it (False)."""

    ts: float
    data: bytes
    outgoing: bool = False
    csum_pending: bool = False  # captured before checksum offload filled in its TCP/UDP checksum


@dataclass(frozen=True)
class RelayEnd:
    """One end of an underlay link as the relays use it."""

    node: str
    ip: str
    port: int | None  # None: not fixed (a client's ephemeral source port)

    def label(self) -> str:
        return f"{self.node} {self.ip}" + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class Sighting:
    """What one underlay packet (UDP) or one de-framed TCP frame carried."""

    ts: float
    kind: str                 # encap | bare | fragment | stream-error | other
    src: str                  # "ip:port" (or "ip") as on the wire
    dst: str
    outer: str                # one-line outer header, e.g. "UDP 10.9.0.1:40000 > 10.9.0.2:40001"
    inner: bytes | None       # the inner packet (encap), the packet itself (bare), else None
    src_node: str | None = None  # which relay end sent it, for encap sightings
    dst_node: str | None = None
    nsh: Any = None           # the NSH header (tunlab.relay.nsh.Nsh) of a VXLAN-GPE + NSH datagram


@dataclass(frozen=True)
class _Ip:
    src: str
    dst: str
    proto: int
    fragment: bool
    header_len: int
    payload: bytes


def parse_ipv4(data: bytes) -> _Ip | None:
    """The fields of an IPv4 header this module needs, or None when ``data`` is not IPv4."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack_from("!H", data, 2)[0]
    end = len(data) if total == 0 or total > len(data) else total  # GSO captures may carry 0
    flags_frag = struct.unpack_from("!H", data, 6)[0]
    fragment = bool(flags_frag & 0x2000) or bool(flags_frag & 0x1FFF)
    src = str(ipaddress.IPv4Address(data[12:16]))
    dst = str(ipaddress.IPv4Address(data[16:20]))
    return _Ip(src, dst, data[9], fragment, ihl, data[ihl:end])


def parse_ipv6(data: bytes) -> _Ip | None:
    """The same fields of an IPv6 header (the next header is the protocol; a fragment header makes it a
    fragment), or None when ``data`` is not IPv6."""
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    plen = struct.unpack_from("!H", data, 4)[0]
    end = len(data) if plen == 0 or 40 + plen > len(data) else 40 + plen
    src = str(ipaddress.IPv6Address(data[8:24]))
    dst = str(ipaddress.IPv6Address(data[24:40]))
    return _Ip(src, dst, data[6], data[6] == 44, 40, data[40:end])


def parse_outer(data: bytes) -> _Ip | None:
    """An underlay packet's IP header, IPv4 or IPv6."""
    return parse_ipv4(data) or parse_ipv6(data)


def _sum16(data: bytes | bytearray | memoryview) -> int:
    """The ones' complement sum of ``data`` as 16-bit big-endian words (2**16 = 1 modulo 0xFFFF, so it is
    the number the bytes spell, modulo 0xFFFF: one C-speed pass even over a 64 KiB GSO packet)."""
    n = int.from_bytes(data, "big") << (8 if len(data) % 2 else 0)
    r = n % 0xFFFF
    return 0xFFFF if r == 0 and n else r


def complete_checksum(data: bytes) -> bytes:
    """``data`` with its TCP/UDP checksum computed, for a packet captured before the kernel (or a NIC)
    filled it in (``TP_STATUS_CSUMNOTREADY``: checksum offload). What a receiver sees; other packets,
    fragments and packets whose lengths do not add up (a GSO packet) are returned unchanged."""
    if len(data) < 20:
        return data
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        if int.from_bytes(data[2:4], "big") != len(data) or int.from_bytes(data[6:8], "big") & 0x3FFF:
            return data
        proto, pseudo = data[9], data[12:20]
    elif version == 6 and len(data) >= 40:
        ihl = 40
        if int.from_bytes(data[4:6], "big") + 40 != len(data):
            return data
        proto, pseudo = data[6], data[8:40]
    else:
        return data
    l4 = len(data) - ihl
    where = {6: 16, 17: 6}.get(proto)
    if where is None or l4 < where + 2 or (proto == 17 and int.from_bytes(data[ihl + 4:ihl + 6], "big") != l4):
        return data
    buf = bytearray(data)
    buf[ihl + where:ihl + where + 2] = b"\0\0"
    total = _sum16(bytes(pseudo) + bytes((0, proto)) + l4.to_bytes(2, "big")) + _sum16(memoryview(buf)[ihl:])
    total = (total & 0xFFFF) + (total >> 16)
    csum = ~total & 0xFFFF
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    buf[ihl + where:ihl + where + 2] = csum.to_bytes(2, "big")
    return bytes(buf)


def relay_deframe(buf: bytes) -> tuple[list[bytes], int]:
    """Split a relay TCP stream into packets with the relay's own de-framer: (packets, bytes consumed)."""
    from tunlab.relay.framing import HEADER, Deframer as RelayDeframer

    packets = RelayDeframer().push(buf)
    return packets, sum(HEADER + len(p) for p in packets)


def frame_error(packet: bytes) -> str | None:
    """Why a de-framed TCP frame cannot be one inner IP packet, or None when it can."""
    if not packet:
        return "empty frame"
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return f"{len(packet)}-byte frame is shorter than an IPv4 header"
        total = struct.unpack_from("!H", packet, 2)[0]
        if total != len(packet):
            return f"frame of {len(packet)} bytes holds an IPv4 packet of length {total}"
        return None
    if version == 6:
        if len(packet) < 40 or struct.unpack_from("!H", packet, 4)[0] + 40 != len(packet):
            return f"frame of {len(packet)} bytes is not one IPv6 packet"
        return None
    return f"frame starts with IP version {version}"


Deframer = Callable[[bytes], tuple[list[bytes], int]]


def _ports(payload: bytes) -> tuple[int, int] | None:
    if len(payload) < 4:
        return None
    return struct.unpack_from("!HH", payload, 0)


def _hp(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _direction(ip: _Ip, sport: int, dport: int, a: RelayEnd, b: RelayEnd) -> tuple[RelayEnd, RelayEnd] | None:
    """(sender end, receiver end) when the packet runs between the two relay ends with their ports."""
    for x, y in ((a, b), (b, a)):
        if ip.src == x.ip and ip.dst == y.ip and (x.port is None or sport == x.port) \
                and (y.port is None or dport == y.port):
            return x, y
    return None


@dataclass
class _Stream:
    src: RelayEnd
    dst: RelayEnd
    label: tuple[str, str]  # ("ip:port", "ip:port")
    isn: int | None = None  # sequence number of the first payload byte, when the SYN was seen
    segments: dict[int, tuple[bytes, float]] = field(default_factory=dict)


def decode_link(frames: Iterable[Frame], a: RelayEnd, b: RelayEnd, transport: str,
                overlay: Sequence[str | ipaddress.IPv4Network], *, deframe: Deframer | None = None,
                keys: dict[int, bytes] | None = None) -> list[Sighting]:
    """Classify every frame captured on the link between relay ends ``a`` and ``b``.

    ``overlay``: overlay addresses or networks; an IP packet from or to one of them on the underlay is bare.
    ``transport``: "udp" or "tcp" (the relays' encapsulation on this link).
    ``keys``: session keys of keyed links (key id -> key, from the relays' --seal-keylog): their sealed
    datagrams are opened and seen as ``encap`` (outer ``UDP sealed ...``); without a key they are ``other``.
    """
    nets = [ipaddress.ip_network(o, strict=False) for o in overlay]

    def in_overlay(addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip in n for n in nets)

    out: list[Sighting] = []
    streams: dict[tuple[str, int, str, int], _Stream] = {}
    chunks = _ChunkDecoder(keys)
    for fr in frames:
        ip = parse_outer(fr.data)
        if ip is None:
            out.append(Sighting(fr.ts, "other", "?", "?", f"non-IP {len(fr.data)} bytes", None))
            continue
        if in_overlay(ip.src) or in_overlay(ip.dst):
            out.append(Sighting(fr.ts, "bare", ip.src, ip.dst, f"bare IP {ip.src} > {ip.dst} proto={ip.proto}",
                                fr.data))
            continue
        if ip.fragment:
            out.append(Sighting(fr.ts, "fragment", ip.src, ip.dst,
                                f"IP fragment {ip.src} > {ip.dst} proto={ip.proto}", None))
            continue
        ports = _ports(ip.payload) if ip.proto in (6, 17) else None
        ends = _direction(ip, *ports, a, b) if ports else None
        if ports is None or ends is None:
            out.append(Sighting(fr.ts, "other", ip.src, ip.dst, f"IP {ip.src} > {ip.dst} proto={ip.proto}", None))
            continue
        sport, dport = ports
        src, dst = _hp(ip.src, sport), _hp(ip.dst, dport)
        if ip.proto == 17 and transport == "udp" and (got := nsh_of(ip.payload[8:])) is not None:
            header, inner = got
            out.append(Sighting(fr.ts, "encap", src, dst, f"UDP {src} > {dst} VXLAN-GPE NSH spi={header.spi} "
                                f"si={header.si} ttl={header.ttl}", inner, ends[0].node, ends[1].node, header))
        elif ip.proto == 17 and transport == "udp":
            out.extend(chunks.datagram(fr.ts, (ip.src, sport), src, dst, ip.payload[8:], ends))
        elif ip.proto == 6 and transport == "tcp":
            _add_segment(streams, ip, sport, dport, ends, fr.ts)
        else:
            out.append(Sighting(fr.ts, "other", src, dst, f"proto={ip.proto} {src} > {dst}", None))
    for stream in streams.values():
        out.extend(_deframe_stream(stream, deframe or relay_deframe, keys))
    out.extend(chunks.leftovers())
    out.sort(key=lambda s: s.ts)
    return out


def nsh_of(payload: bytes) -> tuple[Any, bytes] | None:
    """(NSH header, inner packet) of a VXLAN-GPE datagram carrying NSH (issue 18), or None if it is not one
    (a malformed NSH header after a GPE header announcing NSH is not one either: seen as ``other``)."""
    from tunlab.relay import nsh

    if len(payload) < 16 or not nsh.is_gpe_nsh(payload):
        return None

    try:
        header = nsh.decode(payload, 8)
    except nsh.NshError:
        return None
    return header, payload[8 + header.length:]


def split_datagrams(payload: bytes) -> list[bytes]:
    """The datagrams of one captured UDP payload: more than one when a UDP GSO send was captured before
    the kernel cut it (a veth with transmit checksum offload, the sender itself)."""
    if not payload:
        return [payload]
    first = payload[0]
    if first >> 4 == 4 and len(payload) >= 20 and int.from_bytes(payload[2:4], "big") == len(payload):
        return [payload]  # one plain IPv4 packet: the common case, no scapy needed
    if first >> 4 == 6 and len(payload) >= 40 and int.from_bytes(payload[4:6], "big") + 40 == len(payload):
        return [payload]
    from tunlab.relay.fast.encap import MAGIC

    if first != MAGIC[0] and first >> 4 not in (4, 6):
        return [payload]
    from tunlab.relay.fast.scapy_encap import split_glued

    return split_glued(payload)


def stream_inner(stream: bytes) -> list[bytes]:
    """The inner packets of one ``gso`` stream (virtio-net header + packet), as the receiving kernel
    makes them: a GSO super-packet is cut into segments, a partial checksum is completed."""
    from tunlab.relay.fast import encap

    vnet = encap.parse_vnet(stream)
    if vnet is None:
        return []
    if vnet.flags & encap.VNET_F_NEEDS_CSUM == 0 and vnet.gso_type & 0x7F == encap.GSO_NONE:
        return [bytes(stream[encap.VNET_LEN:])]
    from tunlab.relay.fast.scapy_encap import stream_packets

    return [bytes(p) for p in stream_packets(stream)]


class _ChunkDecoder:
    """Per link: datagrams -> sightings; ``gso`` chunks reassembled per sender (ip, port)."""

    def __init__(self, keys: dict[int, bytes] | None = None) -> None:
        from tunlab.relay.fast.encap import Reassembler

        self.keys = keys
        self.drops: dict[str, int] = {}
        self.reasm = Reassembler(max_streams=1024, remember=4096, drops=self.drops)
        self.last: dict[tuple[str, int], tuple[float, str, str]] = {}

    def datagram(self, ts: float, source: tuple[str, int], src: str, dst: str, payload: bytes,
                 ends: tuple[RelayEnd, RelayEnd]) -> list[Sighting]:
        from tunlab.relay.fast.encap import classify

        out = []
        pieces = split_datagrams(payload)
        for piece in pieces:
            if self.keys is not None and piece[:1] in (b"\x01", b"\x02"):  # a keyed link (relay/seal.py)
                out.extend(self._sealed_datagrams(ts, source, src, dst, piece, ends))
                continue
            kind = classify(piece)
            if kind == "chunk":
                out.extend(self._chunk(ts, source, src, dst, piece, ends, "UDP gso"))
            elif kind == "hello":
                out.append(Sighting(ts, "hello", src, dst, f"UDP {src} > {dst} tunlab hello", None))
            else:  # one packet per datagram (whether it left in a batch of one UDP GSO send is timing)
                out.append(Sighting(ts, "encap", src, dst, f"UDP {src} > {dst}", piece, ends[0].node, ends[1].node))
        return out

    def _chunk(self, ts: float, source: tuple[str, int], src: str, dst: str, piece: bytes,
               ends: tuple[RelayEnd, RelayEnd], label: str) -> list[Sighting]:
        from tunlab.relay.fast.encap import HDR_LEN

        out = []
        before = dict(self.drops)
        self.last[source] = (ts, src, dst)
        stream = self.reasm.add(source, piece)
        for reason, n in self.drops.items():
            if n > before.get(reason, 0):
                out.append(Sighting(ts, "chunk-error", src, dst, f"{label} {src} > {dst}: {reason.replace('_', ' ')}",
                                    None))
        if stream is None:
            return out
        count = piece[9] if len(piece) >= HDR_LEN else 1
        outer = f"{label} {src} > {dst}" + (f" ({count} chunks)" if count > 1 else "")
        out.extend(Sighting(ts, "encap", src, dst, outer, inner, ends[0].node, ends[1].node)
                   for inner in stream_inner(stream))
        return out

    def _sealed(self, ts: float, src: str, dst: str, piece: bytes, ends: tuple[RelayEnd, RelayEnd]) -> Sighting:
        from tunlab.relay.seal import HELLO, HELLO_LEN, open_with

        if piece[0] == HELLO and len(piece) == HELLO_LEN:
            return Sighting(ts, "hello", src, dst, f"UDP {src} > {dst} sealed hello", None)
        inner = open_with(self.keys or {}, piece)
        if inner is None:
            return Sighting(ts, "other", src, dst, f"UDP {src} > {dst} sealed, opened by no key of the lab", None)
        return Sighting(ts, "encap", src, dst, f"UDP sealed {src} > {dst}", inner, ends[0].node, ends[1].node)

    def _sealed_datagrams(self, ts: float, source: tuple[str, int], src: str, dst: str, piece: bytes,
                          ends: tuple[RelayEnd, RelayEnd]) -> list[Sighting]:
        """A keyed link's datagram (or a captured UDP GSO send of sealed chunks, cut by the chunk size its
        first chunk's header names): hellos, sealed packets, and sealed chunks opened then reassembled."""
        from tunlab.relay.fast.encap import HDR, HDR_LEN, MAGIC, is_hello
        from tunlab.relay.seal import DATA, OVERHEAD, open_with, peek_with

        keys = self.keys or {}
        pieces = [piece]
        if piece[:1] == bytes([DATA]) and open_with(keys, piece) is None:
            head = peek_with(keys, piece, HDR_LEN)
            if head is not None and head[:2] == MAGIC:
                seg = HDR.unpack(head)[6] + HDR_LEN + OVERHEAD
                if 0 < seg < len(piece):
                    pieces = [piece[i:i + seg] for i in range(0, len(piece), seg)]
        out = []
        for p in pieces:
            seen = self._sealed(ts, src, dst, p, ends)
            if seen.kind == "encap" and seen.inner is not None and seen.inner[:1] == MAGIC[:1]:
                out.extend(self._chunk(ts, source, src, dst, seen.inner, ends, "UDP sealed gso"))
            elif seen.kind == "encap" and seen.inner is not None and is_hello(seen.inner):
                out.append(Sighting(ts, "hello", src, dst, f"UDP {src} > {dst} sealed tunlab hello", None))
            else:
                out.append(seen)
        return out

    def leftovers(self) -> list[Sighting]:
        """Streams still incomplete at the end of the capture."""
        out = []
        for key, part in self.reasm.partials.items():
            source = key[0]
            ts, src, dst = self.last.get(source, (0.0, "?", "?"))  # type: ignore[call-overload]
            got = part.count - part.missing
            out.append(Sighting(ts, "chunk-error", src, dst, f"UDP gso {src} > {dst}: a stream of {part.count} "
                                f"chunks is incomplete in the capture ({got} seen)", None))
        return out


def _add_segment(streams: dict[tuple[str, int, str, int], _Stream], ip: _Ip, sport: int, dport: int,
                 ends: tuple[RelayEnd, RelayEnd], ts: float) -> None:
    tcp = ip.payload
    if len(tcp) < 20:
        return
    seq = struct.unpack_from("!I", tcp, 4)[0]
    doff = (tcp[12] >> 4) * 4
    flags = tcp[13]
    key = (ip.src, sport, ip.dst, dport)
    stream = streams.get(key)
    if stream is None:
        stream = streams[key] = _Stream(ends[0], ends[1], (_hp(ip.src, sport), _hp(ip.dst, dport)))
    if flags & 0x02:  # SYN: the stream starts at seq + 1
        stream.isn = (seq + 1) & 0xFFFFFFFF
    payload = tcp[doff:]
    if payload and seq not in stream.segments:  # a retransmission of a seen segment adds nothing
        stream.segments[seq] = (payload, ts)


def _deframe_stream(stream: _Stream, deframe: Deframer, keys: dict[int, bytes] | None = None) -> list[Sighting]:
    """Reassemble one direction of a relay TCP connection and cut it into inner packets (with ``keys``, a
    keyed link's: every frame a sealed record, opened with the lab's session keys)."""
    if not stream.segments:
        return []
    base = stream.isn
    if base is None:  # no SYN captured: start at the earliest byte, sequence numbers compared modulo 2**32
        first = next(iter(stream.segments))
        signed = [((s - first + 2**31) & 0xFFFFFFFF) - 2**31 for s in stream.segments]
        base = (first + min(signed)) & 0xFFFFFFFF
    # order by offset from the base, modulo 2**32 (sequence numbers wrap)
    ordered = sorted(((s - base) & 0xFFFFFFFF, data, ts) for s, (data, ts) in stream.segments.items())
    buf = bytearray()
    ends: list[tuple[int, float]] = []  # (stream offset after this segment, its timestamp)
    errors: list[Sighting] = []
    src, dst = stream.label
    for off, data, ts in ordered:
        if off > len(buf):
            errors.append(Sighting(ts, "stream-error", src, dst,
                                   f"TCP {src} > {dst}: {off - len(buf)} bytes missing from the capture "
                                   f"at stream offset {len(buf)}", None))
            break
        new = data[len(buf) - off:]
        if new:
            buf.extend(new)
            ends.append((len(buf), ts))
    packets, used = deframe(bytes(buf))
    out: list[Sighting] = []
    pos = 0
    for i, pkt in enumerate(packets):
        pos += _FRAME_HDR + len(pkt)
        ts = next((t for end, t in ends if end >= pos), ends[-1][1])
        outer = f"TCP {src} > {dst} frame #{i + 1} ({len(pkt)} bytes)"
        if keys is not None:  # a keyed link (relay/sealed.py): hellos and sealed data records
            from tunlab.relay.seal import HELLO, open_with

            if pkt[:1] == bytes([HELLO]):
                out.append(Sighting(ts, "hello", src, dst, f"{outer}: sealed hello", None))
                continue
            inner = open_with(keys, pkt)
            if inner is None:
                out.append(Sighting(ts, "other", src, dst, f"{outer}: sealed, opened by no key of the lab", None))
                continue
            out.append(Sighting(ts, "encap", src, dst, f"TCP sealed {src} > {dst} frame #{i + 1}", inner,
                                stream.src.node, stream.dst.node))
            continue
        err = frame_error(pkt)
        if err:
            out.append(Sighting(ts, "stream-error", src, dst, f"{outer}: {err}", pkt))
            break
        out.append(Sighting(ts, "encap", src, dst, outer, pkt, stream.src.node, stream.dst.node))
    if used < len(buf) and not errors:
        errors.append(Sighting(ends[-1][1], "stream-error", src, dst,
                               f"TCP {src} > {dst}: {len(buf) - used} bytes after the last whole frame", None))
    return out + errors
