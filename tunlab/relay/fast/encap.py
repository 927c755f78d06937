"""The fast datapath's wire format (documented in docs/fastpath.md). Pure: no sockets, no root.

A *stream* is what the TUN/TAP device hands over with IFF_VNET_HDR: a 10-byte virtio-net header
(little-endian) followed by one packet, which may be a GSO super-packet of up to 64 KiB. A stream
crosses UDP as ``count`` *chunks*; each chunk datagram is a 12-byte header followed by the next
``csize`` bytes of the stream (the last chunk carries the rest)::

    0  magic      2  0xA7 0x1B
    2  ver/type   1  version 1 in the high nibble, type 1 (chunk) in the low nibble
    3  queue      1  the sender's queue number (part of the reassembly key)
    4  packet id  4  big-endian, per sender queue, wraps
    8  index      1  0 .. count-1
    9  count      1  1 .. 255
    10 csize      2  big-endian: bytes of stream in every chunk but the last

The first byte of a chunk never starts an IPv4/IPv6 packet, so a receiver tells chunks, plain
packets and hellos apart by the first byte. A *hello* is an IPv4 packet whose header checksum is
deliberately wrong (protocol 253, RFC 3692 experimentation), so a plain peer such as socat that
writes it into its TUN has its kernel drop it; its payload says which datapaths the sender speaks.

Also here: the send layout (:class:`TxLayout`, where the TUN read scatters a stream directly into
chunk slots, so chunking costs a handful of column writes per stream, not work per chunk), the
fast receive check (:func:`gro_columns_ok`) and the bounded :class:`Reassembler`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = b"\xa7\x1b"
VERSION = 1
TYPE_CHUNK = 1
VER_TYPE = (VERSION << 4) | TYPE_CHUNK
HDR = struct.Struct("!2sBBIBBH")
HDR_LEN = HDR.size  # 12
VNET_LEN = 10
#: largest stream accepted: a 64 KiB GSO packet, its virtio header, room for an Ethernet header
MAX_STREAM = 65536 + VNET_LEN + 64
MIN_CSIZE = 512
MAX_COUNT = 255

# virtio_net_hdr (little-endian): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET = struct.Struct("<BBHHHH")
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
ZERO_VNET = bytes(VNET_LEN)

# hello / reply
CAP_PLAIN = 1
CAP_GSO = 2
HELLO_KIND = 1
REPLY_KIND = 2
HELLO_MAGIC = b"TUNLAB\x00H"
HELLO_PROTO = 253
_HELLO_BODY = struct.Struct("!8sBBHIIHH")
HELLO_LEN = 20 + _HELLO_BODY.size  # 44


class ChunkHeader(NamedTuple):
    queue: int
    pid: int
    index: int
    count: int
    csize: int


class Hello(NamedTuple):
    kind: int  # HELLO_KIND or REPLY_KIND
    version: int
    caps: int
    session: int
    echo: int
    segment: int  # the datagram size the sender uses for chunks (informational)


# ---------------------------------------------------------------------------------------------
# chunks


def chunk_count(length: int, csize: int) -> int:
    """How many chunks a stream of ``length`` bytes takes (at least one)."""
    return max(1, -(-length // csize))


def pack_header(queue: int, pid: int, index: int, count: int, csize: int) -> bytes:
    return HDR.pack(MAGIC, VER_TYPE, queue & 0xFF, pid & 0xFFFFFFFF, index, count, csize)


def parse_header(data: bytes | bytearray | memoryview) -> ChunkHeader | None:
    """The header of one chunk datagram, or None when it is not a well-formed chunk."""
    if len(data) <= HDR_LEN:
        return None
    magic, vt, queue, pid, index, count, csize = HDR.unpack_from(data)
    if magic != MAGIC or vt != VER_TYPE or count == 0 or index >= count or csize < MIN_CSIZE:
        return None
    if count * csize > MAX_STREAM + csize:
        return None
    payload = len(data) - HDR_LEN
    if payload > csize or (index < count - 1 and payload != csize):
        return None
    return ChunkHeader(queue, pid, index, count, csize)


def split_stream(stream: bytes, *, queue: int, pid: int, csize: int) -> list[bytes]:
    """The chunk datagrams of one stream (reference implementation; the relay uses TxLayout)."""
    if not 0 < len(stream) <= MAX_STREAM:
        raise ValueError(f"stream length {len(stream)} outside 1..{MAX_STREAM}")
    if csize < MIN_CSIZE:
        raise ValueError(f"chunk size {csize} below {MIN_CSIZE}")
    count = chunk_count(len(stream), csize)
    if count > MAX_COUNT:
        raise ValueError(f"stream of {len(stream)} bytes needs {count} chunks (max {MAX_COUNT})")
    return [pack_header(queue, pid, i, count, csize) + stream[i * csize:(i + 1) * csize] for i in range(count)]


def classify(data: bytes | bytearray | memoryview) -> str:
    """'chunk', 'hello', 'plain' (an IPv4/IPv6 packet) or 'bad', from the first bytes only."""
    if not data:
        return "bad"
    first = data[0]
    if first == MAGIC[0]:
        return "chunk"
    if first >> 4 == 4:
        return "hello" if is_hello(data) else "plain"
    if first >> 4 == 6:
        return "plain"
    return "bad"


# ---------------------------------------------------------------------------------------------
# hello


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pack_hello(kind: int, *, caps: int, session: int, echo: int = 0, segment: int = 0) -> bytes:
    """A hello (or reply) datagram: an IPv4 header with a wrong checksum, then the hello body."""
    body = _HELLO_BODY.pack(HELLO_MAGIC, kind, VERSION, caps, session & 0xFFFFFFFF, echo & 0xFFFFFFFF,
                            segment & 0xFFFF, 0)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, HELLO_LEN, 0, 0, 1, HELLO_PROTO, 0, bytes(4), bytes(4)))
    good = _ip_checksum(bytes(ip))
    struct.pack_into("!H", ip, 10, good ^ 0x00FF)  # never valid: the peer's kernel drops it
    return bytes(ip) + body


def is_hello(data: bytes | bytearray | memoryview) -> bool:
    return len(data) == HELLO_LEN and data[9] == HELLO_PROTO and bytes(data[20:28]) == HELLO_MAGIC


def parse_hello(data: bytes | bytearray | memoryview) -> Hello | None:
    if not is_hello(data):
        return None
    _, kind, version, caps, session, echo, segment, _ = _HELLO_BODY.unpack_from(data, 20)
    if kind not in (HELLO_KIND, REPLY_KIND):
        return None
    return Hello(kind, version, caps, session, echo, segment)


# ---------------------------------------------------------------------------------------------
# virtio-net header


class Vnet(NamedTuple):
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet(stream: bytes | bytearray | memoryview) -> Vnet | None:
    if len(stream) < VNET_LEN:
        return None
    return Vnet(*VNET.unpack_from(stream))


def gso_segments(stream: bytes | bytearray | memoryview, length: int | None = None) -> int:
    """How many packets the kernel will make of this stream (1 unless it is a GSO packet)."""
    length = len(stream) if length is None else length
    gso_type = stream[1] & 0x7F
    if gso_type == GSO_NONE or length < VNET_LEN:
        return 1
    hdr_len = stream[2] | (stream[3] << 8)
    gso_size = stream[4] | (stream[5] << 8)
    if gso_size == 0:
        return 1
    return max(1, -(-(length - VNET_LEN - hdr_len) // gso_size))


# ---------------------------------------------------------------------------------------------
# send layout and fast receive check


class TxLayout:
    """A send buffer whose chunk headers are written once; the device read fills the payload slots.

    ``slots`` is the iovec list for ``readv``: the stream lands split into ``csize``-byte pieces,
    each right behind its chunk header. :meth:`finish` writes the per-stream columns (packet id and
    count) with one strided assignment per header byte and returns the datagrams as one buffer.
    """

    def __init__(self, segment: int, queue: int = 0) -> None:
        if not HDR_LEN + MIN_CSIZE <= segment <= 65535:
            raise ValueError(f"chunk datagram size {segment} outside {HDR_LEN + MIN_CSIZE}..65535")
        self.segment = segment
        self.csize = segment - HDR_LEN
        self.queue = queue
        self.max_count = min(MAX_COUNT, chunk_count(MAX_STREAM, self.csize))
        self.buf = bytearray(self.max_count * segment)
        view = memoryview(self.buf)
        for i in range(self.max_count):
            HDR.pack_into(self.buf, i * segment, MAGIC, VER_TYPE, queue & 0xFF, 0, i, 0, self.csize)
        self.slots = tuple(view[i * segment + HDR_LEN:(i + 1) * segment] for i in range(self.max_count))
        self.capacity = self.max_count * self.csize
        self._view = view
        m = self.max_count
        self._low = [bytes((v,)) * m for v in range(256)]       # packet id's low byte, every chunk
        self._counts = [bytes((c,)) * m for c in range(m + 1)]  # count, every chunk
        self._high = 0

    def finish(self, length: int, pid: int) -> tuple[memoryview, int]:
        """Stamp packet id and count for a stream of ``length`` bytes already in the slots.

        Returns (datagrams, count): the chunk datagrams back to back, each ``segment`` bytes but
        the last. Costs two strided writes (low byte of the id, count) whatever the number of chunks;
        the id's upper bytes are rewritten only when they change.
        """
        count = -(-length // self.csize)
        pid &= 0xFFFFFFFF
        buf, g = self.buf, self.segment
        high = pid >> 8
        if high != self._high:
            self._high = high
            m = self.max_count
            for k, b in enumerate(high.to_bytes(3, "big")):
                buf[4 + k::g] = bytes((b,)) * m
        if count == 1:
            buf[7] = pid & 0xFF
            buf[9] = 1
        else:
            buf[7::g] = self._low[pid & 0xFF]
            buf[9::g] = self._counts[count]
        return self._view[:length + count * HDR_LEN], count

    def fill(self, stream: bytes) -> int:
        """Copy a stream into the slots (what ``readv`` on the device does); for tests and fallbacks."""
        n = len(stream)
        if n > self.capacity:
            raise ValueError(f"stream of {n} bytes exceeds the layout capacity {self.capacity}")
        c = self.csize
        for i in range(chunk_count(n, c)):
            piece = stream[i * c:(i + 1) * c]
            self.slots[i][:len(piece)] = piece
        return n


def send_pieces(count: int, length: int, segment: int, max_payload: int = 65507,
                max_segs: int = 64) -> list[tuple[int, int]]:
    """Byte ranges of ``length`` bytes of back-to-back datagrams for UDP GSO sends within the limits."""
    per = max(1, min(max_segs, max_payload // segment))
    if count <= per:
        return [(0, length)]
    return [(start * segment, min(length, (start + per) * segment)) for start in range(0, count, per)]


class RxViews:
    """Per-segment-size cache of the payload views of a receive buffer (the ``writev`` iovecs)."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self._view = memoryview(buf)
        self._cache: dict[int, tuple[memoryview, ...]] = {}

    def payloads(self, segment: int, count: int, end: int) -> tuple[memoryview, ...]:
        if count == 1:
            return (self._view[HDR_LEN:end],)
        views = self._cache.get(segment)
        if views is None:
            if len(self._cache) >= 8:  # a peer's segment size is fixed: only a handful ever appear
                self._cache.clear()
            n = len(self.buf) // segment
            views = tuple(self._view[i * segment + HDR_LEN:(i + 1) * segment] for i in range(n))
            self._cache[segment] = views
        return views[:count - 1] + (self._view[(count - 1) * segment + HDR_LEN:end],)


_RANGES = [bytes(range(n)) for n in range(MAX_COUNT + 1)]
_COUNTS = [bytes((n,)) * n for n in range(MAX_COUNT + 1)]
_M0, _M1 = MAGIC[0], MAGIC[1]


def gro_columns_ok(buf: bytes | bytearray, end: int, segment: int) -> int:
    """Fast check of a coalesced receive: does it hold exactly one whole stream, in order?

    ``buf[:end]`` holds datagrams of ``segment`` bytes (the last may be shorter). Returns the chunk
    count when the first is a well-formed chunk 0 of ``count`` and every datagram has the same
    magic byte, packet id (two low bytes), count, and the index of its position, else 0. Costs one
    strided slice per checked header byte, whatever the number of chunks.
    """
    if end <= HDR_LEN or segment <= HDR_LEN:
        return 0
    n = -(-end // segment)
    if n > MAX_COUNT or end - (n - 1) * segment <= HDR_LEN:
        return 0
    if buf[0] != _M0 or buf[1] != _M1 or buf[2] != VER_TYPE or buf[8] != 0 or buf[9] != n:
        return 0
    csize = buf[10] << 8 | buf[11]
    if n == 1:
        return 1 if end - HDR_LEN <= csize else 0
    if csize != segment - HDR_LEN:
        return 0
    if buf[8:end:segment] != _RANGES[n] or buf[9:end:segment] != _COUNTS[n]:
        return 0
    for j in (0, 6, 7):
        if buf[j:end:segment].count(buf[j]) != n:
            return 0
    return n


# ---------------------------------------------------------------------------------------------
# reassembly


@dataclass
class _Partial:
    count: int
    csize: int
    buf: bytearray
    have: bytearray
    missing: int
    length: int = -1


class Reassembler:
    """Bounded reassembly of chunked streams; a lost chunk costs only its own stream.

    At most ``max_streams`` partial streams are held (the oldest is dropped, counted as
    ``chunk_incomplete``), recently completed keys are remembered so late duplicates are counted
    (``chunk_duplicate``) and ignored; bad chunks count as ``chunk_malformed``. ``drops`` maps
    reason -> count (pass the relay's drop counters to share them).
    """

    def __init__(self, max_streams: int = 64, remember: int = 256, drops: dict[str, int] | None = None) -> None:
        self.max_streams = max_streams
        self.partials: OrderedDict[tuple[object, int, int], _Partial] = OrderedDict()
        self.done: deque[tuple[object, int, int]] = deque(maxlen=remember)
        self._done_set: set[tuple[object, int, int]] = set()
        self.drops: dict[str, int] = {} if drops is None else drops

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def _mark_done(self, key: tuple[object, int, int]) -> None:
        if len(self.done) == self.done.maxlen:
            self._done_set.discard(self.done[0])
        self.done.append(key)
        self._done_set.add(key)

    def add(self, source: object, datagram: bytes | bytearray | memoryview) -> bytes | None:
        """Feed one chunk datagram from ``source``; returns the stream when it is complete."""
        hdr = parse_header(datagram)
        if hdr is None:
            self._drop("chunk_malformed")
            return None
        payload = memoryview(datagram)[HDR_LEN:]
        if hdr.count == 1:
            if len(payload) < VNET_LEN:
                self._drop("chunk_malformed")
                return None
            return bytes(payload)
        key = (source, hdr.queue, hdr.pid)
        if key in self._done_set:
            self._drop("chunk_duplicate")
            return None
        part = self.partials.get(key)
        if part is None:
            part = _Partial(hdr.count, hdr.csize, bytearray(hdr.count * hdr.csize), bytearray(hdr.count), hdr.count)
            self.partials[key] = part
            while len(self.partials) > self.max_streams:
                self.partials.popitem(last=False)
                self._drop("chunk_incomplete")
        elif part.count != hdr.count or part.csize != hdr.csize:
            self._drop("chunk_malformed")
            return None
        if part.have[hdr.index]:
            self._drop("chunk_duplicate")
            return None
        off = hdr.index * hdr.csize
        part.buf[off:off + len(payload)] = payload
        part.have[hdr.index] = 1
        part.missing -= 1
        if hdr.index == hdr.count - 1:
            part.length = off + len(payload)
        if part.missing:
            return None
        del self.partials[key]
        self._mark_done(key)
        if part.length < VNET_LEN:
            self._drop("chunk_malformed")
            return None
        return bytes(part.buf[:part.length])

    def expire(self) -> int:
        """Drop every partial stream (on shutdown or a peer restart); returns how many."""
        n = len(self.partials)
        if n:
            self._drop("chunk_incomplete", n)
        self.partials.clear()
        return n
