"""Scapy view of the fast datapath's encapsulation (docs/fastpath.md), for captures and checks.

* :class:`TunlabChunk`, :class:`VirtioNetHdr`, :class:`TunlabHello`: layers for one datagram.
* :func:`bind_ports`: make scapy decode UDP datagrams on the relay's ports (chunks, hellos, and the
  plain one-packet-per-datagram format all travel there).
* :func:`decode_datagram`: one UDP payload -> scapy packet.
* :func:`inner_packets`: a capture's UDP packets -> the inner packets they carry, chunks reassembled
  and GSO super-packets cut into the packets the receiving kernel makes of them, so a check sees
  every inner packet as it would on a plain hop.
* :func:`cut_to_mtu`: the same cut for a capture taken on a TUN device, where super-packets show
  as packets longer than the MTU.

Only the layers needed are imported (``scapy.all`` costs about a second).
"""

from __future__ import annotations

from collections.abc import Iterable

from scapy.fields import (BitField, ByteEnumField, ByteField, FlagsField, IntField, LEShortField, ShortField,
                          StrFixedLenField, XIntField, XShortField)
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw, bind_layers

from . import encap
from .. import nsh

GSO_TYPES = {encap.GSO_NONE: "none", encap.GSO_TCPV4: "tcpv4", encap.GSO_UDP: "udp", encap.GSO_TCPV6: "tcpv6",
             encap.GSO_UDP_L4: "udp_l4"}


class VirtioNetHdr(Packet):
    """The virtio-net header in front of every stream (little-endian)."""

    name = "virtio-net header"
    fields_desc = [
        FlagsField("flags", 0, 8, ["NEEDS_CSUM", "DATA_VALID", "RSC_INFO"]),
        ByteEnumField("gso_type", 0, GSO_TYPES),
        LEShortField("hdr_len", 0),
        LEShortField("gso_size", 0),
        LEShortField("csum_start", 0),
        LEShortField("csum_offset", 0),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        version = payload[0] >> 4 if payload else 0
        return IP if version == 4 else IPv6 if version == 6 else Ether


class TunlabChunk(Packet):
    """One chunk datagram: the 12-byte header, then ``csize`` bytes of the stream (fewer in the last)."""

    name = "tunlab chunk"
    fields_desc = [
        XShortField("magic", int.from_bytes(encap.MAGIC, "big")),
        BitField("version", encap.VERSION, 4),
        BitField("type", encap.TYPE_CHUNK, 4),
        ByteField("queue", 0),
        IntField("pid", 0),
        ByteField("index", 0),
        ByteField("count", 1),
        ShortField("csize", 1460),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        # a stream that fits one chunk is decoded in place; others need inner_packets()
        return VirtioNetHdr if self.index == 0 and self.count == 1 else Raw


class TunlabHello(Packet):
    """The hello body behind its (deliberately broken) IPv4 header."""

    name = "tunlab hello"
    fields_desc = [
        StrFixedLenField("magic", encap.HELLO_MAGIC, 8),
        ByteEnumField("kind", encap.HELLO_KIND, {encap.HELLO_KIND: "hello", encap.REPLY_KIND: "reply"}),
        ByteField("version", encap.VERSION),
        FlagsField("caps", encap.CAP_PLAIN | encap.CAP_GSO, 16, ["plain", "gso"]),
        XIntField("session", 0),
        XIntField("echo", 0),
        ShortField("segment", 0),
        ShortField("reserved", 0),
    ]


class TunlabDatagram(Packet):
    """Stand-in bound to the relay's UDP ports: picks the real class from the first byte."""

    name = "tunlab datagram"

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: object, **kargs: object) -> type[Packet]:
        return _class_of(_pkt or b"")


def _class_of(data: bytes) -> type[Packet]:
    kind = encap.classify(data)
    if kind == "chunk":
        return TunlabChunk
    if kind in ("plain", "hello"):
        return IP if data[0] >> 4 == 4 else IPv6
    return Raw


_bound: set[int] = set()


def bind_ports(*ports: int) -> None:
    """Decode UDP datagrams to or from these ports as the relay's (plain packets, chunks, hellos)."""
    for port in ports:
        if port in _bound:
            continue
        _bound.add(port)
        bind_layers(UDP, TunlabDatagram, dport=port)
        bind_layers(UDP, TunlabDatagram, sport=port)
    if not getattr(bind_ports, "_hello", False):
        bind_layers(IP, TunlabHello, proto=encap.HELLO_PROTO)
        bind_ports._hello = True  # type: ignore[attr-defined]


def decode_datagram(payload: bytes) -> Packet:
    """One UDP payload of the relay as a scapy packet (chunk, hello or plain IP packet)."""
    cls = _class_of(payload)
    if cls is IP and encap.is_hello(payload):
        return IP(payload[:20]) / TunlabHello(payload[20:])
    return cls(payload)


# ---------------------------------------------------------------------------------------------- streams


def _l3(data: bytes, l2: bool) -> Packet:
    if l2:
        return Ether(data)
    return IP(data) if data and data[0] >> 4 == 4 else IPv6(data)


def stream_packets(stream: bytes, *, segment: bool = True, l2: bool = False) -> list[Packet]:
    """The packets one stream (virtio-net header + packet) stands for.

    With ``segment`` a GSO packet is cut like the kernel cuts it (TCP: seq, IPv4 id, flags, lengths,
    checksums; UDP: length and checksum per piece); a partial checksum (NEEDS_CSUM) is completed.
    """
    vnet = encap.parse_vnet(stream)
    body = stream[encap.VNET_LEN:]
    if vnet is None or not body:
        return []
    pkt = _l3(body, l2)
    gso = vnet.gso_type & 0x7F
    if gso == encap.GSO_NONE or not segment or not vnet.gso_size:
        if vnet.flags & encap.VNET_F_NEEDS_CSUM:
            pkt = _fix_checksums(pkt)
        return [pkt]
    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return [pkt]
    l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
    if l4 is None:
        return [pkt]
    data = bytes(l4.payload)
    mss = vnet.gso_size
    pieces = [data[i:i + mss] for i in range(0, len(data), mss)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        p = pkt.copy()
        q = p.getlayer(IP) or p.getlayer(IPv6)
        t = q.getlayer(TCP) or q.getlayer(UDP)
        t.remove_payload()
        t.add_payload(Raw(piece) if piece else b"")
        if isinstance(t, TCP):
            t.seq = (l4.seq + i * mss) & 0xFFFFFFFF
            flags = int(l4.flags)
            if i < len(pieces) - 1:
                flags &= ~0x09  # FIN, PSH only on the last
            if i > 0:
                flags &= ~0x80  # CWR only on the first
            t.flags = flags
        else:
            del t.len
        del t.chksum
        if isinstance(q, IP):
            q.id = (ip.id + i) & 0xFFFF
            del q.len
            del q.chksum
        else:
            del q.plen
        out.append(p.__class__(bytes(p)))
    return out


def cut_to_mtu(packets: Iterable[Packet], mtu: int) -> list[Packet]:
    """Packets as they were on the wire before a GSO/GRO device merged them.

    A capture on a TUN device of the gso datapath (or of the plain one's receiving side, which
    merges TCP runs) shows TCP/UDP packets longer than the MTU: they are cut into ``mtu``-size
    packets the way the kernel cuts them; everything else is returned as it is.
    """
    out: list[Packet] = []
    for p in packets:
        ip = p.getlayer(IP) or p.getlayer(IPv6)
        l4 = ip.getlayer(TCP) or ip.getlayer(UDP) if ip is not None else None
        if ip is None or l4 is None or len(ip) <= mtu:
            out.append(p)
            continue
        hl = len(ip) - len(l4.payload)
        gso = (encap.GSO_TCPV4 if isinstance(ip, IP) else encap.GSO_TCPV6) if isinstance(l4, TCP) \
            else encap.GSO_UDP_L4
        vnet = encap.VNET.pack(0, gso, hl, mtu - hl, 0, 0)
        for q in stream_packets(vnet + bytes(ip)):
            q.time = p.time
            out.append(q)
    return out


def _fix_checksums(pkt: Packet) -> Packet:
    for layer in (TCP, UDP):
        t = pkt.getlayer(layer)
        if t is not None:
            del t.chksum
            return pkt.__class__(bytes(pkt))
    return pkt


def inner_packets(packets: Iterable[Packet], *, ports: Iterable[int] = (), segment: bool = True,
                  l2: bool = False, hellos: bool = False) -> list[Packet]:
    """The inner packets a capture of the relay's UDP traffic carries, in capture order.

    Chunk datagrams are recognised on any port (by their header) and reassembled per sender; plain
    datagrams (one packet each) are taken on ``ports`` only. Each inner packet gets the capture
    time of the datagram that completed it. Hellos are left out unless ``hellos``.
    """
    port_set = set(ports)
    reasm = encap.Reassembler(max_streams=256)
    out: list[Packet] = []
    for outer in packets:
        udp = outer.getlayer(UDP)
        if udp is None:
            continue
        ours = udp.sport in port_set or udp.dport in port_set
        ip = udp.underlayer
        source = (getattr(ip, "src", None), udp.sport)
        raw = bytes(udp.payload)
        if nsh.is_gpe_nsh(raw):  # NSH mode (issue 18): one inner packet after VXLAN-GPE + NSH, on any port
            try:
                header = nsh.decode(raw, nsh.GPE_LEN)
            except nsh.NshError:
                continue
            p = _l3(raw[nsh.GPE_LEN + header.length:], header.next_proto == nsh.NP_ETHERNET)
            p.time = outer.time
            out.append(p)
            continue
        for payload in split_glued(raw, l2=l2):
            kind = encap.classify(payload)
            inner: list[Packet] = []
            if kind == "chunk":
                stream = reasm.add(source, payload)
                if stream is not None:
                    inner = stream_packets(stream, segment=segment, l2=l2)
            elif kind == "hello":
                if hellos and ours:
                    inner = [decode_datagram(payload)]
            elif ours and (kind == "plain" or (l2 and payload)):
                inner = [_l3(payload, l2)]
            for p in inner:
                p.time = outer.time
            out.extend(inner)
    return out


def split_glued(payload: bytes, *, l2: bool = False) -> list[bytes]:
    """The datagrams of one captured UDP payload.

    A capture taken where a UDP GSO send is still one buffer (a veth, loopback, the sender itself)
    shows all its datagrams glued together: chunks are cut at their header's size, plain IPv4/IPv6
    packets at their own length. Anything else is returned as it is.
    """
    if len(payload) > encap.HDR_LEN and payload[0] == encap.MAGIC[0]:
        ok = payload[:2] == encap.MAGIC and payload[2] == encap.VER_TYPE
        size = int.from_bytes(payload[10:12], "big") + encap.HDR_LEN if ok else 0
        if size > encap.HDR_LEN and len(payload) > size:
            return [payload[i:i + size] for i in range(0, len(payload), size)]
        return [payload]
    if l2 or not payload or payload[0] >> 4 not in (4, 6):
        return [payload]
    pieces, off = [], 0
    while off < len(payload):
        rest = payload[off:]
        if rest[0] >> 4 == 4 and len(rest) >= 20:
            n = int.from_bytes(rest[2:4], "big")
        elif rest[0] >> 4 == 6 and len(rest) >= 40:
            n = 40 + int.from_bytes(rest[4:6], "big")
        else:
            n = 0
        if n <= 0 or n > len(rest):
            pieces.append(rest)
            break
        pieces.append(rest[:n])
        off += n
    return pieces
