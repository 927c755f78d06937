"""Receive-side coalescing for the plain datapath: consecutive TCP/IPv4 segments -> one GSO packet.

A UDP GRO receive of plain datagrams holds packets of one size back to back (the last may be
shorter). When a run of them are consecutive segments of one TCP/IPv4 connection, they are written
to the device as one TSO super-packet (virtio header TCPV4, NEEDS_CSUM), so the kernel's stack
handles one packet instead of many, as its own GRO would. Pure: no sockets, unit-tested.

Merged only when every segment has: IPv4 without options, not fragmented, same TOS/TTL/DF/addresses;
TCP with the same ports, ack, window, header length and options; flags exactly ACK (a PSH, or a
smaller payload, ends the run with that segment); sequence numbers back to back.
"""

from __future__ import annotations

import struct
import sys
from array import array

from . import encap

_VNET = encap.VNET
_TCPV4 = encap.GSO_TCPV4
_NEEDS_CSUM = encap.VNET_F_NEEDS_CSUM
ACK, PSH = 0x10, 0x08


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_checksum(header: bytes | bytearray) -> int:
    return ~_fold(sum(struct.unpack("!10H", header))) & 0xFFFF


def tcp_start(buf: bytes | bytearray | memoryview, off: int, size: int) -> int:
    """Header length (IP + TCP) if the packet at ``off`` can start a merge, else 0."""
    if size < 40 or buf[off] != 0x45 or buf[off + 9] != 6 or (buf[off + 6] & 0x3F) or buf[off + 7]:
        return 0
    hl = 20 + ((buf[off + 32] >> 4) << 2)
    if hl < 40 or hl >= size or buf[off + 33] != ACK:
        return 0
    if (buf[off + 2] << 8 | buf[off + 3]) != size:
        return 0
    return hl


def merge_run(buf: bytes | bytearray | memoryview, start: int, stride: int, count: int, end: int) -> tuple[int, int]:
    """How many packets from the one at ``start`` (stride ``stride``, at most ``count``, data ending
    at ``end``) form one mergeable run, and its header length. (1, 0) when it cannot start one."""
    size0 = min(stride, end - start)
    hl = tcp_start(buf, start, size0)
    if not hl or count < 2:
        return 1, hl
    view = memoryview(buf)
    pay = size0 - hl
    # equal in every segment: version/IHL/TOS; flags/fragment/TTL/protocol; addresses and ports;
    # ack and data offset; window; urgent pointer and options. Not compared: total length (checked
    # against the size), IP id and both checksums (they differ), sequence number (must follow on).
    same = [(start + a, start + b, bytes(view[start + a:start + b]))
            for a, b in ((0, 2), (6, 10), (12, 24), (28, 33), (34, 36), (38, hl))]
    seq = int.from_bytes(view[start + 24:start + 28], "big")
    n = 1
    off = start + stride
    while n < count and off < end:
        size = min(stride, end - off)
        if size <= hl or size - hl > pay or (size != stride and off + size != end):
            break
        delta = off - start
        if any(view[a + delta:b + delta] != ref for a, b, ref in same):
            break
        flags = view[off + 33]
        psh = flags == ACK | PSH
        if flags != ACK and not psh:
            break
        if (view[off + 2] << 8 | view[off + 3]) != size:
            break
        seq = (seq + pay) & 0xFFFFFFFF
        if int.from_bytes(view[off + 24:off + 28], "big") != seq:
            break
        n += 1
        off += stride
        if psh or size != stride:
            break  # a pushed or shorter segment ends the run
    return n, hl


def super_header(buf: bytes | bytearray | memoryview, start: int, hl: int, total_payload: int, mss: int,
                 psh: bool) -> tuple[bytes, bytes]:
    """(virtio header, IP+TCP header) for a merged run whose first segment is at ``start``."""
    hdr = bytearray(buf[start:start + hl])
    total = hl + total_payload
    hdr[2], hdr[3] = total >> 8, total & 0xFF
    hdr[10] = hdr[11] = 0
    csum = ip_checksum(hdr[:20])
    hdr[10], hdr[11] = csum >> 8, csum & 0xFF
    if psh:
        hdr[33] |= PSH
    tcp_len = total - 20
    pseudo = _fold((hdr[12] << 8 | hdr[13]) + (hdr[14] << 8 | hdr[15]) + (hdr[16] << 8 | hdr[17])
                   + (hdr[18] << 8 | hdr[19]) + 6 + tcp_len)
    hdr[36], hdr[37] = pseudo >> 8, pseudo & 0xFF  # partial checksum: the kernel completes it
    vnet = _VNET.pack(_NEEDS_CSUM, _TCPV4, hl, mss, 20, 16)
    return vnet, bytes(hdr)


def _equal_columns(hl: int) -> tuple[int, ...]:
    return (0, 1, 6, 7, 8, 9, *range(12, 24), *range(28, 33), 34, 35, *range(38, hl))


_COLUMNS = {hl: _equal_columns(hl) for hl in range(40, 81, 4)}
_SWAP = sys.byteorder == "little"


def whole_batch(buf: bytearray, end: int, stride: int) -> int:
    """Is the GRO batch ``buf[:end]`` (packets every ``stride`` bytes, the last may be shorter) one
    run of consecutive segments of one TCP/IPv4 connection? Returns the IP+TCP header length if so,
    else 0. Costs one strided slice per header byte, whatever the number of packets."""
    k = -(-end // stride)
    if k < 2:
        return 0
    hl = tcp_start(buf, 0, stride)
    last = (k - 1) * stride
    if not hl or end - last <= hl:
        return 0
    cols = _COLUMNS.get(hl)
    if cols is None:
        return 0
    for j in cols:
        if buf[j:end:stride].count(buf[j]) != k:
            return 0
    if k > 2 and (buf[2:last:stride].count(buf[2]) != k - 1 or buf[3:last:stride].count(buf[3]) != k - 1):
        return 0
    if (buf[last + 2] << 8 | buf[last + 3]) != end - last:
        return 0
    if buf[33:last:stride].count(ACK) != k - 1 or buf[last + 33] not in (ACK, ACK | PSH):
        return 0
    pay = stride - hl
    seq0 = int.from_bytes(buf[24:28], "big")
    if seq0 + (k - 1) * pay > 0xFFFFFFFF:
        return 0  # wraps inside the batch: leave it to the packet-by-packet path
    expect = array("I", range(seq0, seq0 + k * pay, pay))
    if _SWAP:
        expect.byteswap()
    e = expect.tobytes()
    for b in range(4):
        if buf[24 + b:end:stride] != e[b::4]:
            return 0
    return hl


class BatchViews:
    """Per (stride, header length): the payload views of every packet of a receive buffer."""

    def __init__(self, buf: bytearray) -> None:
        self.view = memoryview(buf)
        self.cache: dict[tuple[int, int], tuple[memoryview, ...]] = {}

    def payloads(self, stride: int, hl: int, end: int) -> tuple[memoryview, ...]:
        k = -(-end // stride)
        views = self.cache.get((stride, hl))
        if views is None:
            if len(self.cache) >= 16:
                self.cache.clear()
            n = len(self.view) // stride
            views = tuple(self.view[i * stride + hl:(i + 1) * stride] for i in range(n))
            self.cache[(stride, hl)] = views
        return views[:k - 1] + (self.view[(k - 1) * stride + hl:end],)
